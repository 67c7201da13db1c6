//! A stand-in for the printer's device-api: records every `POST /api/v1.0/ota/report` in
//! arrival order (and hands it to an observer: the demo prints it). It can be taken down (its
//! port closed, connections refused) and brought back on the same port, start down, answer
//! with another HTTP status than 200 (a device-api that is starting) or answer late (a hanging
//! one). It runs on a thread of its own, like [`super::serve::Server`].

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ServerThread;
use crate::sync::lock;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// How long `up()` keeps trying to bind the port again (the old socket may linger briefly).
const REBIND_FOR: Duration = Duration::from_secs(10);

/// One report as received.
#[derive(Debug, Clone)]
pub struct Report {
    pub at: Instant,
    /// The JSON body; a body that is not JSON is kept as a string.
    pub body: Value,
}

/// Called with every report's body as it arrives.
pub type Observer = dyn Fn(&Value) + Send + Sync;

struct Inner {
    reports: Mutex<Vec<Report>>,
    /// How long each answer is held back, in ms.
    delay_ms: AtomicU64,
    /// The HTTP status of every answer.
    status: AtomicU16,
    observer: Option<Box<Observer>>,
}

pub struct FakeDeviceApi {
    port: u16,
    inner: Arc<Inner>,
    server: Option<ServerThread>,
}

async fn report(
    State(inner): State<Arc<Inner>>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if let Some(observe) = &inner.observer {
        observe(&value);
    }
    lock(&inner.reports).push(Report {
        at: Instant::now(),
        body: value,
    });
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status =
        StatusCode::from_u16(inner.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    (
        status,
        Json(json!({"code": 200, "msg": "success", "data": {"status": "received"}})),
    )
}

/// Serves on `127.0.0.1:port` (retrying the bind for a while); returns once it listens.
fn spawn_server(port: u16, inner: Arc<Inner>) -> std::io::Result<ServerThread> {
    let deadline = Instant::now() + REBIND_FOR;
    let listener = loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    let app = Router::new()
        .route("/api/v1.0/ota/report", post(report))
        .with_state(inner);
    ServerThread::spawn(
        "kit-device-api",
        listener,
        move |listener, mut stop| async move {
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = stop.changed() => {}
            }
        },
    )
}

impl FakeDeviceApi {
    /// Up on a free port.
    pub fn start() -> std::io::Result<FakeDeviceApi> {
        FakeDeviceApi::start_observed(None)
    }

    /// Up on a free port, `observer` called with every report.
    pub fn start_observed(observer: Option<Box<Observer>>) -> std::io::Result<FakeDeviceApi> {
        let mut api = FakeDeviceApi::start_down_observed(observer)?;
        api.up()?;
        Ok(api)
    }

    /// Down from the start (its port chosen, nothing listening): `up()` brings it up there.
    pub fn start_down() -> std::io::Result<FakeDeviceApi> {
        FakeDeviceApi::start_down_observed(None)
    }

    fn start_down_observed(observer: Option<Box<Observer>>) -> std::io::Result<FakeDeviceApi> {
        Ok(FakeDeviceApi {
            port: super::free_port()?.port(),
            inner: Arc::new(Inner {
                reports: Mutex::new(Vec::new()),
                delay_ms: AtomicU64::new(0),
                status: AtomicU16::new(200),
                observer,
            }),
            server: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value for the daemon's `device_api_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the port: reports are refused until `up()`.
    pub fn down(&mut self) {
        self.server = None;
    }

    /// Listens on its port again (no-op when up).
    pub fn up(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            self.server = Some(spawn_server(self.port, self.inner.clone())?);
        }
        Ok(())
    }

    /// Answers every report with HTTP `status` from now on (an invalid status answers 200).
    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Holds every answer back for `d` (a hanging device-api).
    pub fn set_delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.inner.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Reports received so far (a report counts when its request arrived, answered or not).
    pub fn reports(&self) -> Vec<Report> {
        lock(&self.inner.reports).clone()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.reports().into_iter().map(|r| r.body).collect()
    }

    pub fn count(&self) -> usize {
        lock(&self.inner.reports).len()
    }

    /// The first report satisfying `cond`, waiting up to `timeout` for it.
    pub fn wait_for_report(
        &self,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.bodies().into_iter().find(|b| cond(b)) {
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn post(port: u16, body: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "POST /api/v1.0/ota/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn records_observes_answers_the_chosen_status_and_goes_down_and_up() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let mut api = FakeDeviceApi::start_observed(Some(Box::new(move |v: &Value| {
            lock(&seen2).push(v["stage"].clone());
        })))
        .unwrap();
        let answer = post(api.port(), r#"{"stage":"downloading"}"#).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        api.set_status(503);
        let answer = post(api.port(), "not json").unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert_eq!(
            api.bodies(),
            [json!({"stage": "downloading"}), json!("not json")]
        );
        assert_eq!(*lock(&seen), [json!("downloading"), Value::Null]);

        api.down();
        assert!(post(api.port(), "{}").is_err(), "refused while down");
        api.up().unwrap();
        api.set_status(200);
        post(api.port(), r#"{"stage":"success"}"#).unwrap();
        let got = api.wait_for_report(Duration::from_secs(5), |b| b["stage"] == "success");
        assert_eq!(got, Some(json!({"stage": "success"})));
        assert_eq!(api.count(), 3);
        assert!(api
            .wait_for_report(Duration::from_millis(100), |b| b["stage"] == "failed")
            .is_none());
    }
}
