//! Process control for deployment: find, stop, start and run the printer's processes.
//!
//! Everything here is synchronous and meant to run on a blocking thread.
//!
//! - `procfs`: processes are found by reading `/proc` (no pidfd: some printer kernels are older
//!   than 5.3). A [`ProcId`] pairs a pid with the process's start time, so a pid reused by an
//!   unrelated process is never mistaken for the one we stopped; a scan also gives each
//!   process's argv, to start it again exactly as it ran. "Gone" is concluded only from
//!   `ENOENT`/`ESRCH`: an unreadable `/proc` is an error, never "not running".
//! - `stop`: SIGTERM, a grace period, SIGKILL, then confirmation. PID 1, the updater and its
//!   parent are never signalled.
//! - `command`: commands run to completion (`post_cmds`, `health_cmd`, `systemctl`, the
//!   `systemd-run` launch) under a time limit, in a process group of their own; every process
//!   a post or health command started (also one that called `setsid`) is ended before the call
//!   returns (at the end, on a timeout, or when the updater shuts down), of the others their
//!   process group. `systemctl` is found on the children's `PATH`; tests may name another
//!   program in `TOPE_SYSTEMCTL` (read at every call); unit tests of this crate use a
//!   per-thread override instead, because the environment is process-global.
//! - `contain`: finds a step's processes in `/proc` (its tree, a marker in the environment,
//!   its process group) and ends them.
//! - `childenv`: the clean, documented environment of every program the updater starts.
//! - `spawn`: long-running starts (`start_cmd`, ota-gui), through `systemd-run` when systemd
//!   runs so they live outside the updater's cgroup (`TOPE_SYSTEMD_RUN` overrides).

mod childenv;
mod command;
mod contain;
mod error;
mod identity;
mod names;
mod procfs;
mod respawn;
mod spawn;
mod stop;

use std::time::Duration;

pub use childenv::{ChildEnv, MODULE_VAR, VERSION_VAR};
#[cfg(test)]
pub(crate) use command::SYSTEMCTL_OVERRIDE;
pub use command::{run_to_completion, set_children_fd_limit, systemctl};
pub use error::{CommandFailure, OutputTails, ProcessError};
pub use identity::{identity, Identity};
pub use procfs::{
    describe, is_alive, is_running, liveness, scan, Liveness, ProcId, RunningProcess,
};
pub use respawn::{start_as_it_ran, AsItRan};
pub use spawn::{exit_status, spawn_detached, spawn_detached_in, Started};
pub use stop::{stop_by_name, stop_processes, stop_processes_where};

/// Polling period while waiting for processes to exit.
const POLL: Duration = Duration::from_millis(50);

/// A command line for messages: `` `a b c` `` (arguments that are not UTF-8 shown lossily).
fn show<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> String {
    let parts: Vec<String> = argv
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    format!("`{}`", parts.join(" "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    /// A unique short process name (<= 15 bytes, so `comm` holds it whole).
    pub(crate) fn unique_name() -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "tu{:05x}{:03x}{:02x}",
            std::process::id() & 0xfffff,
            t & 0xfff,
            n & 0xff
        )
    }

    /// A `sleep` program under a unique name in `dir` (a symlink: the kernel takes `comm` from
    /// the name that was executed, and nothing is ever open for writing, so no ETXTBSY).
    pub(crate) fn named_sleep(dir: &Path) -> (String, PathBuf) {
        let name = unique_name();
        let path = dir.join(&name);
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap();
        std::os::unix::fs::symlink(sleep, &path).unwrap();
        (name, path)
    }

    /// Poll until a scan for `name` finds `n` processes.
    pub(crate) fn wait_found(name: &str, n: usize) -> Vec<ProcId> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f: Vec<ProcId> = scan(name).unwrap().into_iter().map(|p| p.id).collect();
            if f.len() == n || Instant::now() > deadline {
                return f;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fake `systemd-run` that records its arguments, one per line, to `<dir>/log`, and
    /// starts the command after `--` in a session of its own (out of the launcher's process
    /// group, as systemd would), returning once it has left the group.
    pub(crate) fn fake_systemd_run(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-systemd-run");
        let log = dir.join("log");
        let ready = dir.join("ready");
        fs::write(
            &p,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\" >> '{log}'; done\n\
                 while [ \"$1\" != -- ]; do shift; done; shift\nrm -f '{ready}'\n\
                 setsid sh -c 'echo > \"$0\"; exec \"$@\"' '{ready}' \"$@\" \
                 </dev/null >/dev/null 2>&1 &\n\
                 while [ ! -e '{ready}' ]; do sleep 0.05; done\nexit 0\n",
                log = log.display(),
                ready = ready.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A fake `systemctl` that logs its arguments to `<dir>/log` and exits 1 for `fail_on`.
    pub(crate) fn fake_systemctl(dir: &Path, fail_on: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-systemctl");
        let log = dir.join("log");
        fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"$1 $2\" >> '{}'\ncase \"$1 $2\" in\n  '{fail_on}') echo \"unit $2 refused\" >&2; exit 1;;\nesac\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn own_process_is_never_found() {
        let me = std::process::id() as i32;
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let found = scan(comm.trim_end()).unwrap();
        assert!(found.iter().all(|p| p.id.pid != me));
    }
}
