//! The file source (docs/API.md 9.2): a package on a USB stick or SD card, named by a
//! `file:///<absolute path>` URL, copied into `./tmp/` through the same write thread,
//! checkpoints and hash as an HTTP download.
//!
//! - What is accepted: `file:///<path>` or `file://localhost/<path>` (percent-escapes decoded),
//!   no query, no fragment; the file itself must be a regular file reached without a symlink
//!   as its last component (a link on a stick could name a FIFO, a device or a file elsewhere
//!   on the printer). Directories on the way may be links (`/media/usb` often is one).
//! - Nothing ever blocks on the source: it is opened with `O_NOFOLLOW | O_NONBLOCK |
//!   O_NOCTTY`, and anything but a regular file is refused after `fstat`, so a FIFO or a device
//!   swapped in after the check is never read.
//! - A stick pulled mid-copy (the file shrinks, vanishes from under the mount, or a read fails)
//!   ends the copy at once: no retries, since a medium that failed will not heal by waiting.
//!   The caller removes the partial file (`DownloadError::keeps_partial`).
//! - The copy is bounded: the source must be exactly `package_size` bytes when it is opened and
//!   must end there; a source that grew fails.
//! - A restart in the middle resumes from the durable byte position when the source is the
//!   same file (same size and modification time, kept as the validator in `state.json`);
//!   otherwise the copy starts over from byte 0.
//! - No bandwidth cap and no stall rule apply (they are about networks).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{Mode, OFlags};

use super::disk::{write_err, Checkpointer, WriteMsg, Writer};
use super::fetch::Finished;
use super::pace::CheckpointPace;
use super::{DownloadError, DownloadParams, DownloadSink};
use crate::lifecycle::{download_percent, report_step, Validator};

/// Bytes read from the source at a time.
const CHUNK: usize = 256 * 1024;

/// Why a `file:` URL is not acceptable (the text follows `package_url: ` in a
/// `VALIDATION_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileUrlError {
    #[error("a file URL must be file:///<absolute path>")]
    NotAbsolute,
    #[error("a file URL takes no query or fragment (escape `?` as %3F, `#` as %23)")]
    QueryOrFragment,
    #[error("a file URL names a file on this printer: host `{0}` is not empty or localhost")]
    Host(String),
    #[error("a file URL holds a `%` that is not followed by two hex digits")]
    BadEscape,
    #[error("a file URL may not hold a NUL byte")]
    Nul,
}

/// Why a `file://` source cannot be copied: refused before the copy (`VALIDATION_ERROR` at
/// `/download`) or lost during it (`DOWNLOAD_FAILED`). Each message names the file; an I/O
/// error's own text ends it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Url(#[from] FileUrlError),
    #[error("{} is not an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    /// `lstat`, `open`, `fstat` of the file or of a directory above it failed.
    #[error("{}: {io}", path.display())]
    Io { path: PathBuf, io: std::io::Error },
    #[error("{} is {kind}", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{} is not readable by every user (mode {mode:04o}); only such files are copied",
        path.display()
    )]
    NotReadableByAll { path: PathBuf, mode: u32 },
    #[error(
        "{} is in {}, which not every user may enter (mode {mode:04o}); only files every user \
         may read are copied",
        path.display(),
        dir.display()
    )]
    DirClosed {
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },
    /// `fstat` of the opened source failed.
    #[error("{0}")]
    Stat(std::io::Error),
    #[error("{} is {len} bytes, package_size is {size}", path.display())]
    WrongSize { path: PathBuf, len: u64, size: u64 },
    #[error("cannot seek to byte {at}: {io}")]
    Seek { at: u64, io: std::io::Error },
    #[error("read error at byte {at} of {} (medium removed?): {io}", path.display())]
    Read {
        path: PathBuf,
        at: u64,
        io: std::io::Error,
    },
    #[error("{} ended at byte {at} of {size} (medium removed or file changed)", path.display())]
    Ended { path: PathBuf, at: u64, size: u64 },
    #[error("{} grew beyond package_size {size} while it was copied", path.display())]
    Grew { path: PathBuf, size: u64 },
}

/// Whether `url` names a file (`file:` scheme, any case), whatever else it holds.
pub fn is_file_url(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("file:"))
}

/// The absolute path a `file:` URL names, or why it is not acceptable.
pub fn file_url_path(url: &str) -> Result<PathBuf, FileUrlError> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("file://"))
        .map(|_| &url[7..])
        .ok_or(FileUrlError::NotAbsolute)?;
    if rest.contains(['?', '#']) {
        return Err(FileUrlError::QueryOrFragment);
    }
    let slash = rest.find('/').ok_or(FileUrlError::NotAbsolute)?;
    let host = &rest[..slash];
    if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
        return Err(FileUrlError::Host(host.to_string()));
    }
    let path = percent_decode(&rest[slash..])?;
    if path.contains(&0) {
        return Err(FileUrlError::Nul);
    }
    Ok(PathBuf::from(OsString::from_vec(path)))
}

fn percent_decode(s: &str) -> Result<Vec<u8>, FileUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(FileUrlError::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The `file://` URL of an absolute path (every byte but unreserved ones and `/` escaped).
pub fn file_url_of(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// What kind of file, for a refusal.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link (give the path of the file itself)"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device node"
    } else {
        "not a regular file"
    }
}

/// Open the source without following a final symlink and without ever blocking, and make
/// sure it is a regular file. The error is a sentence for the `VALIDATION_ERROR` or the
/// `DOWNLOAD_FAILED` detail.
pub fn open_source(path: &Path) -> Result<File, SourceError> {
    if !path.is_absolute() {
        return Err(SourceError::NotAbsolute(path.to_path_buf()));
    }
    let io = |io: std::io::Error| SourceError::Io {
        path: path.to_path_buf(),
        io,
    };
    let not_regular = |ft: std::fs::FileType| SourceError::NotRegular {
        path: path.to_path_buf(),
        kind: kind(ft),
    };
    // lstat first: a FIFO or device is refused without being opened at all.
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let file = File::from(fd);
    // Swapped for something else between the lstat and the open?
    let ft = file.metadata().map_err(io)?.file_type();
    if !ft.is_file() {
        return Err(not_regular(ft));
    }
    readable_by_anyone(path, &file)?;
    Ok(file)
}

/// The updater runs as root and answers anyone who can reach its API: a `file://` source must
/// be a file every user may read (the others-read bit, and the others-search bit on each
/// directory above it), so that the copy, its size check and its MD5 check never tell a caller
/// anything about a file it could not read itself (`/etc/shadow`, a key in `/root`). A stick's
/// files are readable by all with the usual mount options.
fn readable_by_anyone(path: &Path, file: &File) -> Result<(), SourceError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|io| SourceError::Io {
            path: path.to_path_buf(),
            io,
        })?
        .permissions()
        .mode();
    if mode & 0o004 == 0 {
        return Err(SourceError::NotReadableByAll {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    for dir in path.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map_err(|io| SourceError::Io {
                path: dir.to_path_buf(),
                io,
            })?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(SourceError::DirClosed {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// The validator of a source file: its size and modification time. A copy resumes only from
/// the same file.
fn identity(m: &std::fs::Metadata) -> Validator {
    Validator {
        etag: Some(format!(
            "\"file-{}-{}.{:09}\"",
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        )),
        last_modified: None,
    }
}

struct Copy<'a> {
    p: &'a DownloadParams<'a>,
    url: String,
    sink: &'a dyn DownloadSink,
    ck: &'a Checkpointer<'a>,
    w: &'a Writer<'a>,
    validator: Validator,
    offset: u64,
    /// When the next background checkpoint is due.
    pace: CheckpointPace,
}

impl Copy<'_> {
    fn lost(&self, reason: SourceError) -> DownloadError {
        DownloadError::SourceLost {
            url: self.url.clone(),
            reason,
        }
    }

    fn checkpoint(&mut self) -> Result<(), DownloadError> {
        self.w
            .barrier()
            .and_then(|()| self.ck.sync_now(self.offset, &self.validator))
            .map_err(|e| write_err(self.p.path, e))?;
        let step = report_step(download_percent(self.offset, self.p.spec.package_size));
        self.pace.made(step, self.offset, Instant::now());
        Ok(())
    }

    fn send(&self, m: WriteMsg) -> Result<(), DownloadError> {
        self.w.send(m).map_err(|e| write_err(self.p.path, e))
    }
}

/// Copy the source into the download file, from byte `keep` of it.
pub(super) fn run(
    p: &DownloadParams<'_>,
    source: &Path,
    sink: &dyn DownloadSink,
    ck: &Checkpointer<'_>,
    w: &Writer<'_>,
    keep: u64,
) -> Result<Finished, DownloadError> {
    let size = p.spec.package_size;
    let url = p.spec.package_url.clone();
    let mut file = open_source(source).map_err(|reason| DownloadError::SourceLost {
        url: url.clone(),
        reason,
    })?;
    let meta = file.metadata().map_err(|e| DownloadError::SourceLost {
        url: url.clone(),
        reason: SourceError::Stat(e),
    })?;
    let mut c = Copy {
        p,
        url,
        sink,
        ck,
        w,
        validator: identity(&meta),
        offset: keep,
        pace: CheckpointPace::new(
            report_step(download_percent(keep, size)),
            keep,
            Instant::now(),
        ),
    };
    if meta.len() != size {
        return Err(c.lost(SourceError::WrongSize {
            path: source.to_path_buf(),
            len: meta.len(),
            size,
        }));
    }
    if keep > 0 && p.validator != c.validator {
        tracing::info!(
            "{} is not the file the partial copy came from (size or modification time changed): \
             copying it from byte 0",
            source.display()
        );
        c.send(WriteMsg::Reset)?;
        c.offset = 0;
        c.checkpoint()?;
    }
    c.sink.progress(c.offset);
    tracing::info!(
        "copying {} from {} (byte {} of {size})",
        p.spec.package_name,
        source.display(),
        c.offset
    );
    file.seek(SeekFrom::Start(c.offset))
        .map_err(|io| c.lost(SourceError::Seek { at: c.offset, io }))?;
    while c.offset < size {
        if p.shutdown.is_set() {
            c.checkpoint()?;
            return Ok(Finished::Interrupted(c.offset));
        }
        let want = (size - c.offset).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = read_retrying(&mut file, &mut buf).map_err(|io| {
            c.lost(SourceError::Read {
                path: source.to_path_buf(),
                at: c.offset,
                io,
            })
        })?;
        if n == 0 {
            return Err(c.lost(SourceError::Ended {
                path: source.to_path_buf(),
                at: c.offset,
                size,
            }));
        }
        buf.truncate(n);
        c.send(WriteMsg::Data(buf.into()))?;
        c.offset += n as u64;
        c.sink.progress(c.offset);
        let step = report_step(download_percent(c.offset, size));
        if c.pace.due(step, c.offset, Instant::now()) {
            c.send(WriteMsg::Checkpoint(c.validator.clone()))?;
        }
    }
    // Bounded: the source must end at package_size.
    let mut probe = [0u8; 1];
    match read_retrying(&mut file, &mut probe) {
        Ok(0) => {}
        Ok(_) => {
            return Err(c.lost(SourceError::Grew {
                path: source.to_path_buf(),
                size,
            }))
        }
        Err(io) => {
            return Err(c.lost(SourceError::Read {
                path: source.to_path_buf(),
                at: size,
                io,
            }))
        }
    }
    c.checkpoint()?;
    Ok(Finished::Complete)
}

fn read_retrying(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_9_2_file_urls_accepted_and_refused() {
        let ok = [
            ("file:///media/usb/p.zip", "/media/usb/p.zip"),
            ("FILE:///media/usb/p.zip", "/media/usb/p.zip"),
            ("file://localhost/m/p.zip", "/m/p.zip"),
            ("file:///m/a%20b%3F.zip", "/m/a b?.zip"),
        ];
        for (url, path) in ok {
            assert_eq!(file_url_path(url), Ok(PathBuf::from(path)), "{url}");
        }
        for url in [
            "file://rel",
            "file:x",
            "file:/abs",
            "file://host/p.zip",
            "file:///p.zip?x=1",
            "file:///p.zip#f",
            "file:///p%zz.zip",
            "file:///p%00.zip",
        ] {
            assert!(file_url_path(url).is_err(), "{url}");
        }
    }

    #[test]
    fn api_9_2_file_url_of_round_trips_through_file_url_path() {
        for p in ["/m/p.zip", "/m/a b/ü%#?.zip"] {
            let url = file_url_of(Path::new(p));
            assert!(!url[7..].contains(['?', '#', ' ']), "{url}");
            assert_eq!(file_url_path(&url), Ok(PathBuf::from(p)));
        }
    }

    #[test]
    fn api_9_2_open_source_refuses_what_is_not_a_regular_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.path().join("p.zip");
        std::fs::write(&f, b"zip").unwrap();
        assert!(open_source(&f).is_ok());
        let link = d.path().join("link.zip");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let fifo = d.path().join("fifo");
        crate::fsutil::make_fifo(&fifo);
        for (p, why) in [
            (d.path().to_path_buf(), "a directory"),
            (link, "a symbolic link"),
            (fifo, "a FIFO"),
            (PathBuf::from("/dev/null"), "a device node"),
            (d.path().join("missing"), "No such file"),
            (PathBuf::from("rel.zip"), "not an absolute path"),
        ] {
            let e = open_source(&p).unwrap_err().to_string();
            assert!(e.contains(why), "{}: {e}", p.display());
        }
    }

    /// docs/API.md 9.2: the root daemon copies only files every user may read, so that no
    /// caller learns the size or the MD5 of a file it could not read itself.
    #[test]
    fn api_9_2_only_files_anyone_may_read_are_copied() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let d = tempfile::tempdir().unwrap();
        mode(d.path(), 0o755);
        let f = d.path().join("p.zip");
        std::fs::write(&f, b"zip").unwrap();
        mode(&f, 0o640);
        let e = open_source(&f).unwrap_err().to_string();
        assert!(e.contains("not readable by every user (mode 0640)"), "{e}");
        mode(&f, 0o644);
        assert!(open_source(&f).is_ok());
        let private = d.path().join("private");
        std::fs::create_dir(&private).unwrap();
        let inner = private.join("p.zip");
        std::fs::write(&inner, b"zip").unwrap();
        mode(&inner, 0o644);
        mode(&private, 0o700);
        let e = open_source(&inner).unwrap_err().to_string();
        assert!(
            e.contains("which not every user may enter (mode 0700)"),
            "{e}"
        );
        mode(&private, 0o755);
        assert!(open_source(&inner).is_ok());
    }
}
