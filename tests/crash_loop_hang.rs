//! The crash-loop guard when start-up recovery hangs: the rollback of an interrupted
//! installation waits on `systemctl stop` forever and the daemon is killed, as systemd's start
//! timeout would, at three starts in a row; the fourth start does not try again and answers at
//! once with `failed` `INTERNAL_ERROR`. `systemctl` is a script run through `TOPE_SYSTEMCTL`;
//! this file holds one test so that the variable reaches no other test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::daemon::{spawn_raw, stage_of};
use common::procs::{signal, HangingSystemctl, KillOnDrop};
use common::*;
use rustix::process::Signal;
use serde_json::{json, Value};

const VERSION: &str = "6.1.0";

#[test]
fn crash_loop_guard_counts_recoveries_killed_while_they_hang() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let systemctl = HangingSystemctl::install(&ws, "stop");
    let marker = ws.path().join("post-cmd.pid");
    let _kill = KillOnDrop::default()
        .pid_file(&marker)
        .pid_file(&systemctl.hang_pid);

    let dst = ws.root().join("svc/svc.conf");
    write_file(&dst, b"old\n", 0o644);
    let post = format!(
        "if [ -e '{m}' ]; then exit 0; fi; echo $$ > '{m}'; exec sleep 60",
        m = marker.display()
    );
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "svc", "src": "svc.conf", "dst": dst.display().to_string(),
                    "service": "tope-hang.service", "post_cmds": [["sh", "-c", post]]}),
        ],
    );
    let package = build_package(&m, &[Entry::file("svc.conf", b"new\n", 0o644)]);
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &package);
    d.post_update(VERSION);
    let pid: i32 = wait_until("the post command to park", Duration::from_secs(30), || {
        std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    d.sigkill();
    signal(pid, Signal::KILL);
    let journal = ws.work_dir().join("backups/journal.json");
    assert!(journal.exists());
    let stops = || {
        systemctl
            .calls()
            .lines()
            .filter(|l| l.starts_with("stop "))
            .count()
    };
    let stops_before = stops();

    // From now on `systemctl stop` hangs: each start's rollback waits on it until killed.
    systemctl.start_hanging();
    let counter = ws.work_dir().join("tmp/recovery.json");
    for attempt in 1..=3u64 {
        let _ = std::fs::remove_file(&systemctl.hang_pid);
        let mut child = spawn_raw(&d.config_path, ws.path(), 100 + attempt as u32);
        let stuck = systemctl.wait_hung(&format!("start {attempt} to hang in its rollback"));
        let c: Value = serde_json::from_slice(&std::fs::read(&counter).unwrap()).unwrap();
        assert_eq!(c["attempts"], attempt, "counted before trying: {c}");
        // The API does not answer meanwhile: recovery comes before it.
        assert!(!answers_within(d.addr, Duration::from_millis(300)));
        child.kill().unwrap();
        child.wait().unwrap();
        signal(stuck, Signal::KILL);
        assert_eq!(stops(), stops_before + attempt as usize);
    }

    d.restart();
    let first = d.first_progress.clone().unwrap();
    assert_eq!(stage_of(&first), "failed", "{first}");
    let err = first["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("INTERNAL_ERROR: "), "{first}");
    assert!(err.contains("crashed or was killed"), "{first}");
    assert_eq!(stops(), stops_before + 3, "not tried a 4th time");
    assert!(journal.exists(), "the journal is kept");
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        b"new\n",
        "files left as they are"
    );
    assert!(
        answers_within(d.addr, Duration::from_secs(5)),
        "the probe sees an answering API"
    );
}

/// Whether anything answers a GET /progress on `addr` within `wait`.
fn answers_within(addr: SocketAddr, wait: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, wait) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(wait));
    let _ = s.write_all(b"GET /api/v1.0/progress HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}
