//! One file of the updater's own in its work dir, with the rules every such file follows.

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, ReadBack};

/// Why one of the updater's own files is not usable: `<path>: <why>`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct OwnFileError<E> {
    pub path: PathBuf,
    pub kind: Unusable<E>,
}

/// What is wrong with an own file; `E` is the error of the file's parser.
#[derive(Debug, thiserror::Error)]
pub enum Unusable<E> {
    /// Not read at all: not a regular file, over [`fsutil::MAX_READ_BACK`] bytes, or a read
    /// that failed, in [`fsutil::read_back`]'s words.
    #[error("{0}")]
    Refused(String),
    /// Read, but its content is not what the updater writes.
    #[error("{0}")]
    Parse(E),
}

/// A file the updater keeps (state, outcome, history, installed version, recovery counter,
/// journal). Reads never block and never bloat ([`fsutil::read_back`]); writes are atomic and
/// durable ([`fsutil::write_atomic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnFile {
    path: PathBuf,
}

impl OwnFile {
    pub fn new(path: PathBuf) -> OwnFile {
        OwnFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw read-back: missing, its bytes, or why it is refused.
    pub fn read(&self) -> ReadBack {
        fsutil::read_back(&self.path, fsutil::MAX_READ_BACK)
    }

    /// For the daemon: the parsed file, or `None` when there is none. One that is refused or
    /// does not parse is set aside with a warning (never blocking start-up) and counts as none.
    pub fn load<T, E: std::fmt::Display>(
        &self,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Option<T> {
        let why = match self.peek(parse) {
            Ok(found) => return found,
            Err(why) => why,
        };
        match self.set_aside() {
            Ok(aside) => tracing::warn!("ignoring {why}; set aside as {}", aside.display()),
            Err(e) => tracing::warn!("ignoring {why}; cannot set it aside: {e}"),
        }
        None
    }

    /// For `status`: the parsed file without touching anything; `Err` says why it is not
    /// usable.
    pub fn peek<T, E>(
        &self,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<Option<T>, OwnFileError<E>> {
        let kind = match self.read() {
            ReadBack::Missing => return Ok(None),
            ReadBack::Data(bytes) => match parse(&bytes) {
                Ok(v) => return Ok(Some(v)),
                Err(e) => Unusable::Parse(e),
            },
            ReadBack::Refused(why) => Unusable::Refused(why),
        };
        Err(OwnFileError {
            path: self.path.clone(),
            kind,
        })
    }

    /// Write `bytes` atomically and durably.
    pub fn save(&self, bytes: &[u8]) -> io::Result<()> {
        fsutil::write_atomic(&self.path, bytes)
    }

    /// [`OwnFile::save`] of `value` as pretty JSON.
    pub fn save_json<T: serde::Serialize>(&self, value: &T) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        self.save(&json)
    }

    /// Remove it durably (no error when it is already gone).
    pub fn remove(&self) -> io::Result<()> {
        fsutil::remove_durable(&self.path)
    }

    /// Move it out of the way as `<name>.unusable` ([`fsutil::set_aside`]); when an older
    /// `<name>.unusable` of another kind is in the way (a file where a directory is to go, or
    /// the reverse), that one is removed first.
    pub fn set_aside(&self) -> io::Result<PathBuf> {
        fsutil::set_aside(&self.path).or_else(|first| {
            let mut old = self.path.as_os_str().to_owned();
            old.push(".unusable");
            let old = PathBuf::from(old);
            let removed = match std::fs::symlink_metadata(&old) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&old),
                Ok(_) => std::fs::remove_file(&old),
                Err(_) => return Err(first),
            };
            removed.and_then(|()| fsutil::set_aside(&self.path))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(b: &[u8]) -> Result<u32, std::num::ParseIntError> {
        String::from_utf8_lossy(b).trim().parse()
    }

    #[test]
    fn load_sets_aside_what_peek_only_reports() {
        let d = tempfile::tempdir().unwrap();
        let f = OwnFile::new(d.path().join("n.json"));
        assert_eq!(f.load(number), None);
        f.save(b"7").unwrap();
        assert_eq!(f.peek(number).unwrap(), Some(7));
        assert_eq!(f.load(number), Some(7));
        f.save(b"seven").unwrap();
        let e = f.peek(number).unwrap_err();
        assert!(matches!(e.kind, Unusable::Parse(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{}: invalid digit found in string", f.path().display())
        );
        assert!(f.path().exists(), "peek touches nothing");
        assert_eq!(f.load(number), None);
        assert!(!f.path().exists());
        assert!(d.path().join("n.json.unusable").exists());
        // A directory set aside earlier under the same name does not stop the next one.
        std::fs::remove_file(d.path().join("n.json.unusable")).unwrap();
        std::fs::create_dir(d.path().join("n.json.unusable")).unwrap();
        f.save(b"x").unwrap();
        assert_eq!(f.load(number), None);
        assert!(d.path().join("n.json.unusable").is_file());
        f.save_json(&5u32).unwrap();
        assert_eq!(f.load(number), Some(5));
        f.remove().unwrap();
        f.remove().unwrap();
        assert!(!f.path().exists());
    }

    /// docs/API.md 8.3: what is not a regular file is refused unread, and says so.
    #[test]
    fn api_8_3_peek_names_a_refused_file_and_why() {
        let d = tempfile::tempdir().unwrap();
        let f = OwnFile::new(d.path().join("n.json"));
        std::fs::create_dir(f.path()).unwrap();
        let e = f.peek(number).unwrap_err();
        assert_eq!(e.path, f.path());
        assert!(matches!(e.kind, Unusable::Refused(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{}: is not a regular file", f.path().display())
        );
        assert_eq!(f.load(number), None);
        assert!(d.path().join("n.json.unusable").is_dir());
    }
}
