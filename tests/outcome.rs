//! docs/API.md section 8.5 (the outcome survives anything) and the rule of section 8.1 on the
//! updater's own files: against the real daemon, nginx and a fake device-api that can be down,
//! come back on the same port, or answer 500.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{assert_ok_status, progress_of, stage_of};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "5.1.0";

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn outcome_file(ws: &Workspace) -> Option<Value> {
    read_json(&ws.work_dir().join("tmp/outcome.json"))
}

fn history(ws: &Workspace) -> Vec<Value> {
    std::fs::read_to_string(ws.work_dir().join("tmp/history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("history line is JSON"))
        .collect()
}

/// A one-module package replacing `<root>/app/app.conf`; `post` is its post command (if any).
fn package(ws: &Workspace, post: Option<&str>) -> (Vec<u8>, std::path::PathBuf) {
    let dst = ws.root().join("app/app.conf");
    write_file(&dst, b"old\n", 0o644);
    let mut module = json!({"name": "app", "src": "app.conf", "dst": dst.display().to_string()});
    if let Some(cmd) = post {
        module["post_cmds"] = json!([["sh", "-c", cmd]]);
    }
    let m = manifest(VERSION, vec![module]);
    (
        build_package(&m, &[Entry::file("app.conf", b"new\n", 0o644)]),
        dst,
    )
}

/// Waits until device-api has received (answered or not) a report with stage `stage`.
fn wait_report(api: &FakeDeviceApi, stage: &str) -> Value {
    api.wait_for_report(
        &format!("a `{stage}` report"),
        Duration::from_secs(15),
        |b| b["stage"] == stage,
    )
}

/// Waits until outcome.json says `delivered: true`.
fn wait_delivered(ws: &Workspace) -> Value {
    wait_until(
        "outcome.json to record the delivery",
        Duration::from_secs(15),
        || outcome_file(ws).filter(|o| o["delivered"] == true),
    )
}

/// Installs `package` with device-api down, SIGKILLs the daemon, restarts it (device-api still
/// down) and checks the first /progress answer; then brings device-api up and checks the
/// delivery. Returns the daemon and the first answer after the restart.
fn outcome_across_a_kill(stage: &str, post: Option<&str>) -> Option<(Workspace, Daemon, Value)> {
    let ws = Workspace::new();
    let nginx = ws.nginx()?;
    let mut api = FakeDeviceApi::start();
    let (pkg, dst) = package(&ws, post);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &pkg);
    api.down();
    d.post_update(VERSION);
    let p = d.wait_outcome();
    assert_eq!(stage_of(&p), stage, "{p}");

    // Written before it was shown: on disk now, not delivered (device-api is down).
    let o = outcome_file(&ws).expect("outcome.json written");
    assert_eq!(o["stage"], stage, "{o}");
    assert_eq!(o["version"], VERSION, "{o}");
    assert_eq!(o["delivered"], false, "{o}");
    assert_eq!(o["error"], p["data"]["error"], "{o} vs {p}");
    assert!(o["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{o}");

    d.sigkill();
    d.restart();
    let first = d.first_progress.clone().expect("first /progress");
    assert_eq!(
        stage_of(&first),
        stage,
        "the outcome is shown from the first answer: {first}"
    );
    assert_eq!(first["data"]["version"], VERSION, "{first}");
    assert_eq!(outcome_file(&ws).unwrap()["delivered"], false);

    let before = api.reports().len();
    api.up();
    let r = wait_report(&api, stage);
    assert_eq!(r["error"], first["data"]["error"], "{r}");
    let o = wait_delivered(&ws);
    assert_eq!(o["stage"], stage, "{o}");
    assert!(api.reports().len() > before);
    let h = history(&ws);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["stage"], stage);
    assert_eq!(h[0]["version"], VERSION);
    wait_until(
        "the history to record the delivery",
        Duration::from_secs(10),
        || history(&ws)[0]["delivered"].as_bool().filter(|d| *d),
    );
    if stage == "success" {
        assert_eq!(std::fs::read(&dst).unwrap(), b"new\n");
        assert!(
            !ws.state_file().exists(),
            "state.json deleted after success"
        );
    } else {
        assert_eq!(std::fs::read(&dst).unwrap(), b"old\n");
    }
    Some((ws, d, first))
}

/// Section 8.5: a success, SIGKILLed while device-api is down, is shown after the restart and
/// delivered once device-api is back on the same port.
#[test]
fn contract_8_5_success_survives_sigkill_while_device_api_is_down() {
    let Some((_ws, _d, first)) = outcome_across_a_kill("success", None) else {
        return;
    };
    assert_eq!(first["code"], 200, "{first}");
    assert_eq!(progress_of(&first), 100, "{first}");
}

/// Section 8.5: the same for a failure (a post command exits 1: DEPLOYMENT_FAILED).
#[test]
fn contract_8_5_failure_survives_sigkill_while_device_api_is_down() {
    let Some((_ws, _d, first)) = outcome_across_a_kill("failed", Some("exit 1")) else {
        return;
    };
    assert_eq!(first["code"], 500, "{first}");
    assert_eq!(first["stage"], "failed", "{first}");
    let err = first["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{first}");
    assert_eq!(first["msg"].as_str(), Some(err), "{first}");
}

/// Section 8.5: the outcome stays on /progress (also across restarts) until the next accepted
/// /download, and no longer after it; once delivered it is not reported again at a restart.
#[test]
fn contract_8_5_outcome_is_shown_until_the_next_accepted_download() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (pkg, _dst) = package(&ws, None);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.install_package(&nginx, "pkg.zip", VERSION, &pkg);
    wait_delivered(&ws);
    d.sigterm_and_wait(Duration::from_secs(15));
    d.restart();
    assert_eq!(stage_of(d.first_progress.as_ref().unwrap()), "success");

    let other = b"not a zip, but a file to download".to_vec();
    let url = nginx.put("other.zip", &other);
    let before = api.bodies().len();
    let answer = d.post_json(
        "/download",
        &download_body("5.2.0", &url, "other.zip", &other),
    );
    assert_ok_status(&answer, "downloading", "/download after the outcome");
    let p = d.wait_stage("toInstall", Duration::from_secs(30));
    assert_eq!(p["data"]["version"], "5.2.0");
    // Reports arrive in order: once the new download's are in, a success report sent at the
    // restart would be too. A delivered outcome is not sent again.
    wait_until(
        "the new download's toInstall report",
        Duration::from_secs(15),
        || {
            api.bodies()[before..]
                .iter()
                .any(|b| b["stage"] == "toInstall")
                .then_some(())
        },
    );
    let successes = api
        .bodies()
        .iter()
        .filter(|b| b["stage"] == "success")
        .count();
    assert_eq!(successes, 1, "delivered once, not again after the restart");
    d.sigkill();
    d.restart();
    let first = d.first_progress.clone().unwrap();
    assert_eq!(stage_of(&first), "toInstall", "{first}");
    assert_eq!(first["data"]["version"], "5.2.0", "{first}");
}

/// Section 8.5: a report counts as delivered only when device-api answered it with HTTP 200.
#[test]
fn contract_8_5_report_counts_as_delivered_only_on_http_200() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (pkg, _dst) = package(&ws, None);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &pkg);
    api.set_status(500);
    d.post_update(VERSION);
    d.wait_stage("success", Duration::from_secs(30));
    wait_until(
        "device-api to refuse the success report twice",
        Duration::from_secs(15),
        || {
            (api.bodies()
                .iter()
                .filter(|b| b["stage"] == "success")
                .count()
                >= 2)
                .then_some(())
        },
    );
    let o = outcome_file(&ws).unwrap();
    assert_eq!(o["delivered"], false, "answered 500: not delivered: {o}");
    api.set_status(200);
    wait_delivered(&ws);
}

/// Section 8.5: at start, files in ./tmp that no state refers to (a package left behind after
/// its installation completed, stray temporaries, a directory) are removed; the updater's own
/// files, the package of a failed download (for its resume) and set-aside files stay.
#[test]
fn contract_8_5_stray_files_in_tmp_are_removed_at_start() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let tmp = ws.work_dir().join("tmp");
    let partial = pseudo_random_bytes(3000, 1);
    let state = json!({
        "version": VERSION, "package_url": "https://127.0.0.1:9/p.zip",
        "package_name": "p.zip", "package_size": 10_000, "package_md5": md5_hex(b"p"),
        "bytes_downloaded": 3000, "last_update": rfc3339_ago(60), "stage": "failed",
        "verified_at": null, "etag": "\"abc\"", "error": "DOWNLOAD_FAILED: cut"
    });
    write_file(&ws.state_file(), state.to_string().as_bytes(), 0o644);
    write_file(&tmp.join("p.zip"), &partial, 0o644);
    let strays = [
        "old-5.0.0.zip",
        "foo.tmp",
        "state.json.tmp",
        "outcome.json.tmp",
    ];
    for s in strays {
        write_file(&tmp.join(s), b"left behind", 0o644);
    }
    write_file(&tmp.join("leftover/inside.bin"), b"x", 0o644);
    write_file(&tmp.join("state.json.unusable"), b"kept for people", 0o644);
    write_file(&tmp.join("history.jsonl"), b"", 0o644);

    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let first = d.first_progress.clone().unwrap();
    assert_eq!(stage_of(&first), "failed", "{first}");
    for s in strays.iter().chain(&["leftover"]) {
        assert!(!tmp.join(s).exists(), "{s} must be removed at start");
    }
    assert_eq!(std::fs::read(tmp.join("p.zip")).unwrap(), partial);
    assert!(ws.state_file().exists());
    assert!(tmp.join("state.json.unusable").exists());
    assert!(tmp.join("history.jsonl").exists());
    assert!(tmp.join("outcome.json").exists(), "the failure is recorded");

    // A package left behind by a power cut after its installation completed: no state refers
    // to it any more, the outcome says success.
    let mut d = d;
    d.sigkill();
    std::fs::remove_file(ws.state_file()).unwrap();
    write_file(&tmp.join("p.zip"), &partial, 0o644);
    d.restart();
    assert!(!tmp.join("p.zip").exists(), "a package no state refers to");
    assert!(tmp.join("outcome.json").exists());
}

/// Section 8.1: when state.json cannot be written (a directory where its temporary goes),
/// /update fails with INTERNAL_ERROR before anything is touched; the failure is kept in memory,
/// shown, reported, and written once the disk allows it.
#[test]
fn contract_8_1_unwritable_state_file_fails_with_internal_error() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let (pkg, dst) = package(&ws, None);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &pkg);
    let blocker = ws.work_dir().join("tmp/state.json.tmp");
    write_file(&blocker.join("in-the-way"), b"x", 0o644);

    d.post_update(VERSION);
    let p = d.wait_stage("failed", Duration::from_secs(15));
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("INTERNAL_ERROR: "), "{p}");
    assert!(err.contains("state.json"), "{p}");
    assert_eq!(p["code"], 500, "{p}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"old\n", "nothing deployed");
    assert!(
        !api.bodies().iter().any(|b| b["stage"] == "success"),
        "never claimed success"
    );
    let r = api.wait_for_report("the INTERNAL_ERROR report", Duration::from_secs(5), |b| {
        b["stage"] == "failed"
    });
    assert_eq!(r["error"].as_str(), Some(err));
    let st = read_json(&ws.state_file()).unwrap();
    assert_eq!(
        st["stage"], "toInstall",
        "the state file could not be written"
    );

    std::fs::remove_dir_all(&blocker).unwrap();
    let st = wait_until(
        "state.json to be written again",
        Duration::from_secs(15),
        || read_json(&ws.state_file()).filter(|s| s["stage"] == "failed"),
    );
    assert_eq!(st["error"].as_str(), Some(err), "{st}");
    assert_eq!(stage_of(&d.progress()), "failed");
}

/// Section 8.1: a state file that cannot be written during a download ends it with
/// INTERNAL_ERROR within 5 s (a resume would start from a stale position).
#[test]
fn contract_8_1_unwritable_state_during_download_fails_with_internal_error() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let data = pseudo_random_bytes(4 << 20, 3);
    let url = nginx.put("slow/big.zip", &data);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.post_download(&download_body(VERSION, &url, "big.zip", &data));
    d.wait_for("10 % downloaded", Duration::from_secs(30), |p| {
        progress_of(p) >= 10
    });
    let blocker = ws.work_dir().join("tmp/state.json.tmp");
    write_file(&blocker.join("in-the-way"), b"x", 0o644);
    let p = d.wait_for("the download to fail", Duration::from_secs(8), |p| {
        stage_of(p) != "downloading"
    });
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("INTERNAL_ERROR: "), "{p}");
    assert!(
        p["data"]["bytes_downloaded"].as_u64().unwrap() < data.len() as u64,
        "stopped before the end: {p}"
    );
}
