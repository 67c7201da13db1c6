//! The crash-loop guard of start-up recovery: an interrupted installation whose rollback keeps
//! failing (its backups are gone) is tried at three starts in a row, then given up: the journal
//! is kept, the API serves `failed` `INTERNAL_ERROR` saying what to do and refuses updates,
//! until an operator clears the guard.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{assert_error, stage_of, status_json};
use common::procs::KillOnDrop;
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "6.0.0";

fn error_of(p: &Value) -> String {
    p["data"]["error"].as_str().unwrap_or("").to_string()
}

/// Start-up recoveries that failed, as the daemon's log tells.
fn failed_recoveries(work: &Path) -> usize {
    std::fs::read_to_string(work.join("logs/updater.log"))
        .unwrap_or_default()
        .matches("recovery of an interrupted installation failed")
        .count()
}

#[test]
fn crash_loop_guard_gives_up_recovery_after_three_failed_starts() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let marker = ws.path().join("post-cmd.pid");
    let _kill = KillOnDrop::default().pid_file(&marker);
    let a = ws.root().join("a/a.conf");
    let b = ws.root().join("b/b.conf");
    for f in [&a, &b] {
        write_file(f, b"old\n", 0o644);
    }
    // The first run of b's post command parks until killed: the installation is cut there,
    // with both modules deployed.
    let post = format!(
        "if [ -e '{m}' ]; then exit 0; fi; echo $$ > '{m}'; exec sleep 60",
        m = marker.display()
    );
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "a", "src": "a.conf", "dst": a.display().to_string()}),
            json!({"name": "b", "src": "b.conf", "dst": b.display().to_string(),
                   "post_cmds": [["sh", "-c", post]]}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("a.conf", b"new a\n", 0o644),
            Entry::file("b.conf", b"new b\n", 0o644),
        ],
    );
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &package);
    d.post_update(VERSION);
    let pid: i32 = wait_until("the post command to park", Duration::from_secs(30), || {
        std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    d.sigkill();
    common::procs::signal(pid, rustix::process::Signal::KILL);

    // The backups vanish (a broken disk, a careless cleanup): rollback cannot restore.
    let backups = ws.work_dir().join("backups");
    let journal = backups.join("journal.json");
    assert!(
        journal.exists(),
        "the interrupted installation left its journal"
    );
    let files: Vec<PathBuf> = files_below(&backups.join("install-files"));
    assert!(!files.is_empty(), "backups were made");
    let saved = ws.path().join("saved-backups");
    copy_dir(&backups.join("install-files"), &saved);
    std::fs::remove_dir_all(backups.join("install-files")).unwrap();
    let counter = ws.work_dir().join("tmp/recovery.json");

    for attempt in 1..=3u64 {
        d.restart();
        let first = d.first_progress.clone().unwrap();
        assert_eq!(stage_of(&first), "failed", "start {attempt}: {first}");
        let c: Value = serde_json::from_slice(&std::fs::read(&counter).unwrap()).unwrap();
        assert_eq!(c["attempts"], attempt, "start {attempt}: {c}");
        assert!(
            c["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("DEPLOYMENT_FAILED"),
            "{c}"
        );
        let err = error_of(&first);
        if attempt < 3 {
            assert!(
                err.starts_with("DEPLOYMENT_FAILED: "),
                "start {attempt}: {first}"
            );
        } else {
            assert!(
                err.starts_with("INTERNAL_ERROR: "),
                "start {attempt}: {first}"
            );
        }
        assert_eq!(failed_recoveries(&ws.work_dir()), attempt as usize);
        assert!(journal.exists(), "the journal is kept");
        d.sigkill();
    }

    // The fourth start does not try again: same answer at once, nothing retried.
    d.restart();
    let first = d.first_progress.clone().unwrap();
    let err = error_of(&first);
    assert_eq!(first["code"], 500, "{first}");
    assert!(err.starts_with("INTERNAL_ERROR: "), "{first}");
    assert!(err.contains("3 times in a row"), "{err}");
    assert!(err.contains(&journal.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("delete {}", counter.display())),
        "it says how to clear it: {err}"
    );
    assert_eq!(failed_recoveries(&ws.work_dir()), 3, "not tried a 4th time");
    assert!(journal.exists(), "the journal is kept for inspection");
    api.wait_for_report("the INTERNAL_ERROR report", Duration::from_secs(10), |b| {
        b["error"].as_str() == Some(err.as_str())
    });
    let url = nginx.url("pkg.zip");
    let answer = d.post_json(
        "/download",
        &download_body(VERSION, &url, "pkg.zip", &package),
    );
    assert_error(&answer, 500, "INTERNAL_ERROR", "/download while given up");
    assert_eq!(stage_of(&d.progress()), "failed");

    // `status` shows it, with the daemon running.
    let s = status_json(&d.config_path);
    assert_eq!(s["crash_loop_guard"]["given_up"], true, "{s}");
    assert_eq!(s["crash_loop_guard"]["failed_attempts"], 3, "{s}");
    assert_eq!(s["pending_installation"]["version"], VERSION, "{s}");
    assert!(s["crash_loop_guard"]["to_clear"]
        .as_str()
        .unwrap_or("")
        .contains("recovery.json"));

    // An operator fixes the cause (the backups are back) and clears the guard.
    d.sigterm_and_wait(Duration::from_secs(15));
    copy_dir(&saved, &backups.join("install-files"));
    std::fs::remove_file(&counter).unwrap();
    d.restart();
    let first = d.first_progress.clone().unwrap();
    let err = error_of(&first);
    assert!(
        err.starts_with("DEPLOYMENT_FAILED: ") && err.contains("rolled back"),
        "{first}"
    );
    assert_eq!(std::fs::read(&a).unwrap(), b"old\n");
    assert_eq!(std::fs::read(&b).unwrap(), b"old\n");
    assert!(!journal.exists(), "recovered: journal removed");
    assert!(!counter.exists(), "recovered: the count starts again");
    let p = d.post_json(
        "/download",
        &download_body(VERSION, &url, "pkg.zip", &package),
    );
    assert_eq!(p.1["code"], 200, "updates are accepted again: {}", p.1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
