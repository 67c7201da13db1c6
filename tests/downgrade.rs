//! Config `allow_downgrade` against the real daemon: the version of every successful
//! installation is recorded (`tmp/installed.json`, kept across restarts), and with
//! `allow_downgrade = false` an older package is refused with `INVALID_PACKAGE` and nothing
//! changes; with the default (`true`) device-api's rollbacks keep working.

mod common;

use common::daemon::stage_of;
use common::*;
use serde_json::json;

fn package(ws: &Workspace, version: &str) -> Vec<u8> {
    let dst = ws.root().join("app/version.txt");
    build_package(
        &manifest(
            version,
            vec![json!({"name": "app", "src": "v", "dst": dst.display().to_string()})],
        ),
        &[Entry::file("v", version.as_bytes(), 0o644)],
    )
}

fn installed(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.root().join("app/version.txt")).unwrap_or_default()
}

fn start(ws: &Workspace, api: &FakeDeviceApi, allow: bool) -> Daemon {
    Daemon::start(
        ws,
        api,
        DaemonOptions {
            extra_toml: format!("allow_downgrade = {allow}\n"),
            ..DaemonOptions::default()
        },
    )
}

#[test]
fn allow_downgrade_false_refuses_an_older_package_and_changes_nothing() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let mut d = start(&ws, &api, false);
    let p = d.install_package(&nginx, "new.zip", "2.0.0", &package(&ws, "2.0.0"));
    assert_eq!(stage_of(&p), "success", "{p}");
    // Across a restart the installed version is still known.
    d.sigkill();
    d.restart();
    let p = d.install_package(&nginx, "old.zip", "1.9.9", &package(&ws, "1.9.9"));
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert_eq!(
        p["data"]["error"],
        "INVALID_PACKAGE: downgrade from 2.0.0 to 1.9.9 refused (allow_downgrade = false)",
        "{p}"
    );
    assert_eq!(installed(&ws), "2.0.0");
    // The same version again (a reinstall) and a newer one are not downgrades.
    let p = d.install_package(&nginx, "same.zip", "2.0.0", &package(&ws, "2.0.0"));
    assert_eq!(stage_of(&p), "success", "{p}");
    let p = d.install_package(&nginx, "newer.zip", "2.0.10", &package(&ws, "2.0.10"));
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(installed(&ws), "2.0.10");
}

#[test]
fn by_default_an_older_package_installs() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let d = start(&ws, &api, true);
    let p = d.install_package(&nginx, "new.zip", "2.0.0", &package(&ws, "2.0.0"));
    assert_eq!(stage_of(&p), "success", "{p}");
    let p = d.install_package(&nginx, "old.zip", "1.9.9", &package(&ws, "1.9.9"));
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(installed(&ws), "1.9.9");
}
