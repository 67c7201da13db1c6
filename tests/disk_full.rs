//! docs/API.md section 3 DISK_FULL during a download: the disk fills up while the package is
//! being written (another program takes the space after the up-front check passed). The
//! download fails with DISK_FULL, the partial file is removed, and the daemon stays healthy.
//! The work directory is a real small tmpfs (mounting needs root: CI runs as root).

mod common;

use std::process::Command;
use std::time::Duration;

use common::daemon::stage_of;
use common::tmpfs::Tmpfs;
use common::*;

#[test]
fn contract_3_disk_filling_up_during_download_is_disk_full_and_removes_the_partial() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let Some(_fs) = Tmpfs::mount(&ws.work_dir(), "8m") else {
        return;
    };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());

    // 5 MB fit in the 8 MB tmpfs when the download starts; /slow/ keeps it going for seconds.
    let package = pseudo_random_bytes(5 << 20, 77);
    let url = nginx.put("slow/big.zip", &package);
    let (_, answer) = d.post_json(
        "/download",
        &download_body("1.0.0", &url, "big.zip", &package),
    );
    assert_eq!(answer["data"]["status"], "downloading", "{answer}");
    d.wait_for("some bytes on disk", Duration::from_secs(30), |p| {
        p["data"]["bytes_downloaded"].as_u64().unwrap_or(0) > 0
    });

    // Someone else takes what is left of the disk.
    let filler = ws.work_dir().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        use std::io::Write;
        if f.write_all(&chunk).is_err() || f.sync_data().is_err() {
            break;
        }
    }

    let p = d.wait_stage("failed", Duration::from_secs(60));
    let err = p["data"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("DISK_FULL: "), "{p}");
    assert_eq!(p["code"], 500, "{p}");
    assert!(
        !ws.tmp_file("big.zip").exists(),
        "the partial download must be removed"
    );
    let reports = api.reports();
    assert!(
        reports.iter().any(|r| r.body["stage"] == "failed"
            && r.body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("DISK_FULL"))),
        "device-api must be told"
    );

    // Space back: the same package downloads again from the start and verifies.
    drop(f);
    std::fs::remove_file(&filler).unwrap();
    let (_, answer) = d.post_json(
        "/download",
        &download_body("1.0.0", &url, "big.zip", &package),
    );
    assert_eq!(answer["data"]["status"], "downloading", "{answer}");
    let p = d.wait_for("toInstall", Duration::from_secs(60), |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    assert_eq!(stage_of(&p), "toInstall", "{p}");
    assert_eq!(md5_file(&ws.tmp_file("big.zip")), md5_hex(&package));
}

#[test]
fn contract_3_disk_full_is_checked_up_front_from_package_size() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let Some(_fs) = Tmpfs::mount(&ws.work_dir(), "4m") else {
        return;
    };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let package = pseudo_random_bytes(6 << 20, 78);
    let url = nginx.put("huge.zip", &package);
    let (_, answer) = d.post_json(
        "/download",
        &download_body("1.0.0", &url, "huge.zip", &package),
    );
    assert_eq!(answer["code"], 500, "{answer}");
    assert!(
        answer["msg"]
            .as_str()
            .unwrap_or_default()
            .starts_with("DISK_FULL: "),
        "{answer}"
    );
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(
        nginx.access_log(Some("huge.zip")).is_empty(),
        "nothing was fetched"
    );
    assert!(!ws.tmp_file("huge.zip").exists());
}

/// docs/API.md section 8.1, a full disk at any step: the destination's filesystem fills up
/// while the new files are being written, after the up-front space check passed. To hit that
/// moment every time, the filesystem runs out of inodes rather than blocks (the same ENOSPC):
/// a tmpfs with one free inode takes the first temporary and refuses the second. Every file
/// stays old, no staging file is left beside them, nothing of the installation stays in the backups,
/// and the daemon takes the next `/download` and `/update` without a restart.
#[test]
fn contract_8_1_disk_filling_up_during_deployment_leaves_every_file_old() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let root = ws.root();
    // Inodes: the root directory, app/, app/big.bin, app/conf.json, and one free.
    let Some(_fs) = Tmpfs::mount(&root, "16m,nr_inodes=5") else {
        return;
    };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    write_file(&root.join("app/big.bin"), b"old big", 0o644);
    write_file(&root.join("app/conf.json"), b"old conf", 0o644);
    let big = pseudo_random_bytes(1 << 20, 79);
    let m = manifest(
        "2.0.0",
        vec![serde_json::json!({"name": "app", "src": "app",
                                "dst": root.join("app").display().to_string()})],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("app/big.bin", &big, 0o644),
            Entry::file("app/conf.json", b"new conf", 0o644),
        ],
    );
    d.download_package(&nginx, "full.zip", "2.0.0", &package);
    d.post_update("2.0.0");
    let p = d.wait_outcome();
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("DISK_FULL: "), "{p}");
    assert!(err.ends_with("rolled back"), "{p}");
    assert_eq!(std::fs::read(root.join("app/big.bin")).unwrap(), b"old big");
    assert_eq!(
        std::fs::read(root.join("app/conf.json")).unwrap(),
        b"old conf"
    );
    let leftovers: Vec<_> = files_below(&root)
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".tmp") || name.starts_with(".tope-stage-")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    assert!(files_below(&ws.work_dir().join("backups")).is_empty());

    // Room again: the same package is taken again and installs, no restart needed.
    let grown = Command::new("mount")
        .args(["-o", "remount,nr_inodes=100"])
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    assert!(grown, "remount of the tmpfs");
    let (_, answer) = d.post_json(
        "/download",
        &download_body("2.0.0", &nginx.url("full.zip"), "full.zip", &package),
    );
    assert_eq!(answer["code"], 200, "{answer}");
    d.wait_stage("toInstall", Duration::from_secs(60));
    d.post_update("2.0.0");
    let p = d.wait_outcome();
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    assert_eq!(std::fs::read(root.join("app/big.bin")).unwrap(), big);
}
