//! Callbacks to device-api (docs/API.md section 2).
//!
//! The OTA work only pushes a report into a small queue (never waits). One sender task posts
//! them in order. While device-api is down the queue collapses to the newest report, which is
//! retried until device-api answers: the final outcome always arrives once it is back, and an
//! older report never arrives after a newer one (one sender, FIFO).
//!
//! A report is delivered only when device-api answers it with HTTP 200 (anything else, or no
//! answer, is retried). A report carrying an outcome id (`success`/`failed`) calls the hook
//! set with [`Reporter::on_outcome_delivered`] once delivered, on a blocking thread, so the
//! updater can record durably that device-api has it (docs/API.md section 8.5).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::lifecycle::Status;
use crate::sync::lock;

/// The callback body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub stage: String,
    pub progress: u8,
    pub message: String,
    pub error: Option<String>,
    /// The id of the outcome (`crate::outcome::Outcome::id`) this final report carries; not
    /// sent.
    #[serde(skip)]
    pub outcome: Option<u64>,
}

impl From<&Status> for Report {
    fn from(s: &Status) -> Self {
        Report {
            stage: s.stage.as_str().to_string(),
            progress: s.progress,
            message: s.message.clone(),
            error: s.error.clone(),
            outcome: None,
        }
    }
}

/// Who hears of the updater's progress and outcomes. device-api's [`Reporter`] is one; a fleet
/// server's feedback or a metrics exporter are more, given to `Updater::with_sinks`. Every
/// report (a stage change, each 5 % step of a download, an error, the final outcome with its
/// id) reaches every sink in the order it was made. `publish` is called with the updater's
/// locks released or short-held: it must return at once (queue, never wait for a network) and
/// can never fail or slow the update.
pub trait Sink: Send + Sync {
    fn publish(&self, report: &Report);
}

impl Sink for Reporter {
    fn publish(&self, report: &Report) {
        self.push(report.clone());
    }
}

/// Called with an outcome id once device-api answered its report with HTTP 200.
pub type DeliveredHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Reports waiting to be sent. Bounded: past `MAX_QUEUE` the oldest are dropped.
pub struct Reporter {
    queue: Mutex<VecDeque<Report>>,
    notify: Notify,
    delivered: Mutex<Option<DeliveredHook>>,
}

const MAX_QUEUE: usize = 64;
/// A callback that takes longer than this is abandoned and retried.
const POST_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new()
    }
}

impl Reporter {
    pub fn new() -> Reporter {
        Reporter {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            delivered: Mutex::new(None),
        }
    }

    /// Set the hook called (on a blocking thread) when a report with an outcome id has been
    /// answered with HTTP 200.
    pub fn on_outcome_delivered(&self, hook: DeliveredHook) {
        *lock(&self.delivered) = Some(hook);
    }

    fn delivered_hook(&self) -> Option<DeliveredHook> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queue a report; returns at once.
    pub fn push(&self, r: Report) {
        {
            let mut q = lock(&self.queue);
            if q.back() == Some(&r) {
                return;
            }
            if q.len() >= MAX_QUEUE {
                q.pop_front();
            }
            q.push_back(r);
        }
        self.notify.notify_one();
    }

    /// The reports waiting to be sent, oldest first.
    pub fn queued(&self) -> Vec<Report> {
        lock(&self.queue).iter().cloned().collect()
    }

    fn front(&self) -> Option<Report> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned()
    }

    fn pop_sent(&self, sent: &Report) {
        let mut q = lock(&self.queue);
        if q.front() == Some(sent) {
            q.pop_front();
        }
    }

    /// device-api did not take the report: keep only the newest one.
    fn collapse(&self) {
        let mut q = lock(&self.queue);
        while q.len() > 1 {
            q.pop_front();
        }
    }

    /// The sender loop; runs for the life of the daemon.
    pub async fn run(self: Arc<Self>, client: reqwest::Client, base_url: String) {
        let url = format!("{base_url}/api/v1.0/ota/report");
        // Only for the log lines: device_api_url is configuration, but never leak its user info.
        let shown = crate::net::redact_url(&url);
        let mut backoff = RETRY_MIN;
        let mut failing = false;
        loop {
            let Some(report) = self.front() else {
                self.notify.notified().await;
                continue;
            };
            match post(&client, &url, &report).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("device-api reachable again; callbacks delivered");
                        failing = false;
                    }
                    tracing::debug!(stage = %report.stage, progress = report.progress, "callback delivered");
                    self.pop_sent(&report);
                    backoff = RETRY_MIN;
                    if let (Some(id), Some(hook)) = (report.outcome, self.delivered_hook()) {
                        // Recording it writes a file: never on the API's runtime thread.
                        tokio::task::spawn_blocking(move || hook(id));
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("callback to {shown} failed ({e}); keeping the newest report and retrying");
                        failing = true;
                    } else {
                        tracing::debug!("callback to {shown} failed again ({e})");
                    }
                    self.collapse();
                    // Wait for the backoff, or for a newer report (tried at once).
                    let _ = tokio::time::timeout(backoff, self.notify.notified()).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// Why a report was not delivered (it is retried).
#[derive(Debug, thiserror::Error)]
enum NotDelivered {
    #[error("{0}")]
    Encode(serde_json::Error),
    /// No answer: connection refused, timeout. Without the URL (the log line names it,
    /// redacted).
    #[error("{0}")]
    Send(reqwest::Error),
    /// An answer other than HTTP 200.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
}

async fn post(client: &reqwest::Client, url: &str, r: &Report) -> Result<(), NotDelivered> {
    let body = serde_json::to_vec(r).map_err(NotDelivered::Encode)?;
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(POST_TIMEOUT)
        .send()
        .await
        .map_err(|e| NotDelivered::Send(e.without_url()))?;
    // device-api answers 200; anything else (a 204, a 500 of a device-api that is starting)
    // is not a delivery and is retried.
    match resp.status() {
        reqwest::StatusCode::OK => Ok(()),
        status => Err(NotDelivered::Status(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(stage: &str, p: u8) -> Report {
        Report {
            stage: stage.into(),
            progress: p,
            message: String::new(),
            error: None,
            outcome: None,
        }
    }

    #[test]
    fn contract_2_queue_keeps_order_and_collapses_to_newest() {
        let rep = Reporter::new();
        rep.push(r("downloading", 0));
        rep.push(r("downloading", 0)); // duplicate of the newest: dropped
        rep.push(r("downloading", 5));
        rep.push(r("failed", 5));
        assert_eq!(rep.front(), Some(r("downloading", 0)));
        rep.collapse();
        assert_eq!(rep.front(), Some(r("failed", 5)));
        rep.pop_sent(&r("failed", 5));
        assert_eq!(rep.front(), None);
    }

    /// docs/API.md 2 and 8.3: only an HTTP 200 is a delivery; a failure is logged without
    /// the URL's user info.
    #[test]
    fn contract_2_what_is_not_a_delivery_and_how_it_reads() {
        assert_eq!(
            NotDelivered::Status(reqwest::StatusCode::NO_CONTENT).to_string(),
            "HTTP 204 No Content"
        );
        let tls = crate::net::tls_config(None).unwrap();
        let client = crate::net::callback_client(&tls).unwrap();
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://user:s3cret@127.0.0.1:{port}/api/v1.0/ota/report");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(post(&client, &url, &r("failed", 5)))
            .unwrap_err();
        assert!(matches!(e, NotDelivered::Send(_)), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn queue_is_bounded() {
        let rep = Reporter::new();
        for i in 0..200u16 {
            rep.push(r("downloading", (i % 101) as u8));
        }
        assert_eq!(rep.queue.lock().unwrap().len(), MAX_QUEUE);
    }
}
