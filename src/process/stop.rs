//! Stopping processes by name: SIGTERM, a grace period, SIGKILL, then confirmation.
//!
//! A process counts as stopped only once the kernel says it is gone (see `procfs`): when the
//! updater cannot read `/proc` (its descriptors exhausted, say), the answer is
//! `PROCESS_KILL_FAILED`, never "stopped". PID 1, the updater and its parent are never
//! signalled, whatever their name.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use super::error::ProcessError;
use super::procfs::{self, Found, Liveness, Procfs, RealProcfs, RunningProcess};
use super::{ProcId, POLL};

/// How long to wait for a process to disappear after SIGKILL.
const KILL_CONFIRM: Duration = Duration::from_secs(5);

/// PID 1 (and anything below), the updater itself and its parent: never signalled.
fn is_protected(pid: i32) -> bool {
    pid <= 1 || procfs::is_self_or_parent(pid)
}

/// Send `sig` to a process found by a scan, if it is still that process. PID 1, the updater
/// and its parent are refused; a process whose identity cannot be checked is not signalled
/// (its pid might belong to another process by now).
fn signal(fs: &dyn Procfs, f: &Found, sig: Signal) -> std::io::Result<()> {
    let pid = f.info.id.pid;
    if is_protected(pid) {
        return Err(std::io::Error::other(format!(
            "refusing to signal pid {pid} (init, the updater or its parent)"
        )));
    }
    match procfs::liveness_held(fs, f) {
        Liveness::Gone => Ok(()),
        Liveness::Unknown(e) => Err(std::io::Error::other(format!(
            "cannot check that pid {pid} is still the process found: {e}"
        ))),
        Liveness::Alive => {
            match Pid::from_raw(pid).map(|p| rustix::process::kill_process(p, sig)) {
                Some(Ok(())) | Some(Err(rustix::io::Errno::SRCH)) => Ok(()),
                Some(Err(e)) => Err(e.into()),
                None => Err(std::io::Error::other(format!("invalid pid {pid}"))),
            }
        }
    }
}

/// Poll until every process of `procs` is known to be gone or `deadline` passes; returns
/// the others with what is known about them.
fn wait_gone<'a>(
    fs: &dyn Procfs,
    procs: &[&'a Found],
    deadline: Instant,
) -> Vec<(&'a Found, Liveness)> {
    loop {
        let left: Vec<(&Found, Liveness)> = procs
            .iter()
            .map(|f| (*f, procfs::liveness_held(fs, f)))
            .filter(|(_, l)| !matches!(l, Liveness::Gone))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// [`stop_processes`] over any `/proc` (unit tests inject failures).
pub(crate) fn stop_with(
    fs: &dyn Procfs,
    name: &str,
    timeout: Duration,
    confirm: Duration,
) -> Result<Vec<RunningProcess>, ProcessError> {
    stop_where(fs, name, timeout, confirm, &|_| true)
}

/// [`stop_with`] for the processes named `name` that `which` selects.
fn stop_where(
    fs: &dyn Procfs,
    name: &str,
    timeout: Duration,
    confirm: Duration,
    which: &dyn Fn(&RunningProcess) -> bool,
) -> Result<Vec<RunningProcess>, ProcessError> {
    let mut found = procfs::scan_with(fs, name).map_err(|source| ProcessError::Unreadable {
        name: name.to_string(),
        source,
    })?;
    found.retain(|f| which(&f.info));
    if found.is_empty() {
        tracing::debug!("process {name} is not running");
        return Ok(Vec::new());
    }
    let pids: Vec<i32> = found.iter().map(|f| f.info.id.pid).collect();
    tracing::info!("stopping process {name} pids {pids:?}");
    let begun = Instant::now();
    for f in &found {
        if let Err(e) = signal(fs, f, Signal::TERM) {
            tracing::warn!("SIGTERM to {name} (pid {}) failed: {e}", f.info.id.pid);
        }
    }
    let all: Vec<&Found> = found.iter().collect();
    let survivors = wait_gone(fs, &all, Instant::now() + timeout);
    if !survivors.is_empty() {
        let spids: Vec<i32> = survivors.iter().map(|(f, _)| f.info.id.pid).collect();
        tracing::warn!(
            "process {name} pids {spids:?} still alive {} ms after SIGTERM: sending SIGKILL",
            timeout.as_millis()
        );
        for (f, _) in &survivors {
            if let Err(e) = signal(fs, f, Signal::KILL) {
                tracing::warn!("SIGKILL to {name} (pid {}) failed: {e}", f.info.id.pid);
            }
        }
        let left: Vec<&Found> = survivors.iter().map(|(f, _)| *f).collect();
        if let Some((f, why)) = wait_gone(fs, &left, Instant::now() + confirm)
            .into_iter()
            .next()
        {
            let (name, pid) = (name.to_string(), f.info.id.pid);
            return Err(match why {
                Liveness::Unknown(source) => ProcessError::Unconfirmed { name, pid, source },
                _ => ProcessError::KillFailed {
                    name,
                    pid,
                    after: begun.elapsed(),
                },
            });
        }
    }
    Ok(found.into_iter().map(|f| f.info).collect())
}

/// Stop every process named `name`: SIGTERM, wait up to `timeout`, SIGKILL the rest, and
/// confirm within 5 s more that they are gone. Returns the processes that were stopped, with
/// the argv each ran with (empty when none was running). `PROCESS_KILL_FAILED` when one
/// survives SIGKILL, or when `/proc` cannot be read to find them or to confirm they are gone.
pub fn stop_processes(name: &str, timeout: Duration) -> Result<Vec<RunningProcess>, ProcessError> {
    stop_with(&RealProcfs, name, timeout, KILL_CONFIRM)
}

/// [`stop_processes`] for the processes named `name` that `which` selects (those started
/// before a moment, say).
pub fn stop_processes_where(
    name: &str,
    timeout: Duration,
    which: &dyn Fn(&RunningProcess) -> bool,
) -> Result<Vec<RunningProcess>, ProcessError> {
    stop_where(&RealProcfs, name, timeout, KILL_CONFIRM, which)
}

/// [`stop_processes`], returning only the identities.
pub fn stop_by_name(name: &str, timeout: Duration) -> Result<Vec<ProcId>, ProcessError> {
    Ok(stop_processes(name, timeout)?
        .into_iter()
        .map(|p| p.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::procfs::tests::FailingProcfs;
    use super::super::tests::{named_sleep, wait_found};
    use super::*;
    use crate::error::{ErrorCode, OtaError};
    use rustix::io::Errno;
    use std::process::Command;

    #[test]
    fn sigterm_stops_a_sleeping_process() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let mut child = Command::new(&path).args(["100", "0"]).spawn().unwrap();
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, child.id() as i32);
        let (argv, cwd) = super::super::describe(&found[0]).unwrap();
        let expected: Vec<std::ffi::OsString> = vec![path.clone().into(), "100".into(), "0".into()];
        assert_eq!(argv, expected);
        assert_eq!(cwd, Some(std::env::current_dir().unwrap()));
        let t = Instant::now();
        let stopped = stop_processes(&name, Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].id, found[0]);
        // The exact argv, to start it again as it ran.
        assert_eq!(stopped[0].argv, expected);
        assert_eq!(stopped[0].cwd, Some(std::env::current_dir().unwrap()));
        assert_eq!(super::super::describe(&found[0]), None);
        // Our own child is a zombie now: dead for liveness, not listed by a scan.
        assert!(!super::super::is_alive(&found[0]));
        assert!(super::super::scan(&name).unwrap().is_empty());
        child.wait().unwrap();
        assert!(stop_by_name(&name, Duration::from_secs(1))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn sigterm_ignored_needs_sigkill() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let script = format!("trap '' TERM; exec {} 100", path.display());
        let mut child = Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        let t = Instant::now();
        let stopped = stop_by_name(&name, Duration::from_secs(1)).unwrap();
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert_eq!(stopped.len(), 1);
        assert!(!super::super::is_alive(&found[0]));
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9));
    }

    #[test]
    fn found_by_argv0_when_comm_differs() {
        // A name longer than 15 bytes: comm is truncated, argv[0]'s basename is whole.
        let d = tempfile::tempdir().unwrap();
        let (_, short) = named_sleep(d.path());
        let long = format!("{}-long-name-x", super::super::tests::unique_name());
        let path = d.path().join(&long);
        std::os::unix::fs::symlink(std::fs::read_link(&short).unwrap(), &path).unwrap();
        let mut child = Command::new(&path).arg("100").spawn().unwrap();
        let found = wait_found(&long, 1);
        assert_eq!(found.len(), 1);
        stop_by_name(&long, Duration::from_secs(5)).unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn contract_8_2_unreadable_proc_fails_the_stop_never_stopped() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let mut child = Command::new(&path).arg("100").spawn().unwrap();
        assert_eq!(wait_found(&name, 1).len(), 1);
        // /proc unreadable from the start: no scan, so no stop.
        let e = stop_with(
            &FailingProcfs::new(0, Errno::MFILE),
            &name,
            Duration::from_millis(200),
            Duration::from_millis(200),
        )
        .unwrap_err();
        // The failed read is kept as the source, and the process named.
        assert!(
            matches!(&e, ProcessError::Unreadable { name: n, source }
                if *n == name && source.to_string().starts_with("cannot list /proc: ")),
            "{e:?}"
        );
        let e = OtaError::from(e);
        assert_eq!(e.code, ErrorCode::ProcessKillFailed, "{e}");
        assert!(e.detail.contains("cannot tell"), "{e}");
        // /proc unreadable right after the scan (descriptors exhausted mid-way): the process
        // cannot be confirmed gone, so the result is PROCESS_KILL_FAILED, and since its
        // identity could not be checked either it was not signalled at all.
        let fs = FailingProcfs::after_scan(Errno::MFILE);
        let t = Instant::now();
        let e = stop_with(
            &fs,
            &name,
            Duration::from_millis(300),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(600));
        let pid = child.id() as i32;
        assert!(
            matches!(&e, ProcessError::Unconfirmed { pid: p, source, .. }
                if *p == pid && source.raw_os_error() == Some(Errno::MFILE.raw_os_error())),
            "{e:?}"
        );
        let e = OtaError::from(e);
        assert_eq!(e.code, ErrorCode::ProcessKillFailed, "{e}");
        assert!(e.detail.contains("cannot confirm"), "{e}");
        assert!(child.try_wait().unwrap().is_none(), "must still be running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn contract_8_2_pid_1_self_and_parent_are_protected() {
        // Only the guard is exercised: nothing here may ever signal this machine's PID 1
        // (tests/process_control.rs checks the daemon inside a PID namespace of its own).
        let me = std::process::id() as i32;
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        for pid in [i32::MIN, -1, 0, 1, me, parent] {
            assert!(is_protected(pid), "{pid}");
        }
        assert!(!is_protected(me + 1) || me + 1 == parent);
        // A scan never lists PID 1, whatever the name asked for.
        let init = std::fs::read_to_string("/proc/1/comm").unwrap();
        let found = super::super::scan(init.trim_end()).unwrap();
        assert!(found.iter().all(|p| p.id.pid != 1), "{found:?}");
    }
}
