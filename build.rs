//! Build script: records the git commit the binary is built from, for `--version`.
//!
//! `TOPE_UPDATER_GIT_COMMIT` in the environment wins (a build from a source tarball can set
//! it); otherwise `git rev-parse HEAD`; without git or outside a repository, "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TOPE_UPDATER_GIT_COMMIT");
    let commit = match std::env::var("TOPE_UPDATER_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs.
            let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(r);
            }
            for name in watch {
                if let Some(p) = git(&["rev-parse", "--git-path", &name]) {
                    let p = PathBuf::from(p);
                    // A missing file would make cargo rerun this script on every build.
                    if p.exists() {
                        println!("cargo:rerun-if-changed={}", p.display());
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=TOPE_UPDATER_GIT_COMMIT={commit}");
}
