//! docs/API.md section 8.8, third rule: installing over the Python updater. Each test stages
//! a root holding a fake old installation (its unit, venv, program and working directory with
//! a partial download), runs the real `deploy/install.sh` with DESTDIR into it, then checks
//! what was set aside, kept and written, and that the real daemon carries on from the old
//! working directory. Nothing outside the test's directory is touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::daemon::{stage_of, BIN};
use common::*;
use serde_json::json;

const OLD_DIR: &str = "/opt/tope-updater";
const UNIT: &str = "tope-updater.service";
const ASIDE: &str = "var/lib/tope-updater/python-updater";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The Python updater as a printer has it: a venv, its program, a unit in `unit_dir` that
/// runs the venv's python in /opt/tope-updater, enabled for multi-user.target, with an
/// operator's drop-in, plus logs and backups in its working directory.
struct OldInstall {
    root: PathBuf,
    unit_path: String,
    unit_text: String,
}

impl OldInstall {
    fn stage(root: &Path, unit_dir: &str) -> OldInstall {
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        write_file(
            &at("/opt/tope-updater/venv/pyvenv.cfg"),
            b"home = /usr/bin\n",
            0o644,
        );
        write_file(
            &at("/opt/tope-updater/venv/bin/python3"),
            b"#!/bin/sh\nexit 0\n",
            0o755,
        );
        write_file(
            &at("/opt/tope-updater/app/main.py"),
            b"print('python updater')\n",
            0o644,
        );
        write_file(
            &at("/opt/tope-updater/logs/updater.log"),
            b"2025-01-01 10:00:00,000 INFO python updater started\n",
            0o644,
        );
        write_file(
            &at("/opt/tope-updater/backups/1.0.0/device-api"),
            b"old device-api backup",
            0o755,
        );
        let unit_text = format!(
            "[Unit]\nDescription=TOPE OTA updater (Python)\n\n[Service]\n\
             WorkingDirectory={OLD_DIR}\n\
             ExecStart={OLD_DIR}/venv/bin/python3 {OLD_DIR}/app/main.py --port 12315\n\
             Restart=always\n\n[Install]\nWantedBy=multi-user.target\n"
        );
        let unit_path = format!("{unit_dir}/{UNIT}");
        write_file(&at(&unit_path), unit_text.as_bytes(), 0o644);
        write_file(
            &at(&format!("/etc/systemd/system/{UNIT}.d/override.conf")),
            b"[Service]\nEnvironment=OTA_DEBUG=1\n",
            0o644,
        );
        let wants = at("/etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(&unit_path, wants.join(UNIT)).unwrap();
        OldInstall {
            root: root.to_path_buf(),
            unit_path,
            unit_text,
        }
    }

    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// `DESTDIR=<root> deploy/install.sh --no-systemctl <binary>`.
fn install_sh(root: &Path) -> Output {
    let out = Command::new("sh")
        .arg(repo().join("deploy/install.sh"))
        .arg("--no-systemctl")
        .arg(BIN)
        .env("DESTDIR", root)
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        out_text(&out)
    );
    out
}

fn migration(root: &Path, script: &Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg(script)
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run python-migration.sh")
}

/// nginx's ETag of a file it serves: `"<mtime hex>-<size hex>"`.
fn nginx_etag(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    format!("\"{:x}-{:x}\"", m.mtime(), m.size())
}

fn partial_package(ws: &Workspace) -> Vec<u8> {
    let dst = ws.root().join("data.bin").display().to_string();
    let m = manifest(
        "1.1.0",
        vec![json!({"name": "data", "src": "data.bin", "dst": dst})],
    );
    build_package(
        &m,
        &[Entry::file(
            "data.bin",
            &pseudo_random_bytes(2 * 1024 * 1024, 88),
            0o644,
        )],
    )
}

/// The Python updater's state.json (its nine field names) for a partial download of
/// `package` served at `url`, with `extra` fields merged in.
fn python_state(url: &str, package: &[u8], done: usize, extra: serde_json::Value) -> Vec<u8> {
    let mut v = json!({
        "version": "1.1.0",
        "package_url": url,
        "package_name": "pkg.zip",
        "package_size": package.len(),
        "package_md5": md5_hex(package),
        "bytes_downloaded": done,
        "last_update": "2025-01-01T10:05:00",
        "stage": "downloading",
        "verified_at": null,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    serde_json::to_vec_pretty(&v).unwrap()
}

/// The new daemon as systemd would start it after the take-over: from the staged root's
/// binary, in the working directory named by the drop-in, with a config that leaves
/// `work_dir` unset (so the working directory is the work dir).
fn start_taken_over_daemon(ws: &Workspace, old: &OldInstall, api: &FakeDeviceApi) -> Daemon {
    let dropin = std::fs::read_to_string(old.at(&format!(
        "/etc/systemd/system/{UNIT}.d/50-python-work-dir.conf"
    )))
    .expect("the work-dir drop-in");
    let wd = dropin
        .lines()
        .find_map(|l| l.strip_prefix("WorkingDirectory="))
        .expect("WorkingDirectory= in the drop-in");
    assert_eq!(wd, OLD_DIR);
    let port = free_port();
    let config = ws.path().join("updater.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndevice_api_url = \"{}\"\nallowed_roots = [{:?}]\n\
             ca_file = {:?}\nota_gui_path = \"/nonexistent\"\n",
            api.url(),
            ws.root().display().to_string(),
            ws.ca_file().display().to_string(),
        ),
    )
    .unwrap();
    // The installed binary is the one under test (Daemon runs that one).
    let installed = old.at("/usr/local/bin/tope-updater");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(BIN).unwrap(),
        "install.sh must install the given binary"
    );
    // Run from the taken-over directory (its working directory, as the drop-in says); its
    // stdout/stderr files land there too.
    Daemon::start_with_config(&config, port, &old.at(OLD_DIR), &old.at(OLD_DIR))
}

/// Section 8.8: install.sh over the Python updater stops using its unit (set aside with its
/// drop-ins and enablement), installs the new unit under the same name, and makes the new
/// daemon work in the old working directory; state.json, the partial download, logs and
/// backups are kept byte for byte, the venv and program untouched. Started there, the new
/// daemon resumes the partial download from its byte position (Range + If-Range, 206).
#[test]
fn contract_8_8_install_over_python_updater_keeps_its_work_dir_and_resumes() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let root = ws.path().join("stage");
    let old = OldInstall::stage(&root, "/etc/systemd/system");

    let package = partial_package(&ws);
    let url = nginx.put("slow/pkg.zip", &package);
    let done = 1024 * 1024;
    // A Python updater that recorded the server's ETag (without a validator the daemon
    // cannot prove the file unchanged and downloads it again from byte 0; see the next test).
    let state = python_state(
        &url,
        &package,
        done,
        json!({"etag": nginx_etag(&nginx.www("slow/pkg.zip"))}),
    );
    write_file(&old.at("/opt/tope-updater/tmp/state.json"), &state, 0o644);
    write_file(
        &old.at("/opt/tope-updater/tmp/pkg.zip"),
        &package[..done],
        0o644,
    );
    let kept = [
        "/opt/tope-updater/tmp/state.json",
        "/opt/tope-updater/tmp/pkg.zip",
        "/opt/tope-updater/logs/updater.log",
        "/opt/tope-updater/backups/1.0.0/device-api",
        "/opt/tope-updater/venv/bin/python3",
        "/opt/tope-updater/venv/pyvenv.cfg",
        "/opt/tope-updater/app/main.py",
    ];
    let before: Vec<Vec<u8>> = kept
        .iter()
        .map(|p| std::fs::read(old.at(p)).unwrap())
        .collect();

    let out = install_sh(&root);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("found the Python updater"),
        "{}",
        out_text(&out)
    );

    // Set aside: the unit byte for byte, the operator's drop-ins, where things were.
    let aside = root.join(ASIDE);
    assert_eq!(
        std::fs::read_to_string(aside.join("unit").join(UNIT)).unwrap(),
        old.unit_text
    );
    assert!(aside.join(format!("unit/{UNIT}.d/override.conf")).is_file());
    let env = std::fs::read_to_string(aside.join("migration.env")).unwrap();
    for line in [
        "OLD_UNIT='/etc/systemd/system/tope-updater.service'",
        "WORK_DIR='/opt/tope-updater'",
        "VENV='/opt/tope-updater/venv'",
        "WANTED_BY='multi-user.target'",
    ] {
        assert!(env.lines().any(|l| l == line), "`{line}` in:\n{env}");
    }
    assert!(aside.join("python-migration.sh").is_file());
    assert!(std::fs::read_to_string(aside.join("README"))
        .unwrap()
        .contains("python-migration.sh revert"));
    // The old enablement no longer points at the Python unit.
    assert!(!old
        .at("/etc/systemd/system/multi-user.target.wants/tope-updater.service")
        .exists());

    // The new unit under the same name, running the installed binary.
    let unit = std::fs::read_to_string(old.at(&old.unit_path)).unwrap();
    assert!(
        unit.lines().any(|l| {
            l
            == "ExecStart=/usr/local/bin/tope-updater serve --config /etc/tope-updater/config.toml"
        }),
        "{unit}"
    );
    assert!(unit.contains("Type=notify"));
    // Everything of the old working directory and program is untouched.
    for (p, b) in kept.iter().zip(&before) {
        assert_eq!(&std::fs::read(old.at(p)).unwrap(), b, "{p} changed");
    }
    // Nothing Python is left for detection: a second install is a plain upgrade.
    let detect = migration(
        &root,
        &repo().join("deploy/python-migration.sh"),
        &["detect"],
    );
    assert_eq!(detect.status.code(), Some(1), "{}", out_text(&detect));
    install_sh(&root);
    assert!(aside.join("migration.env").is_file());

    // The new daemon in the taken-over directory resumes the partial download by itself.
    let d = start_taken_over_daemon(&ws, &old, &api);
    let p = d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(stage_of(&p), "toInstall");
    assert_eq!(
        md5_file(&old.at("/opt/tope-updater/tmp/pkg.zip")),
        md5_hex(&package)
    );
    let reqs = nginx.access_log(Some("slow/pkg.zip"));
    let first = reqs
        .first()
        .unwrap_or_else(|| panic!("no request: {reqs:?}"));
    assert_eq!(
        first.range_start(),
        Some(done as u64),
        "the first request must resume at byte {done}: {reqs:?}"
    );
    assert!(first.if_range.is_some(), "{first:?}");
    assert_eq!(first.status, 206, "{first:?}");
    // The old log goes on: the Python lines first, the new daemon's after them.
    let log = std::fs::read_to_string(old.at("/opt/tope-updater/logs/updater.log")).unwrap();
    assert!(log.starts_with("2025-01-01 10:00:00,000 INFO python updater started\n"));
    assert!(log.contains("tope-updater"), "{log}");
    assert!(old
        .at("/opt/tope-updater/backups/1.0.0/device-api")
        .is_file());
}

/// Section 8.8 with a state.json holding only the Python updater's nine fields (no ETag):
/// the new daemon takes the download up by itself (no new /download) and finishes it.
#[test]
fn contract_8_8_python_state_without_validator_is_taken_up_by_itself() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let root = ws.path().join("stage");
    let old = OldInstall::stage(&root, "/etc/systemd/system");
    let package = partial_package(&ws);
    let url = nginx.put("slow/pkg.zip", &package);
    let done = 512 * 1024;
    write_file(
        &old.at("/opt/tope-updater/tmp/state.json"),
        &python_state(&url, &package, done, json!({})),
        0o644,
    );
    write_file(
        &old.at("/opt/tope-updater/tmp/pkg.zip"),
        &package[..done],
        0o644,
    );
    install_sh(&root);
    let d = start_taken_over_daemon(&ws, &old, &api);
    d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(
        md5_file(&old.at("/opt/tope-updater/tmp/pkg.zip")),
        md5_hex(&package)
    );
    let reqs = nginx.access_log(Some("slow/pkg.zip"));
    eprintln!(
        "requests for the Python updater's partial download: {:?}",
        reqs.iter()
            .map(|r| (r.status, r.range.clone()))
            .collect::<Vec<_>>()
    );
}

/// Going back: `python-migration.sh revert` (the copy kept aside, as the README there says)
/// puts the Python unit back where it was (here /usr/lib/systemd/system), its drop-ins and
/// its enablement, removes the new unit and the work-dir drop-in that would override it, and
/// leaves no record behind. A root without a Python updater gets no take-over at all.
#[test]
fn contract_8_8_python_takeover_can_be_undone() {
    let ws = Workspace::new();
    let root = ws.path().join("stage");
    let old = OldInstall::stage(&root, "/usr/lib/systemd/system");
    install_sh(&root);
    let aside = root.join(ASIDE);
    assert!(
        !old.at(&old.unit_path).exists(),
        "the old unit is set aside"
    );
    assert!(old.at("/etc/systemd/system/tope-updater.service").is_file());

    let out = migration(&root, &aside.join("python-migration.sh"), &["revert"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(
        std::fs::read_to_string(old.at(&old.unit_path)).unwrap(),
        old.unit_text,
        "the Python unit is back, byte for byte"
    );
    assert!(
        !old.at("/etc/systemd/system/tope-updater.service").exists(),
        "the new unit would override the old one"
    );
    let dropins = old.at("/etc/systemd/system/tope-updater.service.d");
    assert!(dropins.join("override.conf").is_file());
    assert!(!dropins.join("50-python-work-dir.conf").exists());
    let link = old.at("/etc/systemd/system/multi-user.target.wants/tope-updater.service");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(&old.unit_path)
    );
    assert!(!aside.exists(), "no record left behind");
    let detect = migration(
        &root,
        &repo().join("deploy/python-migration.sh"),
        &["detect"],
    );
    assert!(detect.status.success(), "{}", out_text(&detect));
    assert!(String::from_utf8_lossy(&detect.stdout).contains("venv: /opt/tope-updater/venv"));

    // A fresh root: nothing to take over, nothing set aside, no work-dir drop-in.
    let clean = ws.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    install_sh(&clean);
    assert!(!clean.join(ASIDE).exists());
    assert!(!clean
        .join("etc/systemd/system/tope-updater.service.d")
        .exists());
    assert!(clean.join("etc/tope-updater/config.toml").is_file());
    assert!(clean.join("var/lib/tope-updater/tmp").is_dir());
}
