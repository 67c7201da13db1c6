//! docs/API.md 9.4: the updater never stops or restarts itself in the middle of an
//! installation. A module whose `service` is the updater's own systemd unit, or a command the
//! installation runs (`post_cmds`, `start_cmd`, `health_cmd`) that stops, restarts or kills
//! the updater (`systemctl restart tope-updater`, `service tope-updater stop`,
//! `killall tope-updater`, also inside a `/bin/sh -c` string), is refused with
//! `INVALID_MANIFEST` before anything is touched. The updater's own executable is updated by a
//! module whose `dst` is that file (a self-update), never by restarting the unit.
//!
//! The unit is the one the updater runs in (the last `*.service` component of
//! `/proc/self/cgroup`) and the shipped unit's name, `tope-updater.service`, whether or not
//! systemd runs it now.

use crate::error::{self, OtaError};
use crate::package::Module;

/// The name of the shipped unit (`deploy/tope-updater.service`).
pub const SHIPPED_UNIT: &str = "tope-updater.service";

/// `systemctl` verbs that stop the unit they name (the updater with it).
const STOPPING_VERBS: &[&str] = &[
    "stop",
    "restart",
    "try-restart",
    "reload-or-restart",
    "try-reload-or-restart",
    "force-reload",
    "condrestart",
    "kill",
    "isolate",
];
/// `systemctl` verbs that stop their units only with `--now`.
const NOW_VERBS: &[&str] = &["disable", "mask"];
/// `service NAME VERB` verbs that stop the service.
const SERVICE_VERBS: &[&str] = &[
    "stop",
    "restart",
    "force-reload",
    "try-restart",
    "condrestart",
];
/// Programs that only prefix another command.
const PREFIXES: &[&str] = &["sudo", "exec", "nohup", "env", "command", "nice", "setsid"];
/// Shells whose `-c` string is looked into.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "busybox"];

/// What identifies the running updater to the commands of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// Unit names, each ending in `.service`.
    pub units: Vec<String>,
    /// File names a `killall`/`pkill` would match: the executable's file name.
    pub names: Vec<String>,
}

impl Own {
    /// The running updater: its unit from `/proc/self/cgroup`, the shipped unit name, and the
    /// file name of `/proc/self/exe`.
    pub fn current() -> Own {
        let mut units = vec![SHIPPED_UNIT.to_string()];
        match std::fs::read_to_string("/proc/self/cgroup") {
            Ok(text) => {
                if let Some(u) = unit_from_cgroup(&text) {
                    if !units.contains(&u) {
                        units.push(u);
                    }
                }
            }
            Err(e) => tracing::debug!("/proc/self/cgroup: {e}"),
        }
        let mut names = vec!["tope-updater".to_string()];
        if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
            if let Some(n) = exe.file_name().and_then(|n| n.to_str()) {
                let n = n.trim_end_matches(" (deleted)").to_string();
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        Own { units, names }
    }

    fn is_own_unit(&self, arg: &str) -> bool {
        let unit = if arg.contains('.') {
            arg.to_string()
        } else {
            format!("{arg}.service")
        };
        self.units.contains(&unit)
    }

    fn is_own_name(&self, arg: &str) -> bool {
        let base = arg.rsplit('/').next().unwrap_or(arg);
        self.names.iter().any(|n| n == base)
    }
}

/// The systemd unit named by a `/proc/<pid>/cgroup` text: the last path component ending in
/// `.service` of the unified (`0::`) line, else of the `name=systemd` line.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let unit_of = |path: &str| {
        path.rsplit('/')
            .find(|c| c.ends_with(".service"))
            .map(str::to_string)
    };
    let line_for = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(unit_of)
    };
    line_for("0::").or_else(|| {
        text.lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
            .and_then(unit_of)
    })
}

/// Refuse (docs/API.md 9.4) a module that names the updater's own unit as its `service`, or
/// any command of a module that would stop or restart the updater.
pub fn check_modules(modules: &[Module], own: &Own) -> Result<(), OtaError> {
    for m in modules {
        let starts = m.process_name.is_some() || m.service.is_some() || m.start_cmd.is_some();
        if starts && crate::handover::is_own_exe(&m.dst) {
            return Err(error::invalid_manifest(format!(
                "module {}: its dst {} is the running updater's executable (a self-update, \
                 docs/API.md 9.4): the updater starts the new binary itself, so \
                 process_name, service and start_cmd do not apply",
                m.name,
                m.dst.display()
            )));
        }
        if let Some(s) = m.service.as_deref().filter(|s| own.is_own_unit(s)) {
            return Err(refusal(
                &m.name,
                format!("its service {s} is the updater's own unit"),
            ));
        }
        let mut cmds: Vec<(&str, Vec<String>)> = m
            .post_argvs()
            .into_iter()
            .map(|argv| ("post command", argv))
            .collect();
        if let Some(c) = &m.start_cmd {
            cmds.push(("start_cmd", c.clone()));
        }
        if let Some(c) = &m.health_cmd {
            cmds.push(("health_cmd", c.clone()));
        }
        for (what, argv) in cmds {
            if let Some(why) = stops_updater(&argv, own, 0) {
                return Err(refusal(
                    &m.name,
                    format!("its {what} {} {why}", shown(&argv)),
                ));
            }
        }
    }
    Ok(())
}

fn refusal(module: &str, why: String) -> OtaError {
    error::invalid_manifest(format!(
        "module {module}: {why}; the updater cannot stop or restart itself in the middle of an \
         installation (to update the updater, give its executable as a module's dst: \
         docs/API.md 9.4)"
    ))
}

/// A command line as the manifest gives it, bounded for a message.
fn shown(argv: &[String]) -> String {
    let s = serde_json::to_string(argv).unwrap_or_default();
    if s.len() <= 200 {
        return s;
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Why `argv` stops or restarts the updater, if it does. `depth` bounds nested shells.
fn stops_updater(argv: &[String], own: &Own, depth: usize) -> Option<String> {
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_string();
    // Skip `VAR=value` words and prefixing programs (with their options).
    let mut i = 0;
    while let Some(w) = argv.get(i) {
        let b = base(w);
        if (w.contains('=') && !w.starts_with('-')) || PREFIXES.contains(&b.as_str()) {
            i += 1;
            while argv.get(i).is_some_and(|a| a.starts_with('-')) {
                i += 1;
            }
        } else {
            break;
        }
    }
    let prog = base(argv.get(i)?);
    let args: Vec<&str> = argv[i + 1..].iter().map(String::as_str).collect();
    match prog.as_str() {
        "systemctl" => {
            let words: Vec<&str> = args
                .iter()
                .copied()
                .filter(|a| !a.starts_with('-'))
                .collect();
            let verb = *words.first()?;
            let now = args.contains(&"--now");
            let stops = STOPPING_VERBS.contains(&verb) || (now && NOW_VERBS.contains(&verb));
            let unit = words[1..].iter().find(|u| own.is_own_unit(u))?;
            stops.then(|| format!("would {verb} the updater's own unit {unit}"))
        }
        "service" => {
            let unit = args.first().filter(|u| own.is_own_unit(u))?;
            let verb = args.get(1).filter(|v| SERVICE_VERBS.contains(v))?;
            Some(format!("would {verb} the updater's own service {unit}"))
        }
        "killall" | "pkill" => {
            let name = args
                .iter()
                .filter(|a| !a.starts_with('-'))
                .find(|a| own.is_own_name(a))?;
            Some(format!("would signal the updater itself ({name})"))
        }
        sh if SHELLS.contains(&sh) && depth < 4 => {
            let pos = args.iter().position(|a| *a == "-c")?;
            let script = args.get(pos + 1)?;
            simple_commands(script)
                .iter()
                .find_map(|c| stops_updater(c, own, depth + 1))
        }
        _ => None,
    }
}

/// The simple commands of a shell string, as words: split at `;`, `&`, `|`, newlines and
/// parentheses, words at blanks, quotes removed. Enough to read what a command line does; it
/// never runs anything.
fn simple_commands(script: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in script.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                ';' | '&' | '|' | '\n' | '(' | ')' | '`' => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                    if !words.is_empty() {
                        cmds.push(std::mem::take(&mut words));
                    }
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    if in_word {
        words.push(word);
    }
    if !words.is_empty() {
        cmds.push(words);
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Own {
        Own {
            units: vec![SHIPPED_UNIT.into(), "printer-ota.service".into()],
            names: vec!["tope-updater".into()],
        }
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn api_9_4_unit_from_cgroup_v2_and_v1() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/tope-updater.service\n").as_deref(),
            Some("tope-updater.service")
        );
        let v1 = "12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/ota.service\n";
        assert_eq!(unit_from_cgroup(v1).as_deref(), Some("ota.service"));
        assert_eq!(unit_from_cgroup("0::/user.slice/session-3.scope\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
    }

    #[test]
    fn api_9_4_commands_that_stop_the_updater_are_recognised() {
        let o = own();
        for cmd in [
            argv(&["systemctl", "restart", "tope-updater"]),
            argv(&[
                "/bin/systemctl",
                "--no-block",
                "stop",
                "tope-updater.service",
            ]),
            argv(&["sudo", "systemctl", "try-restart", "printer-ota"]),
            argv(&["systemctl", "disable", "--now", "tope-updater"]),
            argv(&[
                "systemctl",
                "restart",
                "web.service",
                "tope-updater.service",
            ]),
            argv(&["service", "tope-updater", "restart"]),
            argv(&["killall", "-HUP", "tope-updater"]),
            argv(&[
                "/bin/sh",
                "-c",
                "sync; systemctl restart tope-updater && echo ok",
            ]),
            argv(&["bash", "-c", "X=1 sh -c 'systemctl stop \"tope-updater\"'"]),
        ] {
            assert!(stops_updater(&cmd, &o, 0).is_some(), "{cmd:?}");
        }
        for cmd in [
            argv(&["systemctl", "restart", "web.service"]),
            argv(&["systemctl", "status", "tope-updater"]),
            argv(&["systemctl", "disable", "tope-updater"]),
            argv(&["service", "tope-updater", "status"]),
            argv(&["/bin/sh", "-c", "echo systemctl restart web"]),
            argv(&["killall", "printerd"]),
            argv(&["echo", "systemctl", "restart", "tope-updater"]),
        ] {
            assert!(stops_updater(&cmd, &o, 0).is_none(), "{cmd:?}");
        }
    }
}
