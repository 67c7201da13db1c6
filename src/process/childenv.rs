//! The environment of the programs the updater starts (docs/API.md 9.6): never the updater's
//! own (which may hold secrets, proxies, the service manager's variables), but a fixed,
//! documented set.

use std::ffi::OsString;
use std::process::Command;

/// `PATH` of every program the updater starts.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `LANG` of every program the updater starts (the one locale every system has).
pub const LANG: &str = "C";
/// The module a `start_cmd`, `post_cmd` or `health_cmd` belongs to.
pub const MODULE_VAR: &str = "TOPE_MODULE";
/// The version being installed (the package's `version`).
pub const VERSION_VAR: &str = "TOPE_VERSION";

/// The environment of one program the updater starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildEnv {
    module: Option<(String, String)>,
}

impl ChildEnv {
    /// A program of the updater's own (`systemctl`, `systemd-run`, ota-gui): `PATH`, `LANG`.
    pub fn tool() -> ChildEnv {
        ChildEnv { module: None }
    }

    /// A module's program: also [`MODULE_VAR`] and [`VERSION_VAR`].
    pub fn module(name: &str, version: &str) -> ChildEnv {
        ChildEnv {
            module: Some((name.to_string(), version.to_string())),
        }
    }

    /// Every variable, in a fixed order.
    pub fn vars(&self) -> Vec<(&'static str, OsString)> {
        let mut v = vec![("PATH", PATH.into()), ("LANG", LANG.into())];
        if let Some((name, version)) = &self.module {
            v.push((MODULE_VAR, name.into()));
            v.push((VERSION_VAR, version.into()));
        }
        v
    }

    /// Give `cmd` exactly this environment.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env_clear();
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn api_9_6_children_get_only_the_documented_variables() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "env"])
            .env("TOPE_SECRET_TOKEN", "s3cret")
            .stdout(Stdio::piped());
        ChildEnv::module("printer-api", "1.2.3").apply(&mut cmd);
        let out = cmd.output().unwrap();
        let mut env: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .collect();
        env.sort();
        assert_eq!(
            env,
            vec![
                format!("LANG={LANG}"),
                format!("PATH={PATH}"),
                "TOPE_MODULE=printer-api".to_string(),
                "TOPE_VERSION=1.2.3".to_string(),
            ]
        );
        assert_eq!(ChildEnv::tool().vars().len(), 2);
    }
}
