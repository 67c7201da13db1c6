//! A real small tmpfs for the tests of a full disk (mounting needs root: CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (saying why) when not root outside CI.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        if std::env::var_os("CI").is_some() {
            panic!(
                "cannot mount a tmpfs at {} (CI runs as root and must)",
                dir.display()
            );
        }
        eprintln!("skipping: cannot mount a tmpfs (needs root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
