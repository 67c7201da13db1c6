//! A scratch directory per input, for the readers that take a path. Removed when dropped, so
//! a run leaves nothing behind but what libFuzzer writes itself.

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
}
