//! docs/API.md section 4 `service` modules (stopped and started with systemctl instead of
//! signals) and section 3 PROCESS_KILL_FAILED (nothing deployed over a process that would not
//! stop). systemd cannot run as PID 1 here, so `systemctl` is a script that records its calls;
//! the daemon runs it through `TOPE_SYSTEMCTL`. This file holds one test so that the variable,
//! set in this test process and inherited by the daemon, is shared with nothing else.

mod common;

use std::path::Path;

use common::daemon::stage_of;
use common::*;
use serde_json::json;

const VERSION: &str = "6.1.0";

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn contract_4_services_use_systemctl_and_a_stop_failure_is_process_kill_failed() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let log = ws.path().join("systemctl.log");
    let refuse = ws.path().join("refuse-stop");
    let fake = ws.bin_dir().join("systemctl");
    write_file(
        &fake,
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> '{log}'\n\
             if [ \"$1\" = stop ] && [ -e '{refuse}' ] && [ \"$2\" = printer-api.service ]; then\n\
             echo 'Job for printer-api.service canceled' >&2; exit 1; fi\nexit 0\n",
            log = log.display(),
            refuse = refuse.display()
        )
        .as_bytes(),
        0o755,
    );
    std::env::set_var("TOPE_SYSTEMCTL", &fake);

    let api_dst = ws.root().join("printer-api/printer-api");
    let web_dst = ws.root().join("web/index.html");
    write_file(&api_dst, b"api v6.0.0", 0o755);
    write_file(&web_dst, b"web v6.0.0", 0o644);
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "web", "src": "web/index.html", "dst": web_dst.display().to_string(),
                   "service": "web.service", "restart_order": 2}),
            json!({"name": "printer-api", "src": "api/printer-api",
                   "dst": api_dst.display().to_string(),
                   "service": "printer-api.service", "restart_order": 1}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("web/index.html", b"web v6.1.0", 0o644),
            Entry::file("api/printer-api", b"api v6.1.0", 0o755),
        ],
    );
    let d = Daemon::start(&ws, &api, DaemonOptions::default());

    // 1. A unit that refuses to stop: PROCESS_KILL_FAILED, nothing deployed, the unit that
    //    was stopped is started again.
    std::fs::write(&refuse, b"").unwrap();
    let p = d.install_package(&nginx, "svc-a.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.starts_with("PROCESS_KILL_FAILED: "), "{p}");
    assert_eq!(std::fs::read(&api_dst).unwrap(), b"api v6.0.0");
    assert_eq!(std::fs::read(&web_dst).unwrap(), b"web v6.0.0");
    let first = calls(&log);
    assert!(
        first.iter().any(|c| c == "stop printer-api.service"),
        "{first:?}"
    );
    for (i, c) in first.iter().enumerate() {
        if let Some(unit) = c
            .strip_prefix("stop ")
            .filter(|u| *u != "printer-api.service")
        {
            assert!(
                first[i..].iter().any(|l| l == &format!("start {unit}")),
                "{unit} was stopped and must be started again: {first:?}"
            );
        }
    }
    // The report leaves after the outcome is shown: awaited, not read at once.
    api.wait_for_report(
        "device-api must hear of the failure",
        std::time::Duration::from_secs(10),
        |b| {
            b["stage"] == "failed"
                && b["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("PROCESS_KILL_FAILED"))
        },
    );

    // 2. Units that stop: systemctl stop for both, files deployed, start in restart_order.
    std::fs::remove_file(&refuse).unwrap();
    std::fs::remove_file(&log).unwrap();
    let p = d.install_package(&nginx, "svc-b.zip", VERSION, &package);
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(std::fs::read(&api_dst).unwrap(), b"api v6.1.0");
    assert_eq!(std::fs::read(&web_dst).unwrap(), b"web v6.1.0");
    let second = calls(&log);
    let pos = |c: &str| {
        second
            .iter()
            .position(|l| l == c)
            .unwrap_or_else(|| panic!("no `{c}` in {second:?}"))
    };
    let starts_after_stops = pos("start printer-api.service") > pos("stop web.service")
        && pos("start printer-api.service") > pos("stop printer-api.service");
    assert!(starts_after_stops, "{second:?}");
    assert!(
        pos("start printer-api.service") < pos("start web.service"),
        "restart_order 1 starts first: {second:?}"
    );
}
