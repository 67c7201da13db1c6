//! Logging: every event goes to `<logs_dir>/updater.log` (size-rotated) and to stderr
//! (journald under systemd). docs/API.md section 5: ISO 8601 UTC timestamps, levels
//! DEBUG/INFO/WARN/ERROR, rotation at 10 MiB with 3 old files kept.
//!
//! When stderr is the journal (`JOURNAL_STREAM` names its device and inode), every stderr
//! line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//! debug), which journald strips and records, so `journalctl -p err -u tope-updater` shows
//! the errors. The file log is never prefixed.
//!
//! A log write error never panics and never stops the daemon: the line is dropped and the
//! file is reopened on a later write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// File name of the current log inside the logs directory.
pub const LOG_FILE_NAME: &str = "updater.log";
/// Size at which `updater.log` is rotated (docs/API.md section 5).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Number of rotated files kept: `updater.log.1` (newest) to `updater.log.3` (oldest).
pub const KEEP_OLD_FILES: u32 = 3;

/// Install the global subscriber: the updater's events at `level` and above (other crates'
/// from INFO at most, see [`subscriber`]), written to both `<logs_dir>/updater.log` and
/// stderr, without ANSI colours.
///
/// Fails when the log file cannot be opened at start (the path is in the message) or when a
/// global subscriber is already installed. Once running, log write errors are swallowed.
pub fn init(level: tracing::Level, logs_dir: &Path) -> io::Result<()> {
    fs::create_dir_all(logs_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create log directory {}: {e}", logs_dir.display()),
        )
    })?;
    let mut file = RotatingFile::new(logs_dir.join(LOG_FILE_NAME), DEFAULT_MAX_BYTES);
    file.ensure_open()?;
    let stderr = Prioritized {
        inner: std::io::stderr,
        journal: stderr_is_journal(),
    };
    tracing::subscriber::set_global_default(subscriber(level, file, stderr))
        .map_err(|e| io::Error::other(format!("cannot install the log subscriber: {e}")))
}

/// The subscriber `init` installs, with the second destination a parameter for tests.
///
/// The updater's own events are kept from `level` up. Other crates (hyper, reqwest...) are
/// kept from `level` or INFO, whichever is less verbose: their DEBUG output (connection pool
/// bookkeeping at every callback) would otherwise bury the updater's own lines.
fn subscriber<W>(
    level: tracing::Level,
    file: RotatingFile,
    other: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), level)
        .with_default(std::cmp::min(level, tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        // The default would `eprintln!` write errors, which panics when stderr is gone.
        .log_internal_errors(false)
        .with_writer(LockedFile(Mutex::new(file)).and(other));
    tracing_subscriber::registry().with(layer).with(filter)
}

/// The syslog priority prefix journald understands for a level (`sd-daemon(3)`).
pub fn priority_prefix(level: &tracing::Level) -> &'static [u8] {
    match *level {
        tracing::Level::ERROR => b"<3>",
        tracing::Level::WARN => b"<4>",
        tracing::Level::INFO => b"<6>",
        _ => b"<7>",
    }
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` (`<device>:<inode>`, set by
/// systemd for a service whose output goes to the journal) names stderr's own file. A child
/// that inherited the variable but whose stderr was redirected elsewhere does not match.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // The field types differ between targets (32-bit ARM), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// Print an error on stderr as `tope-updater: <message>`, with the error priority `<3>` when
/// stderr is the journal: for what goes wrong before logging is set up (a bad configuration)
/// or instead of it (the commands for people).
pub fn print_error(message: impl std::fmt::Display) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    // Not `eprintln!`: it panics when stderr is gone.
    let _ = writeln!(io::stderr(), "{prefix}tope-updater: {message}");
}

/// A `MakeWriter` that, when `journal` is set, starts every line of an event with the
/// priority prefix of the event's level; otherwise it writes through unchanged.
#[derive(Debug, Clone)]
pub struct Prioritized<M> {
    pub inner: M,
    pub journal: bool,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Prioritized<M> {
    type Writer = PrefixLines<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        PrefixLines::new(self.inner.make_writer(), None)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let prefix = self.journal.then(|| priority_prefix(meta.level()));
        PrefixLines::new(self.inner.make_writer_for(meta), prefix)
    }
}

/// The writer of [`Prioritized`] for one event: inserts `prefix` at the start of every line
/// and hands each write to the inner writer in one piece.
pub struct PrefixLines<W> {
    inner: W,
    prefix: Option<&'static [u8]>,
    at_line_start: bool,
}

impl<W> PrefixLines<W> {
    fn new(inner: W, prefix: Option<&'static [u8]>) -> Self {
        PrefixLines {
            inner,
            prefix,
            at_line_start: true,
        }
    }
}

impl<W: Write> Write for PrefixLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(prefix) = self.prefix else {
            return self.inner.write(buf);
        };
        let mut out = Vec::with_capacity(buf.len() + prefix.len());
        for line in buf.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(prefix);
            }
            out.extend_from_slice(line);
            self.at_line_start = line.ends_with(b"\n");
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An append-only log file rotated by size.
///
/// Written by hand because no maintained crate fits: tracing-appender rotates only by time,
/// file-rotate panics when it cannot create its directory, and logroller never recovered
/// after its directory was deleted (and adds about 1.3 MB to the binary). This one is small
/// and has the three properties the daemon needs:
///
/// - when a write would push the file past `max_bytes`, the file is rotated first
///   (`updater.log` -> `.1` -> `.2` -> `.3`, the oldest dropped), so a line is never split
///   across two files;
/// - if the file or its directory disappears, both are recreated on the next write;
/// - an I/O error drops that write (reported as written) and the file is reopened later,
///   so logging can never fail or block an update; a rotation that cannot be done leaves
///   the lines going to the current file.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    /// The open file, its size, and its (device, inode) to notice a deleted file.
    file: Option<OpenLog>,
}

#[derive(Debug)]
struct OpenLog {
    file: File,
    size: u64,
    id: (u64, u64),
}

impl RotatingFile {
    /// A rotator for `path`; nothing is opened until the first write.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64) -> RotatingFile {
        RotatingFile {
            path: path.into(),
            max_bytes,
            file: None,
        }
    }

    /// Path of the current log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the file (creating it and its directory) if it is not open, or reopen it if it
    /// was deleted or replaced since.
    pub fn ensure_open(&mut self) -> io::Result<()> {
        if let Some(open) = &self.file {
            match fs::metadata(&self.path) {
                Ok(m) if (m.dev(), m.ino()) == open.id => return Ok(()),
                _ => self.file = None,
            }
        }
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir)?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open log file {}: {e}", self.path.display()),
                )
            })?;
        let m = file.metadata()?;
        self.file = Some(OpenLog {
            file,
            size: m.len(),
            id: (m.dev(), m.ino()),
        });
        Ok(())
    }

    /// Path of the `n`th old file (`updater.log.n`).
    fn old_path(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Shift `.2` -> `.3`, `.1` -> `.2`, current -> `.1` (rename replaces the oldest), then
    /// open a fresh file.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        for n in (1..KEEP_OLD_FILES).rev() {
            let from = self.old_path(n);
            if from.exists() {
                // A failed shift only loses an old file; keep going.
                let _ = fs::rename(&from, self.old_path(n + 1));
            }
        }
        fs::rename(&self.path, self.old_path(1))?;
        self.ensure_open()
    }

    /// Write one whole buffer (one formatted event), rotating first if needed.
    fn write_line(&mut self, buf: &[u8]) -> io::Result<()> {
        self.ensure_open()?;
        let len = buf.len() as u64;
        let size = self.file.as_ref().map_or(0, |f| f.size);
        if size > 0 && size.saturating_add(len) > self.max_bytes && self.rotate().is_err() {
            // Rotation impossible (e.g. a directory where an old file should be): keep
            // writing to the current file rather than losing lines.
            self.ensure_open()?;
        }
        let open = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))?;
        match open.file.write_all(buf) {
            Ok(()) => {
                open.size += len;
                Ok(())
            }
            Err(e) => {
                // Reopen next time; a partial line may be left, the next one starts afresh.
                self.file = None;
                Err(e)
            }
        }
    }
}

impl Write for RotatingFile {
    /// Always reports the whole buffer as written: a failed log line is dropped, never
    /// retried in pieces (which could split it) and never surfaced as an error.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            let _ = self.write_line(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(open) = self.file.as_mut() {
            let _ = open.file.flush();
        }
        Ok(())
    }
}

/// `MakeWriter` over a mutex-guarded [`RotatingFile`]: the lock is held for one whole
/// event, so concurrent events never interleave. Unlike tracing-subscriber's own
/// `Mutex<W>` impl, a poisoned lock is recovered instead of panicking.
struct LockedFile(Mutex<RotatingFile>);

/// The per-event writer handed out by [`LockedFile`].
struct LockedFileGuard<'a>(MutexGuard<'a, RotatingFile>);

impl<'a> MakeWriter<'a> for LockedFile {
    type Writer = LockedFileGuard<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedFileGuard(crate::sync::lock(&self.0))
    }
}

impl Write for LockedFileGuard<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write(buf).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn events_reach_both_destinations_in_the_contract_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join(LOG_FILE_NAME);
        let other = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = other.clone();
        let make_other = move || SharedVec(sink.clone());
        let sub = subscriber(
            tracing::Level::DEBUG,
            RotatingFile::new(&path, DEFAULT_MAX_BYTES),
            make_other,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::trace!("hidden below the level");
            tracing::debug!(target: "hyper_util::client::pool", "dependency noise, hidden");
            tracing::info!(target: "hyper_util::client::pool", "dependency info, kept");
            tracing::debug!(stage = "downloading", "progress report");
            tracing::warn!("a warning");
            tracing::error!("an error");
        });
        let file = read(&path);
        let copy = String::from_utf8(other.lock().unwrap().clone()).unwrap();
        assert_eq!(file, copy);
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines.len(), 4, "{file}");
        for (line, level) in lines.iter().zip(["INFO", "DEBUG", "WARN", "ERROR"]) {
            // e.g. `2026-11-26T17:33:34.123456Z  INFO tope_updater::logging::tests: ...`
            let (ts, rest) = line.split_once(' ').unwrap();
            let b = ts.as_bytes();
            assert!(ts.len() >= 20 && ts.ends_with('Z'), "{line}");
            assert_eq!(
                (b[4], b[7], b[10], b[13], b[16]),
                (b'-', b'-', b'T', b':', b':')
            );
            assert_eq!(rest.trim_start().split(' ').next(), Some(level), "{line}");
            assert!(!line.contains('\x1b'), "ANSI escape in {line:?}");
        }
        assert!(lines[0].contains("dependency info, kept"), "{}", lines[0]);
        assert!(
            lines[1].contains("progress report stage=\"downloading\""),
            "{}",
            lines[1]
        );
    }

    #[derive(Clone)]
    struct SharedVec(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for SharedVec {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_their_priority_and_the_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        let other = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = other.clone();
        let stderr = Prioritized {
            inner: move || SharedVec(sink.clone()),
            journal: true,
        };
        let sub = subscriber(
            tracing::Level::DEBUG,
            RotatingFile::new(&path, DEFAULT_MAX_BYTES),
            stderr,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::error!("an error");
            tracing::warn!("a warning");
            tracing::info!("some news");
            tracing::debug!("a detail");
            tracing::error!("two\nlines");
        });
        let journal = String::from_utf8(other.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = journal.lines().collect();
        assert_eq!(lines.len(), 6, "{journal}");
        for (line, (prefix, level)) in lines.iter().zip([
            ("<3>", "ERROR"),
            ("<4>", "WARN"),
            ("<6>", "INFO"),
            ("<7>", "DEBUG"),
            ("<3>", "ERROR"),
        ]) {
            assert!(line.starts_with(prefix), "{line}");
            assert!(line.contains(level), "{line}");
        }
        // The continuation line of a multi-line event keeps the event's priority.
        assert_eq!(lines[5], "<3>lines");
        let file = read(&path);
        assert!(
            !file.contains('<'),
            "the file log is never prefixed: {file}"
        );
        assert_eq!(file.lines().count(), 6);
    }

    #[test]
    fn without_the_journal_stderr_is_unchanged() {
        let out = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let w = Prioritized {
            inner: move || SharedVec(sink.clone()),
            journal: false,
        };
        w.make_writer().write_all(b"plain\n").unwrap();
        assert_eq!(out.lock().unwrap().as_slice(), b"plain\n");
    }

    #[test]
    fn a_line_written_in_pieces_gets_one_prefix() {
        let mut w = PrefixLines::new(Vec::new(), Some(priority_prefix(&tracing::Level::WARN)));
        w.write_all(b"par").unwrap();
        w.write_all(b"tial\nnext ").unwrap();
        w.write_all(b"line\n").unwrap();
        assert_eq!(w.inner, b"<4>partial\n<4>next line\n");
    }

    #[test]
    fn rotation_keeps_three_old_files_newest_in_dot_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        let mut f = RotatingFile::new(&path, 100);
        // Ten lines of 40 bytes: two lines per file, five files' worth.
        for i in 0..10 {
            let line = format!("{:<38}\n", format!("line {i}"));
            assert_eq!(line.len(), 39);
            f.write_all(line.as_bytes()).unwrap();
        }
        assert!(read(&path).starts_with("line 8"));
        assert!(read(&path).contains("line 9"));
        assert!(read(&f.old_path(1)).starts_with("line 6"));
        assert!(read(&f.old_path(2)).starts_with("line 4"));
        assert!(read(&f.old_path(3)).starts_with("line 2"));
        assert!(!f.old_path(4).exists());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "updater.log",
                "updater.log.1",
                "updater.log.2",
                "updater.log.3"
            ]
        );
    }

    #[test]
    fn deleted_directory_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let path = logs.join(LOG_FILE_NAME);
        let mut f = RotatingFile::new(&path, 1 << 20);
        f.write_all(b"before\n").unwrap();
        assert_eq!(read(&path), "before\n");

        fs::remove_dir_all(&logs).unwrap();
        f.write_all(b"after\n").unwrap();
        assert_eq!(read(&path), "after\n");

        // The file alone deleted: recreated too.
        fs::remove_file(&path).unwrap();
        f.write_all(b"again\n").unwrap();
        assert_eq!(read(&path), "again\n");
    }

    #[test]
    fn unwritable_place_drops_lines_without_error_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the directory should be: every open fails.
        let logs = dir.path().join("logs");
        fs::write(&logs, b"not a dir").unwrap();
        let path = logs.join(LOG_FILE_NAME);
        let mut f = RotatingFile::new(&path, 1 << 20);
        assert!(f.write_all(b"lost\n").is_ok());
        assert!(f.flush().is_ok());

        fs::remove_file(&logs).unwrap();
        f.write_all(b"kept\n").unwrap();
        assert_eq!(read(&path), "kept\n");
    }

    #[test]
    fn a_line_is_never_split_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        let limit = 256;
        let locked = LockedFile(Mutex::new(RotatingFile::new(&path, limit)));
        let mut written = Vec::new();
        for i in 0..200usize {
            // Lengths vary from 10 to 99 bytes so boundaries fall everywhere.
            let len = 10 + (i * 37) % 90;
            let mut line = format!("<{i}>");
            while line.len() < len - 1 {
                line.push('x');
            }
            line.push('\n');
            // Through the subscriber's writer: one write_all per event.
            locked.make_writer().write_all(line.as_bytes()).unwrap();
            written.push(line);
        }
        let f = locked.0.lock().unwrap();
        let mut seen = Vec::new();
        for p in [f.old_path(3), f.old_path(2), f.old_path(1), path.clone()] {
            let text = read(&p);
            assert!(
                text.len() as u64 <= limit,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            assert!(text.ends_with('\n'), "{} ends mid-line", p.display());
            for line in text.split_inclusive('\n') {
                assert!(
                    line.starts_with('<'),
                    "split line {line:?} in {}",
                    p.display()
                );
                seen.push(line.to_string());
            }
        }
        // The kept files hold the newest lines, in order, each whole.
        assert_eq!(seen[..], written[written.len() - seen.len()..]);
    }

    #[test]
    fn failed_rotation_keeps_writing_to_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        let mut f = RotatingFile::new(&path, 10);
        // Non-empty directories in every old slot: no rename can succeed.
        for n in 1..=KEEP_OLD_FILES {
            fs::create_dir_all(f.old_path(n).join("x")).unwrap();
        }
        f.write_all(b"first line\n").unwrap();
        f.write_all(b"second line\n").unwrap();
        assert_eq!(read(&path), "first line\nsecond line\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        let mut f = RotatingFile::new(&path, 10);
        f.write_all(b"short\n").unwrap();
        let long = "y".repeat(30) + "\n";
        f.write_all(long.as_bytes()).unwrap();
        assert_eq!(read(&path), long);
        assert_eq!(read(&f.old_path(1)), "short\n");
    }

    #[test]
    fn existing_file_size_counts_towards_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        fs::write(&path, "x".repeat(95) + "\n").unwrap();
        let mut f = RotatingFile::new(&path, 100);
        f.write_all(b"next line\n").unwrap();
        assert_eq!(read(&path), "next line\n");
        assert_eq!(read(&f.old_path(1)).len(), 96);
    }
}
