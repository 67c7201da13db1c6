//! Running commands to completion (`post_cmds`, `health_cmd`, `systemctl`, the `systemd-run`
//! launcher), each under a time limit, in a process group of its own, with the environment of
//! [`ChildEnv`] (docs/API.md 9.6).
//!
//! A step (a post or health command) never outlives the call: when it ends (exit, time limit,
//! or the cancel flag set by SIGTERM), every process of the step that is left, also one that
//! left the process group or session (`setsid`, a double fork), gets SIGTERM, a short grace
//! period, then SIGKILL, and the call returns only once none is left (or, if something
//! survives SIGKILL, after saying so in the log); see [`super::contain`]. `systemctl` and the
//! `systemd-run` launcher are different: what they start must keep running, so only their own
//! process group is emptied the same way.
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

use super::childenv::ChildEnv;
use super::contain::{self, Step};
use super::error::{CommandFailure, OutputTails, ProcessError};
use super::show;

/// How much of a command's output is kept for an error message.
pub(crate) const OUTPUT_TAIL: usize = 2048;
/// Between SIGTERM and SIGKILL for what is left of a command's process group.
const GROUP_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a process group to be empty after SIGKILL.
const GROUP_KILL_CONFIRM: Duration = Duration::from_secs(5);
/// Polling period while a command runs.
const RUN_POLL: Duration = Duration::from_millis(20);
/// systemctl's exit status for a unit that is not loaded (LSB "not installed").
const SYSTEMCTL_NOT_LOADED: i32 = 5;

/// The descriptor soft limit children get (0: leave it as inherited). The daemon raises its
/// own soft limit to the hard limit; programs it starts get the limit it was started with, as
/// systemd recommends (a program using `select()` breaks with descriptors above 1023).
static CHILD_NOFILE: AtomicU64 = AtomicU64::new(0);

/// Environment variables that speak to the updater's own service manager, never inherited.
const SERVICE_ONLY_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Start every later child with this `RLIMIT_NOFILE` soft limit.
pub fn set_children_fd_limit(soft: u64) {
    CHILD_NOFILE.store(soft, Ordering::SeqCst);
}

/// `cmd.spawn()` with the children's descriptor limit, retried briefly on ETXTBSY: a program
/// file that was just written may still be open for writing in a process forked meanwhile
/// (until that process execs).
///
/// The variables systemd gives the updater's own service are removed: a program the updater
/// runs is not the service's main process and must not talk to its notification socket or
/// take its watchdog for its own.
pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    for var in SERVICE_ONLY_ENV {
        cmd.env_remove(var);
    }
    let soft = CHILD_NOFILE.load(Ordering::SeqCst);
    if soft > 0 {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe operations are allowed. It makes one setrlimit system call through
        // rustix (a raw syscall: no allocation, no lock, no libc state) on values copied into
        // the closure, and touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                let mut lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
                if lim.maximum.is_none_or(|max| soft <= max) {
                    lim.current = Some(soft);
                    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, lim);
                }
                Ok(())
            });
        }
    }
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Unit tests: the program to run instead of `systemctl`, for this thread only.
    pub(crate) static SYSTEMCTL_OVERRIDE: std::cell::RefCell<Option<PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// The program run as `systemctl`: a unit-test override, else `$TOPE_SYSTEMCTL`, else the
/// `systemctl` found on `PATH`.
fn systemctl_program() -> PathBuf {
    #[cfg(test)]
    if let Some(p) = SYSTEMCTL_OVERRIDE.with(|o| o.borrow().clone()) {
        return p;
    }
    match std::env::var_os("TOPE_SYSTEMCTL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("systemctl"),
    }
}

/// Run `systemctl <action> <unit>`; it must exit 0 within `timeout`.
///
/// The error code follows the action, so callers can return it as is: a failed `stop` is
/// `PROCESS_KILL_FAILED` (nothing may be deployed over a unit that would not stop), any other
/// action is `DEPLOYMENT_FAILED`. The detail names the unit, the exit status and the output.
/// `stop` of a unit systemd does not know (exit status 5, "not loaded") is a success: such a
/// unit runs nothing (a package may bring a new unit). When `cancel` is set meanwhile (the
/// updater is shutting down), systemctl is stopped with its process group and the call fails.
/// systemctl runs with `PATH` and `LANG` only (docs/API.md 9.6).
pub fn systemctl(
    action: &str,
    unit: &str,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
) -> Result<(), ProcessError> {
    let program = systemctl_program();
    tracing::info!("systemctl {action} {unit}");
    let mut cmd = Command::new(&program);
    cmd.arg(action).arg(unit);
    ChildEnv::tool().apply(&mut cmd);
    // Its process group only: systemctl's own helpers (a pager, a password agent) stay in it,
    // while what it starts runs under the service manager, and must keep running also when a
    // `systemctl` shim on a printer without systemd starts it directly.
    match run_command(
        cmd,
        &program.display().to_string(),
        timeout,
        cancel,
        Contain::Group,
    ) {
        Ok(()) => Ok(()),
        Err(f) if action == "stop" && f.exit_code() == Some(SYSTEMCTL_NOT_LOADED) => {
            tracing::warn!("systemctl stop {unit}: unit not loaded, nothing to stop");
            Ok(())
        }
        Err(failure) => Err(ProcessError::Systemctl {
            action: action.to_string(),
            unit: unit.to_string(),
            failure,
        }),
    }
}

/// Run `argv` (a module's post command, a health command) to completion with the
/// environment `env`: it must exit 0 within `timeout`. When it fails, runs out of time, or
/// `cancel` is set meanwhile (the updater's shutdown flag), it is stopped with every process it
/// started and the result is `DEPLOYMENT_FAILED` naming the command, why, and the last ~2 KB
/// of its output. Either way the call returns only once no process of the step is left
/// (docs/API.md 8.1, 9.6).
pub fn run_to_completion(
    argv: &[String],
    env: &ChildEnv,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<(), ProcessError> {
    let (program, args) = argv.split_first().ok_or(ProcessError::EmptyCommand)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    env.apply(&mut cmd);
    tracing::info!("running {}", show(argv));
    run_command(cmd, &show(argv), timeout, Some(cancel), Contain::Step).map_err(|failure| {
        ProcessError::Command {
            command: show(argv),
            failure,
        }
    })
}

/// Read `r` to its end, keeping only the last [`OUTPUT_TAIL`] bytes.
fn read_tail(mut r: impl Read) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > OUTPUT_TAIL {
                    tail.drain(..tail.len() - OUTPUT_TAIL);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tail
}

/// How the wait for a command ended.
enum End {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    WaitFailed(std::io::Error),
}

/// What of a command is ended with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contain {
    /// Every process it started, wherever it went (a step).
    Step,
    /// Its process group only (a launcher whose started program must keep running).
    Group,
}

/// Run `cmd` with piped output, in its own process group, with `/` as working directory and
/// stdin from `/dev/null`. `Ok` when it exits 0 within `timeout` (and `cancel` stays unset);
/// otherwise a detail (status, timeout or shutdown, and the tail of stdout and stderr). What
/// `contain` names is ended before returning (see the module documentation).
pub(crate) fn run_command(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
    contain: Contain,
) -> Result<(), CommandFailure> {
    let marker = (contain == Contain::Step).then(contain::new_marker);
    if let Some(m) = &marker {
        cmd.env(contain::STEP_VAR, m);
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = spawn(&mut cmd).map_err(|source| CommandFailure::Spawn {
        what: what.to_string(),
        source,
    })?;
    let group = Pid::from_child(&child);
    let mut step = marker.map(|m| Step::begin(group.as_raw_nonzero().get(), &m));
    // Readers on threads: a child filling a pipe must never block on us.
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
    let mut readers = 0;
    let outputs: [(u8, Option<Box<dyn Read + Send>>); 2] = [
        (
            1,
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ),
        (
            2,
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ),
    ];
    for (which, pipe) in outputs {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        if std::thread::Builder::new()
            .name(format!("cmd-out{which}"))
            .spawn(move || {
                let _ = tx.send((which, read_tail(pipe)));
            })
            .is_ok()
        {
            readers += 1;
        }
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let end = loop {
        match child.try_wait() {
            Ok(Some(st)) => break End::Exited(st),
            Ok(None) if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) => break End::Cancelled,
            Ok(None) if Instant::now() >= deadline => break End::TimedOut,
            Ok(None) => {
                if let Some(step) = step.as_mut() {
                    step.track();
                }
                std::thread::sleep(RUN_POLL)
            }
            Err(e) => break End::WaitFailed(e),
        }
    };
    let reaped = matches!(end, End::Exited(_));
    match step.as_mut() {
        Some(step) => {
            // The step's own log line names what survived.
            step.end(
                &mut child,
                reaped,
                what,
                GROUP_GRACE,
                GROUP_KILL_CONFIRM,
                RUN_POLL,
            );
        }
        None => {
            if !end_group(&mut child, group, reaped, what) {
                tracing::error!("processes of {what} (process group {group:?}) survived SIGKILL");
            }
        }
    }

    // Collect the output tails (the step is gone, so the pipes are closed; a process that
    // left a launcher's group may still hold them: give the readers a short grace and go on).
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let grace = Instant::now() + Duration::from_secs(1);
    for _ in 0..readers {
        match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((1, t)) => stdout = t,
            Ok((_, t)) => stderr = t,
            Err(_) => break,
        }
    }
    let output = OutputTails::new(&stdout, &stderr);
    let what = what.to_string();
    Err(match end {
        End::Exited(st) if st.success() => return Ok(()),
        End::Exited(status) => CommandFailure::Exited {
            what,
            status,
            output,
        },
        End::TimedOut => CommandFailure::TimedOut {
            what,
            limit: timeout,
            output,
        },
        End::Cancelled => CommandFailure::Cancelled { what, output },
        End::WaitFailed(source) => CommandFailure::Wait {
            what,
            source,
            output,
        },
    })
}

/// Whether process group `group` still has a member (a zombie counts until reaped).
fn group_exists(group: Pid) -> bool {
    !matches!(
        rustix::process::test_kill_process_group(group),
        Err(Errno::SRCH)
    )
}

/// Empty the process group the child leads: nothing to do when it is already empty; else
/// SIGTERM, up to [`GROUP_GRACE`] for it to empty, SIGKILL, up to [`GROUP_KILL_CONFIRM`].
/// The child is reaped on the way (`reaped`: already done). Returns whether the group is gone.
///
/// The group id cannot be taken by another process meanwhile: while the child is not reaped,
/// or while any member is left, the kernel keeps the id in use.
fn end_group(child: &mut Child, group: Pid, mut reaped: bool, what: &str) -> bool {
    let mut reap = |reaped: &mut bool| {
        if !*reaped {
            // An error means there is nothing left to reap.
            *reaped = !matches!(child.try_wait(), Ok(None));
        }
    };
    let empty = |reaped: bool| reaped && !group_exists(group);
    if empty(reaped) {
        return true;
    }
    if reaped {
        tracing::warn!("{what} left processes behind in its process group: stopping them");
    }
    for (sig, wait) in [
        (Signal::TERM, GROUP_GRACE),
        (Signal::KILL, GROUP_KILL_CONFIRM),
    ] {
        let _ = rustix::process::kill_process_group(group, sig);
        let until = Instant::now() + wait;
        loop {
            reap(&mut reaped);
            if empty(reaped) {
                return true;
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(RUN_POLL);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fake_systemctl, named_sleep, wait_found};
    use super::*;
    use crate::error::{ErrorCode, OtaError};
    use std::fs;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn env() -> ChildEnv {
        ChildEnv::tool()
    }

    fn no_cancel() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn children_do_not_get_the_services_notification_variables() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "env"])
            .env("NOTIFY_SOCKET", "/run/systemd/notify")
            .env("WATCHDOG_USEC", "30000000")
            .env("WATCHDOG_PID", "1")
            .env("KEPT_BY_THE_CHILD", "yes")
            .stdout(Stdio::piped());
        let out = spawn(&mut cmd).unwrap().wait_with_output().unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.lines().any(|l| l == "KEPT_BY_THE_CHILD=yes"), "{env}");
        for var in SERVICE_ONLY_ENV {
            assert!(
                !env.lines().any(|l| l.starts_with(&format!("{var}="))),
                "{var} reached the child: {env}"
            );
        }
    }

    #[test]
    fn run_to_completion_statuses() {
        let c = no_cancel();
        run_to_completion(&argv(&["true"]), &env(), Duration::from_secs(10), &c).unwrap();
        let e = run_to_completion(&argv(&["false"]), &env(), Duration::from_secs(10), &c)
            .map_err(OtaError::from)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        assert!(e.detail.contains("`false`"), "{e}");
        assert!(e.detail.contains("exit status: 1"), "{e}");
        let e = run_to_completion(
            &argv(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]),
            &env(),
            Duration::from_secs(10),
            &c,
        )
        .map_err(OtaError::from)
        .unwrap_err();
        assert!(e.detail.contains("exit status: 3"), "{e}");
        assert!(e.detail.contains("stderr: to-err"), "{e}");
        assert!(e.detail.contains("stdout: to-out"), "{e}");
        let e = run_to_completion(
            &argv(&["/nonexistent/prog"]),
            &env(),
            Duration::from_secs(1),
            &c,
        )
        .map_err(OtaError::from)
        .unwrap_err();
        assert!(e.detail.contains("cannot start"), "{e}");
        assert!(run_to_completion(&[], &env(), Duration::from_secs(1), &c).is_err());
    }

    #[test]
    fn run_to_completion_output_is_bounded() {
        let e = run_to_completion(
            &argv(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; exit 1"]),
            &env(),
            Duration::from_secs(10),
            &no_cancel(),
        )
        .map_err(OtaError::from)
        .unwrap_err();
        assert!(e.detail.len() < 3 * OUTPUT_TAIL, "{}", e.detail.len());
    }

    /// docs/API.md 3 and 8.1: how a real command failed is kept as facts (exit code or signal,
    /// the time limit, the spawn's errno), and each reaches the contract as DEPLOYMENT_FAILED.
    #[test]
    fn contract_3_command_failures_keep_their_facts() {
        use std::os::unix::process::ExitStatusExt;
        let c = no_cancel();
        let run = |a: &[&str], limit| run_to_completion(&argv(a), &env(), limit, &c).unwrap_err();
        let failure = |e: ProcessError| match e {
            ProcessError::Command { failure, .. } => failure,
            other => panic!("{other:?}"),
        };
        let ten = Duration::from_secs(10);
        let f = failure(run(&["sh", "-c", "exit 3"], ten));
        assert_eq!(f.exit_code(), Some(3), "{f:?}");
        let f = failure(run(&["sh", "-c", "kill -9 $$"], ten));
        assert!(
            matches!(&f, CommandFailure::Exited { status, .. } if status.signal() == Some(9)),
            "{f:?}"
        );
        assert_eq!(f.exit_code(), None);
        let limit = Duration::from_millis(200);
        let f = failure(run(&["sleep", "5"], limit));
        assert!(
            matches!(&f, CommandFailure::TimedOut { limit: l, .. } if *l == limit),
            "{f:?}"
        );
        let f = failure(run(&["/nonexistent/prog"], ten));
        assert!(
            matches!(&f, CommandFailure::Spawn { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound),
            "{f:?}"
        );
        let e = run_to_completion(&[], &env(), ten, &c).unwrap_err();
        assert!(matches!(e, ProcessError::EmptyCommand), "{e:?}");
        let e = OtaError::from(run(&["sh", "-c", "exit 3"], ten));
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        assert_eq!(
            e.detail,
            "command `sh -c exit 3`: `sh -c exit 3` failed (exit status: 3)"
        );
    }

    #[test]
    fn contract_8_1_timeout_kills_the_whole_group() {
        let c = no_cancel();
        let t = Instant::now();
        let e = run_to_completion(
            &argv(&["sleep", "5"]),
            &env(),
            Duration::from_millis(200),
            &c,
        )
        .map_err(OtaError::from)
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(e.detail.contains("did not finish"), "{e}");
        // The whole group dies, also a grandchild holding the pipes open, before the call
        // returns.
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let script = format!("{} 100; true", path.display());
        let t = Instant::now();
        let e = run_to_completion(
            &argv(&["sh", "-c", &script]),
            &env(),
            Duration::from_millis(300),
            &c,
        )
        .map_err(OtaError::from)
        .unwrap_err();
        // Far below the 100 s sleep; the margin is for a loaded machine.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(e.detail.contains("did not finish"), "{e}");
        assert!(super::super::scan(&name).unwrap().is_empty());
    }

    #[test]
    fn contract_8_1_cancel_kills_the_group_even_a_term_ignoring_one() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        // The grandchild ignores SIGTERM: only SIGKILL after the grace stops it.
        let script = format!("trap '' TERM; {} 300 & wait", path.display());
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let c2 = cancel.clone();
        let n2 = name.clone();
        let setter = std::thread::spawn(move || {
            assert_eq!(wait_found(&n2, 1).len(), 1);
            c2.store(true, Ordering::SeqCst);
            Instant::now()
        });
        let e = run_to_completion(
            &argv(&["sh", "-c", &script]),
            &env(),
            Duration::from_secs(60),
            &cancel,
        )
        .map_err(OtaError::from)
        .unwrap_err();
        let cancelled_at = setter.join().unwrap();
        let took = cancelled_at.elapsed();
        assert!(e.detail.contains("shutting down"), "{e}");
        // SIGKILL after the grace, not the 60 s limit nor the 300 s sleep; the margin is for
        // a loaded machine.
        assert!(took < GROUP_GRACE + Duration::from_secs(8), "{took:?}");
        assert!(super::super::scan(&name).unwrap().is_empty());
    }

    #[test]
    fn contract_8_1_background_leftovers_end_with_the_step() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        // Exits 0 at once, leaving a background process in its group.
        let script = format!("{} 300 >/dev/null 2>&1 &", path.display());
        run_to_completion(
            &argv(&["sh", "-c", &script]),
            &env(),
            Duration::from_secs(10),
            &no_cancel(),
        )
        .unwrap();
        assert!(super::super::scan(&name).unwrap().is_empty());
    }

    #[test]
    fn api_9_6_setsid_and_double_forked_descendants_end_with_the_step() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        // Both leave the process group and session; the second also leaves the tree at once
        // (its parent exits), so only the environment's marker finds it.
        let script = format!(
            "setsid {p} 300 >/dev/null 2>&1 & (setsid {p} 301 >/dev/null 2>&1 &); sleep 0.3",
            p = path.display()
        );
        run_to_completion(
            &argv(&["sh", "-c", &script]),
            &env(),
            Duration::from_secs(10),
            &no_cancel(),
        )
        .unwrap();
        assert!(super::super::scan(&name).unwrap().is_empty());
    }

    #[test]
    fn api_9_6_systemctl_gets_path_and_lang_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("systemctl");
        let dump = d.path().join("env");
        fs::write(&fake, format!("#!/bin/sh\nenv > '{}'\n", dump.display())).unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        let r = systemctl("start", "x.service", Duration::from_secs(10), None);
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
        r.unwrap();
        let mut env: Vec<String> = fs::read_to_string(&dump)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .map(str::to_string)
            .collect();
        env.sort();
        assert_eq!(
            env,
            [
                format!("LANG={}", super::super::childenv::LANG),
                format!("PATH={}", super::super::childenv::PATH)
            ]
        );
    }

    #[test]
    fn children_get_the_recorded_fd_limit() {
        // Process-wide: a child another test starts meanwhile gets 777 too, which is harmless;
        // 0 ("inherit", what every other test expects) is restored at once.
        set_children_fd_limit(777);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -n"]).stdout(Stdio::piped());
        let child = spawn(&mut cmd);
        set_children_fd_limit(0);
        let out = child.unwrap().wait_with_output().unwrap().stdout;
        assert_eq!(String::from_utf8_lossy(&out).trim(), "777");
    }

    #[test]
    fn systemctl_codes_follow_action() {
        let d = tempfile::tempdir().unwrap();
        let fake = fake_systemctl(d.path(), "stop bad.service");
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        systemctl("stop", "good.service", Duration::from_secs(10), None).unwrap();
        let e = systemctl("stop", "bad.service", Duration::from_secs(10), None)
            .map_err(OtaError::from)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ProcessKillFailed);
        assert!(e.detail.contains("bad.service"), "{e}");
        assert!(e.detail.contains("refused"), "{e}");
        systemctl("start", "bad.service", Duration::from_secs(10), None).unwrap();
        let log = fs::read_to_string(d.path().join("log")).unwrap();
        assert_eq!(
            log,
            "stop good.service\nstop bad.service\nstart bad.service\n"
        );
        let fake = fake_systemctl(d.path(), "start bad.service");
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        let e = systemctl("start", "bad.service", Duration::from_secs(10), None)
            .map_err(OtaError::from)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        // Exit status 5 on stop: the unit is not loaded, nothing runs.
        let fake5 = d.path().join("fake5");
        fs::write(&fake5, "#!/bin/sh\nexit 5\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&fake5, fs::Permissions::from_mode(0o755)).unwrap();
        }
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake5));
        systemctl("stop", "new.service", Duration::from_secs(10), None).unwrap();
        assert!(systemctl("start", "new.service", Duration::from_secs(10), None).is_err());
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
    }
}
