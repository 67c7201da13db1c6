//! The command line and process behaviour: docs/API.md section 1 (a taken port is fatal),
//! section 6 (SIGTERM exits cleanly) and section 7 (unknown config keys are refused).

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::daemon::{config_text, spawn_raw};
use common::*;

/// Runs the binary with a config and waits for it to exit; returns (status, stderr).
fn run_to_exit(
    ws: &Workspace,
    config: &str,
    timeout: Duration,
) -> (std::process::ExitStatus, String) {
    let path = ws.path().join("updater.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = spawn_raw(&path, ws.path(), 1);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tope-updater still running after {timeout:?}; it must exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap_or_default();
    let stdout = std::fs::read_to_string(ws.path().join("daemon-1.stdout")).unwrap_or_default();
    (status, format!("{stderr}{stdout}"))
}

/// Section 1: if the port is taken the daemon exits non-zero with a clear message naming
/// the address (it must not pick another).
#[test]
fn contract_1_port_in_use_exits_non_zero() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = config_text(&ws, &api, port, &DaemonOptions::default());
    let (status, out) = run_to_exit(&ws, &config, Duration::from_secs(15));
    assert!(
        !status.success(),
        "must exit non-zero: {status}; output:\n{out}"
    );
    assert!(
        out.contains(&format!("127.0.0.1:{port}")),
        "the message must name the address 127.0.0.1:{port}:\n{out}"
    );
    drop(taken);
}

/// Section 6: SIGTERM makes the idle daemon exit with status 0.
#[test]
fn contract_6_sigterm_exits_zero() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let status = d.sigterm_and_wait(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    // The port is free again.
    TcpListener::bind(d.addr).expect("the daemon must release its port");
}

/// Section 7: an unknown key in the config file is refused with a message naming it.
#[test]
fn contract_7_unknown_config_key_is_refused() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let mut config = config_text(&ws, &api, free_port(), &DaemonOptions::default());
    config.push_str("frobnicate_level = 3\n");
    let (status, out) = run_to_exit(&ws, &config, Duration::from_secs(15));
    assert!(
        !status.success(),
        "must exit non-zero: {status}; output:\n{out}"
    );
    assert!(
        out.contains("frobnicate_level"),
        "the message must name the unknown key:\n{out}"
    );
}

/// Section 7: every contract key is accepted (a config using all of them starts).
#[test]
fn contract_7_every_contract_key_is_accepted() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    std::fs::create_dir_all(ws.path().join("tls")).unwrap();
    common::nginx::write_tls_material(&ws.path().join("tls"), &ws.ca_file());
    let opts = DaemonOptions {
        use_ca_file: true,
        extra_toml: "trust_window_hours = 24\nmax_package_size = 4294967296\n\
                     max_download_bytes_per_s = 0\nlog_level = \"debug\"\n"
            .into(),
        ..Default::default()
    };
    let d = Daemon::start(&ws, &api, opts);
    assert_eq!(common::daemon::stage_of(&d.progress()), "idle");
}
