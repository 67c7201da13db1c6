//! Crash-safe file primitives shared by the state file, the deploy journal and deployment.
//!
//! The protocol (as in Android's update_engine prefs and balena's `writeFileAtomic`):
//! write `<name>.tmp`, fsync it, rename it over `<name>`, fsync the parent directory.
//! After a power cut the name holds either the old or the new content, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `<path>.tmp`, next to `path` (same directory, so same filesystem: rename is atomic).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// fsync a directory so that renames and creations inside it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync the parent directory of `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Atomically replace `path` with `data` (temp file, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    let result = (|| {
        // Never through a symbolic link planted at the temporary's name (docs/API.md 9.6).
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Remove a file durably; a missing file is not an error.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create `dir` and its missing parents with mode 0755, fsyncing each new directory's parent.
/// Returns the directories that were created, outermost first.
pub fn create_dirs_durable(dir: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match fs::DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => {
                // Exactly 0755 whatever the umask (docs/API.md section 4).
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        fsync_parent(d)?;
    }
    Ok(missing)
}

/// Largest file the updater reads back from its own work dir (docs/API.md section 8.3).
pub const MAX_READ_BACK: u64 = 1024 * 1024;

/// What [`read_back`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadBack {
    Missing,
    Data(Vec<u8>),
    /// Not a regular file (FIFO, directory, symlink, device), too large, or unreadable: the
    /// reason, for a warning. The caller sets it aside ([`set_aside`]) and goes on.
    Refused(String),
}

/// Read one of the updater's own files (`state.json`, the journal, the outcome) without ever
/// blocking or bloating: opened non-blocking and without following a symlink, and read only
/// when it is a regular file of at most `max` bytes. A FIFO planted under the name cannot hang
/// start-up, a huge file cannot fill memory.
pub fn read_back(path: &Path, max: u64) -> ReadBack {
    read_bounded(path, max, false)
}

/// Read a file a person points the updater at (`--config`): like [`read_back`], but a
/// symlink is followed (`/etc/tope-updater/config.toml` may well be one); what it leads to must
/// still be a regular file of at most `max` bytes, so a FIFO, `/dev/zero` or a huge file is
/// refused at once instead of hanging or filling memory (docs/API.md 9.6).
pub fn read_operator_file(path: &Path, max: u64) -> ReadBack {
    read_bounded(path, max, true)
}

fn read_bounded(path: &Path, max: u64, follow: bool) -> ReadBack {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return ReadBack::Missing,
        Err(rustix::io::Errno::LOOP) if !follow => {
            return ReadBack::Refused("is a symbolic link".into())
        }
        Err(e) => return ReadBack::Refused(format!("cannot open: {}", io::Error::from(e))),
    };
    let file = File::from(fd);
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return ReadBack::Refused(format!("cannot stat: {e}")),
    };
    if !meta.file_type().is_file() {
        return ReadBack::Refused("is not a regular file".into());
    }
    if meta.len() > max {
        return ReadBack::Refused(format!("is {} bytes, more than {max}", meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    match file.take(max + 1).read_to_end(&mut data) {
        Ok(_) if data.len() as u64 > max => {
            ReadBack::Refused(format!("grew past {max} bytes while being read"))
        }
        Ok(_) => ReadBack::Data(data),
        Err(e) => ReadBack::Refused(format!("cannot read: {e}")),
    }
}

/// Move an unusable file of the updater's out of the way, as `<name>.unusable` beside it
/// (replacing an older one, so there is at most one per name), and return the new name.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".unusable");
    let aside = PathBuf::from(aside);
    if let Ok(m) = fs::symlink_metadata(&aside) {
        if m.is_dir() {
            fs::remove_dir_all(&aside)?;
        }
    }
    fs::rename(path, &aside)?;
    fsync_parent(path)?;
    Ok(aside)
}

/// Free bytes available to this process on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A FIFO at `path` (for the tests of readers that must never open one).
#[cfg(test)]
pub(crate) fn make_fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn write_atomic_replaces_and_leaves_no_tmp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!tmp_sibling(&p).exists());
    }

    /// docs/API.md 9.6: a symbolic link planted at the temporary's name is never followed
    /// (the file it points at stays as it was); it is removed, and the next write succeeds.
    #[test]
    fn contract_9_6_write_atomic_never_follows_a_link_at_its_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.json");
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, tmp_sibling(&p)).unwrap();
        assert!(write_atomic(&p, b"x").is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(tmp_sibling(&p)).is_err());
        write_atomic(&p, b"y").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"y");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn create_dirs_reports_new_ones_with_0755() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("a/b/c");
        let made = create_dirs_durable(&target).unwrap();
        assert_eq!(made.len(), 3);
        assert_eq!(made[0], d.path().join("a"));
        for m in &made {
            let mode = fs::metadata(m).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{}", m.display());
        }
        assert!(create_dirs_durable(&target).unwrap().is_empty());
    }

    #[test]
    fn read_back_refuses_what_is_not_a_small_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        assert_eq!(read_back(&p, 10), ReadBack::Missing);
        fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_back(&p, 10), ReadBack::Data(b"0123456789".to_vec()));
        assert!(matches!(read_back(&p, 9), ReadBack::Refused(_)));
        let fifo = d.path().join("fifo");
        crate::fsutil::make_fifo(&fifo);
        // A FIFO with no writer would block a plain open forever.
        assert!(matches!(read_back(&fifo, 10), ReadBack::Refused(_)));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(read_back(&link, 10), ReadBack::Refused(_)));
        assert!(matches!(read_back(d.path(), 10), ReadBack::Refused(_)));
        let aside = set_aside(&fifo).unwrap();
        assert!(!fifo.exists());
        assert!(fs::symlink_metadata(&aside).unwrap().file_type().is_fifo());
    }

    #[test]
    fn available_bytes_is_nonzero_here() {
        let d = tempfile::tempdir().unwrap();
        assert!(available_bytes(d.path()).unwrap() > 0);
    }
}
