//! docs/API.md sections 8.3 and 8.8 against the real daemon: writes stay inside the allowed
//! root whatever links are on the disk, and a printer laid out by the Python updater
//! (`/opt/tope/versions/<v>` behind relative `current`/`previous` links) updates through them.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::daemon::stage_of;
use common::*;
use serde_json::json;

fn one_file_package(version: &str, dst: &Path, data: &[u8]) -> Vec<u8> {
    build_package(
        &manifest(
            version,
            vec![json!({"name": "device-api", "src": "bin", "dst": dst.display().to_string()})],
        ),
        &[Entry::file("bin", data, 0o755)],
    )
}

#[test]
fn contract_8_8_update_through_the_python_updaters_current_link() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let root = ws.root();
    write_file(
        &root.join("versions/1.0.0/device-api/device-api"),
        b"v1",
        0o755,
    );
    write_file(
        &root.join("versions/0.9.0/device-api/device-api"),
        b"v0.9",
        0o755,
    );
    symlink("versions/1.0.0", root.join("current")).unwrap();
    symlink("versions/0.9.0", root.join("previous")).unwrap();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());

    let dst = root.join("current/device-api/device-api");
    let p = d.install_package(
        &nginx,
        "p.zip",
        "1.1.0",
        &one_file_package("1.1.0", &dst, b"v1.1"),
    );
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    assert_eq!(
        std::fs::read(root.join("versions/1.0.0/device-api/device-api")).unwrap(),
        b"v1.1"
    );
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        Path::new("versions/1.0.0")
    );
    assert_eq!(
        std::fs::read_link(root.join("previous")).unwrap(),
        Path::new("versions/0.9.0")
    );
    assert_eq!(
        std::fs::read(root.join("versions/0.9.0/device-api/device-api")).unwrap(),
        b"v0.9"
    );
    assert!(files_below(&root)
        .iter()
        .all(|f| !f.to_string_lossy().ends_with(".tmp")));
}

#[test]
fn contract_8_3_a_directory_symlink_out_of_the_root_is_refused_and_nothing_is_written() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let root = ws.root();
    let outside = ws.path().join("etc");
    write_file(&outside.join("passwd"), b"root:x:0:0", 0o644);
    std::fs::create_dir_all(&root).unwrap();
    symlink(&outside, root.join("config")).unwrap();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());

    let dst = root.join("config/passwd");
    let p = d.install_package(
        &nginx,
        "p.zip",
        "1.1.0",
        &one_file_package("1.1.0", &dst, b"pwned"),
    );
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("INVALID_MANIFEST: "), "{p}");
    assert!(err.contains("outside the allowed roots"), "{p}");
    assert_eq!(
        std::fs::read(outside.join("passwd")).unwrap(),
        b"root:x:0:0"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing new outside the root"
    );
}
