//! Failures and conflicts: docs/API.md sections 1 (409/404 answers, the failed /progress
//! shape), 2 (errors reported) and 3 (failure codes), 4 (manifest and ZIP rules).

mod common;

use std::time::Duration;

use common::daemon::{assert_error, assert_ok_status, progress_of, stage_of};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "1.0.1";

/// A package with one file module whose dst exists with old content.
fn simple_package(ws: &Workspace, version: &str, new_content: &[u8]) -> Vec<u8> {
    let dst = ws.root().join("app/app.conf");
    if !dst.exists() {
        write_file(&dst, b"old\n", 0o644);
    }
    let m = manifest(
        version,
        vec![json!({"name": "app", "src": "app.conf", "dst": dst.display().to_string()})],
    );
    build_package(&m, &[Entry::file("app.conf", new_content, 0o644)])
}

/// Section 1: the failed /progress shape: code 500, msg = error string, stage and progress at
/// the top level, and data with all four fields. Returns the error string.
#[track_caller]
fn assert_failed_progress(p: &Value, error_code: &str) -> String {
    assert_eq!(p["code"].as_i64(), Some(500), "failed /progress code: {p}");
    assert_eq!(stage_of(p), "failed", "{p}");
    let err = p["data"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("data.error must be a string: {p}"))
        .to_string();
    assert!(
        err.starts_with(&format!("{error_code}: ")),
        "error must start with `{error_code}: `: {p}"
    );
    assert_eq!(
        p["msg"].as_str(),
        Some(err.as_str()),
        "msg = the error: {p}"
    );
    assert_eq!(p["stage"].as_str(), Some("failed"), "top-level stage: {p}");
    assert!(p["progress"].is_i64(), "top-level progress: {p}");
    for key in ["stage", "progress", "message", "error"] {
        assert!(p["data"].get(key).is_some(), "data lacks `{key}`: {p}");
    }
    err
}

fn wait_failed(d: &Daemon, timeout: Duration) -> Value {
    d.wait_for("stage failed", timeout, |p| stage_of(p) == "failed")
}

/// Waits (as `what`) for `toInstall` or `failed`; from `toInstall`, POST /update (`context`
/// names it in a failure message). The package may be refused at either step.
fn update_unless_failed(d: &Daemon, what: &str, context: &str) {
    let p = d.wait_for(what, Duration::from_secs(30), |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    if stage_of(&p) == "toInstall" {
        assert_ok_status(
            &d.post_json("/update", &json!({"version": VERSION})),
            "installing",
            context,
        );
    }
}

/// Serves and downloads `package`, installs it if it verifies, and returns the /progress of
/// the failure that must follow.
fn install_until_failed(d: &Daemon, nginx: &Nginx, package: &[u8]) -> Value {
    let url = nginx.put("pkg.zip", package);
    d.post_download(&download_body(VERSION, &url, "pkg.zip", package));
    update_unless_failed(d, "toInstall or failed", "/update");
    wait_failed(d, Duration::from_secs(30))
}

/// Section 3 MD5_MISMATCH: the file is deleted, /progress has the failed shape, device-api
/// gets the error, and a new /download is accepted from `failed`.
#[test]
fn contract_3_md5_mismatch_deletes_file_and_new_download_is_accepted() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = simple_package(&ws, VERSION, b"new\n");
    let url = nginx.put("pkg.zip", &package);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());

    let mut body = download_body(VERSION, &url, "pkg.zip", &package);
    body["package_md5"] = json!(md5_hex(b"something else"));
    d.post_download(&body);
    let p = wait_failed(&d, Duration::from_secs(30));
    let err = assert_failed_progress(&p, "MD5_MISMATCH");
    assert!(
        !ws.tmp_file("pkg.zip").exists(),
        "the mismatching file must be deleted"
    );
    // Section 2: the error is reported at once.
    let r = api.wait_for_report("the MD5_MISMATCH report", Duration::from_secs(5), |b| {
        b["stage"] == "failed"
    });
    assert_eq!(r["error"].as_str(), Some(err.as_str()), "{r}");
    // Section 1: `failed` stays visible.
    assert_eq!(stage_of(&d.progress()), "failed");
    // Section 1: /update after a failure: nothing downloaded.
    assert_error(
        &d.post_json("/update", &json!({"version": VERSION})),
        409,
        "DOWNLOAD_INCOMPLETE",
        "/update after a failed download",
    );

    let good = download_body(VERSION, &url, "pkg.zip", &package);
    assert_ok_status(
        &d.post_json("/download", &good),
        "downloading",
        "a new /download from failed",
    );
    let p = d.wait_stage("toInstall", Duration::from_secs(30));
    assert_eq!(p["code"].as_i64(), Some(200), "{p}");
    assert!(p["data"]["error"].is_null(), "{p}");
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&package));
}

/// Sections 3 and 4 INVALID_MANIFEST: a dst outside allowed_roots fails the update and
/// nothing is deployed, not even the valid module.
#[test]
fn contract_4_dst_outside_allowed_roots_is_invalid_manifest_and_deploys_nothing() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let inside = ws.root().join("app/app.conf");
    write_file(&inside, b"old\n", 0o644);
    let outside = ws.path().join("root/opt/elsewhere/evil.conf");
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "app", "src": "app.conf", "dst": inside.display().to_string()}),
            json!({"name": "evil", "src": "evil.conf", "dst": outside.display().to_string()}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file("app.conf", b"new\n", 0o644),
            Entry::file("evil.conf", b"evil\n", 0o644),
        ],
    );
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = install_until_failed(&d, &nginx, &package);
    assert_failed_progress(&p, "INVALID_MANIFEST");
    assert_eq!(
        std::fs::read(&inside).unwrap(),
        b"old\n",
        "nothing deployed"
    );
    assert!(!outside.exists(), "nothing written outside allowed_roots");
}

/// Section 4: the manifest's version must equal the version asked for in /download.
#[test]
fn contract_4_manifest_version_must_match_the_download() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = simple_package(&ws, "7.7.7", b"new\n");
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let p = install_until_failed(&d, &nginx, &package);
    assert_failed_progress(&p, "INVALID_MANIFEST");
    assert_eq!(
        std::fs::read(ws.root().join("app/app.conf")).unwrap(),
        b"old\n"
    );
}

/// Sections 3 and 4 INVALID_PACKAGE: a symlink in the ZIP, a path escaping its root, and a
/// file that is no ZIP at all; nothing is deployed.
#[test]
fn contract_4_unsafe_or_corrupt_zip_is_invalid_package() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let dst_dir = ws.root().join("web");
    write_file(&dst_dir.join("index.html"), b"old\n", 0o644);
    let module = json!({"name": "web", "src": "web", "dst": dst_dir.display().to_string()});
    let m = manifest(VERSION, vec![module]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "symlink",
            build_package(
                &m,
                &[
                    Entry::file("web/index.html", b"new\n", 0o644),
                    Entry::symlink("web/passwd", "/etc/passwd"),
                ],
            ),
        ),
        (
            "zip-slip",
            build_package(
                &m,
                &[
                    Entry::file("web/index.html", b"new\n", 0o644),
                    Entry::file("web/../../escape.txt", b"evil\n", 0o644),
                ],
            ),
        ),
        ("not a zip", pseudo_random_bytes(4096, 5)),
    ];
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    for (i, (label, package)) in cases.iter().enumerate() {
        let name = format!("pkg{i}.zip");
        let url = nginx.put(&name, package);
        assert_ok_status(
            &d.post_json("/download", &download_body(VERSION, &url, &name, package)),
            "downloading",
            label,
        );
        // Section 1: `failed` stays visible only until the next accepted /download.
        let now = d.progress();
        assert_ne!(
            stage_of(&now),
            "failed",
            "{label}: after an accepted /download: {now}"
        );
        update_unless_failed(&d, &format!("{label}: toInstall or failed"), label);
        let p = wait_failed(&d, Duration::from_secs(30));
        let err = p["data"]["error"].as_str().unwrap_or("").to_string();
        assert!(
            err.starts_with("INVALID_PACKAGE: "),
            "{label}: expected INVALID_PACKAGE, got {p}"
        );
        assert_eq!(
            std::fs::read(dst_dir.join("index.html")).unwrap(),
            b"old\n",
            "{label}: nothing may be deployed"
        );
        assert!(!dst_dir.join("passwd").exists(), "{label}");
        assert!(!ws.root().join("escape.txt").exists(), "{label}");
        assert!(!ws.path().join("root/opt/escape.txt").exists(), "{label}");
    }
}

/// Section 3 DOWNLOAD_FAILED: a URL that keeps failing (404) fails after the retries.
#[test]
fn contract_3_download_failed_after_retries() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let url = nginx.url("missing.zip");
    let body = json!({
        "version": VERSION, "package_url": url, "package_name": "missing.zip",
        "package_size": 1000, "package_md5": md5_hex(b"x"),
    });
    d.post_download(&body);
    let p = wait_failed(&d, Duration::from_secs(40));
    let err = assert_failed_progress(&p, "DOWNLOAD_FAILED");
    api.wait_for_report("the DOWNLOAD_FAILED report", Duration::from_secs(5), |b| {
        b["error"].as_str() == Some(err.as_str())
    });
    let tries = nginx.access_log(Some("missing.zip"));
    assert!(!tries.is_empty(), "the server was never asked: {tries:?}");
}

/// Section 1: while downloading, another package is 409 OPERATION_IN_PROGRESS, the same one
/// joins without restarting, and /update is 409 DOWNLOAD_INCOMPLETE.
#[test]
fn contract_1_conflicts_while_downloading() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let m = manifest(
        VERSION,
        vec![json!({"name": "d", "src": "d.bin",
                    "dst": ws.root().join("d.bin").display().to_string()})],
    );
    // About 8 s at the /slow/ rate: long enough for the requests below.
    let package = build_package(
        &m,
        &[Entry::file(
            "d.bin",
            &pseudo_random_bytes(4 << 20, 3),
            0o644,
        )],
    );
    let url = nginx.put("slow/pkg.zip", &package);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let body = download_body(VERSION, &url, "pkg.zip", &package);
    d.post_download(&body);
    d.wait_for("some bytes downloaded", Duration::from_secs(30), |p| {
        stage_of(p) == "downloading" && progress_of(p) >= 5
    });

    let other = download_body("1.0.2", &nginx.url("other.zip"), "other.zip", b"other");
    assert_error(
        &d.post_json("/download", &other),
        409,
        "OPERATION_IN_PROGRESS",
        "another package while downloading",
    );
    assert_ok_status(
        &d.post_json("/download", &body),
        "downloading",
        "the same package again (idempotent)",
    );
    assert_error(
        &d.post_json("/update", &json!({"version": VERSION})),
        409,
        "DOWNLOAD_INCOMPLETE",
        "/update while downloading",
    );
    let p = d.progress();
    assert_eq!(stage_of(&p), "downloading", "{p}");
    let reqs = nginx.access_log(Some("slow/pkg.zip"));
    assert!(
        reqs.is_empty(),
        "the running download must not have been restarted (a finished request is logged): {reqs:?}"
    );
    let total = d.wait_stage("toInstall", Duration::from_secs(60));
    assert_eq!(progress_of(&total), 100);
    let reqs = nginx.access_log(Some("slow/pkg.zip"));
    assert_eq!(
        reqs.len(),
        1,
        "one request for the whole download: {reqs:?}"
    );
}

/// Section 1: from `toInstall`, a /download of another package is accepted and the verified
/// package is discarded.
#[test]
fn contract_1_download_of_another_package_discards_the_verified_one() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let first = simple_package(&ws, VERSION, b"first\n");
    let second = simple_package(&ws, "1.0.2", b"second\n");
    let url1 = nginx.put("first.zip", &first);
    let url2 = nginx.put("second.zip", &second);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    assert_ok_status(
        &d.post_json(
            "/download",
            &download_body(VERSION, &url1, "first.zip", &first),
        ),
        "downloading",
        "first /download",
    );
    d.wait_stage("toInstall", Duration::from_secs(30));
    assert_ok_status(
        &d.post_json(
            "/download",
            &download_body("1.0.2", &url2, "second.zip", &second),
        ),
        "downloading",
        "/download of another package from toInstall",
    );
    d.wait_stage("toInstall", Duration::from_secs(30));
    assert!(
        !ws.tmp_file("first.zip").exists(),
        "the first verified package must be discarded"
    );
    assert_error(
        &d.post_json("/update", &json!({"version": VERSION})),
        404,
        "PACKAGE_NOT_FOUND",
        "/update of the discarded version",
    );
    assert_ok_status(
        &d.post_json("/update", &json!({"version": "1.0.2"})),
        "installing",
        "/update of the second package",
    );
    d.wait_stage("success", Duration::from_secs(30));
    assert_eq!(
        std::fs::read(ws.root().join("app/app.conf")).unwrap(),
        b"second\n"
    );
}

/// Section 1: before installing, the package's MD5 is checked again on disk; a file changed
/// since verification fails with MD5_MISMATCH and nothing is deployed.
#[test]
fn contract_1_update_rechecks_md5_on_disk() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = simple_package(&ws, VERSION, b"new\n");
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    d.download_package(&nginx, "pkg.zip", VERSION, &package);

    // Flip one byte of the verified package (same size).
    let path = ws.tmp_file("pkg.zip");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let answer = d.post_json("/update", &json!({"version": VERSION}));
    if answer.1["code"].as_i64() == Some(200) {
        assert_ok_status(&answer, "installing", "/update");
        let p = wait_failed(&d, Duration::from_secs(30));
        assert_failed_progress(&p, "MD5_MISMATCH");
    } else {
        let msg = answer.1["msg"].as_str().unwrap_or("");
        assert!(msg.starts_with("MD5_MISMATCH: "), "{}", answer.1);
        let p = wait_failed(&d, Duration::from_secs(5));
        assert_failed_progress(&p, "MD5_MISMATCH");
    }
    assert_eq!(
        std::fs::read(ws.root().join("app/app.conf")).unwrap(),
        b"old\n",
        "nothing may be deployed from a changed package"
    );
}

/// Section 1: during an installation, /update and /download answer 409
/// OPERATION_IN_PROGRESS and /progress shows installing with a message.
#[test]
fn contract_1_conflicts_while_installing() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let go = ws.path().join("go");
    // Whatever happens, the waiting post command is released at the end of the test.
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, b"");
        }
    }
    let _release = Release(go.clone());
    let dst = ws.root().join("app/app.conf");
    write_file(&dst, b"old\n", 0o644);
    // The installation waits in this post command until the test lets it go on.
    let wait_cmd = format!("while [ ! -e '{}' ]; do sleep 0.05; done", go.display());
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "app", "src": "app.conf", "dst": dst.display().to_string(),
                    "post_cmds": [["sh", "-c", wait_cmd]]}),
        ],
    );
    let package = build_package(&m, &[Entry::file("app.conf", b"new\n", 0o644)]);
    let url = nginx.put("pkg.zip", &package);
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let body = download_body(VERSION, &url, "pkg.zip", &package);
    d.post_download(&body);
    d.wait_stage("toInstall", Duration::from_secs(30));
    d.post_update(VERSION);
    let p = d.progress();
    assert_eq!(stage_of(&p), "installing", "{p}");
    assert!((0..=100).contains(&progress_of(&p)), "{p}");
    assert!(
        p["data"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a human-readable message while installing: {p}"
    );

    assert_error(
        &d.post_json("/update", &json!({"version": VERSION})),
        409,
        "OPERATION_IN_PROGRESS",
        "/update while installing",
    );
    assert_error(
        &d.post_json("/download", &body),
        409,
        "OPERATION_IN_PROGRESS",
        "/download of the same package while installing",
    );
    let other = download_body("1.0.2", &nginx.url("other.zip"), "other.zip", b"other");
    assert_error(
        &d.post_json("/download", &other),
        409,
        "OPERATION_IN_PROGRESS",
        "/download of another package while installing",
    );
    assert_eq!(stage_of(&d.progress()), "installing");

    std::fs::write(&go, b"").unwrap();
    d.wait_stage("success", Duration::from_secs(30));
    assert_eq!(std::fs::read(&dst).unwrap(), b"new\n");
}

/// Section 3 DOWNLOAD_FAILED "also a server that cannot serve the right bytes": the file on
/// the server is shorter, or longer, than the announced package_size.
#[test]
fn contract_3_wrong_size_on_server_is_download_failed() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let package = simple_package(&ws, VERSION, b"new\n");
    let short_url = nginx.put("short.zip", &package);
    let long_url = nginx.put("long.zip", &package);
    let n = package.len();
    for (label, url, size) in [
        ("shorter", short_url, n + 100),
        ("longer", long_url, n - 100),
    ] {
        let d = Daemon::start(&ws, &api, DaemonOptions::default());
        let mut body = download_body(VERSION, &url, "pkg.zip", &package);
        body["package_size"] = json!(size);
        assert_ok_status(&d.post_json("/download", &body), "downloading", label);
        let p = wait_failed(&d, Duration::from_secs(40));
        let err = p["data"]["error"].as_str().unwrap_or("");
        assert!(
            err.starts_with("DOWNLOAD_FAILED: "),
            "file {label} than package_size: expected DOWNLOAD_FAILED, got {p}"
        );
        drop(d);
        let _ = std::fs::remove_file(ws.state_file());
        let _ = std::fs::remove_file(ws.tmp_file("pkg.zip"));
    }
}

/// Section 3 DISK_FULL "checked up front from package_size": a package larger than the free
/// space of the work directory is refused before anything is downloaded.
#[test]
fn contract_3_package_larger_than_free_space_is_disk_full() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let st = rustix::fs::statvfs(ws.work_dir()).expect("statvfs");
    let avail = st.f_bavail * st.f_frsize;
    let size = avail + (1 << 30);
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: format!("max_package_size = {}\n", size * 2),
            ..Default::default()
        },
    );
    let url = nginx.put("huge.zip", b"not really huge");
    let body = json!({
        "version": VERSION, "package_url": url, "package_name": "huge.zip",
        "package_size": size, "package_md5": md5_hex(b"huge"),
    });
    let answer = d.post_json("/download", &body);
    if answer.1["code"].as_i64() == Some(200) {
        let p = wait_failed(&d, Duration::from_secs(10));
        assert_failed_progress(&p, "DISK_FULL");
    } else {
        let msg = answer.1["msg"].as_str().unwrap_or("");
        assert!(msg.starts_with("DISK_FULL: "), "{}", answer.1);
    }
    assert!(!ws.tmp_file("huge.zip").exists(), "no partial file is left");
    assert!(
        nginx.access_log(Some("huge.zip")).is_empty(),
        "nothing may be downloaded: {}",
        nginx.raw_access_log()
    );
}
