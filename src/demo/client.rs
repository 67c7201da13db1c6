//! The demo's client of the daemon's HTTP API (`/download`, `/update`, `/progress`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Context, DemoResult};

/// What `/progress` answered.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Progress {
    pub stage: String,
    pub progress: i64,
    pub message: String,
    pub error: Option<String>,
}

pub(super) fn api_client() -> DemoResult<reqwest::Client> {
    // Plain HTTP only, but the client still wants a TLS configuration: an empty trust store
    // with the ring provider keeps it independent of any process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ctx("TLS client configuration")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .ctx("cannot build the HTTP client")
}

pub(super) async fn post(client: &reqwest::Client, url: &str, body: &Value) -> DemoResult<Value> {
    let bytes = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .ctx(format!("POST {url}"))?
        .bytes()
        .await
        .ctx(format!("POST {url}: reading the answer"))?;
    serde_json::from_slice(&bytes).ctx(format!("POST {url}: the answer is not JSON"))
}

pub(super) async fn get_progress(client: &reqwest::Client, base: &str) -> DemoResult<Progress> {
    let url = format!("{base}/progress");
    let bytes = client
        .get(&url)
        .send()
        .await
        .ctx(format!("GET {url}"))?
        .bytes()
        .await
        .ctx(format!("GET {url}: reading the answer"))?;
    let v: Value = serde_json::from_slice(&bytes).ctx(format!("GET {url}: not JSON"))?;
    parse_progress(&v).ok_or_else(|| format!("GET {url}: unexpected answer {v}"))
}

/// Read the `/progress` envelope: `data` holds the four fields (also when failed).
pub(super) fn parse_progress(v: &Value) -> Option<Progress> {
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
