//! Reading `/proc`: which processes carry a name, with their argv, and whether one is still
//! alive.
//!
//! The rule (docs/API.md 8.2): a process is "gone" only when the kernel says so, with
//! `ENOENT`/`ESRCH` (or by showing a zombie or another start time under its pid). Any other
//! failure (`EMFILE` when the updater's descriptors are exhausted, `EACCES`, `EIO`...) is an
//! error or "unknown", never "gone" and never "not running".
//!
//! A process found by [`scan`] comes with its `/proc/<pid>/stat` file held open. Reading that
//! file again needs no new descriptor, so the updater can still tell whether the process lives
//! when it has no descriptor left; and the kernel ties the open file to that very process, so a
//! pid reused by another process answers `ESRCH` instead of the newcomer's data.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rustix::io::Errno;
use rustix::process::Pid;

use super::names::name_matches;

/// `PF_KTHREAD` in the flags (field 9) of `/proc/<pid>/stat`: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;
/// Most of a `/proc` file read back (a command line can be long; argv beyond this is cut).
pub(crate) const MAX_PROC_READ: usize = 1024 * 1024;

/// A process identity that survives pid reuse: the pid and its start time in clock ticks
/// since boot (field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

/// A running process found by name, with the command line it was started with, so that it can
/// be started again exactly as it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningProcess {
    pub id: ProcId,
    /// Its parent's pid, from the same read of `/proc/<pid>/stat`.
    pub ppid: i32,
    /// `/proc/<pid>/cmdline` split at its NUL bytes (any bytes, not only UTF-8).
    pub argv: Vec<OsString>,
    /// False when the command line is longer than the updater reads (1 MiB): `argv` is cut.
    pub argv_complete: bool,
    /// Its working directory, when it can be read.
    pub cwd: Option<PathBuf>,
    /// Its `comm` (the file name the kernel ran, at most 15 bytes), from `/proc/<pid>/stat`.
    pub comm: OsString,
}

/// What is known about a process.
#[derive(Debug)]
pub enum Liveness {
    Alive,
    /// Concluded from `ENOENT`/`ESRCH`, a zombie, or another process under its pid.
    Gone,
    /// `/proc` could not be read: the process may well be alive.
    Unknown(io::Error),
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub ppid: i32,
    pub flags: u64,
    pub start_time: u64,
}

/// Parse `/proc/<pid>/stat`. `comm` (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so the remaining fields start after the LAST `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // Field 3 is the state, 4 the parent pid, 9 the flags, 22 the start time.
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let flags = fields.nth(9 - 5)?.parse().ok()?;
    let start_time = fields.nth(22 - 10)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        flags,
        start_time,
    })
}

/// Field 2 of `/proc/<pid>/stat`, the `comm`: between the first `(` and the LAST `)` (it may
/// itself contain parentheses).
fn stat_comm(text: &[u8]) -> &[u8] {
    let open = text.iter().position(|&b| b == b'(');
    let close = text.iter().rposition(|&b| b == b')');
    match (open, close) {
        (Some(o), Some(c)) if o < c => &text[o + 1..c],
        _ => &[],
    }
}

/// True for states of a process that has already exited (zombie, dead).
fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// Whether an error reading `/proc/<pid>/...` means the process no longer exists.
pub(crate) fn vanished(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(Errno::NOENT.raw_os_error()) || raw == Some(Errno::SRCH.raw_os_error())
}

/// Where process information comes from: `/proc`, or in unit tests a reader that fails.
pub(crate) trait Procfs {
    /// The pids listed in `/proc` (thread-group leaders only).
    fn pids(&self) -> io::Result<Vec<i32>>;
    /// Open `/proc/<pid>/<file>`.
    fn open(&self, pid: i32, file: &str) -> io::Result<File>;
    /// Read an open `/proc` file from its start (the kernel generates it anew).
    fn reread(&self, f: &File) -> io::Result<Vec<u8>>;
}

/// The real `/proc`.
pub(crate) struct RealProcfs;

impl Procfs for RealProcfs {
    fn pids(&self) -> io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            if let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    fn open(&self, pid: i32, file: &str) -> io::Result<File> {
        File::open(format!("/proc/{pid}/{file}"))
    }

    fn reread(&self, f: &File) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < MAX_PROC_READ {
            match f.read_at(&mut buf, out.len() as u64) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// A process found by [`scan_with`], its stat file held open (see the module documentation).
pub(crate) struct Found {
    pub info: RunningProcess,
    pub stat: File,
}

/// The updater itself and its parent: never listed, never signalled.
pub(crate) fn is_self_or_parent(pid: i32) -> bool {
    pid == std::process::id() as i32
        || rustix::process::getppid().is_some_and(|p| p.as_raw_nonzero().get() == pid)
}

/// Read `/proc/<pid>/<file>` whole. `Ok(None)` when the process has vanished.
fn read_entry(fs: &dyn Procfs, pid: i32, file: &str) -> io::Result<Option<Vec<u8>>> {
    match fs.open(pid, file).and_then(|f| fs.reread(&f)) {
        Ok(data) => Ok(Some(data)),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read /proc/{pid}/{file}: {e}"),
        )),
    }
}

/// Every running process (not thread) named `name`, except PID 1, the updater itself, its
/// parent, kernel threads and zombies. A process that vanishes during the scan is skipped;
/// any other failure to read `/proc` fails the whole scan.
pub(crate) fn scan_with(fs: &dyn Procfs, name: &str) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    if name.is_empty() {
        return Ok(found);
    }
    let pids = fs
        .pids()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot list /proc: {e}")))?;
    for pid in pids {
        if pid <= 1 || is_self_or_parent(pid) {
            continue;
        }
        let stat_file = match fs.open(pid, "stat") {
            Ok(f) => f,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot open /proc/{pid}/stat: {e}"),
                ))
            }
        };
        let text = match fs.reread(&stat_file) {
            Ok(t) => t,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read /proc/{pid}/stat: {e}"),
                ))
            }
        };
        let stat = parse_stat(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable /proc/{pid}/stat"),
            )
        })?;
        if stat.flags & PF_KTHREAD != 0 || is_dead_state(stat.state) {
            continue;
        }
        // `comm` is field 2 of the stat just read: no read of `/proc/<pid>/comm`.
        let comm = stat_comm(&text);
        let Some(cmdline) = read_entry(fs, pid, "cmdline")? else {
            continue;
        };
        let body = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
        let args: Vec<&[u8]> = body.split(|&b| b == 0).collect();
        let mut exe = || std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if !name_matches(comm, &args, &mut exe, name) {
            continue;
        }
        found.push(Found {
            info: RunningProcess {
                id: ProcId {
                    pid,
                    start_time: stat.start_time,
                },
                ppid: stat.ppid,
                argv: split_cmdline(&cmdline),
                argv_complete: cmdline.len() < MAX_PROC_READ,
                cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
                comm: OsString::from_vec(comm.to_vec()),
            },
            stat: stat_file,
        });
    }
    Ok(found)
}

/// `/proc/<pid>/cmdline` as argv: NUL-terminated arguments.
fn split_cmdline(cmdline: &[u8]) -> Vec<OsString> {
    let body = cmdline.strip_suffix(&[0]).unwrap_or(cmdline);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// Every running process named `name` with its argv (see [`scan_with`] for who is left out).
/// An error when `/proc` cannot be read: never an empty list in its place.
pub fn scan(name: &str) -> io::Result<Vec<RunningProcess>> {
    Ok(scan_with(&RealProcfs, name)?
        .into_iter()
        .map(|f| f.info)
        .collect())
}

/// How process `id` runs: its argv (from `/proc/<pid>/cmdline`, the exact bytes) and working
/// directory. `None` when it is gone, unreadable, or has no command line (a kernel thread).
/// [`scan`] gives the same without a second look.
pub fn describe(id: &ProcId) -> Option<(Vec<OsString>, Option<PathBuf>)> {
    let cmdline = RealProcfs
        .open(id.pid, "cmdline")
        .and_then(|f| RealProcfs.reread(&f))
        .ok()?;
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", id.pid)).ok();
    // Read before the check, so what was read belongs to this very process.
    if cmdline.is_empty() || !matches!(liveness(id), Liveness::Alive) {
        return None;
    }
    Some((split_cmdline(&cmdline), cwd))
}

/// Whether a process named `name` runs. An error when `/proc` cannot be read.
pub fn is_running(name: &str) -> io::Result<bool> {
    Ok(!scan_with(&RealProcfs, name)?.is_empty())
}

/// Liveness from the content of a stat file, or from the error reading it.
fn judge(id: &ProcId, read: io::Result<Vec<u8>>) -> Liveness {
    match read {
        Ok(text) => match parse_stat(&text) {
            Some(s) if s.start_time != id.start_time || is_dead_state(s.state) => Liveness::Gone,
            Some(_) => Liveness::Alive,
            None => Liveness::Unknown(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable /proc/{}/stat", id.pid),
            )),
        },
        Err(e) if vanished(&e) => Liveness::Gone,
        Err(e) => probe(id, e),
    }
}

/// `/proc` could not be read: `kill(pid, 0)` needs no descriptor, and its `ESRCH` is as good
/// as `/proc`'s `ENOENT`. Anything else leaves the question open.
fn probe(id: &ProcId, e: io::Error) -> Liveness {
    match Pid::from_raw(id.pid).map(rustix::process::test_kill_process) {
        Some(Err(Errno::SRCH)) => Liveness::Gone,
        _ => Liveness::Unknown(e),
    }
}

/// Liveness of a process whose stat file is held open since it was found.
pub(crate) fn liveness_held(fs: &dyn Procfs, found: &Found) -> Liveness {
    judge(&found.info.id, fs.reread(&found.stat))
}

/// Liveness of a process known by its identity only (opens `/proc/<pid>/stat`).
pub(crate) fn liveness_with(fs: &dyn Procfs, id: &ProcId) -> Liveness {
    judge(id, fs.open(id.pid, "stat").and_then(|f| fs.reread(&f)))
}

/// Whether process `id` still runs (same start time, not a zombie), as far as `/proc` tells.
pub fn liveness(id: &ProcId) -> Liveness {
    liveness_with(&RealProcfs, id)
}

/// True unless the process is known to be gone: when `/proc` cannot be read it counts as
/// alive (a process is never taken for stopped on a guess).
pub fn is_alive(id: &ProcId) -> bool {
    !matches!(liveness(id), Liveness::Gone)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A `/proc` that fails with `errno`: every call after `ok_calls` successful ones, or
    /// (`after_scan`) only the second read of a file, as when the updater's descriptors run
    /// out between finding a process and watching it.
    pub(crate) struct FailingProcfs {
        pub ok_calls: usize,
        pub errno: Errno,
        pub calls: AtomicUsize,
        after_scan: bool,
        seen: std::sync::Mutex<std::collections::HashSet<(u64, u64)>>,
    }

    impl FailingProcfs {
        pub(crate) fn new(ok_calls: usize, errno: Errno) -> FailingProcfs {
            FailingProcfs {
                ok_calls,
                errno,
                calls: AtomicUsize::new(0),
                after_scan: false,
                seen: Default::default(),
            }
        }

        pub(crate) fn after_scan(errno: Errno) -> FailingProcfs {
            FailingProcfs {
                after_scan: true,
                ..FailingProcfs::new(usize::MAX, errno)
            }
        }

        fn gate(&self) -> io::Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) >= self.ok_calls {
                Err(self.errno.into())
            } else {
                Ok(())
            }
        }
    }

    impl Procfs for FailingProcfs {
        fn pids(&self) -> io::Result<Vec<i32>> {
            self.gate()?;
            RealProcfs.pids()
        }
        fn open(&self, pid: i32, file: &str) -> io::Result<File> {
            self.gate()?;
            RealProcfs.open(pid, file)
        }
        fn reread(&self, f: &File) -> io::Result<Vec<u8>> {
            self.gate()?;
            if self.after_scan {
                use std::os::unix::fs::MetadataExt;
                let m = f.metadata()?;
                let mut seen = self.seen.lock().unwrap();
                if !seen.insert((m.dev(), m.ino())) {
                    return Err(self.errno.into());
                }
            }
            RealProcfs.reread(f)
        }
    }

    fn stat_line(comm: &str, state: char, flags: u64, start: u64) -> String {
        let mut text = format!("1234 ({comm}) {state} 77");
        // fields 5..=21, with the flags as field 9, then 22 = start time
        for i in 5..=21 {
            if i == 9 {
                text.push_str(&format!(" {flags}"));
            } else {
                text.push_str(&format!(" {i}"));
            }
        }
        text.push_str(&format!(" {start} 23 24\n"));
        text
    }

    #[test]
    fn parse_stat_with_parens_and_spaces_in_comm() {
        let s = parse_stat(stat_line("a) b) (c d", 'S', 4194560, 987654).as_bytes()).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 77);
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.start_time, 987654);
        assert_eq!(parse_stat(b"12 (x) S"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        let line = stat_line("a) b) (c d", 'S', 4194560, 987654);
        assert_eq!(stat_comm(line.as_bytes()), b"a) b) (c d");
        assert_eq!(stat_comm(b"garbage"), b"");
    }

    #[test]
    fn cmdline_splits_into_exact_argv() {
        assert_eq!(
            split_cmdline(b"/bin/x\0--flag\0a b\0\0"),
            ["/bin/x", "--flag", "a b", ""]
                .iter()
                .map(OsString::from)
                .collect::<Vec<_>>()
        );
        assert!(split_cmdline(b"").is_empty());
        let raw = split_cmdline(b"/bin/x\0\xff\0");
        assert_eq!(raw[1], OsString::from_vec(vec![0xff]));
        let p = RunningProcess {
            id: ProcId {
                pid: 5,
                start_time: 1,
            },
            ppid: 1,
            argv: raw,
            argv_complete: true,
            cwd: None,
            comm: OsString::new(),
        };
        assert_eq!(p.argv[0], OsString::from("/bin/x"));
    }

    #[test]
    fn contract_8_2_failed_proc_listing_is_an_error_never_an_empty_list() {
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        for ok_calls in [0, 1, 2, 5] {
            let fs = FailingProcfs::new(ok_calls, Errno::MFILE);
            // "init" always exists here: pid 1 is skipped, but every other process is read.
            let r = scan_with(&fs, me.trim_end());
            assert!(r.is_err(), "ok_calls {ok_calls}: {:?}", r.map(|v| v.len()));
        }
        // A reader that never fails finds the same things as the real scan.
        let fs = FailingProcfs::new(usize::MAX, Errno::MFILE);
        assert!(scan_with(&fs, "no-such-process-x").unwrap().is_empty());
    }

    #[test]
    fn contract_8_2_only_enoent_or_esrch_means_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let stat = RealProcfs.open(pid, "stat").unwrap();
        let st = parse_stat(&RealProcfs.reread(&stat).unwrap()).unwrap();
        let id = ProcId {
            pid,
            start_time: st.start_time,
        };
        assert!(matches!(liveness(&id), Liveness::Alive));
        // EMFILE, EACCES, EIO: the process lives (kill(pid, 0) finds it), so never Gone.
        for errno in [Errno::MFILE, Errno::ACCESS, Errno::IO] {
            let fs = FailingProcfs::new(0, errno);
            assert!(
                matches!(liveness_with(&fs, &id), Liveness::Unknown(_)),
                "{errno:?}"
            );
        }
        // Another start time under the pid: the original process is gone.
        let reused = ProcId {
            start_time: st.start_time + 1,
            ..id
        };
        assert!(matches!(liveness(&reused), Liveness::Gone));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the held file answers ESRCH, a fresh open ENOENT; and with /proc failing,
        // kill(pid, 0) says ESRCH.
        assert_eq!(
            RealProcfs.reread(&stat).unwrap_err().raw_os_error(),
            Some(Errno::SRCH.raw_os_error())
        );
        let found = Found {
            info: RunningProcess {
                id,
                ppid: 1,
                argv: vec![],
                argv_complete: true,
                cwd: None,
                comm: OsString::new(),
            },
            stat,
        };
        assert!(matches!(liveness_held(&RealProcfs, &found), Liveness::Gone));
        assert!(matches!(liveness(&id), Liveness::Gone));
        let fs = FailingProcfs::new(0, Errno::MFILE);
        assert!(matches!(liveness_with(&fs, &id), Liveness::Gone));
    }

    #[test]
    fn zombie_counts_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let st = parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).unwrap()).unwrap();
        let id = ProcId {
            pid,
            start_time: st.start_time,
        };
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !matches!(liveness(&id), Liveness::Gone) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Not yet reaped: a zombie, dead for liveness.
        let text = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
        assert_eq!(parse_stat(&text).map(|s| s.state), Some('Z'));
        assert!(matches!(liveness(&id), Liveness::Gone));
        child.wait().unwrap();
    }
}
