//! CONTRACT.md sections 3 and 6 against hostile package servers: a body cut halfway is
//! resumed from its byte position, a server that ignores Range makes the download start over,
//! and a lying Content-Range is never spliced into the file.

mod common;

use std::time::Duration;

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
