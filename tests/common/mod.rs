//! Harness for the integration tests: the real `tope-updater` binary against real servers
//! (nginx over HTTPS, a fake device-api on axum), each test in its own temporary directory
//! with its own ports and processes.
//!
//! The package server of the hostile tests, the fake device-api, the fake DDI fleet server,
//! the certificates, the ZIP builder and the digests are the crate's kit (`tope_updater::kit`, shared with `demo`); the
//! modules here give them the shape of a test (a failure panics, saying what failed).
//! Processes are found with `tope_updater::process::scan`.
#![allow(dead_code, unused_imports)]

#[cfg(not(feature = "demo"))]
compile_error!(
    "the integration tests use the kit of the `demo` feature: build them with the default features"
);

pub mod bench;
pub mod cpio;
pub mod daemon;
pub mod ddi;
pub mod device_api;
pub mod goosebit;
pub mod hostile;
pub mod http;
pub mod nginx;
pub mod notify;
pub mod package;
pub mod procs;
pub mod signed;
pub mod soak_rng;
pub mod tmpfs;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use daemon::{Daemon, DaemonOptions};
pub use ddi::FakeDdi;
pub use device_api::FakeDeviceApi;
pub use nginx::Nginx;
pub use package::{build_package, build_zip, manifest, Entry};
pub use tope_updater::kit::{md5_hex, pseudo_random_bytes};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    tope_updater::kit::free_port()
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A process/file name unique to this test process and call, at most 15 bytes so that it is
/// exactly the kernel's `comm` of a process started from a file of that name.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag: String = tag.chars().take(4).collect();
    let name = format!("tu{}{:x}{}", tag, std::process::id() % 0xfffff, n);
    assert!(name.len() <= 15, "name too long for comm: {name}");
    name
}

/// Lowercase hex MD5 of a file's contents.
pub fn md5_file(path: &Path) -> String {
    tope_updater::kit::md5_file(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Polls `f` every 50 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until_or_none(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` every 50 ms until it returns `Some`; `None` after `timeout`.
pub fn wait_until_or_none<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unix mode bits (permissions only) of a path.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Writes a file with the given mode, creating parent directories.
pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Lists every file (not directory) below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One test's private directory tree:
/// `work/` (the daemon's work_dir), `root/opt/tope/` (its only allowed root),
/// `bin/` (programs the test runs), `nginx/` (the package server).
pub struct Workspace {
    pub tmp: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let tmp = tempfile::Builder::new()
            .prefix("tope-it-")
            .tempdir()
            .expect("tempdir");
        let ws = Workspace { tmp };
        std::fs::create_dir_all(ws.work_dir()).unwrap();
        std::fs::create_dir_all(ws.root()).unwrap();
        std::fs::create_dir_all(ws.bin_dir()).unwrap();
        ws
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn work_dir(&self) -> PathBuf {
        self.path().join("work")
    }

    /// The directory named in `allowed_roots`.
    pub fn root(&self) -> PathBuf {
        self.path().join("root/opt/tope")
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.path().join("bin")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.path().join("ca.pem")
    }

    pub fn state_file(&self) -> PathBuf {
        self.work_dir().join("tmp/state.json")
    }

    pub fn tmp_file(&self, package_name: &str) -> PathBuf {
        self.work_dir().join("tmp").join(package_name)
    }

    /// Starts nginx serving `<tmp>/nginx/www` over HTTPS, its CA written to `ca_file()`.
    /// `None` (after printing why) when nginx is not installed outside CI.
    pub fn nginx(&self) -> Option<Nginx> {
        Nginx::start(&self.path().join("nginx"), &self.ca_file())
    }

    /// A copy of /bin/sleep named `name` in `bin/` (its `comm` is `name`).
    pub fn sleep_copy(&self, name: &str) -> PathBuf {
        let p = self.bin_dir().join(name);
        let data = std::fs::read("/bin/sleep").expect("read /bin/sleep");
        write_file(&p, &data, 0o755);
        p
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

/// The bytes of /bin/sleep followed by a marker: still a working `sleep`, but a different file.
pub fn sleep_binary_with_marker(marker: &str) -> Vec<u8> {
    let mut data = std::fs::read("/bin/sleep").expect("read /bin/sleep");
    data.extend_from_slice(format!("\nTOPE-MARKER:{marker}\n").as_bytes());
    data
}

/// Whether a file ends with the marker added by `sleep_binary_with_marker`.
pub fn has_marker(path: &Path, marker: &str) -> bool {
    let data = std::fs::read(path).unwrap_or_default();
    data.ends_with(format!("\nTOPE-MARKER:{marker}\n").as_bytes())
}

/// The standard body of POST /download.
pub fn download_body(version: &str, url: &str, name: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "version": version,
        "package_url": url,
        "package_name": name,
        "package_size": data.len(),
        "package_md5": md5_hex(data),
    })
}

/// RFC 3339 UTC timestamp `secs_ago` seconds in the past, e.g. `2026-11-25T10:00:00Z`.
pub fn rfc3339_ago(secs_ago: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::seconds(secs_ago);
    t.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}
