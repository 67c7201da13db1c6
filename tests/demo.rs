//! The README's first command, `cargo run -- demo`, end to end: the real binary runs the demo
//! in an empty directory (its own HTTPS package server, fake device-api, daemon and printerd)
//! and must exit 0 with printerd 1.1.0 and the new web UI in its sandbox.

mod common;

use std::process::Command;

use common::daemon::BIN;

#[test]
fn readme_demo_runs_a_whole_update_and_exits_0() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(BIN)
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .expect("run tope-updater demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert!(text.contains("demo: SUCCESS"), "{text}");
    let root = dir.path().join("demo-sandbox/root/opt/tope");
    let index = std::fs::read_to_string(root.join("web-ui/index.html")).expect("web UI deployed");
    assert!(index.contains("1.1.0"), "{index}");
    let printerd = std::fs::read_to_string(root.join("printerd/printerd")).expect("printerd");
    assert!(printerd.contains("printerd 1.1.0"), "{printerd}");
    let log = std::fs::read_to_string(dir.path().join("demo-sandbox/printerd.log")).unwrap();
    assert!(
        log.contains("printerd 1.0.0 stopped by SIGTERM") && log.contains("printerd 1.1.0 started"),
        "{log}"
    );
}
