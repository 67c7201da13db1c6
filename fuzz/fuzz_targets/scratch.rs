//! A scratch directory per input, for the readers that take a path. Removed when dropped, so
//! a run leaves nothing behind but what libFuzzer writes itself.

// Each target includes this module and uses what it needs of it.
#![allow(dead_code)]

use std::path::PathBuf;

pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(tempfile::tempdir().expect("a scratch directory in TMPDIR"))
    }

    /// Write `data` as the file `name` of the scratch directory; its path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, data).expect("writing a scratch file");
        path
    }

    /// The directory `name` of the scratch directory, created; its path.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        path
    }
}
