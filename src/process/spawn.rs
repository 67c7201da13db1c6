//! Starting long-running processes (a module's `start_cmd`, ota-gui) so that they outlive the
//! updater and never depend on it.
//!
//! When systemd runs (`/run/systemd/system` exists), the process is started with `systemd-run`
//! as a transient service of its own: it lives outside the updater's cgroup, so stopping or
//! restarting `tope-updater.service` never touches it, and its output goes to the journal.
//! Otherwise it is a plain child in a process group of its own, reaped by a small thread.
//!
//! `TOPE_SYSTEMD_RUN` (read at every call) overrides the choice: a program to run as
//! `systemd-run` (tests use a recording fake), or empty for a plain start.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::childenv::ChildEnv;
use super::command::{run_command, spawn, Contain};
use super::error::ProcessError;

/// Time limit of one `systemd-run` launch (it returns once the unit has started).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Where systemd says it is the running init system (`sd_booted()`).
#[cfg_attr(test, allow(dead_code))]
const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// How a detached process was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A child of the updater.
    Process { pid: u32 },
    /// A transient systemd service (`systemctl status <name>` shows it).
    Unit { name: String },
}

impl fmt::Display for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Started::Process { pid } => write!(f, "pid {pid}"),
            Started::Unit { name } => write!(f, "unit {name}"),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Unit tests: the program to run as `systemd-run`, for this thread only; without one,
    /// unit tests always start processes plainly (also on a machine where systemd runs).
    pub(crate) static SYSTEMD_RUN_OVERRIDE: std::cell::RefCell<Option<PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// The `systemd-run` to use, or `None` for a plain start (see the module documentation).
pub(super) fn systemd_run_program() -> Option<PathBuf> {
    #[cfg(test)]
    return SYSTEMD_RUN_OVERRIDE.with(|o| o.borrow().clone());
    #[cfg(not(test))]
    choose_launcher(
        std::env::var_os("TOPE_SYSTEMD_RUN"),
        Path::new(SYSTEMD_RUNTIME_DIR).is_dir(),
    )
}

/// `TOPE_SYSTEMD_RUN` (set: that program, or a plain start when empty), else `systemd-run`
/// when systemd runs, else a plain start.
fn choose_launcher(env: Option<std::ffi::OsString>, systemd_runs: bool) -> Option<PathBuf> {
    match env {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None if systemd_runs => Some(PathBuf::from("systemd-run")),
        None => None,
    }
}

/// Start a long-running process with the environment `env` and return how (see the module
/// documentation; through `systemd-run`, `env` is passed with `--setenv`).
///
/// A plain start gets a process group of its own, `/` as working directory and `/dev/null`
/// for stdin, stdout and stderr. `DEPLOYMENT_FAILED` when `argv` is empty or the program cannot
/// be started (or `systemd-run` fails, takes longer than 60 s, or is stopped because `cancel`
/// was set meanwhile: the updater is shutting down).
pub fn spawn_detached<S: AsRef<OsStr>>(
    argv: &[S],
    env: &ChildEnv,
    cancel: Option<&AtomicBool>,
) -> Result<Started, ProcessError> {
    launch(argv, None, Some(env), cancel)
}

/// [`spawn_detached`] with `cwd` as the working directory (`/` when `None`, or when `cwd` is
/// no longer a directory): a process stopped for an installation is started again by a
/// rollback where it ran, so that a relative program path or file still resolves.
pub fn spawn_detached_in<S: AsRef<OsStr>>(
    argv: &[S],
    cwd: Option<&Path>,
) -> Result<Started, ProcessError> {
    launch(argv, cwd, None, None)
}

/// Both of the above: a `systemd-run` launch still running when `cancel` is set is stopped.
/// `env`: the environment of a new start (`None`: the updater's own, minus the service's).
fn launch<S: AsRef<OsStr>>(
    argv: &[S],
    cwd: Option<&Path>,
    env: Option<&ChildEnv>,
    cancel: Option<&AtomicBool>,
) -> Result<Started, ProcessError> {
    let cwd = cwd.filter(|d| d.is_dir()).unwrap_or(Path::new("/"));
    let argv: Vec<&OsStr> = argv.iter().map(AsRef::as_ref).collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(ProcessError::EmptyStart);
    };
    let shown = super::show(&argv);
    if let Some(systemd_run) = systemd_run_program() {
        return launch_unit(&systemd_run, &argv, cwd, env, &shown, cancel);
    }
    let mut cmd = detached(program, args, cwd);
    if let Some(env) = env {
        env.apply(&mut cmd);
    }
    let pid = spawn_reaped(&mut cmd, &shown)?;
    tracing::info!("started {shown} (pid {pid})");
    Ok(Started::Process { pid })
}

/// A program to start detached: in `cwd`, without standard input or output, in a process group
/// of its own (so that stopping it later reaches its children too).
pub(super) fn detached<A: AsRef<OsStr>>(program: &OsStr, args: &[A], cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd
}

/// Spawn a detached command and leave its exit status to a reaper thread; its pid.
pub(super) fn spawn_reaped(cmd: &mut Command, shown: &str) -> Result<u32, ProcessError> {
    let child = spawn(cmd).map_err(|source| ProcessError::Spawn {
        command: shown.to_string(),
        source,
    })?;
    let pid = child.id();
    reap_in_background(child);
    Ok(pid)
}

/// systemd-run only reports that the unit started, not that the program could be executed: a
/// program given by a path that is no executable file is refused here, as a plain start would
/// refuse it.
pub(super) fn check_executable(
    program: &Path,
    cwd: &Path,
    shown: &str,
) -> Result<(), ProcessError> {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') && !is_executable(&cwd.join(program))
    {
        return Err(ProcessError::NotExecutable {
            command: shown.to_string(),
            program: program.to_path_buf(),
        });
    }
    Ok(())
}

/// The options every transient unit gets, then the end of `systemd-run`'s own options.
/// A program that daemonizes: its first process exits 0 and leaves the program running in the
/// unit's cgroup, which systemd would stop with a unit whose main process is gone. The unit
/// stays active instead, and fails when the first process does (docs/API.md 9.6).
pub(super) fn unit_options(cmd: &mut Command) -> &mut Command {
    cmd.arg("--property=RemainAfterExit=yes").args([
        "--collect",
        "--quiet",
        "--no-ask-password",
        "--",
    ])
}

/// Run a prepared `systemd-run`; a failure is the launch of `shown` failing.
pub(super) fn run_launch(
    cmd: Command,
    shown: &str,
    cancel: Option<&AtomicBool>,
) -> Result<(), ProcessError> {
    let what = format!("systemd-run of {shown}");
    run_command(cmd, &what, LAUNCH_TIMEOUT, cancel, Contain::Group)
        .map(|_| ())
        .map_err(|failure| ProcessError::Launch {
            command: shown.to_string(),
            failure,
        })
}

/// Start `argv` as a transient service through `systemd-run`.
fn launch_unit(
    systemd_run: &Path,
    argv: &[&OsStr],
    cwd: &Path,
    env: Option<&ChildEnv>,
    shown: &str,
    cancel: Option<&AtomicBool>,
) -> Result<Started, ProcessError> {
    let program = Path::new(argv[0]);
    check_executable(program, cwd, shown)?;
    let unit = unit_name(program);
    let mut cmd = Command::new(systemd_run);
    let mut workdir = std::ffi::OsString::from("--working-directory=");
    workdir.push(cwd);
    cmd.arg(format!("--unit={unit}")).arg(workdir);
    if let Some(env) = env {
        // systemd-run itself gets the tools' environment; the unit gets `env`.
        ChildEnv::tool().apply(&mut cmd);
        for (k, v) in env.vars() {
            let mut set = std::ffi::OsString::from(format!("--setenv={k}="));
            set.push(v);
            cmd.arg(set);
        }
    }
    unit_options(&mut cmd).args(argv);
    run_launch(cmd, shown, cancel)?;
    tracing::info!("started {shown} as unit {unit}");
    Ok(Started::Unit { name: unit })
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A unit name no other start takes: `tope-<program>-<ms since epoch>-<n>.service`, the
/// program's file name reduced to the characters systemd allows.
pub(super) fn unit_name(program: &Path) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base: String = program
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = if base.is_empty() { "cmd".into() } else { base };
    format!("tope-{base}-{ms}-{n}.service")
}

/// How many exit statuses of detached children are kept for [`exit_status`].
const REAPED_KEPT: usize = 64;
/// The latest detached children reaped: pid and exit status, newest last.
static REAPED: std::sync::Mutex<std::collections::VecDeque<(u32, std::process::ExitStatus)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The exit status of a detached child of the updater (started plainly) once it has exited and
/// been reaped; `None` while it runs, or for any other process.
pub fn exit_status(pid: u32) -> Option<std::process::ExitStatus> {
    let reaped = crate::sync::lock(&REAPED);
    reaped
        .iter()
        .rev()
        .find(|(p, _)| *p == pid)
        .map(|(_, s)| *s)
}

/// Wait for `child` on a thread of its own so that it is reaped whenever it exits; its exit
/// status is kept for [`exit_status`].
pub(super) fn reap_in_background(mut child: Child) {
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || match child.wait() {
            Ok(status) => {
                tracing::info!("process {pid} exited: {status}");
                let mut reaped = crate::sync::lock(&REAPED);
                if reaped.len() >= REAPED_KEPT {
                    reaped.pop_front();
                }
                reaped.push_back((pid, status));
            }
            Err(e) => tracing::warn!("waiting for process {pid} failed: {e}"),
        });
    if let Err(e) = spawned {
        // The child keeps running; it stays a zombie after it exits, until the updater exits.
        tracing::warn!("cannot start a thread to reap process {pid}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fake_systemd_run, named_sleep, wait_found};
    use super::*;
    use crate::error::OtaError;
    use std::fs;

    #[test]
    fn plain_start_runs_detached_and_is_found() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let started = spawn_detached(
            &[path.display().to_string(), "100".into()],
            &ChildEnv::tool(),
            None,
        )
        .unwrap();
        let Started::Process { pid } = started else {
            panic!("{started:?}")
        };
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid as u32, pid);
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, Path::new("/"));
        super::super::stop_by_name(&name, Duration::from_secs(5)).unwrap();
        assert!(spawn_detached::<String>(&[], &ChildEnv::tool(), None).is_err());
        assert!(spawn_detached(&["/nonexistent/x"], &ChildEnv::tool(), None).is_err());
    }

    #[test]
    fn start_cmd_under_systemd_is_a_transient_unit() {
        let d = tempfile::tempdir().unwrap();
        let fake = fake_systemd_run(d.path());
        SYSTEMD_RUN_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        let (name, path) = named_sleep(d.path());
        let started = spawn_detached(
            &[path.display().to_string(), "100".into(), "0".into()],
            &ChildEnv::module("svc", "9.6.0"),
            None,
        )
        .unwrap();
        let Started::Unit { name: unit } = &started else {
            panic!("{started:?}")
        };
        assert!(unit.starts_with(&format!("tope-{name}-")), "{unit}");
        assert!(unit.ends_with(".service"), "{unit}");
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        let log = fs::read_to_string(d.path().join("log")).unwrap();
        let args: Vec<&str> = log.lines().collect();
        assert_eq!(
            args,
            vec![
                &format!("--unit={unit}"),
                "--working-directory=/",
                &format!("--setenv=PATH={}", super::super::childenv::PATH),
                "--setenv=LANG=C",
                "--setenv=TOPE_MODULE=svc",
                "--setenv=TOPE_VERSION=9.6.0",
                "--property=RemainAfterExit=yes",
                "--collect",
                "--quiet",
                "--no-ask-password",
                "--",
                &path.display().to_string(),
                "100",
                "0",
            ]
        );
        super::super::stop_by_name(&name, Duration::from_secs(5)).unwrap();
        // A program that is not there is refused before systemd-run runs.
        let e = spawn_detached(&["/nonexistent/x"], &ChildEnv::tool(), None)
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(e.detail.contains("not an executable"), "{e}");
        assert_eq!(fs::read_to_string(d.path().join("log")).unwrap(), log);
        // systemd-run failing is a start failure.
        let failing = d.path().join("failing");
        fs::write(&failing, "#!/bin/sh\necho 'Unit exists' >&2\nexit 1\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).unwrap();
        }
        SYSTEMD_RUN_OVERRIDE.with(|o| *o.borrow_mut() = Some(failing));
        let e = spawn_detached(&[path.display().to_string()], &ChildEnv::tool(), None)
            .map_err(OtaError::from)
            .unwrap_err();
        assert!(e.detail.contains("Unit exists"), "{e}");
        SYSTEMD_RUN_OVERRIDE.with(|o| *o.borrow_mut() = None);
    }

    #[test]
    fn systemd_run_exactly_when_systemd_runs() {
        assert_eq!(
            choose_launcher(None, true),
            Some(PathBuf::from("systemd-run"))
        );
        assert_eq!(choose_launcher(None, false), None);
        assert_eq!(choose_launcher(Some("".into()), true), None);
        assert_eq!(
            choose_launcher(Some("/x/fake".into()), false),
            Some(PathBuf::from("/x/fake"))
        );
    }

    #[test]
    fn unit_names_are_valid_and_unique() {
        let a = unit_name(Path::new("/opt/tope/device api@x"));
        let b = unit_name(Path::new("/opt/tope/device api@x"));
        assert_ne!(a, b);
        assert!(a.starts_with("tope-device_api_x-"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        assert!(unit_name(Path::new("/")).starts_with("tope-cmd-"));
    }
}
