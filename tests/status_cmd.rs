//! docs/API.md section 8.7: `tope-updater status [--config PATH] [--json]` tells what the
//! updater is doing or last did, from the work dir, with the daemon stopped or running, and
//! writes nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::daemon::{config_text, BIN};
use common::*;
use serde_json::{json, Value};

/// Runs `status` with `args`; returns stdout (asserting exit 0).
fn status(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("status")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .expect("run tope-updater status");
    assert!(
        out.status.success(),
        "status exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn status_json(config: &Path) -> Value {
    let text = status(config, &["--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every path below `dir` with its length and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Section 8.7, daemon stopped: a download in progress, the last outcome, the history, an
/// installation pending recovery and the crash-loop guard's count, as text and as JSON.
#[test]
fn contract_8_7_status_with_the_daemon_stopped() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start_down();
    let port = free_port();
    let config = ws.path().join("updater.toml");
    std::fs::write(
        &config,
        config_text(&ws, &api, port, &DaemonOptions::default()),
    )
    .unwrap();
    let tmp = ws.work_dir().join("tmp");
    let state = json!({
        "version": "2.0.0", "package_url": "https://127.0.0.1:9/p.zip",
        "package_name": "p-2.0.0.zip", "package_size": 10_000, "package_md5": md5_hex(b"p"),
        "bytes_downloaded": 3000, "last_update": rfc3339_ago(30), "stage": "downloading",
        "verified_at": null, "etag": "\"abc\""
    });
    write_file(&ws.state_file(), state.to_string().as_bytes(), 0o644);
    write_file(&tmp.join("p-2.0.0.zip"), &[7u8; 3500], 0o644);
    let outcome = json!({
        "id": 2, "stage": "success", "version": "1.9.0", "message": "Update to 1.9.0 completed",
        "error": null, "progress": 100, "at": "2026-11-25T10:00:00Z", "delivered": true
    });
    write_file(
        &tmp.join("outcome.json"),
        outcome.to_string().as_bytes(),
        0o644,
    );
    let older = json!({
        "id": 1, "stage": "failed", "version": "1.9.0", "message": "Update failed: x",
        "error": "DEPLOYMENT_FAILED: x", "progress": 40, "at": "2026-11-24T10:00:00Z",
        "delivered": false
    });
    write_file(
        &tmp.join("history.jsonl"),
        format!("{older}\n{outcome}\n").as_bytes(),
        0o644,
    );
    write_file(
        &tmp.join("recovery.json"),
        br#"{"attempts": 1, "last_attempt_at": "2026-11-25T11:00:00Z", "last_error": "DEPLOYMENT_FAILED: rollback incomplete"}"#,
        0o644,
    );
    write_file(
        &ws.work_dir().join("backups/journal.json"),
        br#"{"version": "2.0.0", "phase": "deploying", "targets": []}"#,
        0o644,
    );
    let before = snapshot(&ws.work_dir());

    let s = status_json(&config);
    assert_eq!(s["daemon"]["running"], false, "{s}");
    assert_eq!(s["source"], "files", "{s}");
    assert_eq!(s["stage"], "downloading", "{s}");
    assert_eq!(s["version"], "2.0.0", "{s}");
    assert_eq!(s["progress"], 30, "{s}");
    assert_eq!(s["state"]["bytes_downloaded"], 3000, "{s}");
    assert_eq!(s["state"]["bytes_on_disk"], 3500, "{s}");
    assert_eq!(s["outcome"]["stage"], "success", "{s}");
    assert_eq!(s["outcome"]["delivered"], true, "{s}");
    assert_eq!(s["pending_installation"]["version"], "2.0.0", "{s}");
    assert_eq!(s["pending_installation"]["phase"], "deploying", "{s}");
    assert_eq!(s["crash_loop_guard"]["failed_attempts"], 1, "{s}");
    assert_eq!(s["crash_loop_guard"]["given_up"], false, "{s}");
    assert_eq!(s["history"].as_array().map(Vec::len), Some(2), "{s}");
    assert_eq!(s["history"][0]["error"], "DEPLOYMENT_FAILED: x", "{s}");

    let text = status(&config, &[]);
    for part in [
        &format!("not answering on 127.0.0.1:{port}") as &str,
        "downloading 2.0.0, 30%",
        "3000 of 10000 bytes recorded, 3500 on disk",
        "success 1.9.0: Update to 1.9.0 completed (device-api has it)",
        "installation of 2.0.0 interrupted in phase deploying",
        "1 of 3 start-up recoveries did not complete",
        "DEPLOYMENT_FAILED: x (not yet delivered to device-api)",
    ] {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
    assert_eq!(snapshot(&ws.work_dir()), before, "status wrote something");
}

/// Section 8.7, daemon running then stopped: after a real installation, `status` shows the
/// daemon's live answer and the delivered outcome; once stopped, the same from the files.
#[test]
fn contract_8_7_status_with_the_daemon_running_and_after_it_stops() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let dst = ws.root().join("s/s.conf");
    write_file(&dst, b"old\n", 0o644);
    let m = manifest(
        "7.0.0",
        vec![json!({"name": "s", "src": "s.conf", "dst": dst.display().to_string()})],
    );
    let package = build_package(&m, &[Entry::file("s.conf", b"new\n", 0o644)]);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.install_package(&nginx, "s.zip", "7.0.0", &package);
    let outcome = ws.work_dir().join("tmp/outcome.json");
    wait_until("the outcome delivered", Duration::from_secs(15), || {
        let o: Value = serde_json::from_slice(&std::fs::read(&outcome).ok()?).ok()?;
        (o["delivered"] == true).then_some(())
    });

    let s = status_json(&d.config_path);
    assert_eq!(s["daemon"]["running"], true, "{s}");
    assert_eq!(s["source"], "daemon", "{s}");
    assert_eq!(s["stage"], "success", "{s}");
    assert_eq!(s["version"], "7.0.0", "{s}");
    assert_eq!(s["daemon"]["progress"]["stage"], "success", "{s}");
    assert_eq!(s["outcome"]["delivered"], true, "{s}");
    assert!(
        s["state"].is_null(),
        "state.json deleted after success: {s}"
    );
    assert!(s["pending_installation"].is_null(), "{s}");
    let text = status(&d.config_path, &[]);
    assert!(
        text.contains(&format!("running, answering on {}", d.addr)),
        "{text}"
    );
    assert!(text.contains("Now (daemon):"), "{text}");
    assert!(text.contains("Crash-loop guard:  ok"), "{text}");

    d.sigterm_and_wait(Duration::from_secs(15));
    let before = snapshot(&ws.work_dir());
    let s = status_json(&d.config_path);
    assert_eq!(s["daemon"]["running"], false, "{s}");
    assert_eq!(s["source"], "files", "{s}");
    assert_eq!(s["stage"], "success", "{s}");
    assert_eq!(s["version"], "7.0.0", "{s}");
    assert_eq!(s["message"], "Update to 7.0.0 completed", "{s}");
    assert_eq!(s["history"].as_array().map(Vec::len), Some(1), "{s}");
    let text = status(&d.config_path, &[]);
    assert!(text.contains("Now (files):"), "{text}");
    assert!(text.contains("success 7.0.0"), "{text}");
    assert_eq!(snapshot(&ws.work_dir()), before, "status wrote something");
}

/// docs/API.md 9.6: `status` asks a running daemon for at most 64 KiB within 2 s. A hostile
/// listener on the API port that answers with an endless body (or never finishes) can neither
/// hang it nor make it grow: under a 256 MiB address-space limit it still prints the work
/// dir's view, with the daemon shown as not answering.
#[test]
fn contract_9_6_status_reads_a_hostile_listener_bounded() {
    use std::io::{Read, Write};
    let ws = Workspace::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = [0u8; 1024];
                let _ = conn.read(&mut head);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"data\":\"",
                );
                let chunk = vec![b'a'; 64 * 1024];
                // Endless, as fast as the reader takes it; ends when the reader closes.
                while conn.write_all(&chunk).is_ok() {}
            });
        }
    });
    let config = ws.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nwork_dir = {:?}\n",
            ws.path().display().to_string()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new("prlimit")
        .arg("--as=268435456")
        .arg(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("run prlimit tope-updater status");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "status exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "status took {took:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    assert_eq!(v["daemon"]["running"], json!(false), "{v}");
}
