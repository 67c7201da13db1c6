//! docs/API.md sections 1 and 6: a download interrupted by a power cut (SIGKILL) resumes by
//! itself from its byte position, validated with If-Range, and never splices two files.

mod common;

use std::time::{Duration, SystemTime};

use common::daemon::{assert_ok_status, progress_of, stage_of};
use common::nginx::AccessLine;
use common::*;
use serde_json::Value;

const VERSION: &str = "3.1.4";
/// About 8 s at the `/slow/` rate.
const PAYLOAD: usize = 4 * 1024 * 1024;

fn slow_package(ws: &Workspace, seed: u64) -> Vec<u8> {
    let dst = ws.root().join("data.bin").display().to_string();
    let m = manifest(
        VERSION,
        vec![serde_json::json!({"name": "data", "src": "data.bin", "dst": dst})],
    );
    build_package(
        &m,
        &[Entry::file(
            "data.bin",
            &pseudo_random_bytes(PAYLOAD, seed),
            0o644,
        )],
    )
}

fn state_bytes(ws: &Workspace) -> u64 {
    std::fs::read(ws.state_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["bytes_downloaded"].as_u64())
        .unwrap_or(0)
}

/// Waits until at least 20 % is downloaded and the position is persisted in state.json.
fn wait_partial(d: &Daemon, ws: &Workspace) -> u64 {
    d.wait_for("download progress >= 20", Duration::from_secs(60), |p| {
        stage_of(p) == "downloading" && progress_of(p) >= 20
    });
    wait_until(
        "bytes_downloaded > 0 in state.json",
        Duration::from_secs(10),
        || {
            let n = state_bytes(ws);
            (n > 0).then_some(n)
        },
    )
}

fn requests(nginx: &Nginx) -> Vec<AccessLine> {
    nginx.access_log(Some("slow/pkg.zip"))
}

/// The first request (no Range) and the resumed one (Range from N > 0, with If-Range, 206).
fn assert_resumed(nginx: &Nginx, size: u64) {
    let reqs = requests(nginx);
    assert!(reqs.len() >= 2, "expected a second request: {reqs:?}");
    assert!(
        reqs[0].range.is_none(),
        "the first request starts at 0: {reqs:?}"
    );
    let resumed: Vec<&AccessLine> = reqs[1..]
        .iter()
        .filter(|r| r.range_start().is_some_and(|n| n > 0))
        .collect();
    assert!(
        !resumed.is_empty(),
        "no request after the restart carried `Range: bytes=N-` with N > 0: {reqs:?}"
    );
    let r = resumed[0];
    assert!(
        r.if_range.is_some(),
        "the resumed request must be validated with If-Range: {r:?}"
    );
    assert_eq!(r.status, 206, "nginx answered the resume with: {r:?}");
    assert!(
        reqs[1..].iter().all(|r| r.range.is_some()),
        "after the restart the download must not start again from 0: {reqs:?}"
    );
    let total: u64 = reqs.iter().map(|r| r.body_bytes_sent).sum();
    assert!(
        total < size + size / 2,
        "{total} bytes sent for a {size}-byte package: the download was not resumed"
    );
}

/// Section 6: after SIGKILL mid-download, the next start resumes by itself (no new
/// /download) from its byte position with Range + If-Range, and the result verifies.
#[test]
fn contract_6_partial_download_resumes_by_itself_after_power_cut() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = slow_package(&ws, 11);
    let url = nginx.put("slow/pkg.zip", &package);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let body = download_body(VERSION, &url, "pkg.zip", &package);
    d.post_download(&body);

    let persisted = wait_partial(&d, &ws);
    d.sigkill();
    let on_disk = std::fs::metadata(ws.tmp_file("pkg.zip"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(on_disk > 0, "the partial download must be on disk");
    assert!(
        persisted <= on_disk,
        "state.json claims {persisted} bytes, the file has {on_disk}"
    );

    d.restart();
    let p = d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(progress_of(&p), 100);
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&package));
    assert_resumed(&nginx, package.len() as u64);
}

/// Section 1: a /download of the same package after the restart joins the resumed download:
/// it answers `downloading` and does not start again from byte 0.
#[test]
fn contract_1_download_after_restart_joins_the_partial_download() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = slow_package(&ws, 12);
    let url = nginx.put("slow/pkg.zip", &package);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let body = download_body(VERSION, &url, "pkg.zip", &package);
    d.post_download(&body);
    wait_partial(&d, &ws);
    d.sigkill();

    d.restart();
    assert_ok_status(
        &d.post_json("/download", &body),
        "downloading",
        "/download of the same package after the restart",
    );
    d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&package));
    assert_resumed(&nginx, package.len() as u64);
}

/// Section 6: the file on the server changed while the daemon was down (same size, new
/// ETag). The resume must not splice the old head onto the new tail: If-Range makes nginx
/// send the whole new file, and the result is exactly the new file.
#[test]
fn contract_6_resume_never_splices_two_files() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let old = slow_package(&ws, 21);
    let new = slow_package(&ws, 22);
    assert_eq!(old.len(), new.len());
    let url = nginx.put("slow/pkg.zip", &old);
    // Announce the new file: only a download that never mixes the two can verify.
    let body = download_body(VERSION, &url, "pkg.zip", &new);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.post_download(&body);
    wait_partial(&d, &ws);
    d.sigkill();

    // Replace the file with the new content and another mtime (nginx's ETag changes).
    let served = nginx.www("slow/pkg.zip");
    let tmp = nginx.www("slow/pkg.zip.new");
    std::fs::write(&tmp, &new).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, &served).unwrap();

    d.restart();
    let p = d.wait_for("toInstall or failed", Duration::from_secs(60), |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    let reqs = requests(&nginx);
    assert_eq!(
        stage_of(&p),
        "toInstall",
        "the resumed download mixed the old and the new file: {p}\nrequests: {reqs:?}"
    );
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&new));
    let after: Vec<&AccessLine> = reqs.iter().skip(1).collect();
    assert!(
        after
            .iter()
            .any(|r| r.status == 200 && r.body_bytes_sent == new.len() as u64),
        "the new file must be fetched whole: {reqs:?}"
    );
}

/// Section 6: SIGTERM during a download finishes the current step and exits 0; the next
/// start resumes from the byte position.
#[test]
fn contract_6_sigterm_mid_download_exits_zero_and_resumes() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = slow_package(&ws, 13);
    let url = nginx.put("slow/pkg.zip", &package);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let body = download_body(VERSION, &url, "pkg.zip", &package);
    d.post_download(&body);
    wait_partial(&d, &ws);
    let status = d.sigterm_and_wait(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let persisted = state_bytes(&ws);
    assert!(persisted > 0, "the position must be saved at exit");

    d.restart();
    d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&package));
    assert_resumed(&nginx, package.len() as u64);
}

/// A `state.json` as the Python updater wrote it: its nine fields only, no ETag nor
/// Last-Modified to validate the partial file with.
fn python_state(url: &str, package: &[u8], bytes: u64) -> String {
    serde_json::json!({
        "version": VERSION, "package_url": url, "package_name": "pkg.zip",
        "package_size": package.len(), "package_md5": md5_hex(package),
        "bytes_downloaded": bytes, "last_update": "2026-11-30T10:00:00.123456",
        "stage": "downloading", "verified_at": null,
    })
    .to_string()
}

/// Section 8.8: the partial download of a printer updated by the Python updater resumes from
/// its byte position (a range request, 206), though its state keeps no validator; the whole
/// file is then checked against its MD5.
#[test]
fn contract_8_8_python_state_without_a_validator_resumes_from_its_byte_position() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = slow_package(&ws, 31);
    let url = nginx.put("slow/pkg.zip", &package);
    let kept = package.len() as u64 / 2;
    std::fs::create_dir_all(ws.work_dir().join("tmp")).unwrap();
    std::fs::write(ws.tmp_file("pkg.zip"), &package[..kept as usize]).unwrap();
    std::fs::write(ws.state_file(), python_state(&url, &package, kept)).unwrap();

    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&package));
    let reqs = requests(&nginx);
    assert_eq!(
        reqs.len(),
        1,
        "one request, from the byte position: {reqs:?}"
    );
    assert_eq!(reqs[0].range_start(), Some(kept), "{reqs:?}");
    assert_eq!(reqs[0].status, 206, "{reqs:?}");
    assert_eq!(reqs[0].body_bytes_sent, package.len() as u64 - kept);
}

/// Section 6 for a resume without a validator: the file changed on the server since the
/// Python updater fetched its first half. The spliced result does not match the announced MD5,
/// so the file is fetched whole (never verified as a mix of the two, never failed for it).
#[test]
fn contract_6_unvalidated_resume_of_a_changed_file_fetches_it_whole() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let old = slow_package(&ws, 32);
    let new = slow_package(&ws, 33);
    assert_eq!(old.len(), new.len());
    let url = nginx.put("slow/pkg.zip", &new);
    let kept = old.len() as u64 / 4;
    std::fs::create_dir_all(ws.work_dir().join("tmp")).unwrap();
    std::fs::write(ws.tmp_file("pkg.zip"), &old[..kept as usize]).unwrap();
    std::fs::write(ws.state_file(), python_state(&url, &new, kept)).unwrap();

    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.wait_for("toInstall or failed", Duration::from_secs(90), |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    let reqs = requests(&nginx);
    assert_eq!(stage_of(&p), "toInstall", "{p}\nrequests: {reqs:?}");
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&new));
    assert_eq!(
        reqs.first().and_then(|r| r.range_start()),
        Some(kept),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .skip(1)
            .any(|r| r.range.is_none() && r.status == 200 && r.body_bytes_sent == new.len() as u64),
        "after the mismatch the file must be fetched whole: {reqs:?}"
    );
}
