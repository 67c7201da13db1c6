//! A fake hawkBit DDI fleet server (docs/API.md 9.1) for the tests of fleet mode: what the real
//! goosebit of `tests/fleet_goosebit.rs` cannot show (target tokens, a cancel, hostile answers,
//! wrong hashes, a plain ZIP artifact).
//!
//! It answers under `/{tenant}/controller/v1/{controller_id}`:
//!
//! | request | answer |
//! |---|---|
//! | `GET` the controller base | `config.polling.sleep` and the links: `cancelAction/{id}` while a cancel is set (as hawkBit, instead of the deployment), else `deploymentBase/{id}?c=<n>` while a deployment is offered; `configData` while requested |
//! | `GET deploymentBase/{id}` (any query) | the offered deployment (one chunk, one artifact); 404 for another id |
//! | `GET cancelAction/{id}` | `{"id", "cancelAction": {"stopId"}}`; 404 for another id |
//! | `PUT configData`, `POST deploymentBase/{id}/feedback`, `POST cancelAction/{id}/feedback` | 200, empty |
//! | `GET softwaremodules/{m}/artifacts/{filename}` | the artifact's bytes when they are served here |
//!
//! Anything else is 404 (405 for a known path with another method); with a token required,
//! a request without `Authorization: <token>` is 401. Every request is recorded (method, path,
//! query, headers, body, time, the [`Resource`] it asked for and the status answered) and
//! [`DdiServer::wait_for`] waits on a condition variable for one to match.
//!
//! Each [`Resource`] can be made hostile ([`Fault`]: a status, malformed JSON, a body over
//! 1 MiB, a hang until the server is dropped, a redirect), for good or for the next requests
//! only. Out-of-bounds `sleep` values and wrong hashes are values of the offer: any text can
//! be set as `sleep`, any digest stated ([`OfferedArtifact::with_wrong_hashes`]).
//!
//! Bodies are built from typed values (`fleet::ddi`'s `Link`, `Handling`, `MaintenanceWindow`
//! where they serialize, small structs here otherwise), so they are what a hawkBit server
//! sends. Plain HTTP or HTTPS ([`DdiServer::start_https`]). It runs on a thread of its own like [`super::serve::Server`]; dropping it stops it
//! and closes every connection, hanging ones included.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::serve::next_connection;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use serde_json::Value;

use super::ServerThread;
use crate::checksum::{Algorithm, Hasher};
use crate::fleet::ddi::{Handling, Link, MaintenanceWindow, MAX_BODY};
use crate::sync::lock;

/// The largest request body recorded; a larger one is refused with 413 by axum.
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;
/// How long a TLS handshake may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `GET /{tenant}/controller/v1/{id}`: the poll.
    Controller,
    /// `GET .../deploymentBase/{actionId}`.
    DeploymentBase,
    /// `POST .../deploymentBase/{actionId}/feedback`.
    DeploymentFeedback,
    /// `GET .../cancelAction/{id}`.
    CancelAction,
    /// `POST .../cancelAction/{id}/feedback`.
    CancelFeedback,
    /// `PUT .../configData`.
    ConfigData,
    /// `GET .../softwaremodules/{m}/artifacts/{filename}`.
    Artifact,
}

/// A hostile answer in place of the scripted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status with a short JSON error body (hawkBit's shape).
    Status(u16),
    /// 200 with the scripted body cut in the middle (`application/json`, not parseable).
    MalformedJson,
    /// 200 with the scripted JSON plus a padding field: a valid body of over 1 MiB.
    Oversized,
    /// The request is read and never answered, until the server is dropped.
    Hang,
    /// `307 Temporary Redirect` to this URL (another host or port, say).
    Redirect(String),
}

/// The digests stated for an artifact; `None` is left out of the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OfferedHashes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl OfferedHashes {
    /// sha1, md5 and sha256 of `bytes`, as hawkBit states them.
    pub fn of(bytes: &[u8]) -> OfferedHashes {
        let hex = |algorithm| {
            let mut h = Hasher::new(algorithm);
            h.update(bytes);
            Some(h.finalize().to_hex())
        };
        OfferedHashes {
            sha1: hex(Algorithm::Sha1),
            md5: hex(Algorithm::Md5),
            sha256: hex(Algorithm::Sha256),
        }
    }

    /// Only the sha1 of `bytes`, as goosebit states it.
    pub fn sha1_only(bytes: &[u8]) -> OfferedHashes {
        OfferedHashes {
            sha1: OfferedHashes::of(bytes).sha1,
            ..OfferedHashes::default()
        }
    }
}

/// Where the artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// Served by this server. Over HTTPS it is linked as `download`; over plain HTTP as
    /// `download-http`, and as `download` too when `also_download` is set (a server that
    /// states a plain link as its "https" one).
    Here {
        bytes: Arc<Vec<u8>>,
        also_download: bool,
    },
    /// Links to elsewhere (a `kit::serve` package server, an unreachable port...), as given.
    At {
        download: Option<String>,
        download_http: Option<String>,
    },
}

/// The one artifact of an offered deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedArtifact {
    pub filename: String,
    /// The size stated (any value: a lying one included).
    pub size: u64,
    pub hashes: OfferedHashes,
    pub source: ArtifactSource,
}

impl OfferedArtifact {
    /// `bytes` served here, with their size and all three digests.
    pub fn served(filename: &str, bytes: Vec<u8>) -> OfferedArtifact {
        OfferedArtifact {
            filename: filename.to_string(),
            size: bytes.len() as u64,
            hashes: OfferedHashes::of(&bytes),
            source: ArtifactSource::Here {
                bytes: Arc::new(bytes),
                also_download: false,
            },
        }
    }

    /// An artifact fetched from `url` (`https` is linked as `download`, `http` as
    /// `download-http`), whose content is `bytes` (for its size and digests).
    pub fn linked(filename: &str, url: &str, bytes: &[u8]) -> OfferedArtifact {
        let https = url.starts_with("https:");
        OfferedArtifact {
            filename: filename.to_string(),
            size: bytes.len() as u64,
            hashes: OfferedHashes::of(bytes),
            source: ArtifactSource::At {
                download: https.then(|| url.to_string()),
                download_http: (!https).then(|| url.to_string()),
            },
        }
    }

    /// Every stated digest with its first hex digit changed: well-formed, and wrong.
    pub fn with_wrong_hashes(mut self) -> OfferedArtifact {
        for d in [
            &mut self.hashes.sha1,
            &mut self.hashes.md5,
            &mut self.hashes.sha256,
        ]
        .into_iter()
        .flatten()
        {
            let first = if d.starts_with('0') { "1" } else { "0" };
            d.replace_range(..1, first);
        }
        self
    }
}

/// The deployment offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The action id (any text: the tests of hostile ids set one that is not valid).
    pub action_id: String,
    pub download: Handling,
    pub update: Handling,
    pub maintenance_window: Option<MaintenanceWindow>,
    /// The chunk's `part`, `version`, `name`.
    pub part: String,
    pub version: String,
    pub name: String,
    pub artifact: OfferedArtifact,
}

impl Offer {
    /// Action `action_id`, `forced`/`forced`, no maintenance window, part `os`.
    pub fn new(action_id: &str, version: &str, artifact: OfferedArtifact) -> Offer {
        Offer {
            action_id: action_id.to_string(),
            download: Handling::Forced,
            update: Handling::Forced,
            maintenance_window: None,
            part: "os".to_string(),
            version: version.to_string(),
            name: "tope printer software".to_string(),
            artifact,
        }
    }
}

/// A cancel requested by the server: cancel action `id` asks to stop action `stop_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub id: String,
    pub stop_id: String,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct DdiRequest {
    /// 0 for the first request, then 1, 2...
    pub index: usize,
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Names in lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the path asked for; `None` for a path the server does not know.
    pub resource: Option<Resource>,
    /// The status answered; `None` for a request left hanging.
    pub status: Option<u16>,
}

impl DdiRequest {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; `None` when it is not.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `method` to `resource`.
    pub fn is(&self, method: &str, resource: Resource) -> bool {
        self.method == method && self.resource == Some(resource)
    }
}

/// What the server offers; changed while it runs.
struct Script {
    sleep: String,
    config_data_requested: bool,
    offer: Option<Offer>,
    /// Counts [`DdiServer::set_offer`] calls: the `c` query of the `deploymentBase` link.
    generation: u64,
    cancel: Option<Cancel>,
    token: Option<String>,
    faults: HashMap<Resource, Fault>,
    once: HashMap<Resource, VecDeque<Fault>>,
}

struct Inner {
    tenant: String,
    controller_id: String,
    base_url: String,
    script: Mutex<Script>,
    requests: Mutex<Vec<DdiRequest>>,
    arrived: Condvar,
}

/// A running fake DDI server; dropping it stops it.
pub struct DdiServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// Dropped last: stops the server.
    _thread: ServerThread,
}

#[path = "ddi_server_answer.rs"]
mod answer;

impl DdiServer {
    /// A server on a free port of 127.0.0.1 for tenant `tenant` and the one device
    /// `controller_id`: `sleep` `00:00:01`, `configData` requested, nothing offered.
    pub fn start(tenant: &str, controller_id: &str) -> io::Result<DdiServer> {
        DdiServer::start_with(None, tenant, controller_id)
    }

    /// The same over HTTPS with `tls` (see [`super::tls::Certificates`]): `url()` and every
    /// link are `https`, an artifact served here is linked as `download`.
    pub fn start_https(
        tls: Arc<rustls::ServerConfig>,
        tenant: &str,
        controller_id: &str,
    ) -> io::Result<DdiServer> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        DdiServer::start_with(Some(acceptor), tenant, controller_id)
    }

    fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        tenant: &str,
        controller_id: &str,
    ) -> io::Result<DdiServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let inner = Arc::new(Inner {
            tenant: tenant.to_string(),
            controller_id: controller_id.to_string(),
            base_url: format!("{scheme}://{addr}"),
            script: Mutex::new(Script {
                sleep: "00:00:01".to_string(),
                config_data_requested: true,
                offer: None,
                generation: 0,
                cancel: None,
                token: None,
                faults: HashMap::new(),
                once: HashMap::new(),
            }),
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
            .with_state(inner.clone());
        let thread = ServerThread::spawn("kit-ddi-server", listener, move |listener, stop| {
            accept_loop(listener, tls, app, stop)
        })?;
        Ok(DdiServer {
            addr,
            inner,
            _thread: thread,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://127.0.0.1:<port>`: the fleet server URL for the updater's configuration.
    pub fn url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    pub fn controller_id(&self) -> &str {
        &self.inner.controller_id
    }

    /// `http://127.0.0.1:<port>/{tenant}/controller/v1/{controller_id}`, then `/rel` if any.
    pub fn controller_url(&self, rel: &str) -> String {
        let base = self.inner.controller_base();
        if rel.is_empty() {
            base
        } else {
            format!("{base}/{}", rel.trim_start_matches('/'))
        }
    }

    /// The `config.polling.sleep` sent from now on (any text: `"48:00:00"`, `"1:2"`...).
    pub fn set_sleep(&self, sleep: &str) {
        lock(&self.inner.script).sleep = sleep.to_string();
    }

    /// Whether the controller base links `configData` (hawkBit does when it wants attributes).
    pub fn set_config_data_requested(&self, requested: bool) {
        lock(&self.inner.script).config_data_requested = requested;
    }

    /// The deployment offered from now on (`None`: nothing).
    /// Each call changes the `c` query of the `deploymentBase` link, as hawkBit's changes
    /// with the action's state.
    pub fn set_offer(&self, offer: Option<Offer>) {
        let mut script = lock(&self.inner.script);
        script.offer = offer;
        script.generation += 1;
    }

    /// The cancel requested from now on (`None`: none).
    pub fn set_cancel(&self, cancel: Option<Cancel>) {
        lock(&self.inner.script).cancel = cancel;
    }

    /// Require `Authorization: <value>` (e.g. `TargetToken abc`) on every request from now on;
    /// others get 401. `None`: no authorization needed.
    pub fn require_authorization(&self, value: Option<&str>) {
        lock(&self.inner.script).token = value.map(str::to_string);
    }

    /// Answer every request for `resource` with `fault` from now on (`None`: honestly again).
    pub fn set_fault(&self, resource: Resource, fault: Option<Fault>) {
        let mut script = lock(&self.inner.script);
        match fault {
            Some(f) => script.faults.insert(resource, f),
            None => script.faults.remove(&resource),
        };
    }

    /// Answer the next request for `resource` with `fault` (queued after earlier ones; they
    /// come before a fault set with [`DdiServer::set_fault`]).
    pub fn push_fault(&self, resource: Resource, fault: Fault) {
        lock(&self.inner.script)
            .once
            .entry(resource)
            .or_default()
            .push_back(fault);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<DdiRequest> {
        lock(&self.inner.requests).clone()
    }

    /// The requests for `resource` so far, in order.
    pub fn requests_for(&self, resource: Resource) -> Vec<DdiRequest> {
        lock(&self.inner.requests)
            .iter()
            .filter(|r| r.resource == Some(resource))
            .cloned()
            .collect()
    }

    /// Waits until `check` of the requests so far returns `Some` (checked now and at each new
    /// request, without polling); `None` after `timeout`. `check` runs with the record locked:
    /// it must not call this server's methods.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&[DdiRequest]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut requests = lock(&self.inner.requests);
        loop {
            if let Some(v) = check(&requests) {
                return Some(v);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            requests = match self.inner.arrived.wait_timeout(requests, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Inner {
    fn controller_base(&self) -> String {
        format!(
            "{}/{}/controller/v1/{}",
            self.base_url,
            answer::segment(&self.tenant),
            answer::segment(&self.controller_id)
        )
    }
}

/// Accepts until told to stop; returning drops the runtime's tasks, closing every connection
/// (hanging ones included).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(tcp) = next_connection(&listener, &mut stop).await else {
            return;
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            // A client that goes away or fails its handshake is normal: nothing to report.
            match tls {
                None => serve_connection(tcp, app).await,
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await
                    {
                        serve_connection(stream, app).await;
                    }
                }
            }
        });
    }
}

/// HTTP/1.1 on one connection, every request to the router.
async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// Every request: decided under the script's lock, recorded, then answered.
async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let (resource, reply) = answer::decide(&inner, &method, &path, &headers, &body);
    let status = match &reply {
        answer::Reply::Hang => None,
        answer::Reply::Send { status, .. } => Some(*status),
    };
    {
        let mut all = lock(&inner.requests);
        let index = all.len();
        all.push(DdiRequest {
            index,
            at: Instant::now(),
            method: method.to_string(),
            path,
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (k.as_str().to_string(), v)
                })
                .collect(),
            body: body.to_vec(),
            resource,
            status,
        });
    }
    inner.arrived.notify_all();
    match reply {
        // Cancelled when the server is dropped (the runtime goes with its thread).
        answer::Reply::Hang => std::future::pending().await,
        answer::Reply::Send {
            status,
            content_type,
            location,
            body,
        } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (code, body).into_response();
            let h = response.headers_mut();
            if let Some(ct) = content_type {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            if let Some(location) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
                h.insert(header::LOCATION, location);
            }
            response
        }
    }
}

/// The bodies, serialized from typed values.
#[derive(Serialize)]
struct ControllerBody {
    config: ConfigBody,
    #[serde(rename = "_links")]
    links: ControllerLinksBody,
}

#[derive(Serialize)]
struct ConfigBody {
    polling: PollingBody,
}

#[derive(Serialize)]
struct PollingBody {
    sleep: String,
}

#[derive(Serialize)]
struct ControllerLinksBody {
    #[serde(rename = "deploymentBase", skip_serializing_if = "Option::is_none")]
    deployment_base: Option<Link>,
    #[serde(rename = "cancelAction", skip_serializing_if = "Option::is_none")]
    cancel_action: Option<Link>,
    #[serde(rename = "configData", skip_serializing_if = "Option::is_none")]
    config_data: Option<Link>,
}

#[derive(Serialize)]
struct DeploymentBaseBody {
    id: String,
    deployment: DeploymentBody,
}

#[derive(Serialize)]
struct DeploymentBody {
    download: Handling,
    update: Handling,
    #[serde(rename = "maintenanceWindow", skip_serializing_if = "Option::is_none")]
    maintenance_window: Option<MaintenanceWindow>,
    chunks: Vec<ChunkBody>,
}

#[derive(Serialize)]
struct ChunkBody {
    part: String,
    version: String,
    name: String,
    artifacts: Vec<ArtifactBody>,
}

#[derive(Serialize)]
struct ArtifactBody {
    filename: String,
    hashes: OfferedHashes,
    size: u64,
    #[serde(rename = "_links")]
    links: ArtifactLinksBody,
}

#[derive(Serialize)]
struct ArtifactLinksBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    download: Option<Link>,
    #[serde(rename = "download-http", skip_serializing_if = "Option::is_none")]
    download_http: Option<Link>,
}

#[derive(Serialize)]
struct CancelActionBody {
    id: String,
    #[serde(rename = "cancelAction")]
    cancel_action: StopBody,
}

#[derive(Serialize)]
struct StopBody {
    #[serde(rename = "stopId")]
    stop_id: String,
}

/// hawkBit's error body.
#[derive(Serialize)]
struct ErrorBody {
    #[serde(rename = "exceptionClass")]
    exception_class: &'static str,
    #[serde(rename = "errorCode")]
    error_code: String,
    message: String,
}

/// The size of a body over the updater's limit.
const OVERSIZED: usize = MAX_BODY + 1024;

#[cfg(test)]
#[path = "ddi_server_tests.rs"]
mod tests;
