//! The whole OTA flow against real servers: docs/API.md sections 1 (API), 2 (callbacks),
//! 4 (package, modes, restart order), 5 (files on the device) and 6 (ota-gui).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::daemon::{assert_error, assert_ok_status, progress_of, stage_of, STAGES};
use common::procs::{self, KillOnDrop, Spawned};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "2.4.6";

fn stage_rank(s: &str) -> usize {
    STAGES
        .iter()
        .position(|x| *x == s)
        .unwrap_or_else(|| panic!("unknown stage {s:?}"))
}

/// What one test installs: module A (a running program, restart_order 2) and module B
/// (a directory with a new subdirectory, restart_order 1).
struct Scenario {
    ws: Workspace,
    api: FakeDeviceApi,
    nginx: Nginx,
    proc_name: String,
    a_dst: PathBuf,
    b_dst: PathBuf,
    old_proc: Spawned,
    package: Vec<u8>,
    url: String,
    _kill: KillOnDrop,
}

/// Downloads and installs the scenario's package, each of the two steps within `timeout`.
fn download_and_install(d: &Daemon, s: &Scenario, timeout: Duration) {
    d.post_download(&download_body(VERSION, &s.url, "update.zip", &s.package));
    d.wait_stage("toInstall", timeout);
    d.post_update(VERSION);
    d.wait_stage("success", timeout);
}

fn scenario() -> Option<Scenario> {
    let ws = Workspace::new();
    let nginx = ws.nginx()?;
    let api = FakeDeviceApi::start();
    let proc_name = unique_name("prog");

    // Module A: the program, old version at dst and running from there.
    let a_dst = ws.root().join("moda").join(&proc_name);
    write_file(&a_dst, &sleep_binary_with_marker("old-a"), 0o755);
    let old_proc = Spawned::spawn(Command::new(&a_dst).arg("1000"));
    procs::wait_for_named(&proc_name, Duration::from_secs(5));

    // Module B: a directory with one old file.
    let b_dst = ws.root().join("modb");
    write_file(&b_dst.join("conf.json"), b"{\"old\": true}\n", 0o644);

    // 1 MiB of incompressible data so the download spans many 5 % steps.
    let blob = pseudo_random_bytes(1024 * 1024, 7);
    let manifest = manifest(
        VERSION,
        vec![
            json!({
                "name": "prog", "src": format!("modules/a/{proc_name}"),
                "dst": a_dst.display().to_string(),
                "process_name": proc_name,
                "start_cmd": [a_dst.display().to_string(), "1000"],
                "restart_order": 2
            }),
            json!({
                "name": "conf", "src": "modules/b",
                "dst": b_dst.display().to_string(),
                "restart_order": 1
            }),
        ],
    );
    let package = build_package(
        &manifest,
        &[
            Entry::file(
                &format!("modules/a/{proc_name}"),
                &sleep_binary_with_marker("new-a"),
                0o755,
            ),
            Entry::file("modules/b/conf.json", b"{\"new\": true}\n", 0o644),
            Entry::dir("modules/b/sub/"),
            Entry::file("modules/b/sub/tool.sh", b"#!/bin/sh\necho new\n", 0o755),
            Entry::file("modules/b/sub/blob.bin", &blob, 0o644),
        ],
    );
    let url = nginx.put("pkg/update.zip", &package);
    Some(Scenario {
        _kill: KillOnDrop::names(&[&proc_name]),
        ws,
        api,
        nginx,
        proc_name,
        a_dst,
        b_dst,
        old_proc,
        package,
        url,
    })
}

/// Sections 1, 2, 4, 5, 6: download over HTTPS, verify, install two modules, restart the
/// program; every answer, file, mode, process and callback as the contract says.
#[test]
fn contract_full_update_flow_download_verify_install_restart() {
    let Some(s) = scenario() else { return };
    let gui_marker = s.ws.path().join("gui-started");
    let gui = s.ws.bin_dir().join("ota-gui");
    write_file(
        &gui,
        format!("#!/bin/sh\necho started > '{}'\n", gui_marker.display()).as_bytes(),
        0o755,
    );
    let d = Daemon::start(
        &s.ws,
        &s.api,
        DaemonOptions {
            ota_gui_path: Some(gui.clone()),
            ..Default::default()
        },
    );
    let body = download_body(VERSION, &s.url, "update.zip", &s.package);

    // Section 1: accepted at once.
    let answer = d.post_json("/download", &body);
    assert_ok_status(&answer, "downloading", "POST /download");

    let p = d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(progress_of(&p), 100, "toInstall has progress 100: {p}");
    assert_eq!(p["code"].as_i64(), Some(200), "{p}");
    assert!(p["data"]["error"].is_null(), "{p}");

    // Section 5: the package is in ./tmp/<package_name>, state.json kept.
    let tmp_pkg = s.ws.tmp_file("update.zip");
    assert_eq!(md5_file(&tmp_pkg), md5_hex(&s.package));
    let state: Value = serde_json::from_slice(&std::fs::read(s.ws.state_file()).unwrap()).unwrap();
    for key in [
        "version",
        "package_url",
        "package_name",
        "package_size",
        "package_md5",
        "bytes_downloaded",
        "last_update",
        "stage",
        "verified_at",
    ] {
        assert!(
            state.get(key).is_some(),
            "state.json lacks `{key}`: {state}"
        );
    }
    assert_eq!(state["stage"], "toInstall", "{state}");
    assert_eq!(state["version"], VERSION, "{state}");
    assert_eq!(state["package_md5"], md5_hex(&s.package), "{state}");

    // Section 1: the same package again while toInstall.
    let again = d.post_json("/download", &body);
    assert_ok_status(
        &again,
        "toInstall",
        "repeated /download of the verified package",
    );

    // Section 1: /update with another version.
    let wrong = d.post_json("/update", &json!({"version": "9.9.9"}));
    assert_error(
        &wrong,
        404,
        "PACKAGE_NOT_FOUND",
        "/update with another version",
    );
    assert_eq!(stage_of(&d.progress()), "toInstall");

    let go = d.post_json("/update", &json!({"version": VERSION}));
    assert_ok_status(&go, "installing", "/update with the downloaded version");
    let p = d.wait_stage("success", Duration::from_secs(60));
    assert_eq!(p["code"].as_i64(), Some(200), "{p}");
    assert!(p["data"]["error"].is_null(), "{p}");

    // Section 6: ota-gui was started when the installation began.
    wait_until("ota-gui to have run", Duration::from_secs(5), || {
        gui_marker.exists().then_some(())
    });

    // Section 4: new contents, modes kept, new directory 0755.
    assert!(has_marker(&s.a_dst, "new-a"), "module A not deployed");
    assert_eq!(mode_of(&s.a_dst), 0o755);
    assert_eq!(
        std::fs::read(s.b_dst.join("conf.json")).unwrap(),
        b"{\"new\": true}\n"
    );
    assert_eq!(mode_of(&s.b_dst.join("conf.json")), 0o644);
    assert_eq!(mode_of(&s.b_dst.join("sub")), 0o755, "new directory mode");
    assert_eq!(
        std::fs::read(s.b_dst.join("sub/tool.sh")).unwrap(),
        b"#!/bin/sh\necho new\n"
    );
    assert_eq!(
        mode_of(&s.b_dst.join("sub/tool.sh")),
        0o755,
        "executable mode"
    );
    assert_eq!(
        md5_file(&s.b_dst.join("sub/blob.bin")),
        md5_hex(&pseudo_random_bytes(1024 * 1024, 7))
    );

    // Section 4: the old process was stopped, a new one started from the new file.
    wait_until("the old process to be gone", Duration::from_secs(5), || {
        s.old_proc.has_exited().then_some(())
    });
    let pids = procs::wait_for_named(&s.proc_name, Duration::from_secs(10));
    assert_eq!(
        pids.len(),
        1,
        "exactly one {} must run: {pids:?}",
        s.proc_name
    );
    assert_ne!(pids[0], s.old_proc.pid);
    let exe = procs::exe_of(pids[0]).expect("exe of the new process");
    assert_eq!(exe, s.a_dst, "the new process runs the deployed file");

    // Section 5: state.json deleted after success; the package and backups cleaned up.
    assert!(
        !s.ws.state_file().exists(),
        "state.json must be deleted after success"
    );
    assert!(
        !tmp_pkg.exists(),
        "the package must be removed after success"
    );
    let leftovers = files_below(&s.ws.work_dir().join("backups"));
    assert!(leftovers.is_empty(), "backups left behind: {leftovers:?}");

    // Section 1: success stays visible.
    assert_eq!(stage_of(&d.progress()), "success");

    // Section 2: callbacks.
    s.api
        .wait_for_report("the success report", Duration::from_secs(5), |b| {
            b["stage"] == "success"
        });
    let reports = s.api.bodies();
    check_reports(&reports);

    // Section 5: the log.
    check_log(&s.ws.work_dir().join("logs/updater.log"));
    drop(s.nginx);
}

/// Section 2: the reports form one ordered story: the download starts at 0, download progress
/// moves in 5 % steps without going back, every stage change is reported, success is last.
fn check_reports(reports: &[Value]) {
    assert!(!reports.is_empty(), "no callback reached device-api");
    for r in reports {
        for key in ["stage", "progress", "message", "error"] {
            assert!(r.get(key).is_some(), "report lacks `{key}`: {r}");
        }
    }
    // A report of the idle state at start is allowed; the update's story starts after it.
    let start = reports
        .iter()
        .position(|r| r["stage"] != "idle")
        .expect("no report of the update");
    let reports = &reports[start..];
    let first = &reports[0];
    assert_eq!(
        first["stage"], "downloading",
        "first report of the update: {first}"
    );
    assert_eq!(first["progress"], 0, "first report of the update: {first}");

    let downloading: Vec<i64> = reports
        .iter()
        .filter(|r| r["stage"] == "downloading")
        .map(|r| r["progress"].as_i64().expect("integer progress"))
        .collect();
    assert!(
        downloading
            .iter()
            .all(|p| p % 5 == 0 && (0..=100).contains(p)),
        "download progress must be reported in 5 % steps: {downloading:?}"
    );
    assert!(
        downloading.windows(2).all(|w| w[0] <= w[1]),
        "download progress must not go back: {downloading:?}"
    );
    assert!(
        downloading.len() >= 3,
        "a 1 MiB download must be reported at several 5 % steps: {downloading:?}"
    );

    let stages: Vec<&str> = reports
        .iter()
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    let ranks: Vec<usize> = stages.iter().map(|s| stage_rank(s)).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "a report of an earlier stage arrived after a later one: {stages:?}"
    );
    for needed in [
        "downloading",
        "verifying",
        "toInstall",
        "installing",
        "success",
    ] {
        assert!(
            stages.contains(&needed),
            "no report for stage {needed}: {stages:?}"
        );
    }
    let last = reports.last().unwrap();
    assert_eq!(last["stage"], "success", "last report: {last}");
    assert!(last["error"].is_null(), "last report: {last}");
    assert!(
        reports.iter().all(|r| r["error"].is_null()),
        "no report of a successful update carries an error: {reports:?}"
    );
}

/// Section 5: ISO 8601 timestamps and levels in ./logs/updater.log.
fn check_log(path: &std::path::Path) {
    let log = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", path.display()));
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the log is empty");
    let iso = |l: &str| {
        let b = l.as_bytes();
        // YYYY-MM-DDTHH:MM:SS somewhere near the start of the line.
        (0..b.len().saturating_sub(19).min(40)).any(|i| {
            let w = &b[i..i + 19];
            w.iter().enumerate().all(|(j, c)| match j {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            })
        })
    };
    let levelled = |l: &str| {
        ["DEBUG", "INFO", "WARN", "ERROR"]
            .iter()
            .any(|lv| l.contains(lv))
    };
    let good = lines.iter().filter(|l| iso(l) && levelled(l)).count();
    assert!(
        good * 2 >= lines.len() && good > 0,
        "log lines must carry an ISO 8601 timestamp and a level; {good} of {} do:\n{}",
        lines.len(),
        lines
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("INFO")),
        "an update logs at INFO"
    );
}

/// Section 2: device-api is down during the whole update; once it answers again the final
/// outcome reaches it, and no older report arrives after a newer one.
#[test]
fn contract_2_final_outcome_reaches_device_api_after_it_comes_back() {
    let Some(mut s) = scenario() else { return };
    s.api.down();
    let d = Daemon::start(&s.ws, &s.api, DaemonOptions::default());
    download_and_install(&d, &s, Duration::from_secs(60));
    assert!(
        s.api.bodies().is_empty(),
        "device-api was down, nothing can have arrived"
    );

    s.api.up();
    s.api.wait_for_report(
        "the success report after device-api came back",
        Duration::from_secs(15),
        |b| b["stage"] == "success",
    );
    // Files and processes are checked meanwhile; then no stale report may have followed.
    assert!(has_marker(&s.a_dst, "new-a"));
    procs::wait_for_named(&s.proc_name, Duration::from_secs(10));
    let reports = s.api.bodies();
    let stages: Vec<&str> = reports
        .iter()
        .map(|r| r["stage"].as_str().unwrap_or("?"))
        .collect();
    let ranks: Vec<usize> = stages.iter().map(|s| stage_rank(s)).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "an older report arrived after a newer one: {stages:?}"
    );
    assert_eq!(
        stages.last().copied(),
        Some("success"),
        "the final outcome is the last report: {stages:?}"
    );
}

/// Section 2: the OTA work never waits for device-api: with every callback hanging for a
/// minute, the whole update still completes.
#[test]
fn contract_2_hanging_device_api_never_slows_the_update() {
    let Some(s) = scenario() else { return };
    s.api.set_delay(Duration::from_secs(60));
    let d = Daemon::start(&s.ws, &s.api, DaemonOptions::default());
    download_and_install(&d, &s, Duration::from_secs(20));
    assert!(has_marker(&s.a_dst, "new-a"));
    assert!(
        !s.api.bodies().is_empty(),
        "callbacks were attempted while device-api hung"
    );
}

/// Section 8.8: backups the Python updater left in `backups/` stay as they are through an
/// installation (the updater keeps its own under `backups/install-files/`).
#[test]
fn contract_8_8_the_python_updaters_backups_are_kept() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let kept = [
        ws.work_dir().join("backups/files/device-api.bak"),
        ws.work_dir().join("backups/1.0.0/device-api"),
        ws.work_dir().join("backups/journal.json.old"),
    ];
    for k in &kept {
        write_file(k, b"python backup", 0o644);
    }
    let dst = ws.root().join("app/file");
    let package = build_package(
        &manifest(
            "1.0.1",
            vec![json!({"name": "app", "src": "f", "dst": dst.display().to_string()})],
        ),
        &[Entry::file("f", b"new", 0o644)],
    );
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.install_package(&nginx, "p.zip", "1.0.1", &package);
    assert_eq!(stage_of(&p), "success", "{p}");
    d.sigkill();
    d.restart();
    for k in &kept {
        assert_eq!(
            std::fs::read(k).ok().as_deref(),
            Some(&b"python backup"[..]),
            "{}",
            k.display()
        );
    }
}
