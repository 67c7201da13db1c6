//! CONTRACT.md section 4 process control (SIGTERM, wait stop_timeout_s, SIGKILL, confirm gone;
//! start_cmd; restart_order) and section 3 DEPLOYMENT_FAILED (rollback of every module).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::stage_of;
use common::procs::{self, looping_script, looping_script_text, KillOnDrop, Spawned};
use common::*;
use serde_json::json;

const VERSION: &str = "5.0.0";

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|d| String::from_utf8_lossy(&d).contains(needle))
        .unwrap_or(false)
}

/// Section 4: a process that exits on SIGTERM and one that ignores it (stopped by SIGKILL
/// after stop_timeout_s) are both gone before deployment; both are started again from the
/// new files with start_cmd; the update succeeds.
#[test]
fn contract_4_stop_with_sigterm_then_sigkill_and_restart() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let polite = unique_name("pol");
    let stubborn = unique_name("stb");
    let _kill = KillOnDrop::names(&[&polite, &stubborn]);

    let polite_dst = ws.root().join("polite").join(&polite);
    write_file(&polite_dst, &sleep_binary_with_marker("old-polite"), 0o755);
    let polite_proc = Spawned::spawn(Command::new(&polite_dst).arg("1000"));

    let stubborn_dir = ws.root().join("stubborn");
    std::fs::create_dir_all(&stubborn_dir).unwrap();
    let stubborn_dst = looping_script(&stubborn_dir, &stubborn, "old-stubborn", true, None);
    let stubborn_proc = Spawned::spawn(&mut Command::new(&stubborn_dst));
    procs::wait_for_named(&polite, Duration::from_secs(5));
    procs::wait_for_named(&stubborn, Duration::from_secs(5));

    let m = manifest(
        VERSION,
        vec![
            json!({"name": "polite", "src": "polite",
                   "dst": polite_dst.display().to_string(), "process_name": polite,
                   "start_cmd": [polite_dst.display().to_string(), "1000"],
                   "restart_order": 1}),
            json!({"name": "stubborn", "src": "stubborn",
                   "dst": stubborn_dst.display().to_string(), "process_name": stubborn,
                   "start_cmd": [stubborn_dst.display().to_string()],
                   "restart_order": 2}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("polite", &sleep_binary_with_marker("new-polite"), 0o755),
            Entry::file(
                "stubborn",
                &looping_script_text("new-stubborn", true, None),
                0o755,
            ),
        ],
    );
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            stop_timeout_s: 1,
            ..Default::default()
        },
    );
    let p = d.install_package(&nginx, "pkg.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}");

    assert!(
        polite_proc.has_exited(),
        "the SIGTERM-honouring process must be gone"
    );
    wait_until(
        "the reaping of the stubborn process",
        Duration::from_secs(2),
        || stubborn_proc.has_exited().then_some(()),
    );
    assert!(has_marker(&polite_dst, "new-polite"));
    assert!(contains(&stubborn_dst, "new-stubborn"));

    let new_polite = procs::wait_for_named(&polite, Duration::from_secs(10));
    assert_eq!(new_polite.len(), 1, "{new_polite:?}");
    assert_eq!(
        procs::exe_of(new_polite[0]).as_deref(),
        Some(polite_dst.as_path())
    );
    let new_stubborn = procs::wait_for_named(&stubborn, Duration::from_secs(10));
    assert_eq!(new_stubborn.len(), 1, "{new_stubborn:?}");
    assert!(
        procs::cmdline_of(new_stubborn[0])
            .iter()
            .any(|a| a == &stubborn_dst.display().to_string()),
        "the stubborn program must be started again by start_cmd"
    );
}

/// Section 4 restart_order: lower starts first, whatever the order in the manifest (with an
/// ota-gui that crashes at once, section 6).
#[test]
fn contract_4_restart_order_lower_starts_first() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let first = unique_name("fst");
    let second = unique_name("snd");
    let third = unique_name("thd");
    let _kill = KillOnDrop::names(&[&first, &second, &third]);
    let log = ws.path().join("start-order.log");

    let mut modules = Vec::new();
    let mut entries = Vec::new();
    let mut running = Vec::new();
    // Manifest order: third, first, second.
    for (name, order) in [(&third, 30), (&first, 10), (&second, 20)] {
        let dir = ws.root().join(format!("m{order}"));
        std::fs::create_dir_all(&dir).unwrap();
        let dst = looping_script(&dir, name, "old", false, None);
        running.push(Spawned::spawn(&mut Command::new(&dst)));
        modules.push(json!({
            "name": name, "src": name, "dst": dst.display().to_string(),
            "process_name": name, "start_cmd": [dst.display().to_string()],
            "restart_order": order
        }));
        entries.push(Entry::file(
            name,
            &looping_script_text(name, false, Some(&log)),
            0o755,
        ));
    }
    for n in [&first, &second, &third] {
        procs::wait_for_named(n, Duration::from_secs(5));
    }
    let package = build_package(&manifest(VERSION, modules), &entries);
    // Section 6: an ota-gui that crashes at once never affects the update.
    let gui = ws.bin_dir().join("ota-gui");
    let gui_ran = ws.path().join("gui-ran");
    write_file(
        &gui,
        format!("#!/bin/sh\ntouch '{}'\nkill -SEGV $$\n", gui_ran.display()).as_bytes(),
        0o755,
    );
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            ota_gui_path: Some(gui),
            ..Default::default()
        },
    );
    let p = d.install_package(&nginx, "pkg.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}");
    wait_until(
        "ota-gui to have been started",
        Duration::from_secs(5),
        || gui_ran.exists().then_some(()),
    );
    for n in [&first, &second, &third] {
        procs::wait_for_named(n, Duration::from_secs(10));
    }
    let started = wait_until("three start lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 3).then_some(t)
    });
    let order: Vec<&str> = started.lines().collect();
    assert_eq!(
        order,
        vec![first.as_str(), second.as_str(), third.as_str()],
        "start order must follow restart_order"
    );
}

/// Section 3 DEPLOYMENT_FAILED: a post command that fails rolls the whole install back:
/// every dst has its old content and mode, new files and directories are gone, and the old
/// program runs again (started by start_cmd).
#[test]
fn contract_3_deployment_failed_rolls_back_everything() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let prog = unique_name("rbk");
    let _kill = KillOnDrop::names(&[&prog]);

    let a_dst = ws.root().join("bin").join(&prog);
    write_file(&a_dst, &sleep_binary_with_marker("old-a"), 0o750);
    let old_proc = Spawned::spawn(Command::new(&a_dst).arg("1000"));
    procs::wait_for_named(&prog, Duration::from_secs(5));

    let b_dst = ws.root().join("etc");
    write_file(&b_dst.join("main.conf"), b"old main\n", 0o640);

    let m = manifest(
        VERSION,
        vec![
            json!({"name": "prog", "src": "prog", "dst": a_dst.display().to_string(),
                   "process_name": prog,
                   "start_cmd": [a_dst.display().to_string(), "1000"],
                   "restart_order": 1}),
            json!({"name": "etc", "src": "etc", "dst": b_dst.display().to_string(),
                   "post_cmds": [["true"], ["false"]],
                   "restart_order": 2}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("prog", &sleep_binary_with_marker("new-a"), 0o755),
            Entry::file("etc/main.conf", b"new main\n", 0o644),
            Entry::file("etc/extra.conf", b"new extra\n", 0o644),
            Entry::dir("etc/newdir/"),
            Entry::file("etc/newdir/x.conf", b"x\n", 0o644),
        ],
    );
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = d.install_package(&nginx, "pkg.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{p}");
    assert_eq!(p["code"].as_i64(), Some(500), "{p}");

    assert!(has_marker(&a_dst, "old-a"), "module A must be rolled back");
    assert_eq!(mode_of(&a_dst), 0o750, "module A mode must be restored");
    assert_eq!(
        std::fs::read(b_dst.join("main.conf")).unwrap(),
        b"old main\n"
    );
    assert_eq!(mode_of(&b_dst.join("main.conf")), 0o640);
    assert!(
        !b_dst.join("extra.conf").exists(),
        "a new file must be removed"
    );
    assert!(
        !b_dst.join("newdir").exists(),
        "a new directory must be removed"
    );

    assert!(
        old_proc.has_exited(),
        "the program was stopped for the install"
    );
    let again = procs::wait_for_named(&prog, Duration::from_secs(10));
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(procs::exe_of(again[0]).as_deref(), Some(a_dst.as_path()));

    api.wait_for_report(
        "the DEPLOYMENT_FAILED report",
        Duration::from_secs(5),
        |b| b["error"].as_str() == Some(err),
    );
}
