//! docs/API.md section 7: configuration keys whose effect is seen from outside.

mod common;

use std::time::{Duration, Instant};

use common::daemon::stage_of;
use common::*;

/// `max_download_bytes_per_s` caps the download rate: 2 MiB at 512 KiB/s cannot take less than
/// about 4 s (the bound checked is 3 s, a floor that no slowness of the machine can break).
#[test]
fn contract_7_max_download_bytes_per_s_caps_the_rate() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: "max_download_bytes_per_s = 524288\n".into(),
            ..Default::default()
        },
    );
    let package = pseudo_random_bytes(2 << 20, 5);
    let url = nginx.put("capped.zip", &package);
    let started = Instant::now();
    let (_, a) = d.post_json(
        "/download",
        &download_body("1.0.0", &url, "capped.zip", &package),
    );
    assert_eq!(a["data"]["status"], "downloading", "{a}");
    let p = d.wait_for("toInstall", Duration::from_secs(60), |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    assert_eq!(stage_of(&p), "toInstall", "{p}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "2 MiB at 512 KiB/s took only {took:?}"
    );
}

/// `log_level` and the default `work_dir` (the process's working directory): `./tmp`, `./logs`,
/// `./backups` appear there, and `./logs/updater.log` holds DEBUG lines only at level debug.
#[test]
fn contract_7_log_level_and_default_work_dir() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    for (level, expect_debug) in [("debug", true), ("warn", false)] {
        let dir = ws.path().join(format!("cwd-{level}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let cfg = dir.join("updater.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndevice_api_url = \"{}\"\nlog_level = \"{level}\"\n",
                api.url()
            ),
        )
        .unwrap();
        let mut d = Daemon::start_with_config(&cfg, port, &dir, &dir);
        let _ = d.progress();
        let status = d.sigterm_and_wait(Duration::from_secs(20));
        assert!(status.success(), "{status}");
        for sub in ["tmp", "logs", "backups"] {
            assert_eq!(mode_of(&dir.join(sub)), 0o755, "{sub}");
        }
        let log = std::fs::read_to_string(dir.join("logs/updater.log")).unwrap();
        assert_eq!(
            log.contains(" DEBUG "),
            expect_debug,
            "level {level}:\n{log}"
        );
        assert_eq!(
            log.contains(" INFO "),
            expect_debug,
            "level {level}:\n{log}"
        );
    }
}
