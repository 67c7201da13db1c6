//! Delta downloads against the real daemon and a real nginx (docs/API.md 9.5): only the ZIP
//! entries whose signed sha256 differs from the installed file cross the network (counted in
//! nginx's access log), the rest is taken from the installed files; resumes after SIGKILL
//! without fetching again; falls back to the whole package (unsigned, no Range, turned off);
//! never installs a tampered entry; fetches a file changed on the printer.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{progress_of, stage_of};
use common::signed::{files, package, signed_manifest, signed_package, test_key};
use common::*;
use serde_json::Value;
use tope_updater::package::SigningKey;

const FILES: usize = 40;
const FILE_SIZE: usize = 300 * 1024;
/// What a delta fetches besides the entries: the end record read with the 64 KiB a comment
/// may take, and the manifest and signature.
const HEAD_BYTES: u64 = 65557 + 16 * 1024;

struct Fx {
    ws: Workspace,
    api: FakeDeviceApi,
    nginx: Nginx,
    d: Daemon,
    key: SigningKey,
    public: String,
    dst: PathBuf,
}

type Files = Vec<(String, Vec<u8>)>;

/// A printer with version 1.0.0 of the module `app` (40 files) installed from a signed package.
fn installed_v1(extra: &str) -> Option<(Fx, Files)> {
    let ws = Workspace::new();
    let nginx = ws.nginx()?;
    let api = FakeDeviceApi::start();
    let (key, public) = test_key();
    let d = start(&ws, &api, &public, extra);
    let dst = ws.root().join("app");
    let v1 = files(FILES, FILE_SIZE, |_| 1);
    let pkg = signed_package("1.0.0", &dst.to_string_lossy(), &key, &v1);
    let p = d.install_package(&nginx, "v1.zip", "1.0.0", &pkg);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let f = Fx {
        ws,
        api,
        nginx,
        d,
        key,
        public,
        dst,
    };
    f.assert_files(&v1, "after the first installation");
    Some((f, v1))
}

fn start(ws: &Workspace, api: &FakeDeviceApi, public: &str, extra: &str) -> Daemon {
    let opts = DaemonOptions {
        extra_toml: format!("trusted_keys = [\"{public}\"]\nsettle_s = 0\n{extra}"),
        ..Default::default()
    };
    Daemon::start(ws, api, opts)
}

impl Fx {
    fn assert_files(&self, files: &Files, when: &str) {
        for (name, data) in files {
            let path = self.dst.join(name.trim_start_matches("app/"));
            let found = std::fs::read(&path).unwrap_or_default();
            assert!(found == *data, "{}: wrong content {when}", path.display());
        }
    }

    fn signed(&self, version: &str, files: &Files) -> Vec<u8> {
        signed_package(version, &self.dst.to_string_lossy(), &self.key, files)
    }

    /// Serves `pkg` as `rel` and posts its `/download` (as `version`).
    fn download(&self, rel: &str, version: &str, pkg: &[u8]) {
        let url = self.nginx.put(rel, pkg);
        let name = Path::new(rel).file_name().unwrap().to_string_lossy();
        self.d
            .post_download(&download_body(version, &url, &name, pkg));
    }

    /// Bytes nginx sent for `rel` (bodies), and the number of requests.
    fn sent(&self, rel: &str) -> (u64, usize) {
        let lines = self.nginx.access_log(Some(rel));
        (lines.iter().map(|l| l.body_bytes_sent).sum(), lines.len())
    }
}

/// `files` with the entries `changed` in their version `v`.
fn changed(changed: &[usize], v: u64) -> Files {
    files(
        FILES,
        FILE_SIZE,
        |i| if changed.contains(&i) { v } else { 1 },
    )
}

fn wait_outcome(d: &Daemon) -> Value {
    d.wait_outcome()
}

/// docs/API.md 9.5: a signed package over a server that honours Range, with the last
/// installation recorded: only the changed entries (and the directory and signed manifest)
/// cross the network, unchanged entries come from the installed files, the installation
/// deploys exactly the new version, and `/progress` goes from 0 to 100 as for a full download.
#[test]
fn docs_api_9_5_only_the_changed_entries_cross_the_network() {
    let Some((f, _)) = installed_v1("") else {
        return;
    };
    let (v1_bytes, _) = f.sent("v1.zip");
    let v2 = changed(&[3, 17], 2);
    let pkg = f.signed("1.1.0", &v2);
    assert!(
        v1_bytes >= pkg.len() as u64 - 4096,
        "the first download was whole"
    );
    f.download("v2.zip", "1.1.0", &pkg);
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let (bytes, requests) = f.sent("v2.zip");
    let changed_bytes = 2 * FILE_SIZE as u64;
    assert!(
        bytes >= changed_bytes && bytes <= changed_bytes + HEAD_BYTES + 8 * 1024,
        "a delta of 2 changed entries of {FILE_SIZE} bytes sent {bytes} of {} bytes\n{}",
        pkg.len(),
        f.nginx.raw_access_log()
    );
    assert!(
        requests <= 5,
        "{requests} requests\n{}",
        f.nginx.raw_access_log()
    );
    assert!(
        f.nginx
            .access_log(Some("v2.zip"))
            .iter()
            .all(|l| l.status == 206 && l.range.is_some()),
        "{}",
        f.nginx.raw_access_log()
    );
    let log = f.d.output();
    assert!(log.contains("package_md5 is not checked"), "{log}");
    // The record of the installed files was read, not set aside.
    let tmp = f.ws.work_dir().join("tmp");
    assert!(tmp.join("installed-files.json").is_file());
    let aside: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".unusable"))
        .collect();
    assert!(aside.is_empty(), "{aside:?}\n{log}");
    // /progress and the reports of this download: 0 first, 100 last, never backwards.
    let bodies = f.api.bodies();
    let stage = |b: &Value| b["stage"].as_str().unwrap_or_default().to_string();
    let reports: Vec<u64> = bodies
        .iter()
        .skip_while(|b| stage(b) != "success")
        .skip_while(|b| stage(b) != "downloading")
        .take_while(|b| stage(b) == "downloading")
        .filter_map(|b| b["progress"].as_u64())
        .collect();
    assert_eq!(reports.first(), Some(&0), "{reports:?}");
    assert_eq!(reports.last(), Some(&100), "{reports:?}");
    assert!(reports.windows(2).all(|w| w[0] <= w[1]), "{reports:?}");
    assert_eq!(progress_of(&f.d.progress()), 100);

    f.d.post_update("1.1.0");
    let p = wait_outcome(&f.d);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", f.d.output());
    f.assert_files(&v2, "after the delta installation");
}

/// docs/API.md 9.5 (resumes like any download): SIGKILL in the middle of a delta; after the
/// restart it goes on from its durable position: what crossed the network in both runs is
/// about one delta, not a delta and a half.
#[test]
fn docs_api_9_5_a_delta_resumes_after_sigkill_without_fetching_again() {
    let Some((mut f, _)) = installed_v1("") else {
        return;
    };
    let which: Vec<usize> = (0..10).map(|i| i * 4).collect();
    let v2 = changed(&which, 2);
    let pkg = f.signed("1.1.0", &v2);
    // Served at 512 KiB/s by nginx itself: about 6 s for the 10 changed entries.
    f.download("slow/v2.zip", "1.1.0", &pkg);
    let record = f.ws.work_dir().join("tmp/delta.json");
    let done = || -> u64 {
        let text = std::fs::read(&record).unwrap_or_default();
        let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        v["spans"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["done"].as_u64()).sum())
            .unwrap_or(0)
    };
    wait_until(
        "1 MiB of the delta durable",
        Duration::from_secs(30),
        || (done() >= 1 << 20).then_some(()),
    );
    f.d.sigkill();
    // nginx logs the request cut by the kill once it notices the closed connection: the one
    // line whose body is shorter than its range (none when the kill fell between requests).
    let cut = |l: &common::nginx::AccessLine| {
        let r = l.range.as_deref().and_then(|r| r.strip_prefix("bytes="));
        let len = r.and_then(|r| r.split_once('-')).and_then(|(a, b)| {
            Some(b.trim().parse::<u64>().ok()? + 1 - a.trim().parse::<u64>().ok()?)
        });
        len.is_some_and(|n| l.body_bytes_sent < n)
    };
    wait_until_or_none(Duration::from_secs(5), || {
        f.nginx
            .access_log(Some("slow/v2.zip"))
            .iter()
            .any(cut)
            .then_some(())
    });
    let before = f.nginx.access_log(Some("slow/v2.zip")).len();
    let durable = done();
    f.d.restart();
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let lines = f.nginx.access_log(Some("slow/v2.zip"));
    let after: u64 = lines[before..].iter().map(|l| l.body_bytes_sent).sum();
    let total: u64 = lines.iter().map(|l| l.body_bytes_sent).sum();
    let changed_bytes = (which.len() * FILE_SIZE) as u64;
    assert!(
        after <= changed_bytes - durable + 64 * 1024,
        "after the restart {after} bytes were sent, {durable} of {changed_bytes} were durable\n{}",
        f.nginx.raw_access_log()
    );
    assert!(
        total <= changed_bytes + HEAD_BYTES + 512 * 1024,
        "{total} bytes in all for {changed_bytes} bytes of changed entries\n{}",
        f.nginx.raw_access_log()
    );
    f.d.post_update("1.1.0");
    let p = wait_outcome(&f.d);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", f.d.output());
    f.assert_files(&v2, "after the resumed delta");
}

/// docs/API.md 9.5 fallbacks: an unsigned package, a server that ignores Range, and
/// `delta_downloads = false` are each downloaded whole (and install).
#[test]
fn docs_api_9_5_unsigned_no_range_and_turned_off_download_whole() {
    let Some((mut f, _)) = installed_v1("") else {
        return;
    };
    // Unsigned (found so in its central directory, read with Range): then one plain GET of
    // the whole file.
    let v2 = changed(&[1], 2);
    let dst = f.dst.to_string_lossy().to_string();
    let unsigned = package(&signed_manifest("1.1.0", &dst, &v2), None, &v2);
    f.download("unsigned.zip", "1.1.0", &unsigned);
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let lines = f.nginx.access_log(Some("unsigned.zip"));
    let (whole, ranged): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.range.is_none());
    assert_eq!(whole.len(), 1, "{}", f.nginx.raw_access_log());
    assert_eq!(whole[0].body_bytes_sent, unsigned.len() as u64);
    let directory: u64 = ranged.iter().map(|l| l.body_bytes_sent).sum();
    assert!(directory <= HEAD_BYTES, "{}", f.nginx.raw_access_log());
    f.d.post_update("1.1.0");
    assert_eq!(stage_of(&wait_outcome(&f.d)), "success", "{}", f.d.output());
    f.assert_files(&v2, "after the unsigned package");

    // No Range support: the first ranged request gets 200; the package comes whole.
    let v3 = changed(&[1, 2], 3);
    let pkg = f.signed("1.2.0", &v3);
    f.download("norange/v3.zip", "1.2.0", &pkg);
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let log = f.d.output();
    assert!(log.contains("delta download abandoned"), "{log}");
    let lines = f.nginx.access_log(Some("norange/v3.zip"));
    assert!(
        lines.iter().all(|l| l.status == 200),
        "{}",
        f.nginx.raw_access_log()
    );
    assert!(lines
        .iter()
        .any(|l| l.range.is_none() && l.body_bytes_sent == pkg.len() as u64));
    f.d.post_update("1.2.0");
    assert_eq!(stage_of(&wait_outcome(&f.d)), "success", "{}", f.d.output());
    f.assert_files(&v3, "after the package from a server without Range");

    // Turned off: a plain GET again, although everything else allows a delta.
    f.d.sigterm_and_wait(Duration::from_secs(10));
    f.d = start(&f.ws, &f.api, &f.public, "delta_downloads = false\n");
    let v4 = changed(&[1], 4);
    let pkg = f.signed("1.3.0", &v4);
    f.download("v4.zip", "1.3.0", &pkg);
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let lines = f.nginx.access_log(Some("v4.zip"));
    assert_eq!(lines.len(), 1, "{}", f.nginx.raw_access_log());
    assert_eq!(lines[0].body_bytes_sent, pkg.len() as u64);
    f.d.post_update("1.3.0");
    assert_eq!(stage_of(&wait_outcome(&f.d)), "success", "{}", f.d.output());
    f.assert_files(&v4, "after the download with delta_downloads = false");
}

/// docs/API.md 9.5: a changed entry whose bytes are not the signed ones is fetched a second
/// time, then the package is fetched whole; it never installs: `failed` INVALID_PACKAGE and
/// every file still the installed version.
#[test]
fn docs_api_9_5_a_tampered_changed_entry_never_installs() {
    let Some((f, v1)) = installed_v1("") else {
        return;
    };
    let v2 = changed(&[5], 2);
    let manifest = signed_manifest("1.1.0", &f.dst.to_string_lossy(), &v2);
    let mut served = v2.clone();
    served[5].1[1000] ^= 0xff;
    let pkg = package(&manifest, Some(&f.key), &served);
    f.download("tampered.zip", "1.1.0", &pkg);
    let p =
        f.d.wait_for("toInstall or failed", Duration::from_secs(60), |p| {
            matches!(stage_of(p).as_str(), "toInstall" | "failed")
        });
    let log = f.d.output();
    assert!(log.contains("after a second fetch"), "{log}");
    if stage_of(&p) == "toInstall" {
        f.d.post_update("1.1.0");
    }
    let p = wait_outcome(&f.d);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or_default();
    assert!(
        err.starts_with("INVALID_PACKAGE: ") && err.contains("sha256"),
        "{p}"
    );
    f.assert_files(&v1, "after the tampered package");
}

/// docs/API.md 9.5: a file changed on the printer since it was installed is fetched, never
/// assumed; one changed after `toInstall` does not reach the installation either.
#[test]
fn docs_api_9_5_a_file_changed_on_the_printer_is_fetched_again() {
    let Some((f, _)) = installed_v1("") else {
        return;
    };
    // Same size, so only the hash can tell.
    let local = f.dst.join("f0009");
    let mut data = std::fs::read(&local).unwrap();
    data[10] ^= 0xff;
    std::fs::write(&local, &data).unwrap();
    let v2 = changed(&[3], 2);
    let pkg = f.signed("1.1.0", &v2);
    f.download("v2.zip", "1.1.0", &pkg);
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let (bytes, _) = f.sent("v2.zip");
    let two = 2 * FILE_SIZE as u64;
    assert!(
        bytes >= two && bytes <= two + HEAD_BYTES + 8 * 1024,
        "the changed entry and the locally modified file: {bytes} bytes\n{}",
        f.nginx.raw_access_log()
    );
    // Between toInstall and /update another installed file changes.
    let late = f.dst.join("f0020");
    std::fs::write(&late, b"changed by hand").unwrap();
    f.d.post_update("1.1.0");
    let p = wait_outcome(&f.d);
    assert_eq!(stage_of(&p), "success", "{p}\n{}", f.d.output());
    f.assert_files(&v2, "after the delta over modified files");
}

/// docs/API.md 9.5 with 7 (`max_download_bytes_per_s`): the cap holds for the ranges of a delta
/// as for a full download: 4 changed entries of 300 KiB at 256 KiB/s take more than 4 s.
#[test]
fn docs_api_9_5_the_bandwidth_cap_applies_to_a_delta() {
    let Some((mut f, _)) = installed_v1("") else {
        return;
    };
    f.d.sigterm_and_wait(Duration::from_secs(10));
    f.d = start(
        &f.ws,
        &f.api,
        &f.public,
        "max_download_bytes_per_s = 262144\n",
    );
    let v2 = changed(&[0, 10, 20, 30], 2);
    let pkg = f.signed("1.1.0", &v2);
    let started = std::time::Instant::now();
    f.download("v2.zip", "1.1.0", &pkg);
    f.d.wait_stage("toInstall", Duration::from_secs(60));
    let took = started.elapsed();
    let (bytes, _) = f.sent("v2.zip");
    assert!(bytes < pkg.len() as u64 / 5, "a delta: {bytes} bytes");
    assert!(
        took >= Duration::from_secs(4),
        "{bytes} bytes in {took:?} under a cap of 256 KiB/s"
    );
}

/// docs/API.md 9.5 with 8.1: a server that serves the directory and manifest but cuts every
/// entry's range after a few bytes ends the delta with DOWNLOAD_FAILED under the same retry
/// budget (4 attempts without 1 MiB of progress), in seconds, not never.
#[test]
fn docs_api_9_5_a_server_cutting_every_range_fails_within_the_retry_budget() {
    use common::hostile::{honest, HostileServer};
    use std::sync::Arc;
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let (key, public) = test_key();
    let dst = ws.root().join("app");
    let dst_text = dst.to_string_lossy().to_string();
    let v1 = Arc::new(signed_package(
        "1.0.0",
        &dst_text,
        &key,
        &files(FILES, FILE_SIZE, |_| 1),
    ));
    let v2 = Arc::new(signed_package("1.1.0", &dst_text, &key, &changed(&[7], 2)));
    let (s1, s2) = (v1.clone(), v2.clone());
    let server = HostileServer::start(Box::new(move |req| {
        if req.target() == "/v1.zip" {
            return honest(&s1, req);
        }
        let len = s2.len() as u64;
        let start = req.range_start();
        let head_read = start.is_none_or(|s| s == 0 || s == len.saturating_sub(65557));
        let mut out = honest(&s2, req);
        if !head_read {
            // The 206 head and 100 bytes of its body, then the connection closes.
            let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
            out.truncate(body_at + 100);
        }
        out
    }));
    let opts = DaemonOptions {
        allow_http: true,
        extra_toml: format!("trusted_keys = [\"{public}\"]\nsettle_s = 0\n"),
        ..Default::default()
    };
    let d = Daemon::start(&ws, &api, opts);
    d.post_download(&download_body(
        "1.0.0",
        &server.url("v1.zip"),
        "v1.zip",
        &v1,
    ));
    d.wait_stage("toInstall", Duration::from_secs(60));
    d.post_update("1.0.0");
    assert_eq!(stage_of(&d.wait_outcome()), "success", "{}", d.output());
    let before = server.requests().len();
    let started = std::time::Instant::now();
    d.post_download(&download_body(
        "1.1.0",
        &server.url("v2.zip"),
        "v2.zip",
        &v2,
    ));
    let p = d.wait_stage("failed", Duration::from_secs(60));
    let err = p["data"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("DOWNLOAD_FAILED: "), "{p}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let ranged: Vec<_> = server.requests()[before..]
        .iter()
        .filter(|r| {
            r.range_start()
                .is_some_and(|s| s != 0 && s + 65557 != v2.len() as u64)
        })
        .map(|r| r.range_start())
        .collect();
    assert_eq!(ranged.len(), 4, "one attempt and three retries: {ranged:?}");
}

/// docs/API.md 9.5 with 3 (DISK_FULL): writing the package file needs room for the unchanged
/// entries uncompressed; a work dir without it fails with DISK_FULL and keeps nothing of the
/// delta (no part file, no record, no package), and nothing is installed.
#[test]
fn docs_api_9_5_a_full_disk_while_assembling_is_disk_full_and_keeps_nothing() {
    use common::tmpfs::Tmpfs;
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else {
        return;
    };
    // Compressible files: the package is small, the package file written by the delta (its
    // unchanged entries stored) is not: 40 x 200 KiB does not fit in 4 MiB.
    let text = |i: usize, v: u64| -> Vec<u8> {
        format!("file {i} version {v}\n")
            .repeat(10_000)
            .into_bytes()
    };
    let v1: Files = (0..FILES)
        .map(|i| (format!("app/f{i:04}"), text(i, 1)))
        .collect();
    let mut v2 = v1.clone();
    v2[3].1 = text(3, 2);
    let Some(_fs) = Tmpfs::mount(&ws.work_dir(), "4m") else {
        return;
    };
    let api = FakeDeviceApi::start();
    let (key, public) = test_key();
    let d = start(&ws, &api, &public, "");
    let dst = ws.root().join("app");
    let dst_text = dst.to_string_lossy().to_string();
    let p = d.install_package(
        &nginx,
        "v1.zip",
        "1.0.0",
        &signed_package("1.0.0", &dst_text, &key, &v1),
    );
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    let pkg = signed_package("1.1.0", &dst_text, &key, &v2);
    let url = nginx.put("v2.zip", &pkg);
    d.post_download(&download_body("1.1.0", &url, "v2.zip", &pkg));
    let p = d.wait_stage("failed", Duration::from_secs(60));
    let err = p["data"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("DISK_FULL: "), "{p}\n{}", d.output());
    let tmp = ws.work_dir().join("tmp");
    for gone in ["delta.part", "delta.json", "v2.zip"] {
        assert!(!tmp.join(gone).exists(), "{gone} kept after DISK_FULL");
    }
    for (name, data) in &v1 {
        let found = std::fs::read(dst.join(name.trim_start_matches("app/"))).unwrap_or_default();
        assert!(found == *data, "{name} changed");
    }
}
