//! docs/API.md 9.4, the updater updates itself: a module whose `dst` is the running updater's
//! own executable, against the real daemon started from a copy of the build's binary inside
//! the test's root, so that the module's `dst` is that copy.

mod common;

use std::time::Duration;

use common::daemon::stage_of;
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "9.4.0";

/// docs/API.md 9.4: a module naming the updater's own unit as its `service`, or a post command
/// that restarts or stops the updater, is refused with `INVALID_MANIFEST` before anything is
/// touched (no file replaced, no command run).
#[test]
fn api_9_4_own_unit_or_a_restart_of_the_updater_is_refused_before_anything_is_touched() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let dst = ws.root().join("app/app");
    write_file(&dst, b"app v1", 0o755);
    let marker = ws.path().join("post-ran");
    let cases: Vec<(&str, Value)> = vec![
        ("service", json!({"service": "tope-updater.service"})),
        ("service without suffix", json!({"service": "tope-updater"})),
        (
            "post command",
            json!({"post_cmds": [["systemctl", "restart", "tope-updater"]]}),
        ),
        (
            "shell post command",
            json!({"post_cmds": [format!("touch {}; systemctl stop tope-updater.service",
                                         marker.display())]}),
        ),
        (
            "start_cmd",
            json!({"start_cmd": ["killall", "tope-updater"]}),
        ),
    ];
    for (i, (what, extra)) in cases.into_iter().enumerate() {
        let mut module = json!({"name": "app", "src": "app", "dst": dst.display().to_string()});
        if let (Some(m), Some(e)) = (module.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let pkg = build_package(
            &manifest(VERSION, vec![module]),
            &[Entry::file("app", b"app v2", 0o755)],
        );
        let p = d.install_package(&nginx, &format!("own-{i}.zip"), VERSION, &pkg);
        assert_eq!(stage_of(&p), "failed", "{what}: {p}");
        let err = p["data"]["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with("INVALID_MANIFEST: module app: ")
                && err.contains("the updater cannot stop or restart itself"),
            "{what}: {err}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), b"app v1", "{what}");
        assert!(!marker.exists(), "{what}: the post command ran");
    }
    // The refusal is reported like any failure, and the updater is still there to say so.
    wait_until("the last refusal reported", Duration::from_secs(10), || {
        api.bodies()
            .iter()
            .any(|r| r["stage"] == "failed")
            .then_some(())
    });
    assert_eq!(stage_of(&d.progress()), "failed");
}
