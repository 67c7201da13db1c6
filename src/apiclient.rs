//! The client of the daemon's own HTTP API (`/download`, `/update`, `/progress`) for the
//! commands that drive it: `install` (docs/API.md 9.2) and `demo`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Why a request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Nothing answers at the address (connection refused or timed out): the daemon is not
    /// running there.
    pub unreachable: bool,
    pub text: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<ClientError> for String {
    fn from(e: ClientError) -> String {
        e.text
    }
}

type ClientResult<T> = Result<T, ClientError>;

fn answer_err(what: String) -> impl FnOnce(reqwest::Error) -> ClientError {
    move |e| ClientError {
        unreachable: e.is_connect() || e.is_timeout(),
        text: format!("{what}: {e}"),
    }
}

fn bad(text: String) -> ClientError {
    ClientError {
        unreachable: false,
        text,
    }
}

/// What `/progress` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: String,
    pub progress: i64,
    pub message: String,
    pub error: Option<String>,
}

pub fn api_client() -> Result<reqwest::Client, String> {
    // Plain HTTP only, but the client still wants a TLS configuration: an empty trust store
    // with the ring provider keeps it independent of any process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> ClientResult<Value> {
    let bytes = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(answer_err(format!("POST {url}")))?
        .bytes()
        .await
        .map_err(answer_err(format!("POST {url}: reading the answer")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("POST {url}: the answer is not JSON: {e}")))
}

pub async fn get_progress(client: &reqwest::Client, base: &str) -> ClientResult<Progress> {
    let url = format!("{base}/progress");
    let bytes = client
        .get(&url)
        .send()
        .await
        .map_err(answer_err(format!("GET {url}")))?
        .bytes()
        .await
        .map_err(answer_err(format!("GET {url}: reading the answer")))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("GET {url}: not JSON: {e}")))?;
    parse_progress(&v).ok_or_else(|| bad(format!("GET {url}: unexpected answer {v}")))
}

/// Read the `/progress` envelope: `data` holds the four fields (also when failed).
pub fn parse_progress(v: &Value) -> Option<Progress> {
    let data = v.get("data").filter(|d| d.is_object()).unwrap_or(v);
    let stage = data
        .get("stage")
        .or_else(|| v.get("stage"))?
        .as_str()?
        .to_string();
    let progress = data
        .get("progress")
        .or_else(|| v.get("progress"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let message = data
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let error = data
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            (stage == "failed")
                .then(|| v.get("msg").and_then(Value::as_str).map(str::to_string))
                .flatten()
        });
    Some(Progress {
        stage,
        progress,
        message,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_envelopes() {
        let ok = json!({"code":200,"msg":"success","data":{"stage":"downloading","progress":47,"message":"m","error":null}});
        let p = parse_progress(&ok).unwrap();
        assert_eq!(
            (p.stage.as_str(), p.progress, p.error),
            ("downloading", 47, None)
        );
        let failed = json!({"code":500,"msg":"MD5_MISMATCH: x","stage":"failed","progress":0,
            "data":{"stage":"failed","progress":0,"message":"m","error":"MD5_MISMATCH: x"}});
        let p = parse_progress(&failed).unwrap();
        assert_eq!(p.error.as_deref(), Some("MD5_MISMATCH: x"));
    }
}
