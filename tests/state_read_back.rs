//! docs/API.md 8.3: the updater reads back its own `state.json` only when it is a regular file
//! of at most 1 MiB; anything else is set aside with a warning and never blocks start-up.

mod common;

use std::time::Duration;

use common::daemon::stage_of;
use common::*;
use serde_json::json;

/// A state file that would resume a download, if it were read.
fn resumable_state() -> Vec<u8> {
    json!({
        "version": "1.2.3",
        "package_url": "https://127.0.0.1:9/pkg.zip",
        "package_name": "pkg.zip",
        "package_size": 1000,
        "package_md5": "0123456789abcdef0123456789abcdef",
        "bytes_downloaded": 0,
        "last_update": "2026-11-25T10:00:00Z",
        "stage": "downloading",
        "verified_at": null
    })
    .to_string()
    .into_bytes()
}

fn log_of(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap_or_default()
}

/// Section 8.3: a FIFO named state.json (no writer: a plain open would wait forever) does
/// not block start-up; it is set aside as state.json.unusable with a warning.
#[test]
fn contract_8_3_fifo_state_json_does_not_block_start_up() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    std::fs::create_dir_all(ws.work_dir().join("tmp")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ws.state_file(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let t = std::time::Instant::now();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(stage_of(&d.progress()), "idle");
    assert!(!ws.state_file().exists(), "state.json must be moved away");
    use std::os::unix::fs::FileTypeExt;
    let aside = ws.work_dir().join("tmp/state.json.unusable");
    let meta = std::fs::symlink_metadata(&aside).expect("set aside as state.json.unusable");
    assert!(meta.file_type().is_fifo());
    let log = log_of(&ws);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("state.json") && l.contains("set aside")),
        "a warning must say it was set aside:\n{log}"
    );
}

/// Section 8.3: a 2 MiB state.json (valid JSON padded with spaces, which would resume a
/// download if it were read) is never read: set aside, and the daemon starts idle.
#[test]
fn contract_8_3_two_mib_state_json_is_set_aside_not_read() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let mut big = resumable_state();
    big.resize(2 * 1024 * 1024, b' ');
    write_file(&ws.state_file(), &big, 0o644);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.progress();
    assert_eq!(
        stage_of(&p),
        "idle",
        "the oversized state must not be used: {p}"
    );
    assert!(!ws.state_file().exists());
    let aside = ws.work_dir().join("tmp/state.json.unusable");
    assert_eq!(
        std::fs::metadata(&aside).expect("set aside").len(),
        big.len() as u64
    );
    // The same content at its normal size is read: the limit, not the content, refused it.
    drop(d);
    let ws2 = Workspace::new();
    write_file(&ws2.state_file(), &resumable_state(), 0o644);
    let d2 = Daemon::start(&ws2, &api, DaemonOptions::default());
    assert_eq!(stage_of(&d2.progress()), "downloading");
}

/// docs/API.md 5: a state.json written by 0.1.0 (`tests/fixtures`, its exact output) is
/// understood by the daemon: its failure is shown as it was recorded, and the file is kept.
#[test]
fn api_5_state_json_of_0_1_0_is_understood() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let fixture = include_bytes!("fixtures/state-0.1.0-failed.json");
    write_file(&ws.state_file(), fixture, 0o644);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert_eq!(
        p["data"]["error"].as_str(),
        Some("DEPLOYMENT_FAILED: post command exited 1"),
        "{p}"
    );
    assert_eq!(p["data"]["version"].as_str(), Some("1.2.4"), "{p}");
    assert!(ws.state_file().exists(), "a usable state.json stays");
    assert!(!ws.work_dir().join("tmp/state.json.unusable").exists());
}

/// docs/API.md 5: a state.json whose `package_md5` is not 32 hex characters could never
/// verify its package: it is set aside with a warning and the daemon starts idle, where the
/// same file with a good MD5 resumes its download (see above).
#[test]
fn api_5_state_json_with_a_bad_md5_is_set_aside() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let text = String::from_utf8(resumable_state()).unwrap();
    let bad = text.replace(
        "0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdeg",
    );
    assert_ne!(bad, text);
    write_file(&ws.state_file(), bad.as_bytes(), 0o644);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    assert_eq!(stage_of(&d.progress()), "idle");
    assert!(!ws.state_file().exists(), "state.json must be moved away");
    let aside = ws.work_dir().join("tmp/state.json.unusable");
    assert_eq!(std::fs::read(&aside).expect("set aside"), bad.as_bytes());
    let log = log_of(&ws);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("package_md5 is not 32 hex characters")),
        "a warning must say why:\n{log}"
    );
}
