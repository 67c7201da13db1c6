//! Requests to the fleet server (docs/API.md 9.1): each bounded (connect and total timeouts,
//! bodies of at most [`MAX_BODY`] read), redirects never followed (a `3xx` is an error, so no
//! link leads the device to another host), the `Authorization` header sent only to the
//! configured server's own origin, and errors that never carry a URL's query string or a
//! token.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};

use super::config::FleetConfig;
use super::ddi::{Link, MAX_BODY};

/// Connecting to the server takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request (sending, waiting, reading a body of at most 1 MiB) takes at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to the fleet server failed. Never holds a URL's query or a token.
#[derive(Debug, thiserror::Error)]
pub enum DdiHttpError {
    #[error("{0}")]
    Send(reqwest::Error),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("HTTP {status} redirects to another URL; redirects are not followed")]
    Redirect { status: reqwest::StatusCode },
    #[error("answer over the limit of {MAX_BODY} bytes")]
    TooLarge,
    #[error("link {field}: {detail}")]
    Link { field: &'static str, detail: String },
}

/// The client of one `[fleet]` table.
pub struct DdiHttp {
    client: reqwest::Client,
    /// The origin (`scheme://host:port`) of `url`: where the token may go.
    origin: String,
    auth: Option<String>,
    allow_http: bool,
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl DdiHttp {
    pub fn new(
        cfg: &FleetConfig,
        tls: &Arc<rustls::ClientConfig>,
        allow_http: bool,
    ) -> Result<DdiHttp, crate::net::NetError> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((**tls).clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // A fresh connection for every request: a poll reusing a kept-alive connection
            // races the server's idle timeout (uvicorn, which serves goosebit, closes after
            // 5 s, goosebit's own poll interval), and one poll in ten failed with "error
            // sending request". A poll a minute does not need the connection saved.
            .pool_max_idle_per_host(0)
            .http1_only()
            .user_agent(concat!("tope-updater/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(crate::net::NetError::Client)?;
        let origin = Url::parse(&cfg.url)
            .map(|u| origin_of(&u))
            .unwrap_or_default();
        Ok(DdiHttp {
            client,
            origin,
            auth: cfg.auth.header(),
            allow_http,
        })
    }

    /// A link of the server as a URL it may be fetched from: absolute http(s) with a host
    /// (`ddi`), and plain http only with `allow_http`.
    pub fn link(&self, link: &Link, field: &'static str) -> Result<Url, DdiHttpError> {
        let url = link.url(field).map_err(|e| DdiHttpError::Link {
            field,
            detail: e.to_string(),
        })?;
        if url.scheme() == "http" && !self.allow_http {
            return Err(DdiHttpError::Link {
                field,
                detail: "plain http:// needs allow_http = true".into(),
            });
        }
        Ok(url)
    }

    /// `GET url`: the body (at most 1 MiB) of a 2xx answer.
    pub async fn get(&self, url: &Url) -> Result<Vec<u8>, DdiHttpError> {
        self.request(Method::GET, url, None).await
    }

    /// `method url` with a JSON body; the answer's body is read (bounded) and dropped.
    pub async fn send_json(
        &self,
        method: Method,
        url: &Url,
        body: Vec<u8>,
    ) -> Result<(), DdiHttpError> {
        self.request(method, url, Some(body)).await.map(|_| ())
    }

    async fn request(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, DdiHttpError> {
        let mut req = self.client.request(method, url.clone());
        if let Some(auth) = &self.auth {
            // A token is the device's credential for its own server: never sent elsewhere.
            if origin_of(url) == self.origin {
                req = req.header(AUTHORIZATION, auth);
            }
        }
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| DdiHttpError::Send(e.without_url()))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(DdiHttpError::Redirect { status });
        }
        if !status.is_success() {
            return Err(DdiHttpError::Status(status));
        }
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(DdiHttpError::TooLarge);
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DdiHttpError::Send(e.without_url()))?
        {
            if out.len() + chunk.len() > MAX_BODY {
                return Err(DdiHttpError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}
