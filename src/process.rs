//! Process control for deployment: find, stop, start and run the printer's processes.
//!
//! Everything here is synchronous and meant to run on a blocking thread.
//!
//! - Processes are found by reading `/proc` (no pidfd: some printer kernels are older than 5.3).
//!   A [`ProcId`] pairs a pid with the process's start time (field 22 of `/proc/<pid>/stat`),
//!   so a pid reused by an unrelated process is never mistaken for the one we stopped.
//! - Stopping is SIGTERM, a grace period, SIGKILL, then confirmation through `/proc`.
//! - `systemctl` is found on `PATH`. Tests and integration environments may name another
//!   program in the `TOPE_SYSTEMCTL` environment variable (it is read at every call); unit tests
//!   of this crate use a per-thread override instead, because the environment is process-global.
//! - Commands run with `/` as working directory, stdin from `/dev/null`, in a process group of
//!   their own (so a timeout kills the whole group, and a terminal signal to the updater's group
//!   does not reach them).

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::error::{self, ErrorCode, OtaError};

/// Longest process name the kernel keeps in `/proc/<pid>/comm` (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;
/// Polling period while waiting for processes to exit.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait for a process to disappear after SIGKILL.
const KILL_CONFIRM: Duration = Duration::from_secs(5);
/// How much of a command's output is kept for an error message.
const OUTPUT_TAIL: usize = 2048;

/// A process identity that survives pid reuse: the pid and its start time in clock ticks
/// since boot (field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
    start_time: u64,
}

/// Parse `/proc/<pid>/stat`. `comm` (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so the remaining fields start after the LAST `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let close = text.rfind(')')?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    // Field 3 is the state, field 4 the parent pid, field 22 the start time.
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let start_time = fields.nth(22 - 5)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        start_time,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// True for states of a process that has already exited (zombie, dead).
fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// The name as the kernel shows it in `/proc/<pid>/comm` (first 15 bytes).
fn comm_of(name: &str) -> &[u8] {
    let b = name.as_bytes();
    &b[..b.len().min(COMM_LEN)]
}

/// Whether process `pid` carries `name`: its `comm` equals the name truncated like the kernel
/// does, or the last path component of its `argv[0]` equals the name.
fn matches_name(pid: i32, name: &str) -> bool {
    if let Ok(comm) = fs::read(format!("/proc/{pid}/comm")) {
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        if comm == comm_of(name) {
            return true;
        }
    }
    if let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) {
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
        let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
        if !base.is_empty() && base == name.as_bytes() {
            return true;
        }
    }
    false
}

/// Every running process (not thread) named `name` (see [`matches_name`]), except the updater
/// itself, its parent, kernel threads and zombies. Entries that vanish or cannot be read during
/// the scan are skipped.
pub fn find_processes(name: &str) -> Vec<ProcId> {
    let mut found = Vec::new();
    if name.is_empty() {
        return found;
    }
    let me = std::process::id() as i32;
    let parent = rustix::process::getppid().map(Pid::as_raw_nonzero);
    let Ok(dir) = fs::read_dir("/proc") else {
        tracing::warn!("cannot read /proc: no process can be found");
        return found;
    };
    for entry in dir.flatten() {
        // Only thread-group leaders are listed in /proc itself (threads live under task/).
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || parent.is_some_and(|p| p.get() == pid) {
            continue;
        }
        let Some(stat) = read_stat(pid) else { continue };
        // pid 2 is kthreadd; its children are kernel threads.
        if pid == 2 || stat.ppid == 2 || is_dead_state(stat.state) {
            continue;
        }
        if matches_name(pid, name) {
            found.push(ProcId {
                pid,
                start_time: stat.start_time,
            });
        }
    }
    found
}

/// True while the process still exists with the same start time and has not exited
/// (a zombie only waits to be reaped: it counts as dead).
pub fn is_alive(p: &ProcId) -> bool {
    match read_stat(p.pid) {
        Some(s) => s.start_time == p.start_time && !is_dead_state(s.state),
        None => false,
    }
}

/// How process `p` runs: its argv (from `/proc/<pid>/cmdline`) and working directory; `None`
/// when it is gone or unreadable (a kernel thread has an empty cmdline).
pub fn describe(p: &ProcId) -> Option<(Vec<String>, Option<PathBuf>)> {
    let raw = fs::read(format!("/proc/{}/cmdline", p.pid)).ok()?;
    let cwd = fs::read_link(format!("/proc/{}/cwd", p.pid)).ok();
    if raw.is_empty() || !is_alive(p) {
        return None;
    }
    let argv: Vec<String> = raw
        .strip_suffix(&[0])
        .unwrap_or(&raw)
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some((argv, cwd))
}

/// Send `sig` to `p` if it is still the same process. Gone already (ESRCH) is success.
fn signal(p: &ProcId, sig: Signal) -> std::io::Result<()> {
    let Some(pid) = Pid::from_raw(p.pid) else {
        return Ok(());
    };
    // Re-check identity right before the signal, to keep the pid-reuse window minimal.
    if !is_alive(p) {
        return Ok(());
    }
    match rustix::process::kill_process(pid, sig) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Poll until every process of `procs` is dead or `deadline` passes; returns the survivors.
fn wait_gone(procs: &[ProcId], deadline: Instant) -> Vec<ProcId> {
    loop {
        let alive: Vec<ProcId> = procs.iter().copied().filter(is_alive).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(POLL);
    }
}

/// Stop every process named `name`: SIGTERM, wait up to `timeout`, SIGKILL the rest, and
/// confirm through `/proc` within 5 s more. Returns the processes that were stopped (empty
/// when none was running). `PROCESS_KILL_FAILED` when one survives SIGKILL.
pub fn stop_by_name(name: &str, timeout: Duration) -> Result<Vec<ProcId>, OtaError> {
    let procs = find_processes(name);
    if procs.is_empty() {
        tracing::debug!("process {name} is not running");
        return Ok(procs);
    }
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    tracing::info!("stopping process {name} pids {pids:?}");
    for p in &procs {
        if let Err(e) = signal(p, Signal::TERM) {
            tracing::warn!("SIGTERM to {name} (pid {}) failed: {e}", p.pid);
        }
    }
    let survivors = wait_gone(&procs, Instant::now() + timeout);
    if survivors.is_empty() {
        return Ok(procs);
    }
    let spids: Vec<i32> = survivors.iter().map(|p| p.pid).collect();
    tracing::warn!(
        "process {name} pids {spids:?} still alive {} ms after SIGTERM: sending SIGKILL",
        timeout.as_millis()
    );
    for p in &survivors {
        if let Err(e) = signal(p, Signal::KILL) {
            tracing::warn!("SIGKILL to {name} (pid {}) failed: {e}", p.pid);
        }
    }
    let still = wait_gone(&survivors, Instant::now() + KILL_CONFIRM);
    match still.first() {
        None => Ok(procs),
        Some(p) => Err(error::kill_failed(format!(
            "process {name} (pid {}) still alive after SIGKILL",
            p.pid
        ))),
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
/// unit runs nothing (a package may bring a new unit).
pub fn systemctl(action: &str, unit: &str, timeout: Duration) -> Result<(), OtaError> {
    let code = if action == "stop" {
        ErrorCode::ProcessKillFailed
    } else {
        ErrorCode::DeploymentFailed
    };
    let program = systemctl_program();
    tracing::info!("systemctl {action} {unit}");
    let mut cmd = Command::new(&program);
    cmd.arg(action).arg(unit);
    match run_command(cmd, &program.display().to_string(), timeout) {
        Ok(()) => Ok(()),
        Err(f) if action == "stop" && f.exit_code == Some(SYSTEMCTL_NOT_LOADED) => {
            tracing::warn!("systemctl stop {unit}: unit not loaded, nothing to stop");
            Ok(())
        }
        Err(f) => Err(OtaError::new(
            code,
            format!("systemctl {action} {unit}: {}", f.detail),
        )),
    }
}

/// systemctl's exit status for a unit that is not loaded (LSB "not installed").
const SYSTEMCTL_NOT_LOADED: i32 = 5;

/// Start a long-running process (a module's `start_cmd`, ota-gui) and return its pid.
///
/// It gets its own process group, `/` as working directory and `/dev/null` for stdin, stdout
/// and stderr. A small thread waits for it so that it never stays a zombie. `DEPLOYMENT_FAILED`
/// when `argv` is empty or the program cannot be started.
pub fn spawn_detached(argv: &[String]) -> Result<u32, OtaError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| error::deployment_failed("cannot start a process: empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = spawn(&mut cmd)
        .map_err(|e| error::deployment_failed(format!("cannot start {}: {e}", show(argv))))?;
    let pid = child.id();
    tracing::info!("started {} (pid {pid})", show(argv));
    reap_in_background(child);
    Ok(pid)
}

/// `cmd.spawn()`, retried briefly on ETXTBSY: a program file that was just written may still
/// be open for writing in a process forked meanwhile (until that process execs).
fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
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

/// Wait for `child` on a thread of its own so that it is reaped whenever it exits.
fn reap_in_background(mut child: Child) {
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || match child.wait() {
            Ok(status) => tracing::info!("process {pid} exited: {status}"),
            Err(e) => tracing::warn!("waiting for process {pid} failed: {e}"),
        });
    if let Err(e) = spawned {
        // The child keeps running; it stays a zombie after it exits, until the updater exits.
        tracing::warn!("cannot start a thread to reap process {pid}: {e}");
    }
}

/// Run `argv` (a module's post command) to completion: it must exit 0 within `timeout`, else
/// it is killed (with its whole process group) and the result is `DEPLOYMENT_FAILED` naming
/// the command, its exit status and the last ~2 KB of its output.
pub fn run_to_completion(argv: &[String], timeout: Duration) -> Result<(), OtaError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| error::deployment_failed("cannot run an empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    tracing::info!("running {}", show(argv));
    run_command(cmd, &show(argv), timeout)
        .map_err(|f| error::deployment_failed(format!("command {}: {}", show(argv), f.detail)))
}

/// A command line for messages: `` `a b c` ``.
fn show(argv: &[String]) -> String {
    format!("`{}`", argv.join(" "))
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

/// Run `cmd` with piped output, in its own process group, with `/` as working directory.
/// `Ok` when it exits 0 within `timeout`; otherwise a detail (status or timeout, and the tail
/// of stdout and stderr) for the caller's error.
fn run_command(mut cmd: Command, what: &str, timeout: Duration) -> Result<(), RunFailure> {
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = spawn(&mut cmd).map_err(|e| RunFailure {
        exit_code: None,
        detail: format!("cannot start {what}: {e}"),
    })?;
    // Readers on threads: a child filling a pipe must never block on us.
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
    let mut readers = 0;
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        if std::thread::Builder::new()
            .name("cmd-stdout".into())
            .spawn(move || {
                let _ = tx.send((1, read_tail(out)));
            })
            .is_ok()
        {
            readers += 1;
        }
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        if std::thread::Builder::new()
            .name("cmd-stderr".into())
            .spawn(move || {
                let _ = tx.send((2, read_tail(err)));
            })
            .is_ok()
        {
            readers += 1;
        }
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let status: Option<ExitStatus> = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_group(&mut child);
                return Err(RunFailure {
                    exit_code: None,
                    detail: format!("waiting for {what} failed: {e}"),
                });
            }
        }
    };
    if status.is_none() {
        kill_group(&mut child);
    }

    // Collect the output tails. A grandchild that inherited the pipes may keep them open:
    // give the readers a short grace period and leave them behind (they end when it does).
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let grace = Instant::now() + Duration::from_secs(1);
    for _ in 0..readers {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((1, t)) => stdout = t,
            Ok((_, t)) => stderr = t,
            Err(_) => break,
        }
    }
    let output = describe_output(&stdout, &stderr);
    match status {
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(RunFailure {
            exit_code: st.code(),
            detail: format!("{what} failed ({st}){output}"),
        }),
        None => Err(RunFailure {
            exit_code: None,
            detail: format!(
                "{what} did not finish within {} s and was killed{output}",
                timeout.as_secs_f32()
            ),
        }),
    }
}

/// Why [`run_command`] failed: the exit code when the command exited, and a detail.
struct RunFailure {
    exit_code: Option<i32>,
    detail: String,
}

/// SIGKILL the child's process group (it leads one: `process_group(0)`) and reap the child.
fn kill_group(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn describe_output(stdout: &[u8], stderr: &[u8]) -> String {
    let mut s = String::new();
    for (label, bytes) in [("stderr", stderr), ("stdout", stdout)] {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if !text.is_empty() {
            s.push_str(&format!("; {label}: {text}"));
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};

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

    /// Poll until `find_processes(name)` returns `n` processes.
    pub(crate) fn wait_found(name: &str, n: usize) -> Vec<ProcId> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = find_processes(name);
            if f.len() == n || Instant::now() > deadline {
                return f;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn parse_stat_with_parens_and_spaces_in_comm() {
        let mut text = String::from("1234 (a) b) (c d) S 77");
        // fields 5..=21 then 22 = start time
        for i in 5..=21 {
            text.push_str(&format!(" {i}"));
        }
        text.push_str(" 987654 23 24\n");
        let s = parse_stat(&text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 77);
        assert_eq!(s.start_time, 987654);
        assert_eq!(parse_stat("12 (x) S"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_parses_and_is_never_found() {
        let me = std::process::id() as i32;
        let st = read_stat(me).unwrap();
        assert!(is_alive(&ProcId {
            pid: me,
            start_time: st.start_time
        }));
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let found = find_processes(comm.trim_end());
        assert!(found.iter().all(|p| p.pid != me));
    }

    #[test]
    fn sigterm_stops_a_sleeping_process() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let mut child = Command::new(&path).arg("100").spawn().unwrap();
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, child.id() as i32);
        let t = Instant::now();
        let stopped = stop_by_name(&name, Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(stopped, found);
        // Our own child is a zombie now: dead for is_alive, not listed by find_processes.
        assert!(!is_alive(&found[0]));
        assert!(find_processes(&name).is_empty());
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
        assert!(!is_alive(&found[0]));
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9));
    }

    #[test]
    fn found_by_argv0_when_comm_differs() {
        // A name longer than 15 bytes: comm is truncated, argv[0]'s basename is whole.
        let d = tempfile::tempdir().unwrap();
        let (_, short) = named_sleep(d.path());
        let long = format!("{}-long-name-x", unique_name());
        let path = d.path().join(&long);
        std::os::unix::fs::symlink(fs::read_link(&short).unwrap(), &path).unwrap();
        let mut child = Command::new(&path).arg("100").spawn().unwrap();
        let found = wait_found(&long, 1);
        assert_eq!(found.len(), 1);
        stop_by_name(&long, Duration::from_secs(5)).unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn pid_reuse_and_zombie_count_as_dead() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let st = read_stat(pid).unwrap();
        let real = ProcId {
            pid,
            start_time: st.start_time,
        };
        assert!(is_alive(&real));
        let reused = ProcId {
            pid,
            start_time: st.start_time + 1,
        };
        assert!(!is_alive(&reused));
        child.kill().unwrap();
        // Not yet reaped: a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_stat(pid).map(|s| s.state) != Some('Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(read_stat(pid).map(|s| s.state), Some('Z'));
        assert!(!is_alive(&real));
        child.wait().unwrap();
        assert!(!is_alive(&real));
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_to_completion_statuses() {
        run_to_completion(&argv(&["true"]), Duration::from_secs(10)).unwrap();
        let e = run_to_completion(&argv(&["false"]), Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        assert!(e.detail.contains("`false`"), "{e}");
        assert!(e.detail.contains("exit status: 1"), "{e}");
        let e = run_to_completion(
            &argv(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(e.detail.contains("exit status: 3"), "{e}");
        assert!(e.detail.contains("stderr: to-err"), "{e}");
        assert!(e.detail.contains("stdout: to-out"), "{e}");
        let e =
            run_to_completion(&argv(&["/nonexistent/prog"]), Duration::from_secs(1)).unwrap_err();
        assert!(e.detail.contains("cannot start"), "{e}");
        assert!(run_to_completion(&[], Duration::from_secs(1)).is_err());
    }

    #[test]
    fn run_to_completion_output_is_bounded() {
        let e = run_to_completion(
            &argv(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; exit 1"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(e.detail.len() < 3 * OUTPUT_TAIL, "{}", e.detail.len());
    }

    #[test]
    fn run_to_completion_timeout_kills() {
        let t = Instant::now();
        let e = run_to_completion(&argv(&["sleep", "5"]), Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(e.detail.contains("did not finish"), "{e}");
        // The whole group dies, also a grandchild holding the pipes open.
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let script = format!("{} 100; true", path.display());
        let t = Instant::now();
        let e = run_to_completion(&argv(&["sh", "-c", &script]), Duration::from_millis(300))
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert!(e.detail.contains("did not finish"), "{e}");
        assert!(wait_found(&name, 0).is_empty());
    }

    #[test]
    fn spawn_detached_runs_and_is_found() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        let pid = spawn_detached(&[path.display().to_string(), "100".into()]).unwrap();
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid as u32, pid);
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, Path::new("/"));
        stop_by_name(&name, Duration::from_secs(5)).unwrap();
        assert!(spawn_detached(&[]).is_err());
        assert!(spawn_detached(&["/nonexistent/x".into()]).is_err());
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
    fn systemctl_codes_follow_action() {
        let d = tempfile::tempdir().unwrap();
        let fake = fake_systemctl(d.path(), "stop bad.service");
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        systemctl("stop", "good.service", Duration::from_secs(10)).unwrap();
        let e = systemctl("stop", "bad.service", Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ProcessKillFailed);
        assert!(e.detail.contains("bad.service"), "{e}");
        assert!(e.detail.contains("refused"), "{e}");
        systemctl("start", "bad.service", Duration::from_secs(10)).unwrap();
        let log = fs::read_to_string(d.path().join("log")).unwrap();
        assert_eq!(
            log,
            "stop good.service\nstop bad.service\nstart bad.service\n"
        );
        let fake = fake_systemctl(d.path(), "start bad.service");
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        let e = systemctl("start", "bad.service", Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        // Exit status 5 on stop: the unit is not loaded, nothing runs.
        let fake5 = d.path().join("fake5");
        fs::write(&fake5, "#!/bin/sh\nexit 5\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&fake5, fs::Permissions::from_mode(0o755)).unwrap();
        }
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake5));
        systemctl("stop", "new.service", Duration::from_secs(10)).unwrap();
        assert!(systemctl("start", "new.service", Duration::from_secs(10)).is_err());
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
    }
}
