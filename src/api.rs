//! The HTTP API (docs/API.md section 1): three endpoints, the envelope, every validation rule,
//! and the OpenAPI document generated from these very types.
//!
//! Every answer is HTTP 200 with `{"code", "msg", "data"}`; the body is read by hand (not by an
//! extractor) so that a wrong content type, a body over 64 KiB or malformed JSON all become
//! `code 400 VALIDATION_ERROR` instead of axum's own 4xx answers. The body is then parsed
//! into typed values (`request`): a version, a package source, a package name, a size, the
//! package's [`Checksum`](crate::checksum::Checksum); inward only those travel.

pub mod request;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

use crate::error::{self, ErrorCode, OtaError};
use crate::lifecycle::{Stage, Status};
use crate::updater::Updater;
pub use request::{Download, InvalidRequest, PackageName, PackageSource, Version};

/// Requests larger than this are refused with code 400.
pub const MAX_BODY: usize = 64 * 1024;

/// `POST /api/v1.0/download` body, as sent: [`validate_download`] parses it into a
/// [`Download`].
#[derive(Debug, Deserialize, ToSchema)]
pub struct DownloadRequest {
    /// Semantic version `x.y.z` of the package.
    #[schema(pattern = r"^\d+\.\d+\.\d+$", example = "1.2.3")]
    pub version: String,
    /// `https://` URL (plain `http://` only with config `allow_http = true`), or
    /// `file:///<absolute path>` of a regular file on this printer (a USB stick, an SD card:
    /// copied into `./tmp/`, docs/API.md 9.2; `file://localhost/` also, no query or fragment,
    /// the last component not a symlink).
    #[schema(example = "https://updates.example.com/tope-1.2.3.zip")]
    pub package_url: String,
    /// Plain file name stored as `./tmp/<package_name>`; not one of the updater's own names
    /// there (`state.json`, `outcome.json`, `recovery.json`, `*.tmp`, `*.unusable`).
    #[schema(example = "tope-1.2.3.zip")]
    pub package_name: String,
    /// Size in bytes, >= 1 and <= config `max_package_size`.
    #[schema(minimum = 1)]
    pub package_size: u64,
    /// MD5 of the package, 32 hex characters.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub package_md5: String,
}

/// `POST /api/v1.0/update` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRequest {
    /// The version of the downloaded, verified package to install.
    #[schema(pattern = r"^\d+\.\d+\.\d+$", example = "1.2.3")]
    pub version: String,
}

/// `data` of a successful `/download` or `/update`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandData {
    /// `downloading`, `toInstall` or `installing`.
    pub status: String,
}

/// The envelope of every answer. `code` carries the outcome (200, 400, 404, 409, 410, 500).
/// On an error `msg` is `"<CODE>: <detail>"` with the codes of [`ErrorCode`], and `data` is
/// null, except for `/progress` in the `failed` stage (see [`ProgressEnvelope`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandEnvelope {
    pub code: u16,
    pub msg: String,
    pub data: Option<CommandData>,
}

/// `/progress` answer. When `stage` is `failed`: `code` 500, `msg` the error, and `stage` and
/// `progress` repeated at the top level for older ota-gui builds.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressEnvelope {
    pub code: u16,
    pub msg: String,
    pub data: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tope-updater",
        description = "OTA updater of the printer. Every answer is HTTP 200; the envelope `code` \
            carries the outcome. Error `msg` values start with one of the ErrorCode names."
    ),
    paths(download, update, progress, openapi_json),
    components(schemas(
        DownloadRequest,
        UpdateRequest,
        CommandData,
        CommandEnvelope,
        Status,
        ProgressEnvelope,
        Stage,
        ErrorCode
    ))
)]
pub struct ApiDoc;

/// Build the router over a running updater.
pub fn router(updater: Updater) -> Router {
    Router::new()
        .route(
            "/api/v1.0/download",
            post(download).fallback(method_not_allowed),
        )
        .route(
            "/api/v1.0/update",
            post(update).fallback(method_not_allowed),
        )
        .route(
            "/api/v1.0/progress",
            get(progress).fallback(method_not_allowed),
        )
        .route("/api/v1.0/openapi.json", get(openapi_json))
        .fallback(not_found)
        .with_state(updater)
}

fn envelope(code: u16, msg: String, data: Value) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"code": code, "msg": msg, "data": data})),
    )
        .into_response()
}

fn ok(data: Value) -> Response {
    envelope(200, "success".into(), data)
}

fn fail(e: &OtaError) -> Response {
    envelope(e.code.envelope_code(), e.to_string(), Value::Null)
}

async fn not_found() -> Response {
    envelope(404, "NOT_FOUND: no such endpoint".into(), Value::Null)
}

async fn method_not_allowed() -> Response {
    fail(&error::validation("method not allowed on this endpoint"))
}

/// Read a JSON body under the contract's rules and deserialise it.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, OtaError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(error::validation(format!(
            "Content-Type must be application/json (got `{}`)",
            if ct.is_empty() { "none" } else { ct }
        )));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| error::validation(format!("request body larger than {MAX_BODY} bytes")))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| error::validation(format!("invalid request body: {e}")))?;
    // serde would also fill a struct from a JSON array: only an object is a valid body.
    if !value.is_object() {
        return Err(error::validation("request body must be a JSON object"));
    }
    serde_json::from_value(value)
        .map_err(|e| error::validation(format!("invalid request body: {e}")))
}

pub use crate::package::is_semver as valid_version;
pub use crate::state::valid_package_name;

/// Parse a `/download` body into a [`Download`] (docs/API.md 1): the first field that breaks
/// a rule, in the order version, URL, name, size, MD5, answers `VALIDATION_ERROR`.
pub fn validate_download(
    r: DownloadRequest,
    allow_http: bool,
    max_package_size: u64,
) -> Result<Download, OtaError> {
    let version = Version::parse(r.version)?;
    let source = PackageSource::parse(&r.package_url, allow_http)?;
    let package_name = PackageName::parse(r.package_name)?;
    let package_size = request::package_size(r.package_size, max_package_size)?;
    let package_md5 = request::package_md5(&r.package_md5)?;
    Ok(Download {
        version,
        source,
        package_name,
        package_size,
        package_md5,
    })
}

/// Ask the updater to download a package; the download runs in the background.
#[utoipa::path(post, path = "/api/v1.0/download", request_body = DownloadRequest,
    responses((status = 200, description = "Envelope; data.status is `downloading` or `toInstall`. \
        code 400 VALIDATION_ERROR, 409 OPERATION_IN_PROGRESS, 500 DISK_FULL", body = CommandEnvelope)))]
async fn download(State(u): State<Updater>, headers: HeaderMap, body: Body) -> Response {
    let req: DownloadRequest = match read_json(&headers, body).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let cfg = u.config();
    let download = match validate_download(req, cfg.allow_http, cfg.max_package_size) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    match off_the_runtime(move || {
        check_source(&download.source)?;
        u.request_download(download.into())
    })
    .await
    {
        Ok(status) => ok(json!({ "status": status })),
        Err(e) => fail(&e),
    }
}

/// docs/API.md 9.2: a `file://` package must be a regular file now (not a directory, FIFO,
/// device, symlink or missing file): refused at once with `VALIDATION_ERROR`. Looked at with
/// `lstat` and a non-blocking open, never read here; on a blocking thread, so a slow medium
/// never holds up the runtime.
pub fn check_source(source: &PackageSource) -> Result<(), OtaError> {
    source
        .check_file()
        .map_err(|e| error::validation(format!("package_url: {e}")))
}

/// Run a command on a blocking thread: it may write and fsync the updater's files (a
/// `DISK_FULL` or expiry outcome), which must never hold up the runtime serving `/progress`.
async fn off_the_runtime(
    f: impl FnOnce() -> Result<&'static str, OtaError> + Send + 'static,
) -> Result<&'static str, OtaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(error::internal(format!("the request's task failed: {e}"))))
}

/// Ask the updater to install the verified package; the installation runs in the background.
#[utoipa::path(post, path = "/api/v1.0/update", request_body = UpdateRequest,
    responses((status = 200, description = "Envelope; data.status is `installing`. code 400 \
        VALIDATION_ERROR, 404 PACKAGE_NOT_FOUND, 409 DOWNLOAD_INCOMPLETE / MD5_NOT_VERIFIED / \
        OPERATION_IN_PROGRESS, 410 PACKAGE_EXPIRED", body = CommandEnvelope)))]
async fn update(State(u): State<Updater>, headers: HeaderMap, body: Body) -> Response {
    let req: UpdateRequest = match read_json(&headers, body).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let version = match Version::parse(req.version) {
        Ok(v) => v,
        Err(e) => return fail(&e.into()),
    };
    match off_the_runtime(move || u.request_update(version.as_str())).await {
        Ok(status) => ok(json!({ "status": status })),
        Err(e) => fail(&e),
    }
}

/// Where the updater is; polled by ota-gui every 500 ms.
#[utoipa::path(get, path = "/api/v1.0/progress",
    responses((status = 200, description = "Progress envelope", body = ProgressEnvelope)))]
async fn progress(State(u): State<Updater>) -> Response {
    progress_response(u.status())
}

/// The `/progress` answer for a status (also used by tests of the envelope shape).
pub fn progress_response(data: Status) -> Response {
    let env = if data.stage == Stage::Failed {
        ProgressEnvelope {
            code: 500,
            msg: data
                .error
                .clone()
                .unwrap_or_else(|| "INTERNAL_ERROR: failed".into()),
            stage: Some(data.stage),
            progress: Some(data.progress),
            data,
        }
    } else {
        ProgressEnvelope {
            code: 200,
            msg: "success".into(),
            data,
            stage: None,
            progress: None,
        }
    };
    (StatusCode::OK, axum::Json(env)).into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/v1.0/openapi.json",
    responses((status = 200, description = "The OpenAPI document of this API")))]
async fn openapi_json() -> Response {
    (StatusCode::OK, axum::Json(ApiDoc::openapi())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: &str, url: &str, name: &str, size: u64, md5: &str) -> DownloadRequest {
        DownloadRequest {
            version: v.into(),
            package_url: url.into(),
            package_name: name.into(),
            package_size: size,
            package_md5: md5.into(),
        }
    }
    const MD5: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn contract_8_3_validation_errors_do_not_repeat_url_credentials() {
        for url in [
            "ftp://u:s3cret@h/p.zip?X-Amz-Signature=abc",
            "https://u:s3cret@?sig=abc",
        ] {
            let e = validate_download(req("1.2.3", url, "p.zip", 10, MD5), false, 100).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError, "{e}");
            let text = e.to_string();
            assert!(!text.contains("s3cret") && !text.contains("abc"), "{text}");
        }
    }

    #[test]
    fn contract_1_download_validation_rows() {
        let good = || req("1.2.3", "https://h/p.zip", "p.zip", 10, MD5);
        assert!(validate_download(good(), false, 100).is_ok());
        let bad = [
            req("1.2", "https://h/p.zip", "p.zip", 10, MD5),
            req("1.2.3-rc1", "https://h/p.zip", "p.zip", 10, MD5),
            req("v1.2.3", "https://h/p.zip", "p.zip", 10, MD5),
            req("1.2.3", "http://h/p.zip", "p.zip", 10, MD5),
            req("1.2.3", "ftp://h/p.zip", "p.zip", 10, MD5),
            req("1.2.3", "https://", "p.zip", 10, MD5),
            req("1.2.3", "https://h/p.zip", "a/b", 10, MD5),
            req("1.2.3", "https://h/p.zip", "a\\b", 10, MD5),
            req("1.2.3", "https://h/p.zip", ".", 10, MD5),
            req("1.2.3", "https://h/p.zip", "..", 10, MD5),
            req("1.2.3", "https://h/p.zip", "a\0b", 10, MD5),
            req("1.2.3", "https://h/p.zip", &"x".repeat(256), 10, MD5),
            req("1.2.3", "https://h/p.zip", "", 10, MD5),
            req("1.2.3", "https://h/p.zip", "state.json", 10, MD5),
            req("1.2.3", "https://h/p.zip", "outcome.json", 10, MD5),
            req("1.2.3", "https://h/p.zip", "recovery.json", 10, MD5),
            req("1.2.3", "https://h/p.zip", "p.zip.tmp", 10, MD5),
            req("1.2.3", "https://h/p.zip", "state.json.unusable", 10, MD5),
            req("1.2.3", "https://h/p.zip", "p.zip", 0, MD5),
            req("1.2.3", "https://h/p.zip", "p.zip", 101, MD5),
            req("1.2.3", "https://h/p.zip", "p.zip", 10, &MD5[..31]),
            req("1.2.3", "https://h/p.zip", "p.zip", 10, &format!("{MD5}0")),
            req(
                "1.2.3",
                "https://h/p.zip",
                "p.zip",
                10,
                &MD5.replace('a', "g"),
            ),
        ];
        for r in bad {
            let what = format!("{r:?}");
            let e = validate_download(r, false, 100).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError, "{what}");
            assert!(e.to_string().starts_with("VALIDATION_ERROR: "));
        }
        assert!(
            validate_download(req("1.2.3", "http://h/p.zip", "p.zip", 10, MD5), true, 100).is_ok()
        );
        assert!(validate_download(
            req("1.2.3", "https://h/p.zip", &"x".repeat(255), 10, MD5),
            false,
            100
        )
        .is_ok());
        let s = validate_download(
            req("1.2.3", "https://h/p.zip", "p.zip", 10, &MD5.to_uppercase()),
            false,
            100,
        )
        .unwrap();
        assert_eq!(
            s.package_md5.to_string(),
            MD5,
            "uppercase is accepted and normalised"
        );
        // Several faults: the first field in the table's order is named.
        let e = validate_download(req("1.2", "ftp://h", "a/b", 0, "x"), false, 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VALIDATION_ERROR: version `1.2` must look like 1.2.3"
        );
        let e =
            validate_download(req("1.2.3", "https://h/p", "p", 0, "x"), false, 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VALIDATION_ERROR: package_size must be at least 1"
        );
    }

    #[test]
    fn api_9_2_file_urls_need_no_allow_http_and_bad_ones_are_validation_errors() {
        let s = validate_download(
            req("1.2.3", "file:///media/usb/p.zip", "p.zip", 10, MD5),
            false,
            100,
        )
        .unwrap();
        assert_eq!(s.source.as_str(), "file:///media/usb/p.zip");
        for url in [
            "file://rel",
            "file:x",
            "file://h/p.zip",
            "file:///p.zip?a",
            "file:///p#f",
        ] {
            let e = validate_download(req("1.2.3", url, "p.zip", 10, MD5), true, 100).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError, "{url}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        let spec = |url: String| PackageSource::parse(&url, false).unwrap();
        let f = d.path().join("p.zip");
        std::fs::write(&f, b"zip").unwrap();
        assert!(check_source(&spec(crate::download::file::file_url_of(&f))).is_ok());
        for bad in [
            d.path().to_path_buf(),
            "/dev/null".into(),
            d.path().join("no"),
        ] {
            let url = crate::download::file::file_url_of(&bad);
            let e = check_source(&spec(url)).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError, "{}", bad.display());
        }
    }

    #[test]
    fn contract_3_openapi_lists_every_code() {
        let doc = serde_json::to_string(&ApiDoc::openapi()).unwrap();
        for c in ErrorCode::ALL {
            assert!(doc.contains(&format!("\"{}\"", c.as_str())), "{c} missing");
        }
        for p in [
            "/api/v1.0/download",
            "/api/v1.0/update",
            "/api/v1.0/progress",
        ] {
            assert!(doc.contains(p), "{p} missing");
        }
    }
}
