//! docs/API.md 8.1, no child outlives its step: a `systemctl start` that never returns while
//! the updater restarts a service is stopped with its process group when the updater gets
//! SIGTERM, the updater exits at once instead of waiting for systemctl's time limit, and the
//! next start rolls the installation back. `systemctl` is a script run through
//! `TOPE_SYSTEMCTL`; this file holds one test so that the variable reaches no other test.

mod common;

use std::time::Duration;

use common::daemon::stage_of;
use common::procs::{is_alive, HangingSystemctl, KillOnDrop};
use common::*;
use serde_json::json;

const VERSION: &str = "8.1.7";

#[test]
fn contract_8_1_sigterm_stops_a_hanging_systemctl_start_and_the_next_start_rolls_back() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let systemctl = HangingSystemctl::install(&ws, "start");
    let _kill = KillOnDrop::default().pid_file(&systemctl.hang_pid);

    let dst = ws.root().join("svc/svc.conf");
    write_file(&dst, b"old\n", 0o644);
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "svc", "src": "svc.conf", "dst": dst.display().to_string(),
                    "service": "tope-hang.service"}),
        ],
    );
    let package = build_package(&m, &[Entry::file("svc.conf", b"new\n", 0o644)]);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &package);
    systemctl.start_hanging();
    d.post_update(VERSION);
    let stuck = systemctl.wait_hung("the installation to hang in `systemctl start`");
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        b"new\n",
        "deployed, then hung"
    );

    // systemctl's own limit is 120 s; the updater does not wait for it.
    let status = d.sigterm_and_wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", d.output());
    assert!(
        !is_alive(stuck),
        "the hanging systemctl (pid {stuck}) outlived the updater"
    );
    let journal = ws.work_dir().join("backups/journal.json");
    assert!(journal.exists(), "the journal is left for the next start");
    assert_eq!(
        systemctl.calls(),
        "stop tope-hang.service\nstart tope-hang.service\n",
        "nothing else was run while shutting down"
    );

    // The next start rolls back: the old file, the service started again.
    systemctl.stop_hanging();
    d.restart();
    let first = d.first_progress.clone().unwrap();
    assert_eq!(stage_of(&first), "failed", "{first}");
    let err = first["data"]["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("DEPLOYMENT_FAILED: ") && err.contains("rolled back"),
        "{first}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"old\n");
    assert!(!journal.exists(), "recovered: journal removed");
    assert!(
        systemctl.calls().ends_with("start tope-hang.service\n"),
        "the service is started again: {}",
        systemctl.calls()
    );
}
