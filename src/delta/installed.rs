//! `tmp/installed-files.json` (docs/API.md 9.5): the files the last successful installation put
//! in place, each with its SHA-256 and what identified the file when that hash was taken (size,
//! modification time, device and inode). A hash is reused only while all of these are still
//! the file's; anything else (a file never recorded, e.g. put there by the Python updater, or
//! one changed since) is hashed again, never assumed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::workdir::OwnFile;

/// What identified a file when its hash was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_nsec: i64,
    pub dev: u64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            mtime_s: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// One recorded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// The whole record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledFiles {
    /// The version whose installation wrote the record.
    pub version: String,
    pub files: BTreeMap<PathBuf, Recorded>,
}

/// The record, or `None` when there is none (or it is not usable: set aside with a warning).
pub fn load(file: &OwnFile) -> Option<InstalledFiles> {
    file.load(|b: &[u8]| serde_json::from_slice::<InstalledFiles>(b))
}

/// The SHA-256 of the regular file at `path` now, from the record when its stamp is unchanged,
/// else hashed (and recorded). `None`: no regular file there (missing, a symlink, a directory).
pub fn sha256_now(path: &Path, record: &mut InstalledFiles) -> std::io::Result<Option<Checksum>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let stamp = Stamp::of(&meta);
    if let Some(r) = record.files.get(path).filter(|r| r.stamp == stamp) {
        if let Some(sum) = Checksum::from_hex(Algorithm::Sha256, &r.sha256) {
            return Ok(Some(sum));
        }
    }
    let Some((sum, stamp)) = hash_regular(path)? else {
        return Ok(None);
    };
    record.files.insert(
        path.to_path_buf(),
        Recorded {
            sha256: sum.to_hex(),
            stamp,
        },
    );
    Ok(Some(sum))
}

/// Hash the regular file at `path` (never through a symlink); `None` when it is not one or
/// changed while it was read.
pub fn hash_regular(path: &Path) -> std::io::Result<Option<(Checksum, Stamp)>> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let before = f.metadata()?;
    if !before.file_type().is_file() {
        return Ok(None);
    }
    let sum = hash_open(&mut f)?;
    let after = f.metadata()?;
    if Stamp::of(&before) != Stamp::of(&after) {
        return Ok(None);
    }
    Ok(Some((sum, Stamp::of(&after))))
}

/// The SHA-256 of what remains to be read of `f`.
pub fn hash_open(f: &mut File) -> std::io::Result<Checksum> {
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finalize()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// After a successful installation of `version`: every deployed file of a signed package with
/// its signed SHA-256 and its stamp now (files of an unsigned package are left out, so they
/// are hashed before a delta trusts them). Files of earlier installations stay recorded while
/// they exist: their stamps still guard them.
pub fn record_installation(
    file: &OwnFile,
    version: &str,
    deployed: &[(PathBuf, Checksum)],
) -> std::io::Result<()> {
    let mut record = load(file).unwrap_or_default();
    record.version = version.to_string();
    // Files gone from the printer leave the record, so it does not grow without bound.
    record.files.retain(|p, _| p.symlink_metadata().is_ok());
    for (dst, sum) in deployed {
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.file_type().is_file() => {
                record.files.insert(
                    dst.clone(),
                    Recorded {
                        sha256: sum.to_hex(),
                        stamp: Stamp::of(&m),
                    },
                );
            }
            _ => {
                record.files.remove(dst);
            }
        }
    }
    file.save_json(&record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> Checksum {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h.finalize()
    }

    /// docs/API.md 9.5: a recorded hash is used only while size, mtime and inode are the
    /// file's; a file rewritten (same size) is hashed again.
    #[test]
    fn a_changed_file_is_hashed_again_never_assumed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"old!").unwrap();
        let own = OwnFile::new(dir.path().join("installed-files.json"));
        record_installation(&own, "1.0.0", &[(p.clone(), sha(b"old!"))]).unwrap();
        let mut rec = load(&own).unwrap();
        assert_eq!(sha256_now(&p, &mut rec).unwrap(), Some(sha(b"old!")));
        // A lie in the record is believed only while the stamp holds...
        rec.files.get_mut(&p).unwrap().sha256 = sha(b"lie!").to_hex();
        assert_eq!(sha256_now(&p, &mut rec).unwrap(), Some(sha(b"lie!")));
        // ...and a rewrite (new inode through rename, same size) ends it.
        std::fs::write(dir.path().join("n"), b"new!").unwrap();
        std::fs::rename(dir.path().join("n"), &p).unwrap();
        assert_eq!(sha256_now(&p, &mut rec).unwrap(), Some(sha(b"new!")));
        // Never recorded: hashed.
        let q = dir.path().join("q");
        std::fs::write(&q, b"python").unwrap();
        assert_eq!(sha256_now(&q, &mut rec).unwrap(), Some(sha(b"python")));
        // Missing or a symlink: nothing to take.
        std::os::unix::fs::symlink(&q, dir.path().join("l")).unwrap();
        assert_eq!(sha256_now(&dir.path().join("l"), &mut rec).unwrap(), None);
        assert_eq!(sha256_now(&dir.path().join("x"), &mut rec).unwrap(), None);
    }
}
