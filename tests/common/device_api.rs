//! A stand-in for device-api: records every `POST /api/v1.0/ota/report` in arrival order and
//! can be taken down (its port closed, connections refused) and brought back on the same port,
//! start down, and answer with another HTTP status than 200 (a device-api that is starting).

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Report {
    pub at: Instant,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    reports: Mutex<Vec<Report>>,
    /// How long each answer is held back (a slow or hanging device-api).
    delay_ms: std::sync::atomic::AtomicU64,
    /// The HTTP status of every answer; 0 means 200.
    status: std::sync::atomic::AtomicU16,
}

type Shared = Arc<Inner>;

struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub struct FakeDeviceApi {
    pub port: u16,
    reports: Shared,
    server: Option<ServerThread>,
}

async fn report(
    State(inner): State<Shared>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Json<Value>) {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    inner.reports.lock().unwrap().push(Report {
        at: Instant::now(),
        body: value,
    });
    let delay = inner.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match inner.status.load(std::sync::atomic::Ordering::SeqCst) {
        0 => axum::http::StatusCode::OK,
        n => axum::http::StatusCode::from_u16(n).expect("valid HTTP status"),
    };
    (
        status,
        Json(json!({"code": 200, "msg": "success", "data": {"status": "received"}})),
    )
}

fn spawn_server(port: u16, reports: Shared) -> ServerThread {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            let listener = loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind 127.0.0.1:{port}: {e}")));
                        return;
                    }
                }
            };
            let _ = ready_tx.send(Ok(()));
            let app = Router::new()
                .route("/api/v1.0/ota/report", post(report))
                .with_state(reports);
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = stop_rx => {}
            }
        });
        // Dropping the runtime here closes every open connection.
    });
    match ready_rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("fake device-api: {e}"),
        Err(e) => panic!("fake device-api did not start: {e}"),
    }
    ServerThread {
        stop: Some(stop_tx),
        handle: Some(handle),
    }
}

impl FakeDeviceApi {
    pub fn start() -> FakeDeviceApi {
        let port = super::free_port();
        let reports: Shared = Arc::default();
        let server = spawn_server(port, reports.clone());
        FakeDeviceApi {
            port,
            reports,
            server: Some(server),
        }
    }

    /// A device-api that is down from the start (its port chosen, nothing listening): `up()`
    /// brings it up on that port.
    pub fn start_down() -> FakeDeviceApi {
        FakeDeviceApi {
            port: super::free_port(),
            reports: Arc::default(),
            server: None,
        }
    }

    /// Answer every report with HTTP `status` from now on (200 again with `set_status(200)`).
    pub fn set_status(&self, status: u16) {
        self.reports
            .status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// The value for the daemon's `device_api_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the port: the daemon's callbacks are refused until `up()`.
    pub fn down(&mut self) {
        self.server = None;
    }

    pub fn up(&mut self) {
        if self.server.is_none() {
            self.server = Some(spawn_server(self.port, self.reports.clone()));
        }
    }

    /// Reports received so far (a report counts when its request arrived, answered or not).
    pub fn reports(&self) -> Vec<Report> {
        self.reports.reports.lock().unwrap().clone()
    }

    /// Holds every answer back for `d` (a hanging device-api).
    pub fn set_delay(&self, d: Duration) {
        self.reports
            .delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.reports().into_iter().map(|r| r.body).collect()
    }

    /// Waits until a recorded report satisfies `cond`; returns it.
    pub fn wait_for_report(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.bodies().into_iter().find(|b| cond(b)) {
                return r;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for a device-api report: {what}; got {:#?}",
                    self.bodies()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
