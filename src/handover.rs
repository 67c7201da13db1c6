//! docs/API.md 9.4, the updater updates itself: the API's listening socket handed from one
//! updater binary to the next.
//!
//! - The **old** binary, once a self-update has renamed the new executable over its own path
//!   (`deploy`'s `HandOver` step), starts it ([`NewUpdater::start`]) with the listening socket
//!   inherited (`TOPE_LISTEN_FD`) and a pipe (`TOPE_HANDOVER_FD`), and stops accepting
//!   connections itself ([`accepting`]): the socket never closes, so there is no moment where
//!   nothing listens; connections wait in its backlog for whichever binary accepts. It then
//!   watches the new one ([`NewUpdater::watch`]): still running, answering `/progress` within
//!   the module's `health_timeout_s`, and through `settle_s`. A failure kills it
//!   ([`NewUpdater::abort`]) and the old one accepts again; the installation rolls back.
//!   Success: the journal says `committed`, the old one writes `C` into the pipe and `MAINPID=`
//!   of the new one to systemd ([`NewUpdater::commit`]), then exits.
//! - The **new** binary, started with both variables, serves the API at once (stage
//!   `rebooting`) and waits on the pipe: `C` → ordinary start-up recovery (the committed
//!   journal is finished, `success` recorded and reported by the new binary); end of file
//!   without `C` (the old one died) → the same recovery rolls the installation back, which puts
//!   the old executable back at the path, and the process executes it ([`reexec_if_replaced`]).
//! - At every start, after recovery, a process whose executable is no longer the file at its
//!   own path (a rollback or a power cut put the other binary there) executes that file once,
//!   with the listening socket inherited: the binary that serves is always the one at the path.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::apiclient::{self, Probe};

/// The descriptor of an inherited listening socket.
pub const LISTEN_FD_ENV: &str = "TOPE_LISTEN_FD";
/// The descriptor of the read end of the hand-over pipe.
pub const HANDOVER_FD_ENV: &str = "TOPE_HANDOVER_FD";
/// Set on an execution of the path by [`reexec_if_replaced`]: never twice in a row.
pub const REEXEC_ENV: &str = "TOPE_REEXEC";
/// What the old binary writes into the pipe once the journal says `committed`.
const COMMITTED: u8 = b'C';
/// How often the old binary looks at the new one.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// What the daemon was started with, read (and removed from the environment) once, first
/// thing, before any thread exists.
#[derive(Debug, Default)]
pub struct Inherited {
    /// `TOPE_LISTEN_FD`: the listening socket of the binary before.
    pub listener: Option<RawFd>,
    /// `TOPE_HANDOVER_FD`: started by the old binary of a self-update.
    pub pipe: Option<RawFd>,
    /// `TOPE_REEXEC`: started by [`reexec_if_replaced`].
    pub reexecuted: bool,
}

/// Read the hand-over variables and remove them from the environment (programs the updater
/// starts get a clean environment anyway). Call before any thread is started.
pub fn take_inherited() -> Inherited {
    let fd = |name: &str| {
        let v = std::env::var(name).ok();
        std::env::remove_var(name);
        v.and_then(|s| s.parse::<RawFd>().ok()).filter(|&fd| fd > 2)
    };
    let reexecuted = std::env::var_os(REEXEC_ENV).is_some();
    std::env::remove_var(REEXEC_ENV);
    Inherited {
        listener: fd(LISTEN_FD_ENV),
        pipe: fd(HANDOVER_FD_ENV),
        reexecuted,
    }
}

/// Take the descriptor `fd` named by a hand-over variable.
fn own_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // The descriptor must be open here (F_GETFD fails with EBADF otherwise).
    rustix::io::fcntl_getfd(unsafe_borrow(fd)?)?;
    // SAFETY: `fd` is open (checked just above) and was inherited from the binary that
    // started this one, which named it in the environment for this process alone; nothing in
    // this process opened it, so nothing else owns it, and `take_inherited` removed the
    // variable, so it is taken here once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A borrowed descriptor for the check in [`own_fd`].
fn unsafe_borrow(fd: RawFd) -> io::Result<std::os::fd::BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::BADF.raw_os_error(),
        ));
    }
    // SAFETY: only used for `fcntl(F_GETFD)`, which reports EBADF for a closed descriptor
    // and touches nothing; the borrow does not outlive that call in `own_fd`.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// The inherited listening socket, checked to be a TCP socket bound to `addr`'s port.
pub fn listener_from(fd: RawFd, addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::from(own_fd(fd)?);
    let bound = l.local_addr()?;
    if bound.port() != addr.port() {
        return Err(io::Error::other(format!(
            "the inherited socket listens on {bound}, not on {addr}"
        )));
    }
    Ok(l)
}

/// The read end of the hand-over pipe.
pub fn pipe_from(fd: RawFd) -> io::Result<File> {
    Ok(File::from(own_fd(fd)?))
}

/// Wait for the old binary's word: `true` once it wrote `C` (the installation is committed),
/// `false` when the pipe closed without it (the old binary died or took back).
pub fn wait_for_commit(mut pipe: File) -> bool {
    let mut b = [0u8; 1];
    loop {
        match pipe.read(&mut b) {
            Ok(1) => return b[0] == COMMITTED,
            Ok(_) => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("the hand-over pipe: {e}");
                return false;
            }
        }
    }
}

// ------------------------------------------------------------------ the listening socket

static LISTENER: OnceLock<RawFd> = OnceLock::new();
static ACCEPTING: OnceLock<watch::Sender<bool>> = OnceLock::new();

fn gate() -> &'static watch::Sender<bool> {
    ACCEPTING.get_or_init(|| watch::channel(true).0)
}

/// Remember the API's listening socket (the daemon, once bound), for a hand-over.
pub fn set_listener(fd: RawFd) {
    let _ = LISTENER.set(fd);
}

/// Whether the accept loop accepts: `false` while a new binary serves the API.
pub fn accepting() -> watch::Receiver<bool> {
    gate().subscribe()
}

/// What the accept loop last applied (see [`acknowledge`]).
static APPLIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The accept loop has applied `on`: from now on it accepts only when `on`.
pub fn acknowledge(on: bool) {
    APPLIED.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Longest wait for the accept loop to apply a pause.
const PAUSE_WAIT: Duration = Duration::from_secs(2);

fn set_accepting(on: bool) {
    gate().send_replace(on);
    if on {
        return;
    }
    // The new binary's health is judged on connections only it accepts: wait until this
    // binary's accept loop no longer accepts.
    let t = Instant::now();
    while APPLIED.load(std::sync::atomic::Ordering::SeqCst) && t.elapsed() < PAUSE_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------ the executable

/// The file the running executable was started from, as `/proc/self/exe` names it.
pub fn own_exe() -> io::Result<PathBuf> {
    let p = std::fs::read_link("/proc/self/exe")?;
    let s = p.as_os_str().to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(stripped) if !p.exists() => PathBuf::from(stripped),
        _ => p,
    })
}

/// Whether `path` names the running executable (the same file: device and inode).
///
/// The running executable is identified through an open descriptor of `/proc/self/exe`, not
/// by `stat` of the link: the kernel opens the executable itself (even when its name is gone),
/// and so does qemu-user for a binary it runs, while its `stat` of the link would describe the
/// emulator, and the daemon would take its own file for a replaced one.
pub fn is_own_exe(path: &Path) -> bool {
    let running = File::open("/proc/self/exe").and_then(|f| f.metadata());
    match (std::fs::metadata(path), running) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// At start, after recovery: when the file at the running executable's path is another file
/// (a rollback or a power cut put the other binary there), execute it in place of this
/// process (same pid, same arguments, the listening socket `listener` inherited). Returns
/// only when nothing was done, or with the error of `execve`.
///
/// `before_older` runs before a binary of release 0.1.0 (which knows neither the socket nor
/// this release's files) is executed.
pub fn reexec_if_replaced(listener: RawFd, reexecuted: bool, before_older: impl FnOnce()) {
    let Ok(path) = own_exe() else { return };
    if reexecuted || is_own_exe(&path) || !path.is_file() {
        return;
    }
    tracing::warn!(
        "{} is no longer the executable this process runs (a self-update was rolled back or \
         interrupted): executing it",
        path.display()
    );
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = Command::new(&path);
    cmd.args(args).env(REEXEC_ENV, "1");
    // A binary of release 0.1.0 (the one a rolled-back 0.1.0 installation puts back) knows
    // no inherited socket and binds the address itself, which fails while a socket handed
    // over holds it: the listening socket (close-on-exec) closes with the execution instead.
    if takes_listen_fd(&path) {
        let fd = match inheritable(listener) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot hand the listening socket over: {e}");
                return;
            }
        };
        cmd.env(LISTEN_FD_ENV, fd.to_string());
    } else {
        tracing::warn!(
            "{} does not take a listening socket over ({LISTEN_FD_ENV} unknown to it: release \
             0.1.0): it binds the API's address itself",
            path.display()
        );
        before_older();
    }
    let e = cmd.exec();
    tracing::error!(
        "cannot execute {}: {e}; this binary keeps serving",
        path.display()
    );
}

/// Whether the executable at `path` takes a listening socket through [`LISTEN_FD_ENV`]: every
/// binary that reads the variable holds its name; release 0.1.0 does not. Read in chunks (a
/// printer's memory), never the whole file at once. An unreadable file counts as not taking
/// it: a binary that binds the address itself starts either way.
fn takes_listen_fd(path: &Path) -> bool {
    File::open(path)
        .and_then(|f| contains(f, LISTEN_FD_ENV.as_bytes()))
        .unwrap_or(false)
}

/// Whether `needle` (not empty) occurs in what `r` reads, also across its chunks.
fn contains(mut r: impl Read, needle: &[u8]) -> io::Result<bool> {
    let keep = needle.len().saturating_sub(1);
    let mut buf = vec![0u8; 64 * 1024 + keep];
    let mut held = 0;
    loop {
        let n = match r.read(&mut buf[held..]) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let end = held + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        let tail = end.saturating_sub(keep);
        buf.copy_within(tail..end, 0);
        held = end - tail;
    }
}

/// A copy of `fd` without close-on-exec, for a program started next. It stays open in this
/// process (one descriptor).
fn inheritable(fd: RawFd) -> io::Result<RawFd> {
    let dup = rustix::io::dup(unsafe_borrow(fd)?)?;
    Ok(dup.into_raw_fd())
}

// ------------------------------------------------------------------ the new binary

/// Time limit of [`probe`].
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a new updater binary cannot take over (its text follows `self-update: ` in the
/// outcome, docs/API.md 9.4).
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("cannot start {}: {source}", path.display())]
    Start { path: PathBuf, source: io::Error },
    #[error("`{} --version` exited ({status})", path.display())]
    ProbeExited { path: PathBuf, status: ExitStatus },
    #[error("`{} --version` did not finish within {} s", path.display(), PROBE_TIMEOUT.as_secs())]
    ProbeTimeout { path: PathBuf },
    #[error("`{} --version`: {source}", path.display())]
    ProbeWait { path: PathBuf, source: io::Error },
    #[error("no listening socket to hand over (the API is not running)")]
    NoListener,
    #[error("cannot make the hand-over pipe: {0}")]
    Pipe(#[source] io::Error),
    #[error("{what}: {source}")]
    Inherit {
        what: &'static str,
        source: io::Error,
    },
    #[error("{0}")]
    Wait(#[source] io::Error),
    #[error("the new updater {} exited ({status}) {ms} ms after it was started", path.display())]
    Exited {
        path: PathBuf,
        status: ExitStatus,
        ms: u128,
    },
    #[error("the new updater {} did not answer /progress within {secs} s", path.display())]
    NoAnswer { path: PathBuf, secs: u64 },
    #[error("the new updater {} stopped answering /progress", path.display())]
    StoppedAnswering { path: PathBuf },
}

/// Does the executable at `path` run here at all: `path --version` must exit 0 within
/// [`PROBE_TIMEOUT`] (a file without the execute bit, for another architecture, or a
/// program that fails at once does not). Cheap, and no substitute for the hand-over's
/// health phase.
pub fn probe(path: &Path) -> Result<(), HandOverError> {
    let mut child = Command::new(path)
        .arg("--version")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| HandOverError::Start {
            path: path.to_path_buf(),
            source,
        })?;
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(HandOverError::ProbeExited {
                    path: path.to_path_buf(),
                    status,
                })
            }
            Ok(None) if t.elapsed() >= PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HandOverError::ProbeTimeout {
                    path: path.to_path_buf(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HandOverError::ProbeWait {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// The new updater binary of a self-update, started by the old one.
#[derive(Debug)]
pub struct NewUpdater {
    child: Child,
    path: PathBuf,
    /// The write end of the hand-over pipe.
    pipe: Option<std::os::unix::net::UnixStream>,
    started: Instant,
}

/// A hand-over that succeeded, kept until the installation's outcome is decided.
static PENDING: Mutex<Option<NewUpdater>> = Mutex::new(None);

/// Keep `new` for the updater's job (after the journal says `committed`).
pub fn keep(new: NewUpdater) {
    *crate::sync::lock(&PENDING) = Some(new);
}

/// The new binary of a committed self-update, if the installation just done was one.
pub fn take_pending() -> Option<NewUpdater> {
    crate::sync::lock(&PENDING).take()
}

impl NewUpdater {
    /// Start the executable at `path` (now the updater's own path) with the daemon's
    /// arguments and environment, the listening socket and the read end of a pipe inherited;
    /// then this binary stops accepting. The error says why it cannot run.
    pub fn start(path: &Path) -> Result<NewUpdater, HandOverError> {
        let listener = *LISTENER.get().ok_or(HandOverError::NoListener)?;
        // A socket pair as the pipe (close-on-exec both ends; the child's copy is made below).
        let (write, read) = std::os::unix::net::UnixStream::pair().map_err(HandOverError::Pipe)?;
        let inherit = |what| move |source| HandOverError::Inherit { what, source };
        let listen_fd = inheritable(listener).map_err(inherit("listening socket"))?;
        let pipe_fd = inheritable(read.as_raw_fd()).map_err(inherit("pipe"))?;
        drop(read);
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let spawned = Command::new(path)
            .args(args)
            .env(LISTEN_FD_ENV, listen_fd.to_string())
            .env(HANDOVER_FD_ENV, pipe_fd.to_string())
            .env_remove(REEXEC_ENV)
            // systemd's watchdog variable names the old process; the new one feeds it once it
            // is the main process (docs/ARCHITECTURE.md, "Updating the updater").
            .env_remove("WATCHDOG_PID")
            .spawn();
        for fd in [listen_fd, pipe_fd] {
            // SAFETY: both were made by `inheritable` just above and are owned by nothing
            // else; the child has its own copies.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let child = spawned.map_err(|source| HandOverError::Start {
            path: path.to_path_buf(),
            source,
        })?;
        tracing::info!(
            "self-update: the new updater {} runs as pid {}; this one stops accepting",
            path.display(),
            child.id()
        );
        set_accepting(false);
        Ok(NewUpdater {
            child,
            path: path.to_path_buf(),
            pipe: Some(write),
            started: Instant::now(),
        })
    }

    /// The new binary's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Watch the new binary: it must answer `/progress` on `listen` within `answer_within`,
    /// then keep running and answering for `settle`. `cancel`: the updater is stopping
    /// (`Ok(false)`). The error says what went wrong.
    pub fn watch(
        &mut self,
        listen: std::net::SocketAddr,
        answer_within: Duration,
        settle: Duration,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<bool, HandOverError> {
        let addr = apiclient::probe_addr(listen);
        let deadline = self.started + answer_within;
        let mut answered: Option<Instant> = None;
        loop {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(false);
            }
            if let Some(status) = self.child.try_wait().map_err(HandOverError::Wait)? {
                return Err(HandOverError::Exited {
                    path: self.path.clone(),
                    status,
                    ms: self.started.elapsed().as_millis(),
                });
            }
            let ok = matches!(
                apiclient::probe(addr, Duration::from_secs(1)),
                Probe::Answer { status: 200, .. }
            );
            match answered {
                None if ok => {
                    tracing::info!(
                        "self-update: the new updater answers /progress after {} ms",
                        self.started.elapsed().as_millis()
                    );
                    answered = Some(Instant::now());
                }
                None if Instant::now() >= deadline => {
                    return Err(HandOverError::NoAnswer {
                        path: self.path.clone(),
                        secs: answer_within.as_secs(),
                    });
                }
                Some(at) if at.elapsed() >= settle => {
                    if ok {
                        return Ok(true);
                    }
                    return Err(HandOverError::StoppedAnswering {
                        path: self.path.clone(),
                    });
                }
                _ => {}
            }
            std::thread::sleep(WATCH_EVERY);
        }
    }

    /// Take back: kill the new binary, and accept again.
    pub fn abort(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        self.pipe = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        set_accepting(true);
    }

    /// The journal says `committed`: tell the new binary (it finishes the installation and
    /// reports it), and make it systemd's main process. This binary then exits.
    pub fn commit(mut self) {
        let pid = self.child.id();
        if let Some(mut p) = self.pipe.take() {
            if let Err(e) = p.write_all(&[COMMITTED]) {
                tracing::error!("cannot tell the new updater that the update is committed: {e}");
            }
        }
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)]) {
                tracing::warn!("cannot hand systemd's main process over to pid {pid}: {e}");
            }
        }
        tracing::info!("self-update committed: the new updater (pid {pid}) serves the API");
        // The child runs on: never killed nor waited for by this process any more.
        std::mem::forget(self);
    }
}

impl Drop for NewUpdater {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/API.md 9.4: the running executable is its own file, a copy of it is not (run under
    /// qemu-user too by scripts/arm.sh, where `stat` of `/proc/self/exe` names the emulator).
    #[test]
    fn api_9_4_the_running_executable_is_told_from_a_copy() {
        let exe = own_exe().unwrap();
        assert!(is_own_exe(&exe), "{}", exe.display());
        let d = tempfile::tempdir().unwrap();
        let copy = d.path().join("copy");
        std::fs::copy(&exe, &copy).unwrap();
        assert!(!is_own_exe(&copy));
        assert!(!is_own_exe(&d.path().join("missing")));
    }

    /// docs/API.md 9.4: the name is found wherever it lies, also across two chunks; a file
    /// without it (release 0.1.0) does not take the socket.
    #[test]
    fn api_9_4_a_binary_takes_the_socket_only_when_it_names_the_variable() {
        let name = LISTEN_FD_ENV.as_bytes();
        for at in [0, 5, 64 * 1024 - 3, 64 * 1024 + 20, 200_000] {
            let mut data = vec![b'x'; 300_000];
            data[at..at + name.len()].copy_from_slice(name);
            assert!(contains(&data[..], name).unwrap(), "at {at}");
        }
        let mut near = vec![b'x'; 300_000];
        near[1000..1000 + name.len() - 1].copy_from_slice(&name[..name.len() - 1]);
        assert!(!contains(&near[..], name).unwrap());
        assert!(!contains(&b""[..], name).unwrap());
        let own = std::env::current_exe().unwrap();
        assert!(takes_listen_fd(&own));
        assert!(!takes_listen_fd(Path::new("/bin/sh")));
        assert!(!takes_listen_fd(Path::new("/nonexistent/tope-updater")));
    }
}
