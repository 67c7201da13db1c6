//! docs/API.md sections 5 and 6: a half-written state.json never stops the daemon, a
//! state.json of the Python updater is understood (trust window, PACKAGE_EXPIRED), and an
//! installation cut by a power failure is finished or rolled back before the API speaks.

mod common;

use std::time::Duration;

use common::daemon::{assert_error, progress_of, stage_of};
use common::procs::KillOnDrop;
use common::*;
use serde_json::json;

const VERSION: &str = "4.2.0";

/// Section 6: garbage, an empty file or truncated JSON in state.json: the daemon starts and
/// reports idle.
#[test]
fn contract_6_corrupt_state_json_never_stops_the_daemon() {
    let full = json!({
        "version": VERSION, "package_url": "https://127.0.0.1:9/p.zip",
        "package_name": "p.zip", "package_size": 100, "package_md5": md5_hex(b"p"),
        "bytes_downloaded": 50, "last_update": rfc3339_ago(10),
        "stage": "downloading", "verified_at": null
    })
    .to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage bytes", pseudo_random_bytes(300, 9)),
        ("empty file", Vec::new()),
        ("truncated JSON", full.as_bytes()[..full.len() / 2].to_vec()),
        ("JSON of another shape", b"[1, 2, 3]".to_vec()),
        (
            "unknown stage",
            json!({"stage": "exploding", "version": VERSION})
                .to_string()
                .into_bytes(),
        ),
    ];
    for (label, bytes) in cases {
        let ws = Workspace::new();
        let api = FakeDeviceApi::start();
        write_file(&ws.state_file(), &bytes, 0o644);
        let d = Daemon::start(&ws, &api, DaemonOptions::default());
        let p = d.progress();
        assert_eq!(p["code"].as_i64(), Some(200), "{label}: {p}");
        assert_eq!(stage_of(&p), "idle", "{label}: {p}");
        assert_eq!(progress_of(&p), 0, "{label}: {p}");
        assert!(p["data"]["error"].is_null(), "{label}: {p}");
    }
}

/// A verified package in ./tmp and a state.json as the Python updater wrote it.
fn python_state(ws: &Workspace, verified_secs_ago: i64) -> (Vec<u8>, std::path::PathBuf) {
    let dst = ws.root().join("app/app.conf");
    write_file(&dst, b"old\n", 0o644);
    let m = manifest(
        VERSION,
        vec![json!({"name": "app", "src": "app.conf", "dst": dst.display().to_string()})],
    );
    let package = build_package(&m, &[Entry::file("app.conf", b"new\n", 0o644)]);
    write_file(&ws.tmp_file("pkg.zip"), &package, 0o644);
    // Python's datetime.isoformat() of an aware UTC time: RFC 3339 with +00:00.
    let verified = rfc3339_ago(verified_secs_ago).replace('Z', "+00:00");
    let state = json!({
        "version": VERSION,
        "package_url": "https://127.0.0.1:9/pkg.zip",
        "package_name": "pkg.zip",
        "package_size": package.len(),
        "package_md5": md5_hex(&package),
        "bytes_downloaded": package.len(),
        "last_update": verified,
        "stage": "toInstall",
        "verified_at": verified,
    });
    write_file(
        &ws.state_file(),
        serde_json::to_string_pretty(&state).unwrap().as_bytes(),
        0o644,
    );
    (package, dst)
}

/// Sections 1 and 5: a verified package older than the trust window: /update is 410
/// PACKAGE_EXPIRED, the package and state.json are deleted, the stage becomes failed.
#[test]
fn contract_1_package_verified_25_hours_ago_is_expired() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let (_package, dst) = python_state(&ws, 25 * 3600);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.progress();
    assert_eq!(
        stage_of(&p),
        "toInstall",
        "the Python state.json is understood: {p}"
    );

    let answer = d.post_json("/update", &json!({"version": VERSION}));
    assert_error(
        &answer,
        410,
        "PACKAGE_EXPIRED",
        "/update of an expired package",
    );
    let msg = answer.1["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("PACKAGE_EXPIRED: Package verified at "),
        "{msg}"
    );
    assert!(
        msg.ends_with("has exceeded 24-hour trust window, please re-download"),
        "{msg}"
    );
    assert!(
        !ws.tmp_file("pkg.zip").exists(),
        "the package must be deleted"
    );
    assert!(!ws.state_file().exists(), "state.json must be deleted");

    let p = d.progress();
    assert_eq!(p["code"].as_i64(), Some(500), "{p}");
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert_eq!(p["data"]["error"].as_str(), Some(msg), "{p}");
    assert_eq!(p["msg"].as_str(), Some(msg), "{p}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"old\n", "nothing deployed");
    api.wait_for_report("the PACKAGE_EXPIRED report", Duration::from_secs(5), |b| {
        b["error"].as_str() == Some(msg)
    });
}

/// Section 5: a state.json of the Python updater with a package verified an hour ago is
/// picked up: toInstall, and /update installs it.
#[test]
fn contract_5_python_state_json_within_trust_window_installs() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let (_package, dst) = python_state(&ws, 3600);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.progress();
    assert_eq!(stage_of(&p), "toInstall", "{p}");
    assert_eq!(progress_of(&p), 100, "{p}");
    d.post_update(VERSION);
    d.wait_stage("success", Duration::from_secs(30));
    assert_eq!(std::fs::read(&dst).unwrap(), b"new\n");
    assert!(!ws.state_file().exists());
}

/// Section 7 trust_window_hours: a shorter window from the config is honoured.
#[test]
fn contract_7_trust_window_hours_from_config() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let (_package, _dst) = python_state(&ws, 2 * 3600);
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: "trust_window_hours = 1\n".into(),
            ..Default::default()
        },
    );
    let answer = d.post_json("/update", &json!({"version": VERSION}));
    assert_error(
        &answer,
        410,
        "PACKAGE_EXPIRED",
        "verified 2 h ago with a 1 h window",
    );
}

/// Section 6: SIGKILL while an installation is in the middle of its modules (a post command
/// of one module runs). After the restart, before the API reports anything, the install is
/// finished or rolled back: every file entirely old or the whole package entirely new.
#[test]
fn contract_6_power_cut_during_install_is_finished_or_rolled_back() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let marker = ws.path().join("post-cmd.pid");
    let _kill = KillOnDrop::default().pid_file(&marker);

    let a = ws.root().join("a/a.conf");
    let b = ws.root().join("b/b.conf");
    let c = ws.root().join("c/c.conf");
    for f in [&a, &b, &c] {
        write_file(f, b"old\n", 0o644);
    }
    // The first time it runs the post command parks (until killed); later runs pass.
    let post = format!(
        "if [ -e '{m}' ]; then exit 0; fi; echo $$ > '{m}'; exec sleep 60",
        m = marker.display()
    );
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "a", "src": "a.conf", "dst": a.display().to_string(),
                   "restart_order": 1}),
            json!({"name": "b", "src": "b.conf", "dst": b.display().to_string(),
                   "post_cmds": [["sh", "-c", post]], "restart_order": 2}),
            json!({"name": "c", "src": "c.conf", "dst": c.display().to_string(),
                   "restart_order": 3}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("a.conf", b"new a\n", 0o644),
            Entry::file("b.conf", b"new b\n", 0o644),
            Entry::file("c.conf", b"new c\n", 0o644),
        ],
    );
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &package);
    d.post_update(VERSION);
    wait_until("the post command to run", Duration::from_secs(30), || {
        marker.exists().then_some(())
    });
    // Post commands run after their module is deployed: the install is half done.
    assert_eq!(std::fs::read(&b).unwrap(), b"new b\n", "module b deployed");
    d.sigkill();
    // The parked post command dies with the power, too.
    let pid: i32 = wait_until("the post command's pid", Duration::from_secs(5), || {
        std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    common::procs::signal(pid, rustix::process::Signal::KILL);

    d.restart();
    let first = d.first_progress.clone().expect("first /progress answer");
    let stage = stage_of(&first);
    assert!(
        !matches!(stage.as_str(), "installing" | "rebooting"),
        "the API answered about an unfinished installation: {first}"
    );
    let p = d.wait_for("a settled stage", Duration::from_secs(30), |p| {
        !matches!(
            stage_of(p).as_str(),
            "installing" | "rebooting" | "downloading" | "verifying"
        )
    });
    eprintln!("first answer after the restart: {first}\nsettled: {p}");
    let contents: Vec<Vec<u8>> = [&a, &b, &c]
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let all_old = contents.iter().all(|c| c == b"old\n");
    let all_new =
        contents[0] == b"new a\n" && contents[1] == b"new b\n" && contents[2] == b"new c\n";
    assert!(
        all_old || all_new,
        "a mix of old and new files after the power cut: {:?}",
        contents
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
    );
    match stage_of(&p).as_str() {
        "success" => assert!(all_new, "success with old files: {p}"),
        _ => assert!(all_old, "{} with new files: {p}", stage_of(&p)),
    }
    // Section 2: the outcome found at the restart reaches device-api.
    let outcome = stage_of(&p);
    wait_until(
        "device-api to receive the outcome after the restart",
        Duration::from_secs(10),
        || {
            api.reports()
                .last()
                .filter(|r| r.body["stage"] == outcome.as_str())
                .map(|_| ())
        },
    );
}
