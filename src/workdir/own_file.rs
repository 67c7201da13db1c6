//! One file of the updater's own in its work dir, with the rules every such file follows.

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, ReadBack};

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
    pub fn load<T>(&self, parse: impl FnOnce(&[u8]) -> Result<T, String>) -> Option<T> {
        let why = match self.read() {
            ReadBack::Missing => return None,
            ReadBack::Data(bytes) => match parse(&bytes) {
                Ok(v) => return Some(v),
                Err(e) => e,
            },
            ReadBack::Refused(why) => why,
        };
        match self.set_aside() {
            Ok(aside) => tracing::warn!(
                "ignoring {}: {why}; set aside as {}",
                self.path.display(),
                aside.display()
            ),
            Err(e) => tracing::warn!(
                "ignoring {}: {why}; cannot set it aside: {e}",
                self.path.display()
            ),
        }
        None
    }

    /// For `status`: the parsed file without touching anything; `Err` says why it is not
    /// usable.
    pub fn peek<T>(
        &self,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.read() {
            ReadBack::Missing => Ok(None),
            ReadBack::Data(bytes) => parse(&bytes).map(Some),
            ReadBack::Refused(why) => Err(why),
        }
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

    fn number(b: &[u8]) -> Result<u32, String> {
        std::str::from_utf8(b)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())
    }

    #[test]
    fn load_sets_aside_what_peek_only_reports() {
        let d = tempfile::tempdir().unwrap();
        let f = OwnFile::new(d.path().join("n.json"));
        assert_eq!(f.load(number), None);
        f.save(b"7").unwrap();
        assert_eq!(f.peek(number), Ok(Some(7)));
        assert_eq!(f.load(number), Some(7));
        f.save(b"seven").unwrap();
        assert!(f.peek(number).is_err());
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
}
