//! Crash-safe file primitives shared by the state file, the deploy journal and deployment.
//!
//! The protocol (as in Android's update_engine prefs and balena's `writeFileAtomic`):
//! write `<name>.tmp`, fsync it, rename it over `<name>`, fsync the parent directory.
//! After a power cut the name holds either the old or the new content, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
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
                // Exactly 0755 whatever the umask (CONTRACT.md section 4).
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

/// Free bytes available to this process on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_tmp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!tmp_sibling(&p).exists());
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
    fn available_bytes_is_nonzero_here() {
        let d = tempfile::tempdir().unwrap();
        assert!(available_bytes(d.path()).unwrap() > 0);
    }
}
