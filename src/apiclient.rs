//! The client of the daemon's own HTTP API: the one `/progress` client of the crate (the
//! systemd health probe, `status`'s look at a running daemon, `install`, `demo`, and the kit's
//! wait for a daemon it started all ask through [`fetch_progress`]) and the `/download` and
//! `/update` requests of the commands that drive the daemon: `install` (docs/API.md 9.2) and
//! `demo`.
//!
//! `/progress` is one bounded request over a plain `TcpStream` rather than reqwest: the health
//! probe runs on a thread of its own, where reqwest would need a second async runtime (its
//! blocking client starts one) plus TLS setup. HTTP/1.0 makes the server close the connection
//! after a body of known length (no chunked encoding to decode). Async callers run it on the
//! blocking pool ([`get_progress`]).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the progress endpoint.
pub const PROGRESS_PATH: &str = "/api/v1.0/progress";
/// Largest `/progress` answer read: it is a few hundred bytes.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// How long one `/progress` of [`get_progress`] may take, connect to last byte.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct ClientError {
    /// Nothing answers at the address (connection refused or timed out): the daemon is not
    /// running there.
    pub unreachable: bool,
    pub text: String,
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

/// The address a local client connects to: `listen`, with a wildcard IP replaced by the
/// loopback address of its family.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// What one `GET /progress` got.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// An HTTP answer: its status code and its body (parsed when it is JSON).
    Answer { status: u16, body: Option<Value> },
    /// No answer: refused, timed out, closed early, not HTTP.
    NoAnswer(String),
}

/// One `GET /progress` to the daemon at `addr`, bounded by `timeout` as a whole.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    match fetch_progress(addr, timeout) {
        Ok((status, body)) => Probe::Answer { status, body },
        Err(e) => Probe::NoAnswer(e.text),
    }
}

/// One `GET /progress` to the daemon at `addr`, bounded by `timeout` as a whole: the HTTP
/// status and the body (when it is JSON). No connection, or none within the time, is
/// `unreachable`.
pub fn fetch_progress(addr: SocketAddr, timeout: Duration) -> ClientResult<(u16, Option<Value>)> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    let unreachable = |e: std::io::Error| ClientError {
        unreachable: true,
        text: e.to_string(),
    };
    let mut stream = left()
        .and_then(|t| TcpStream::connect_timeout(&addr, t))
        .map_err(unreachable)?;
    let answer = (|| {
        stream.set_write_timeout(Some(left()?))?;
        let request = format!("GET {PROGRESS_PATH} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream.set_read_timeout(Some(left()?))?;
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() as u64 > MAX_ANSWER_BYTES {
                return Err(std::io::Error::other("answer too large"));
            }
        }
        parse_answer(&raw)
    })();
    answer.map_err(|e| ClientError {
        unreachable: matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        text: e.to_string(),
    })
}

/// Status code and JSON body of a raw HTTP/1.x answer read to EOF.
fn parse_answer(raw: &[u8]) -> std::io::Result<(u16, Option<Value>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("connection closed before a complete answer"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("answer head is not text"))?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| bad("bad status code in the answer"))?,
        _ => return Err(bad("answer is not HTTP")),
    };
    let body = serde_json::from_slice(&raw[split + 4..]).ok();
    Ok((status, body))
}

/// `/progress` of the daemon at `addr`, read as [`Progress`], for async callers: the request
/// of [`fetch_progress`] (at most [`PROGRESS_TIMEOUT`]) on the blocking pool.
pub async fn get_progress(addr: SocketAddr) -> ClientResult<Progress> {
    let url = format!("http://{addr}{PROGRESS_PATH}");
    let fetched = tokio::task::spawn_blocking(move || fetch_progress(addr, PROGRESS_TIMEOUT))
        .await
        .map_err(|e| bad(format!("GET {url}: {e}")))?;
    let (status, body) = fetched.map_err(|e| ClientError {
        text: format!("GET {url}: {}", e.text),
        ..e
    })?;
    let v = body.ok_or_else(|| bad(format!("GET {url}: HTTP {status}, not JSON")))?;
    parse_progress(&v).ok_or_else(|| bad(format!("GET {url}: unexpected answer {v}")))
}

/// What `/progress` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: String,
    pub progress: i64,
    pub message: String,
    pub error: Option<String>,
}

/// The client of `/download` and `/update`.
pub fn api_client() -> ClientResult<reqwest::Client> {
    // Plain HTTP only, but the client still wants a TLS configuration: an empty trust store
    // with the ring provider keeps it independent of any process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS client configuration: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| bad(format!("cannot build the HTTP client: {e}")))
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

    #[test]
    fn wildcard_listen_is_asked_on_loopback() {
        let p = |s: &str| probe_addr(s.parse().unwrap()).to_string();
        assert_eq!(p("0.0.0.0:12315"), "127.0.0.1:12315");
        assert_eq!(p("[::]:12315"), "[::1]:12315");
        assert_eq!(p("127.0.0.2:80"), "127.0.0.2:80");
    }

    #[test]
    fn answers_are_parsed_from_raw_http() {
        let raw = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"code\":200,\"x\":1}";
        let (status, body) = parse_answer(raw).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.unwrap()["code"], 200);
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    /// A wedged API (connections accepted, never answered) and no API at all are both
    /// unreachable, within the time given.
    #[test]
    fn a_silent_or_absent_server_is_unreachable_within_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let e = fetch_progress(addr, Duration::from_millis(300)).unwrap_err();
        assert!(e.unreachable, "{e:?}");
        assert!(matches!(
            probe(addr, Duration::from_millis(300)),
            Probe::NoAnswer(_)
        ));
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
        let e = fetch_progress(addr, Duration::from_millis(300)).unwrap_err();
        assert!(e.unreachable, "{e:?}");
    }

    /// The async form reads the envelope of a real answer.
    #[tokio::test(flavor = "current_thread")]
    async fn get_progress_reads_a_served_envelope() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).unwrap();
            assert!(String::from_utf8_lossy(&b[..n]).starts_with("GET /api/v1.0/progress "));
            let body = r#"{"code":200,"msg":"success","data":{"stage":"idle","progress":0,"message":"Idle","error":null}}"#;
            let answer = format!(
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).unwrap();
        });
        let p = get_progress(addr).await.unwrap();
        assert_eq!((p.stage.as_str(), p.message.as_str()), ("idle", "Idle"));
        server.join().unwrap();
    }
}
