//! docs/API.md section 1: request validation and the response envelope of the three endpoints,
//! and section 3: the served OpenAPI document lists every error code.

mod common;

use common::daemon::{assert_error, assert_ok_status, check_error, progress_of, stage_of};
use common::*;
use serde_json::{json, Value};

const MD5: &str = "0123456789abcdef0123456789abcdef";

fn valid_body() -> Value {
    json!({
        "version": "1.2.3",
        "package_url": "https://127.0.0.1:9/pkg.zip",
        "package_name": "pkg.zip",
        "package_size": 1000,
        "package_md5": MD5,
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut b = valid_body();
    b[field] = value;
    b
}

fn without(field: &str) -> Value {
    let mut b = valid_body();
    b.as_object_mut().unwrap().remove(field);
    b
}

/// A daemon started with `opts` in a new workspace, and its device-api; no `ca_file` (no
/// package server in these tests).
fn start(opts: DaemonOptions) -> (Workspace, FakeDeviceApi, Daemon) {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            use_ca_file: false,
            ..opts
        },
    );
    (ws, api, d)
}

/// `label: why` for every answer that is not code 400 VALIDATION_ERROR.
fn not_validation_errors<'a>(
    answers: impl IntoIterator<Item = (&'a str, (u16, Value))>,
) -> Vec<String> {
    answers
        .into_iter()
        .filter_map(|(label, answer)| {
            check_error(&answer, 400, "VALIDATION_ERROR")
                .err()
                .map(|e| format!("{label}: {e}"))
        })
        .collect()
}

/// The idle /progress shape of section 1: code 200, stage idle, progress 0, error null.
#[track_caller]
fn assert_idle(d: &Daemon) {
    let p = d.progress();
    assert_eq!(p["code"].as_i64(), Some(200), "{p}");
    assert_eq!(p["msg"].as_str(), Some("success"), "{p}");
    assert_eq!(stage_of(&p), "idle", "{p}");
    assert_eq!(progress_of(&p), 0, "{p}");
    assert!(p["data"]["error"].is_null(), "{p}");
    assert!(
        p["data"]["message"].is_string(),
        "message must be a string: {p}"
    );
}

/// Section 1 POST /download: every field rule, missing fields, wrong types, malformed JSON and
/// a wrong content type answer HTTP 200, code 400, `VALIDATION_ERROR: ...`, data null; nothing
/// starts.
#[test]
fn contract_1_download_rejects_every_invalid_request() {
    let (_ws, api, d) = start(DaemonOptions::default());

    let long_name = "a".repeat(256);
    let json_rows: Vec<(&str, Value)> = vec![
        ("version 1.2", with("version", json!("1.2"))),
        ("version 1.2.3.4", with("version", json!("1.2.3.4"))),
        ("version v1.2.3", with("version", json!("v1.2.3"))),
        ("version 1.2.x", with("version", json!("1.2.x"))),
        ("version with space", with("version", json!(" 1.2.3"))),
        ("version with suffix", with("version", json!("1.2.3-beta"))),
        ("version with newline", with("version", json!("1.2.3\n"))),
        ("version empty", with("version", json!(""))),
        ("version number", with("version", json!(123))),
        ("version null", with("version", Value::Null)),
        (
            "http url without allow_http",
            with("package_url", json!("http://127.0.0.1:9/pkg.zip")),
        ),
        (
            "ftp url",
            with("package_url", json!("ftp://127.0.0.1/pkg.zip")),
        ),
        ("url not a url", with("package_url", json!("not a url"))),
        ("url empty", with("package_url", json!(""))),
        ("url without host", with("package_url", json!("https://"))),
        ("url number", with("package_url", json!(42))),
        ("name with /", with("package_name", json!("a/pkg.zip"))),
        ("name absolute", with("package_name", json!("/etc/passwd"))),
        ("name with \\", with("package_name", json!("a\\pkg.zip"))),
        ("name .", with("package_name", json!("."))),
        ("name ..", with("package_name", json!(".."))),
        ("name with NUL", with("package_name", json!("pkg\u{0}.zip"))),
        ("name 256 bytes", with("package_name", json!(long_name))),
        ("name empty", with("package_name", json!(""))),
        ("name array", with("package_name", json!(["pkg.zip"]))),
        ("size 0", with("package_size", json!(0))),
        ("size -1", with("package_size", json!(-1))),
        ("size 1.5", with("package_size", json!(1.5))),
        ("size string", with("package_size", json!("12"))),
        ("size null", with("package_size", Value::Null)),
        (
            "size above default max_package_size (4 GiB)",
            with("package_size", json!(4_294_967_297u64)),
        ),
        ("md5 31 chars", with("package_md5", json!(&MD5[..31]))),
        (
            "md5 33 chars",
            with("package_md5", json!(format!("{MD5}0"))),
        ),
        ("md5 not hex", with("package_md5", json!("g".repeat(32)))),
        ("md5 empty", with("package_md5", json!(""))),
        ("md5 number", with("package_md5", json!(12345))),
        ("missing version", without("version")),
        ("missing package_url", without("package_url")),
        ("missing package_name", without("package_name")),
        ("missing package_size", without("package_size")),
        ("missing package_md5", without("package_md5")),
        ("empty object", json!({})),
        ("array", json!([valid_body()])),
        (
            "array of the field values",
            json!(["1.2.3", "https://127.0.0.1:9/pkg.zip", "pkg.zip", 1000, MD5]),
        ),
        ("null", Value::Null),
        ("string", json!("download")),
    ];
    let raw_rows: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "malformed JSON",
            Some("application/json"),
            b"{\"version\": \"1.2.3\",".to_vec(),
        ),
        ("not JSON", Some("application/json"), b"hello".to_vec()),
        ("empty body", Some("application/json"), Vec::new()),
        (
            "invalid UTF-8",
            Some("application/json"),
            b"{\"version\": \"\xff\xfe\"}".to_vec(),
        ),
        (
            "text/plain content type",
            Some("text/plain"),
            valid_body().to_string().into_bytes(),
        ),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            valid_body().to_string().into_bytes(),
        ),
        (
            "no content type",
            None,
            valid_body().to_string().into_bytes(),
        ),
    ];

    let answers = json_rows
        .iter()
        .map(|(label, body)| (*label, d.post_json("/download", body)))
        .chain(
            raw_rows
                .iter()
                .map(|(label, ct, body)| (*label, d.post_raw("/download", *ct, body))),
        );
    let failures = not_validation_errors(answers);
    assert!(
        failures.is_empty(),
        "{} invalid /download requests were not answered with code 400 VALIDATION_ERROR:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_idle(&d);
    let moved: Vec<Value> = api
        .bodies()
        .into_iter()
        .filter(|b| b["stage"] != "idle")
        .collect();
    assert!(
        moved.is_empty(),
        "refused requests must not move the stage: {moved:?}"
    );
}

/// Section 8.3: a `package_name` the updater uses in ./tmp/ itself (the state file, the
/// outcome, any `*.tmp` of an atomic write, a file set aside) is a validation error, and
/// nothing in ./tmp/ changes.
#[test]
fn contract_8_3_reserved_package_name_is_refused() {
    let (ws, api, d) = start(DaemonOptions::default());
    let names = [
        "state.json",
        "outcome.json",
        "recovery.json",
        "state.json.tmp",
        "pkg.zip.tmp",
        "state.json.unusable",
    ];
    let answers: Vec<(&str, (u16, Value))> = names
        .iter()
        .map(|n| {
            (
                *n,
                d.post_json("/download", &with("package_name", json!(n))),
            )
        })
        .collect();
    for (name, (_, v)) in &answers {
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(
            !msg.starts_with("VALIDATION_ERROR") || msg.contains(name),
            "the message should name `{name}`: {v}"
        );
    }
    let failures = not_validation_errors(answers);
    assert!(
        failures.is_empty(),
        "reserved package names not refused with code 400 VALIDATION_ERROR:\n{}",
        failures.join("\n")
    );
    assert_idle(&d);
    let left: Vec<_> = files_below(&ws.work_dir().join("tmp"));
    assert!(
        left.is_empty(),
        "nothing may be written to ./tmp/: {left:?}"
    );
    assert!(api.bodies().iter().all(|b| b["stage"] == "idle"));
    // An ordinary name that merely contains a reserved one is fine.
    assert_ok_status(
        &d.post_json("/download", &with("package_name", json!("state.json.zip"))),
        "downloading",
        "state.json.zip",
    );
}

/// Section 1: bodies above 64 KiB are refused (400), even when otherwise valid JSON.
#[test]
fn contract_1_body_above_64_kib_is_refused() {
    let (_ws, _api, d) = start(DaemonOptions::default());
    // Valid requests padded with JSON whitespace to 70 KiB.
    for (path, valid) in [
        ("/download", valid_body()),
        ("/update", json!({"version": "1.2.3"})),
    ] {
        let mut body = valid.to_string().into_bytes();
        body.resize(70 * 1024, b' ');
        let answer = d.post_raw(path, Some("application/json"), &body);
        assert_error(
            &answer,
            400,
            "VALIDATION_ERROR",
            &format!("{path} with a 70 KiB body"),
        );
    }
    assert_idle(&d);
}

/// Section 1: `max_package_size` from the config bounds `package_size`.
#[test]
fn contract_1_download_rejects_size_above_configured_max() {
    let (_ws, _api, d) = start(DaemonOptions {
        extra_toml: "max_package_size = 1000000\n".into(),
        ..Default::default()
    });
    let answer = d.post_json("/download", &with("package_size", json!(1_000_001)));
    assert_error(
        &answer,
        400,
        "VALIDATION_ERROR",
        "package_size above max_package_size",
    );
    assert_idle(&d);
}

/// Section 1 POST /update: a malformed or ill-typed body is a validation error, not a state
/// error; a valid one with nothing downloaded is 409 DOWNLOAD_INCOMPLETE.
#[test]
fn contract_1_update_validation_and_nothing_downloaded() {
    let (_ws, _api, d) = start(DaemonOptions::default());
    let rows: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("empty object", Some("application/json"), b"{}".to_vec()),
        (
            "version number",
            Some("application/json"),
            br#"{"version": 123}"#.to_vec(),
        ),
        (
            "version null",
            Some("application/json"),
            br#"{"version": null}"#.to_vec(),
        ),
        (
            "version 1.2",
            Some("application/json"),
            br#"{"version": "1.2"}"#.to_vec(),
        ),
        (
            "version v1.2.3",
            Some("application/json"),
            br#"{"version": "v1.2.3"}"#.to_vec(),
        ),
        ("array", Some("application/json"), br#"["1.2.3"]"#.to_vec()),
        (
            "malformed JSON",
            Some("application/json"),
            br#"{"version": "1.2.3""#.to_vec(),
        ),
        ("empty body", Some("application/json"), Vec::new()),
        (
            "text/plain",
            Some("text/plain"),
            br#"{"version": "1.2.3"}"#.to_vec(),
        ),
        ("no content type", None, br#"{"version": "1.2.3"}"#.to_vec()),
    ];
    let failures = not_validation_errors(
        rows.iter()
            .map(|(label, ct, body)| (*label, d.post_raw("/update", *ct, body))),
    );
    assert!(
        failures.is_empty(),
        "invalid /update requests not answered with code 400 VALIDATION_ERROR:\n{}",
        failures.join("\n")
    );

    let answer = d.post_json("/update", &json!({"version": "1.2.3"}));
    assert_error(
        &answer,
        409,
        "DOWNLOAD_INCOMPLETE",
        "/update with nothing downloaded",
    );
    assert_idle(&d);
}

/// Section 1 GET /progress when idle: `{"code":200,"msg":"success","data":{"stage":"idle",
/// "progress":0,"message":..,"error":null}}`.
#[test]
fn contract_1_progress_idle_shape() {
    let (ws, _api, d) = start(DaemonOptions::default());
    let r = d.request("GET", "/progress", None, b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content type: {:?}",
        r.header("content-type")
    );
    assert_idle(&d);
    // Section 5: the directories exist after start.
    for dir in ["tmp", "logs", "backups"] {
        let p = ws.work_dir().join(dir);
        assert!(p.is_dir(), "{} must be created at start", p.display());
        assert_eq!(mode_of(&p), 0o755, "{} mode", p.display());
    }
}

/// Section 1: a valid request is accepted at once: uppercase MD5 is accepted (normalised),
/// `http://` is accepted when `allow_http = true`; the same request again joins it.
#[test]
fn contract_1_download_accepts_uppercase_md5_and_http_when_allowed() {
    let (_ws, _api, d) = start(DaemonOptions {
        allow_http: true,
        ..Default::default()
    });
    // Nothing listens there: the download keeps retrying in the background meanwhile.
    let port = free_port();
    let mut body = valid_body();
    body["package_url"] = json!(format!("http://127.0.0.1:{port}/pkg.zip"));
    body["package_md5"] = json!(MD5.to_uppercase());
    let answer = d.post_json("/download", &body);
    assert_ok_status(
        &answer,
        "downloading",
        "uppercase MD5 over http with allow_http",
    );

    let again = d.post_json("/download", &body);
    assert_ok_status(&again, "downloading", "the same request again (idempotent)");
    body["package_md5"] = json!(MD5);
    let lower = d.post_json("/download", &body);
    assert_ok_status(
        &lower,
        "downloading",
        "the same package with the MD5 in lowercase (normalised) joins",
    );

    let p = d.progress();
    assert_eq!(stage_of(&p), "downloading", "{p}");
}

/// Section 3: the served OpenAPI document lists every error code.
#[test]
fn contract_3_openapi_lists_every_code() {
    let (_ws, _api, d) = start(DaemonOptions::default());
    let r = d.request("GET", "/openapi.json", None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert!(
        doc.get("openapi").and_then(Value::as_str).is_some(),
        "not an OpenAPI document: {doc}"
    );
    let text = doc.to_string();
    for path in ["download", "update", "progress"] {
        assert!(
            doc["paths"]
                .as_object()
                .is_some_and(|p| p.keys().any(|k| k.ends_with(&format!("/{path}")))),
            "paths must include /{path}: {}",
            doc["paths"]
        );
    }
    let codes = [
        "DOWNLOAD_FAILED",
        "MD5_MISMATCH",
        "DISK_FULL",
        "INVALID_MANIFEST",
        "INVALID_PACKAGE",
        "PROCESS_KILL_FAILED",
        "DEPLOYMENT_FAILED",
        "PACKAGE_EXPIRED",
        "VALIDATION_ERROR",
        "OPERATION_IN_PROGRESS",
        "PACKAGE_NOT_FOUND",
        "DOWNLOAD_INCOMPLETE",
        "MD5_NOT_VERIFIED",
    ];
    let missing: Vec<_> = codes.iter().filter(|c| !text.contains(*c)).collect();
    assert!(
        missing.is_empty(),
        "codes missing from openapi.json: {missing:?}"
    );
}
