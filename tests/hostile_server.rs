//! docs/API.md sections 3, 6 and 8.1 against hostile package servers: a body cut halfway is
//! resumed from its byte position, a server that ignores Range makes the download start over,
//! a lying Content-Range is never spliced into the file, and a server that can never deliver
//! the file (cutting every body, answering every Range with 200, lying in every Content-Range)
//! ends in DOWNLOAD_FAILED after 4 attempts without progress instead of being retried forever.
//! The slow cases of 8.1 (a trickle, a 10 KiB/s link) are in `download_long.rs`.

mod common;

use std::time::{Duration, Instant};

use common::daemon::stage_of;
use common::hostile::{full, honest, partial, HostileServer, Request};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "6.0.0";
const CUT: usize = 400 * 1024;

fn package(ws: &Workspace) -> Vec<u8> {
    let dst = ws.root().join("blob.bin").display().to_string();
    let m = manifest(
        VERSION,
        vec![json!({"name": "blob", "src": "blob.bin", "dst": dst})],
    );
    build_package(
        &m,
        &[Entry::file(
            "blob.bin",
            &pseudo_random_bytes(1 << 20, 99),
            0o644,
        )],
    )
}

/// A server whose first answer breaks off after `CUT` bytes of `data`; `after_cut(data, r)`
/// answers every later request.
fn server_cutting_the_first_answer(
    data: &[u8],
    after_cut: impl Fn(&[u8], &Request) -> Vec<u8> + Send + Sync + 'static,
) -> HostileServer {
    let served = data.to_vec();
    HostileServer::start(Box::new(move |r: &Request| {
        if r.index == 0 {
            full(&served, Some(CUT))
        } else {
            after_cut(&served, r)
        }
    }))
}

/// Runs one download against `server`; returns the settled /progress.
fn download(ws: &Workspace, server: &HostileServer, data: &[u8]) -> (Daemon, Value) {
    let api = FakeDeviceApi::start();
    let d = Daemon::start(
        ws,
        &api,
        DaemonOptions {
            allow_http: true,
            ..Default::default()
        },
    );
    let body = download_body(VERSION, &server.url("pkg.zip"), "pkg.zip", data);
    d.post_download(&body);
    let p = d.wait_for("toInstall or failed", Duration::from_secs(60), |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    (d, p)
}

fn describe(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            format!(
                "#{} range={:?} if-range={:?}",
                r.index,
                r.header("range"),
                r.header("if-range")
            )
        })
        .collect()
}

/// Section 6: the connection breaks after 400 KiB; the retry asks for the rest with
/// `Range: bytes=N-` (0 < N <= 400 KiB) and the result verifies.
#[test]
fn contract_6_body_cut_halfway_is_resumed_from_its_position() {
    let ws = Workspace::new();
    let data = package(&ws);
    let server = server_cutting_the_first_answer(&data, honest);
    let (_d, p) = download(&ws, &server, &data);
    let reqs = server.requests();
    assert_eq!(stage_of(&p), "toInstall", "{p}\n{:?}", describe(&reqs));
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&data));
    let resumed = reqs
        .iter()
        .skip(1)
        .find_map(|r| r.range_start())
        .unwrap_or(0);
    assert!(
        resumed > 0 && resumed <= CUT as u64,
        "the retry must resume from the bytes it has: {:?}",
        describe(&reqs)
    );
    assert_eq!(
        reqs.iter()
            .skip(1)
            .find(|r| r.range_start().is_some())
            .and_then(|r| r.header("if-range")),
        Some(common::hostile::ETAG),
        "the resume is validated with If-Range = the ETag: {:?}",
        describe(&reqs)
    );
}

/// Section 6: after a cut, the server ignores Range and answers 200 with the whole file:
/// the download starts over (no splice) and verifies.
#[test]
fn contract_6_server_ignoring_range_makes_the_download_start_over() {
    let ws = Workspace::new();
    let data = package(&ws);
    let server = server_cutting_the_first_answer(&data, |served, _| full(served, None));
    let (_d, p) = download(&ws, &server, &data);
    let reqs = server.requests();
    assert_eq!(stage_of(&p), "toInstall", "{p}\n{:?}", describe(&reqs));
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&data));
}

/// Sections 3 and 6: after a cut, the server answers 206 with a Content-Range that starts
/// 1000 bytes early (and sends those bytes). The daemon must not append them: it either
/// recovers (toInstall, correct file) or fails with DOWNLOAD_FAILED, never MD5_MISMATCH.
#[test]
fn contract_6_lying_content_range_is_never_spliced() {
    let ws = Workspace::new();
    let data = package(&ws);
    let server =
        server_cutting_the_first_answer(&data, |served, r| match (r.index, r.range_start()) {
            (1, Some(n)) if n >= 1000 => {
                let early = n as usize - 1000;
                partial(served, early, early)
            }
            _ => honest(served, r),
        });
    let (_d, p) = download(&ws, &server, &data);
    let reqs = server.requests();
    match stage_of(&p).as_str() {
        "toInstall" => assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&data)),
        _ => {
            let err = p["data"]["error"].as_str().unwrap_or("");
            assert!(
                err.starts_with("DOWNLOAD_FAILED: "),
                "a lying server must not corrupt the file: {p}\n{:?}",
                describe(&reqs)
            );
        }
    }
}

/// Sections 3 and 6: after a cut, a 206 whose Content-Range claims the right start but whose
/// bytes come from 1000 bytes earlier cannot be detected by headers; MD5 verification must
/// catch it (MD5_MISMATCH, file deleted), never toInstall.
#[test]
fn contract_3_garbled_resume_body_is_caught_by_md5() {
    let ws = Workspace::new();
    let data = package(&ws);
    let server = server_cutting_the_first_answer(&data, |served, r| match r.range_start() {
        Some(n) if n >= 1000 => {
            // Claims n.., sends the bytes of n-1000.. truncated to the claimed length.
            let n = n as usize;
            let mut body = served[n - 1000..].to_vec();
            body.truncate(served.len() - n);
            let mut fake = served.to_vec();
            fake[n..].copy_from_slice(&body);
            partial(&fake, n, n)
        }
        _ => honest(served, r),
    });
    let (_d, p) = download(&ws, &server, &data);
    let reqs = server.requests();
    assert_eq!(stage_of(&p), "failed", "{p}\n{:?}", describe(&reqs));
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("MD5_MISMATCH: "), "{p}");
    assert!(!ws.tmp_file("pkg.zip").exists(), "the bad file is deleted");
}

const MIB: usize = 1 << 20;

/// A package of about `payload` incompressible bytes.
fn package_of(ws: &Workspace, payload: usize) -> Vec<u8> {
    let dst = ws.root().join("blob.bin").display().to_string();
    let m = manifest(
        VERSION,
        vec![json!({"name": "blob", "src": "blob.bin", "dst": dst})],
    );
    build_package(
        &m,
        &[Entry::file(
            "blob.bin",
            &pseudo_random_bytes(payload, 7),
            0o644,
        )],
    )
}

/// Starts a daemon, asks it to download `data` from `url`, and waits (at most `timeout`) for
/// `toInstall` or `failed`; returns the daemon, the fake device-api, that /progress and the
/// time it took.
fn settle(
    ws: &Workspace,
    url: &str,
    data: &[u8],
    timeout: Duration,
    extra_toml: &str,
) -> (Daemon, FakeDeviceApi, Value, Duration) {
    let api = FakeDeviceApi::start();
    let d = Daemon::start(
        ws,
        &api,
        DaemonOptions {
            allow_http: true,
            extra_toml: extra_toml.to_string(),
            ..Default::default()
        },
    );
    let started = Instant::now();
    d.post_download(&download_body(VERSION, url, "pkg.zip", data));
    let p = d.wait_for("toInstall or failed", timeout, |p| {
        matches!(stage_of(p).as_str(), "toInstall" | "failed")
    });
    (d, api, p, started.elapsed())
}

/// Asserts DOWNLOAD_FAILED after exactly 4 requests spaced by the backoff (1 s + 2 s + 4 s
/// between the first and the last), reported to device-api too. Returns the error.
fn assert_gave_up_after_four_attempts(
    p: &Value,
    api: &FakeDeviceApi,
    server: &HostileServer,
    took: Duration,
) -> String {
    let reqs = server.requests();
    assert_eq!(stage_of(p), "failed", "{p}\n{:?}", describe(&reqs));
    let err = p["data"]["error"].as_str().unwrap_or("").to_string();
    assert!(err.starts_with("DOWNLOAD_FAILED: "), "{p}");
    assert!(err.contains("4 attempts"), "{err}");
    assert_eq!(
        reqs.len(),
        4,
        "4 attempts without progress, then no more: {:?}",
        describe(&reqs)
    );
    assert!(
        took >= Duration::from_secs(7),
        "the retries wait 1 s, 2 s and 4 s: settled after {took:?}"
    );
    api.wait_for_report("the DOWNLOAD_FAILED report", Duration::from_secs(5), |b| {
        b["stage"] == "failed" && b["error"].as_str() == Some(err.as_str())
    });
    err
}

/// 8.1: every answer (200 or 206, honouring Range) is cut 64 KiB into its body. In 0.1.0 each
/// attempt "made progress" and reset the count, so a 3 MiB package took 48 attempts (and
/// completed after about a minute); now an attempt that adds less than 1 MiB is no progress
/// and the download ends DOWNLOAD_FAILED after 4 attempts.
#[test]
fn contract_8_1_body_cut_at_the_same_byte_every_time_fails_after_4_attempts() {
    let ws = Workspace::new();
    let data = package_of(&ws, 3 * MIB);
    let served = data.clone();
    let server = HostileServer::start(Box::new(move |r: &Request| {
        let (mut out, from) = common::hostile::honest_head(served.len(), r);
        let end = (from + 64 * 1024).min(served.len());
        out.extend_from_slice(&served[from..end]);
        out
    }));
    let (_d, api, p, took) = settle(
        &ws,
        &server.url("pkg.zip"),
        &data,
        Duration::from_secs(40),
        "",
    );
    assert_gave_up_after_four_attempts(&p, &api, &server, took);
    let reqs = server.requests();
    assert!(
        reqs[1..].iter().all(|r| r.range_start().is_some()),
        "every retry resumes: {:?}",
        describe(&reqs)
    );
}

/// 8.1: the server answers every request, Range or not, with 200 and the whole file, cut after
/// 2 MiB of 3 MiB. Every retry starts over from byte 0 and gets back to the same place: no
/// progress, DOWNLOAD_FAILED after 4 attempts. In 0.1.0 each restart counted as progress
/// (more bytes than at its start) and the download was retried forever.
#[test]
fn contract_8_1_server_answering_every_range_with_200_and_cutting_fails() {
    let ws = Workspace::new();
    let data = package_of(&ws, 3 * MIB);
    let served = data.clone();
    let server = HostileServer::start(Box::new(move |_: &Request| full(&served, Some(2 * MIB))));
    let (_d, api, p, took) = settle(
        &ws,
        &server.url("pkg.zip"),
        &data,
        Duration::from_secs(40),
        "",
    );
    assert_gave_up_after_four_attempts(&p, &api, &server, took);
    let reqs = server.requests();
    assert!(
        reqs[1..]
            .iter()
            .all(|r| r.range_start() == Some(2 * MIB as u64)),
        "every retry asks for the rest (and gets the whole file): {:?}",
        describe(&reqs)
    );
}

/// 8.1 and 6: the first answer is cut after 2 MiB; every ranged request is answered 206 with a
/// Content-Range that starts 1000 bytes late (and those bytes). The bytes are never appended:
/// the file starts over, and since the server keeps lying the download ends DOWNLOAD_FAILED
/// after 4 attempts. In 0.1.0 the start over from 0 counted as progress, forever.
#[test]
fn contract_8_1_206_with_content_range_at_the_wrong_byte_fails() {
    let ws = Workspace::new();
    let data = package_of(&ws, 3 * MIB);
    let served = data.clone();
    let server = HostileServer::start(Box::new(move |r: &Request| match r.range_start() {
        Some(n) => {
            let late = (n as usize + 1000).min(served.len() - 1);
            partial(&served, late, late)
        }
        None => full(&served, Some(2 * MIB)),
    }));
    let (_d, api, p, took) = settle(
        &ws,
        &server.url("pkg.zip"),
        &data,
        Duration::from_secs(40),
        "",
    );
    let err = assert_gave_up_after_four_attempts(&p, &api, &server, took);
    assert!(err.contains("Content-Range"), "{err}");
    let reqs = server.requests();
    assert_eq!(
        reqs.iter()
            .map(|r| r.range_start().is_some())
            .collect::<Vec<_>>(),
        [false, true, false, true],
        "a lying 206 makes the next attempt start over from 0: {:?}",
        describe(&reqs)
    );
}

/// 8.1: progress of at least 1 MiB per attempt resets the budget: a server that cuts every
/// answer 1.5 MiB into its body still delivers a 7 MiB package (6 attempts, more than 4).
/// This guards the budget from the other side, so it passed with 0.1.0 too (0.1.0 reset the
/// count after any progress at all); it fails when real progress does not reset the budget.
#[test]
fn contract_8_1_a_mebibyte_per_attempt_is_progress_and_completes() {
    let ws = Workspace::new();
    let data = package_of(&ws, 7 * MIB);
    let served = data.clone();
    let server = HostileServer::start(Box::new(move |r: &Request| {
        let (mut out, from) = common::hostile::honest_head(served.len(), r);
        let end = (from + 3 * MIB / 2).min(served.len());
        out.extend_from_slice(&served[from..end]);
        out
    }));
    let (_d, _api, p, _) = settle(
        &ws,
        &server.url("pkg.zip"),
        &data,
        Duration::from_secs(40),
        "",
    );
    let reqs = server.requests();
    assert_eq!(stage_of(&p), "toInstall", "{p}\n{:?}", describe(&reqs));
    assert_eq!(md5_file(&ws.tmp_file("pkg.zip")), md5_hex(&data));
    assert!(reqs.len() > 4, "{:?}", describe(&reqs));
}

/// Credentials a presigned URL carries, each of which must never leave the daemon.
const SECRETS: [&str; 3] = ["S3cr3tSignature", "AKIDS3cr3tCredential", "pa55w0rd"];

/// 8.3: a presigned URL (`user:pass@host`, `?X-Amz-Signature=...`) whose server breaks off and
/// then fails: the download ends DOWNLOAD_FAILED with the URL in its error, and none of the
/// credentials appear in logs/updater.log (debug level), the daemon's stderr, any callback
/// device-api received, or /progress; state.json keeps the full URL (needed to resume). In
/// 0.1.0 the error carried the whole URL.
#[test]
fn contract_8_3_presigned_url_credentials_never_appear_in_logs_or_reports() {
    let ws = Workspace::new();
    let data = package_of(&ws, 512 * 1024);
    let served = data.clone();
    let server = HostileServer::start(Box::new(move |r: &Request| {
        if r.index == 0 {
            full(&served, Some(100 * 1024))
        } else {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec()
        }
    }));
    let url = format!(
        "http://tope:{}@127.0.0.1:{}/bucket/pkg.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential={}%2F20261125&X-Amz-Signature={}",
        SECRETS[2], server.port, SECRETS[1], SECRETS[0]
    );
    let shown = format!("http://127.0.0.1:{}/bucket/pkg.zip", server.port);
    let (d, api, p, _) = settle(
        &ws,
        &url,
        &data,
        Duration::from_secs(40),
        "log_level = \"debug\"\n",
    );
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("DOWNLOAD_FAILED: "), "{p}");
    assert!(
        err.contains(&shown),
        "the error names the URL without its credentials ({shown}): {err}"
    );
    assert!(
        server.requests()[0].line.contains("X-Amz-Signature"),
        "the server got the whole URL"
    );

    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap();
    assert!(log.contains(&shown), "the log names the URL: {log}");
    let stderr = std::fs::read_to_string(ws.path().join("daemon-1.stderr")).unwrap();
    let reports = api.wait_for_report("the failed report", Duration::from_secs(5), |b| {
        b["stage"] == "failed"
    });
    let callbacks = serde_json::to_string(&api.bodies()).unwrap();
    assert!(callbacks.contains(&shown), "{reports}");
    let progress = d.progress().to_string();
    for secret in SECRETS {
        for (what, text) in [
            ("logs/updater.log", &log),
            ("stderr", &stderr),
            ("the callbacks", &callbacks),
            ("/progress", &progress),
        ] {
            assert!(
                !text.contains(secret),
                "{what} shows the credential `{secret}`:\n{text}"
            );
        }
    }
    let state: Value = serde_json::from_slice(&std::fs::read(ws.state_file()).unwrap()).unwrap();
    assert_eq!(
        state["package_url"].as_str(),
        Some(url.as_str()),
        "state.json keeps the full URL to resume"
    );
}
