//! Packages from a file (a USB stick, an SD card) and the `install` command, against the real
//! daemon: docs/API.md 9.2.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{assert_error, stage_of, BIN};
use common::procs;
use common::*;
use rustix::process::Signal;
use serde_json::{json, Value};
use tope_updater::download::file::file_url_of;

const VERSION: &str = "3.1.4";

/// Health phase kept short: these tests are about getting the package, not the commit.
fn options() -> DaemonOptions {
    DaemonOptions {
        extra_toml: "settle_s = 0\n".into(),
        ..DaemonOptions::default()
    }
}

/// A package of one module: a 1 MiB file (several copy chunks, many 5 % steps) deployed to
/// `<root>/offline/blob.bin`. Returns the package and the destination.
fn package(ws: &Workspace, version: &str) -> (Vec<u8>, PathBuf) {
    let dst = ws.root().join("offline/blob.bin");
    let blob = pseudo_random_bytes(1024 * 1024, 11);
    let m = manifest(
        version,
        vec![json!({"name": "blob", "src": "files/blob.bin", "dst": dst.display().to_string()})],
    );
    (
        build_package(&m, &[Entry::file("files/blob.bin", &blob, 0o644)]),
        dst,
    )
}

/// `package` written to `<workspace>/stick/<name>` (the mounted stick).
fn on_stick(ws: &Workspace, name: &str, data: &[u8]) -> PathBuf {
    let p = ws.path().join("stick").join(name);
    write_file(&p, data, 0o644);
    p
}

fn body(path: &Path, name: &str, size: u64, md5: &str) -> Value {
    json!({
        "version": VERSION, "package_url": file_url_of(path), "package_name": name,
        "package_size": size, "package_md5": md5,
    })
}

/// docs/API.md 9.2: a `file://` package goes through the same stages, 5 % callbacks and
/// /progress bytes as a download, then installs to `success`; `allow_http` is not needed.
#[test]
fn api_9_2_file_package_installs_to_success() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let (pkg, dst) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    d.post_download(&body(&src, "update.zip", pkg.len() as u64, &md5_hex(&pkg)));
    let p = d.wait_stage("toInstall", Duration::from_secs(30));
    assert_eq!(p["data"]["bytes_downloaded"], json!(pkg.len()), "{p}");
    assert_eq!(p["data"]["bytes_total"], json!(pkg.len()), "{p}");
    assert_eq!(std::fs::read(ws.tmp_file("update.zip")).unwrap(), pkg);
    d.post_update(VERSION);
    d.wait_stage("success", Duration::from_secs(60));
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        pseudo_random_bytes(1024 * 1024, 11)
    );
    // Every 5 % step of the copy reached device-api, as for a download.
    let steps: Vec<i64> = api
        .bodies()
        .iter()
        .filter(|b| b["stage"] == "downloading")
        .filter_map(|b| b["progress"].as_i64())
        .collect();
    for s in (0..=100).step_by(5) {
        assert!(
            steps.contains(&s),
            "no downloading report at {s} %: {steps:?}"
        );
    }
    assert!(src.exists(), "the package on the stick is never touched");
}

/// docs/API.md 9.2 (and 3): a copy whose MD5 is not the announced one is `MD5_MISMATCH`,
/// and the copy is deleted.
#[test]
fn api_9_2_file_package_with_a_wrong_md5_is_md5_mismatch() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let (pkg, _) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    let wrong = md5_hex(b"something else");
    d.post_download(&body(&src, "update.zip", pkg.len() as u64, &wrong));
    let p = d.wait_stage("failed", Duration::from_secs(30));
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("MD5_MISMATCH: "), "{p}");
    assert!(!ws.tmp_file("update.zip").exists());
}

/// docs/API.md 9.2: what is not a regular file reached as a `file:///` URL is refused at once
/// (code 400 `VALIDATION_ERROR`, well under a second, a FIFO never opened), and nothing starts.
#[test]
fn api_9_2_refused_file_urls_answer_validation_error_at_once() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let stick = ws.path().join("stick");
    std::fs::create_dir_all(&stick).unwrap();
    let fifo = stick.join("fifo.zip");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let real = on_stick(&ws, "real.zip", b"0123456789");
    let link = stick.join("link.zip");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // A file only root may read (the daemon is root; its caller may not be).
    let secret = on_stick(&ws, "secret.zip", b"0123456789");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = |p: &Path| file_url_of(p);
    let real_url = url(&real);
    let cases = [
        ("a directory", url(&stick)),
        ("a FIFO", url(&fifo)),
        ("a device node", "file:///dev/null".to_string()),
        ("a relative path", "file://real.zip".to_string()),
        ("a relative path without //", "file:real.zip".to_string()),
        ("a missing file", url(&stick.join("missing.zip"))),
        (
            "another host",
            real_url.replacen("file://", "file://printer2", 1),
        ),
        ("a query", format!("{real_url}?x=1")),
        ("a fragment", format!("{real_url}#top")),
        ("a symlink as last component", url(&link)),
        ("a file not every user may read", url(&secret)),
    ];
    for (what, u) in cases {
        let started = Instant::now();
        let answer = d.post_json(
            "/download",
            &json!({"version": VERSION, "package_url": u, "package_name": "p.zip",
                    "package_size": 10, "package_md5": md5_hex(b"0123456789")}),
        );
        let took = started.elapsed();
        assert_error(&answer, 400, "VALIDATION_ERROR", what);
        assert!(
            took < Duration::from_secs(1),
            "{what}: answered in {took:?}"
        );
    }
    assert_eq!(stage_of(&d.progress()), "idle");
    // The same file named by its own path is accepted (file://localhost/ too).
    let local = real_url.replacen("file://", "file://localhost", 1);
    d.post_download(
        &json!({"version": VERSION, "package_url": local, "package_name": "p.zip",
        "package_size": 10, "package_md5": md5_hex(b"0123456789")}),
    );
    d.wait_stage("toInstall", Duration::from_secs(30));
}

/// A sparse source of `size` bytes (reads as zeros, costs no disk) on the "stick".
fn sparse_source(ws: &Workspace, size: u64) -> PathBuf {
    let p = ws.path().join("stick/big.zip");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// Polls /progress as fast as it answers until the copy has bytes on disk and is not done;
/// then freezes the daemon (SIGSTOP) so the copy is certainly mid-way.
fn freeze_mid_copy(d: &Daemon, min_bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = d.progress();
        let done = p["data"]["bytes_downloaded"].as_u64().unwrap_or(0);
        assert_eq!(stage_of(&p), "downloading", "the copy ended early: {p}");
        if done >= min_bytes {
            procs::signal(d.pid(), Signal::STOP);
            return done;
        }
        assert!(Instant::now() < deadline, "no copy progress: {p}");
    }
}

const BIG: u64 = 512 << 20;

/// docs/API.md 9.2: a stick pulled mid-copy (the source shrinks under the copy) ends with
/// `DOWNLOAD_FAILED`, the partial copy removed, and that outcome is durable (a restart shows
/// it and copies nothing).
#[test]
fn api_9_2_source_truncated_mid_copy_fails_and_keeps_nothing() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let mut d = Daemon::start(&ws, &api, options());
    let src = sparse_source(&ws, BIG);
    d.post_download(&body(&src, "big.zip", BIG, &md5_hex(b"not checked")));
    freeze_mid_copy(&d, 1);
    let partial = std::fs::metadata(ws.tmp_file("big.zip")).unwrap().len();
    assert!(partial < BIG, "the copy is mid-way while frozen");
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(partial / 2)
        .unwrap();
    procs::signal(d.pid(), Signal::CONT);
    let p = d.wait_stage("failed", Duration::from_secs(30));
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DOWNLOAD_FAILED: "), "{p}");
    assert!(err.contains("medium removed"), "{p}");
    assert!(!ws.tmp_file("big.zip").exists(), "partial copy kept");
    d.sigkill();
    d.restart();
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(!ws.tmp_file("big.zip").exists(), "a restart copies again");
}

/// docs/API.md 9.2: a source longer than `package_size` is refused before a byte is copied
/// (the copy is bounded), with `DOWNLOAD_FAILED` naming both sizes.
#[test]
fn api_9_2_source_of_another_size_fails_download_failed() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let src = on_stick(&ws, "p.zip", b"0123456789AB");
    d.post_download(&body(&src, "p.zip", 10, &md5_hex(b"0123456789")));
    let p = d.wait_stage("failed", Duration::from_secs(30));
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("DOWNLOAD_FAILED: ") && err.contains("12 bytes"),
        "{p}"
    );
    assert!(!ws.tmp_file("p.zip").exists());
}

/// `md5sum` of a file (the daemon's debug build is not the place to time MD5).
fn md5sum(p: &Path) -> String {
    let out = Command::new("md5sum").arg(p).output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// docs/API.md 9.2: a power cut mid-copy resumes from the durable byte position at the next
/// start, by itself, when the source is the same file; the result is the whole file.
#[test]
fn api_9_2_copy_interrupted_by_a_power_cut_resumes_from_its_byte_position() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let mut d = Daemon::start(&ws, &api, options());
    let src = sparse_source(&ws, BIG);
    let md5 = md5sum(&src);
    d.post_download(&body(&src, "big.zip", BIG, &md5));
    // Past the 5 % checkpoint, so state.json vouches for some bytes.
    freeze_mid_copy(&d, BIG / 10);
    let state: Value = serde_json::from_slice(&std::fs::read(ws.state_file()).unwrap()).unwrap();
    let durable = state["bytes_downloaded"].as_u64().unwrap_or(0);
    assert!(durable > 0 && durable < BIG, "{state}");
    d.sigkill();
    d.restart();
    d.wait_stage("toInstall", Duration::from_secs(120));
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap();
    let resumed = log
        .lines()
        .rfind(|l| l.contains("copying big.zip from"))
        .unwrap_or("");
    assert!(
        resumed.contains(&format!("(byte {durable} of {BIG})")),
        "not resumed at {durable}: {resumed}"
    );
    assert_eq!(md5sum(&ws.tmp_file("big.zip")), md5);
}

// ------------------------------------------------------------------ `tope-updater install`

/// `tope-updater install ARGS --config <the daemon's config>`, off a terminal.
fn install(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("install")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run tope-updater install")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// docs/API.md 9.2: `install FILE` off a terminal: the package's size, MD5 (computed) and
/// version (its manifest) found by itself, one line per stage, exit 0 on `success`.
#[test]
fn api_9_2_install_a_file_exits_0_with_one_line_per_stage() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let (pkg, dst) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    let out = install(&d.config_path, &[src.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("computing the MD5"), "{stdout}");
    assert!(
        stdout.ends_with(&format!("installed version {VERSION}\n")),
        "{stdout}"
    );
    for stage in ["downloading", "installing", "success"] {
        let lines = stdout
            .lines()
            .filter(|l| l.contains(&format!("% {stage} ")))
            .count();
        assert_eq!(lines, 1, "one line for {stage}:\n{stdout}");
    }
    assert!(!stdout.contains('\r'), "no bar off a terminal: {stdout:?}");
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        pseudo_random_bytes(1024 * 1024, 11)
    );
    assert_eq!(stage_of(&d.progress()), "success");
}

/// docs/API.md 9.2: on a terminal (`script` gives it one) the progress is one bar redrawn in
/// place; and the MD5 comes from `<FILE>.json` (the line `pack` printed) when it is there.
#[test]
fn api_9_2_install_on_a_terminal_draws_a_bar_and_reads_file_json() {
    if !procs::require_tool("script", "install on a terminal") {
        return;
    }
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let (pkg, _) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    let line = json!({"version": VERSION, "package_name": "update.zip",
        "package_size": pkg.len(), "package_md5": md5_hex(&pkg)});
    std::fs::write(ws.path().join("stick/update.zip.json"), line.to_string()).unwrap();
    let cmd = format!(
        "{BIN} install {} --config {}",
        src.display(),
        d.config_path.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script");
    let tty = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{tty}");
    assert!(
        !tty.contains("computing the MD5"),
        "MD5 taken from update.zip.json: {tty}"
    );
    assert!(tty.contains("\r[###"), "bar redrawn in place: {tty:?}");
    assert!(tty.contains("] 100% success"), "{tty:?}");
    assert!(
        tty.contains(&format!("installed version {VERSION}")),
        "{tty:?}"
    );
}

/// docs/API.md 9.2: a failed update exits 1 with the outcome's `"<CODE>: <detail>"` on stderr
/// (here the MD5 that `<FILE>.json` announces is not the file's).
#[test]
fn api_9_2_install_exits_1_with_the_outcome_error() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let (pkg, dst) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    let line = json!({"version": VERSION, "package_name": "update.zip",
        "package_size": pkg.len(), "package_md5": md5_hex(b"another package")});
    std::fs::write(ws.path().join("stick/update.zip.json"), line.to_string()).unwrap();
    let out = install(&d.config_path, &[src.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("tope-updater install: MD5_MISMATCH: "),
        "{stderr}"
    );
    assert!(!dst.exists());
}

/// docs/API.md 9.2: a request the daemon refuses (409 while another copy runs) exits 1 with
/// the refusal's `"<CODE>: <detail>"`, and the running copy goes on.
#[test]
fn api_9_2_install_refused_by_the_daemon_exits_1() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let big = sparse_source(&ws, BIG);
    d.post_download(&body(&big, "big.zip", BIG, &md5_hex(b"x")));
    let (pkg, _) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    let line = json!({"package_size": pkg.len(), "package_md5": md5_hex(&pkg)});
    std::fs::write(ws.path().join("stick/update.zip.json"), line.to_string()).unwrap();
    let out = install(&d.config_path, &[src.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("tope-updater install: OPERATION_IN_PROGRESS: "),
        "{stderr}"
    );
    let p = d.progress();
    assert_eq!(stage_of(&p), "downloading", "{p}");
    assert_eq!(p["data"]["version"], json!(VERSION), "{p}");
}

/// docs/API.md 9.2: no daemon on the configured `listen` address: exit 2, naming it.
#[test]
fn api_9_2_install_without_a_daemon_exits_2_naming_the_address() {
    let ws = Workspace::new();
    let port = free_port();
    let config = ws.path().join("config.toml");
    let roots = format!("allowed_roots = [{:?}]\n", ws.root().display().to_string());
    std::fs::write(&config, format!("listen = \"127.0.0.1:{port}\"\n{roots}")).unwrap();
    let (pkg, _) = package(&ws, VERSION);
    let src = on_stick(&ws, "update.zip", &pkg);
    let started = Instant::now();
    let out = install(&config, &[src.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// docs/API.md 9.2: Ctrl-C (SIGINT) stops following, not the update: exit 130 saying how to
/// follow again, and the update reaches `success` on its own.
#[test]
fn api_9_2_install_interrupted_stops_following_not_the_update() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    // The health phase lasts until the test lets it pass: `install` is interrupted in it.
    let healthy = ws.path().join("healthy");
    let dst = ws.root().join("offline/blob.bin");
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "blob", "src": "files/blob.bin", "dst": dst.display().to_string(),
            "health_cmd": ["/bin/test", "-e", healthy.display().to_string()],
            "health_timeout_s": 120}),
        ],
    );
    let pkg = build_package(&m, &[Entry::file("files/blob.bin", b"blob", 0o644)]);
    let src = on_stick(&ws, "update.zip", &pkg);
    let child = Command::new(BIN)
        .args(["install", src.to_str().unwrap(), "--config"])
        .arg(&d.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn install");
    d.wait_for("rebooting", Duration::from_secs(60), |p| {
        stage_of(p) == "rebooting"
    });
    procs::signal(child.id() as i32, Signal::INT);
    let out = child.wait_with_output().expect("wait install");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("tope-updater status"), "{stderr}");
    assert_eq!(stage_of(&d.progress()), "rebooting", "the update goes on");
    std::fs::write(&healthy, b"").unwrap();
    d.wait_stage("success", Duration::from_secs(60));
    assert!(dst.exists());
}

// ------------------------------------------------------------------ deploy/examples/usb

/// A loop device over a file system image; detached when dropped.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// docs/API.md 9.2: the example for USB sticks, end to end on a real block device: the unit's
/// script mounts the medium read-only, installs the package matching the pattern with
/// `tope-updater install`, logs the outcome and unmounts; the unit passes `systemd-analyze
/// verify`.
#[test]
fn api_9_2_usb_example_installs_the_package_on_an_inserted_medium() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/usb");
    if procs::require_tool("systemd-analyze", "checking the example unit") {
        let ws = Workspace::new();
        let shipped = std::fs::read_to_string(example.join("tope-updater-usb@.service")).unwrap();
        let script = example.join("usb-install");
        let unit = shipped
            .replace(
                "/usr/lib/tope-updater/usb-install",
                script.to_str().unwrap(),
            )
            .replace("Documentation=man:tope-updater-install(1)\n", "");
        std::fs::write(ws.path().join("tope-updater-usb@.service"), unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(ws.path().join("tope-updater-usb@sdb1.service"))
            .output()
            .expect("systemd-analyze");
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success() && said.is_empty(), "{said}");
    }
    for tool in ["mkfs.ext4", "losetup", "mount"] {
        if !procs::require_tool(tool, "a stick on a loop device") {
            return;
        }
    }
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, options());
    let (pkg, dst) = package(&ws, VERSION);
    // The stick: an ext4 image holding the package, something else, and no .json.
    let content = ws.path().join("stick-content");
    write_file(&content.join("tope-update-3.1.4.zip"), &pkg, 0o644);
    write_file(&content.join("notes.txt"), b"not a package", 0o644);
    let image = ws.path().join("stick.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&content)
        .arg(&image)
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.ext4");
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&image)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("skipping: no loop device ({})", text(&out.stderr));
        return;
    }
    let dev = LoopDevice(text(&out.stdout).trim().to_string());
    // What systemd gives the script: its RuntimeDirectory, and `tope-updater` on PATH.
    let run_dir = ws.path().join("run/tope-updater-usb/loop");
    std::fs::create_dir_all(&run_dir).unwrap();
    let bin = ws.bin_dir();
    std::os::unix::fs::symlink(BIN, bin.join("tope-updater")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(example.join("usb-install"))
        .arg(&dev.0)
        .env("RUNTIME_DIRECTORY", &run_dir)
        .env("TOPE_UPDATER_CONFIG", &d.config_path)
        .env("PATH", path)
        .output()
        .expect("run usb-install");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("installed tope-update-3.1.4.zip from {}", dev.0)),
        "{said}"
    );
    assert_eq!(stage_of(&d.progress()), "success");
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        pseudo_random_bytes(1024 * 1024, 11)
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(run_dir.to_str().unwrap()),
        "the medium is unmounted afterwards"
    );
    // The daemon read the package from the read-only mount, as a file:// URL.
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap();
    assert!(
        log.contains(&format!("from {}/tope-update-3.1.4.zip", run_dir.display())),
        "{log}"
    );
}
