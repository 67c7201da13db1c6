//! `POST /download` and `POST /update` bodies, through the API's own reader (content type, size
//! cap, JSON object, field types) and the `/download` validation (CONTRACT.md section 1).
//!
//! Checks: every refusal is `VALIDATION_ERROR`; a refused content type never gets as far as the
//! body; what is accepted meets every rule of the contract's table; `allow_http` only ever adds
//! plain `http://` URLs.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use tope_updater::api::{self, Download, DownloadRequest, UpdateRequest, Version, MAX_BODY};
use tope_updater::checksum::Algorithm;
use tope_updater::error::{ErrorCode, OtaError};
use tope_updater::lifecycle::PackageSpec;
use tope_updater::state::valid_package_name;

/// config `max_package_size` default (CONTRACT.md section 7).
const MAX_PACKAGE_SIZE: u64 = 4 * 1024 * 1024 * 1024;

/// Content types as clients send them; the last one is refused whatever the body.
const CONTENT_TYPES: [&str; 3] = [
    "application/json",
    "Application/JSON; charset=utf-8",
    "text/plain",
];

/// The API's reader on an in-memory body: it must complete without waiting.
fn read<T: DeserializeOwned>(content_type: &'static str, data: &[u8]) -> Result<T, OtaError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let future = pin!(api::read_json::<T>(&headers, Body::from(data.to_vec())));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("reading a body held in memory waited"),
    }
}

fn refused_as_validation(e: &OtaError) {
    assert_eq!(e.code, ErrorCode::ValidationError, "{e}");
    assert!(e.to_string().starts_with("VALIDATION_ERROR: "), "{e}");
}

fn copy(r: &DownloadRequest) -> DownloadRequest {
    DownloadRequest {
        version: r.version.clone(),
        package_url: r.package_url.clone(),
        package_name: r.package_name.clone(),
        package_size: r.package_size,
        package_md5: r.package_md5.clone(),
    }
}

/// Every rule of the contract's `/download` table holds for an accepted request, and for
/// the lifecycle's record of it.
fn meets_the_contract(download: &Download, allow_http: bool) {
    assert_eq!(download.package_md5.algorithm, Algorithm::Md5, "{download:?}");
    let spec = &PackageSpec::from(download.clone());
    assert!(api::valid_version(&spec.version), "{spec:?}");
    let url = spec.package_url.to_ascii_lowercase();
    assert!(
        url.starts_with("https://")
            || url.starts_with("file:")
            || (allow_http && url.starts_with("http://")),
        "{spec:?}"
    );
    assert_eq!(spec.package_url.trim(), spec.package_url, "{spec:?}");
    assert!(valid_package_name(&spec.package_name), "{spec:?}");
    assert!(
        !tope_updater::workdir::is_own_tmp_name(&spec.package_name),
        "a name of the updater's own files was accepted: {spec:?}"
    );
    assert!(
        (1..=MAX_PACKAGE_SIZE).contains(&spec.package_size),
        "{spec:?}"
    );
    let md5 = spec.package_md5.to_string();
    assert_eq!(md5.len(), 32, "{spec:?}");
    assert!(
        md5.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{spec:?}"
    );
}

fn download(r: DownloadRequest) {
    let strict = api::validate_download(copy(&r), false, MAX_PACKAGE_SIZE);
    let lax = api::validate_download(r, true, MAX_PACKAGE_SIZE);
    match (&strict, &lax) {
        (Ok(s), Ok(l)) => {
            assert_eq!(s, l, "allow_http changed an https request");
            meets_the_contract(s, false);
        }
        (Ok(s), Err(e)) => panic!("allow_http refused {s:?}: {e}"),
        (Err(e), Ok(l)) => {
            refused_as_validation(e);
            meets_the_contract(l, true);
            assert!(
                l.source.as_str().to_ascii_lowercase().starts_with("http://"),
                "allow_http let through {l:?}"
            );
        }
        (Err(a), Err(b)) => {
            refused_as_validation(a);
            refused_as_validation(b);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for content_type in CONTENT_TYPES {
        let json = content_type != "text/plain";
        match read::<DownloadRequest>(content_type, data) {
            Ok(r) => {
                assert!(json && data.len() <= MAX_BODY, "read from {content_type}");
                download(r);
            }
            Err(e) => refused_as_validation(&e),
        }
        match read::<UpdateRequest>(content_type, data) {
            Ok(r) => {
                assert!(json && data.len() <= MAX_BODY, "read from {content_type}");
                let parsed = Version::parse(r.version.clone());
                assert_eq!(parsed.is_ok(), api::valid_version(&r.version));
                if let Err(e) = parsed {
                    refused_as_validation(&e.into());
                }
            }
            Err(e) => refused_as_validation(&e),
        }
    }
});
