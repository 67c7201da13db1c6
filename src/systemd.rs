//! systemd integration beyond READY: `STATUS=` lines for `systemctl status` and a watchdog
//! that is fed only while the daemon is healthy.
//!
//! A thread of its own asks the daemon's own `GET /api/v1.0/progress` over loopback every
//! period, exactly as ota-gui would (through the crate's one `/progress` client,
//! [`crate::apiclient::probe`]). Only an answer with HTTP 200 and the API's envelope feeds
//! the watchdog (`WATCHDOG=1`); a wedged runtime, a dead accept loop or a handler stuck on a
//! lock answers nothing, the watchdog is not fed, and systemd restarts the daemon after
//! `WatchdogSec` (the state is crash-consistent, so a restart is always safe). Each answer also
//! becomes a one-line `STATUS=` (e.g. `Downloading 47% (version 1.2.3)`), sent when it changes.
//!
//! Nothing runs when `NOTIFY_SOCKET` is unset (not started by systemd). systemd arms the
//! watchdog only once READY=1 is sent and disarms it when the service stops, so the thread
//! starts after READY and ends with the shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use serde_json::Value;

pub use crate::apiclient::{probe, probe_addr, Probe, PROGRESS_PATH as PROBE_PATH};
use crate::shutdown::Shutdown;

/// Longest `STATUS=` text sent; longer texts are cut (an error may carry a long detail).
pub const MAX_STATUS_CHARS: usize = 200;
/// How often the status is refreshed when no watchdog asks for more.
const STATUS_PERIOD: Duration = Duration::from_secs(2);

/// When to probe and how long a probe may take, from `WATCHDOG_USEC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time between the starts of two probes.
    pub period: Duration,
    /// Connect, write and read limit of one probe.
    pub timeout: Duration,
}

/// The probe timing for a watchdog interval (`None`: no watchdog, status lines only).
///
/// systemd recommends a ping every half interval; probing every quarter (at most every 2 s)
/// leaves room for one slow or lost probe before the interval runs out, and a probe may take
/// a quarter of the interval (at least 200 ms, at most 5 s) before it counts as unanswered.
pub fn timing(watchdog: Option<Duration>) -> Timing {
    match watchdog {
        None => Timing {
            period: STATUS_PERIOD,
            timeout: Duration::from_secs(5),
        },
        Some(w) => {
            let quarter = w / 4;
            Timing {
                period: quarter.min(STATUS_PERIOD).max(Duration::from_millis(50)),
                timeout: quarter.clamp(Duration::from_millis(200), Duration::from_secs(5)),
            }
        }
    }
}

/// The watchdog decision: feed it only for an HTTP 200 carrying the API envelope
/// (`code` and `data.stage`). A failed update still answers 200 (with `code` 500): the
/// daemon is healthy, it is the update that failed.
pub fn healthy(probe: &Probe) -> bool {
    match probe {
        Probe::Answer {
            status: 200,
            body: Some(v),
        } => v.get("code").is_some_and(Value::is_i64) && v["data"]["stage"].is_string(),
        _ => false,
    }
}

/// The one-line text for `systemctl status`, from a probe.
pub fn status_text(probe: &Probe) -> String {
    let text = match probe {
        Probe::NoAnswer(why) => format!("API not answering: {why}"),
        Probe::Answer { status, body } => match body {
            Some(v) if healthy(probe) => describe(&v["data"]),
            _ => format!("API answered HTTP {status} without its envelope"),
        },
    };
    one_line(&text, MAX_STATUS_CHARS)
}

/// `Downloading 47% (version 1.2.3)`, `Failed: DOWNLOAD_FAILED: ...` and so on.
fn describe(data: &Value) -> String {
    let stage = data["stage"].as_str().unwrap_or("");
    let progress = data["progress"].as_i64().unwrap_or(0);
    let message = data["message"].as_str().unwrap_or("");
    let error = data["error"].as_str().unwrap_or("");
    let version = match data["version"].as_str() {
        Some(v) if !v.is_empty() => format!(" (version {v})"),
        _ => String::new(),
    };
    let with_message = |head: String| {
        if message.is_empty() {
            head
        } else {
            format!("{head}: {message}")
        }
    };
    match stage {
        "idle" => "Idle, waiting for an update".to_string(),
        "downloading" => format!("Downloading {progress}%{version}"),
        "verifying" => format!("Verifying {progress}%{version}"),
        "toInstall" => format!("Downloaded{version}, ready to install"),
        "installing" => with_message(format!("Installing {progress}%{version}")),
        "rebooting" => with_message(format!("Restarting modules{version}")),
        "success" => format!("Updated{version}"),
        "failed" if !error.is_empty() => format!("Failed{version}: {error}"),
        "failed" => with_message(format!("Failed{version}")),
        other => format!("Stage {other} {progress}%"),
    }
}

/// `text` on one line (every control character, newlines included, becomes a space: a
/// newline would start another assignment in the notification) and at most `max` chars.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

/// Starts the health thread when the daemon runs under systemd (`NOTIFY_SOCKET` set):
/// it probes `listen` every period, sends `WATCHDOG=1` after each healthy answer (when
/// `WATCHDOG_USEC` asks for a watchdog) and `STATUS=` whenever the text changes. It ends
/// once `shutdown` is set. Returns whether the thread was started.
pub fn start_health_reporter(listen: SocketAddr, shutdown: Shutdown) -> bool {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return false;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let t = timing(watchdog);
    let addr = probe_addr(listen);
    match watchdog {
        Some(w) => tracing::info!(
            "systemd watchdog every {w:?}: fed after each healthy answer of {PROBE_PATH} \
             (probed every {:?})",
            t.period
        ),
        None => tracing::debug!("no systemd watchdog; status lines every {:?}", t.period),
    }
    std::thread::Builder::new()
        .name("sd-health".into())
        .spawn(move || run(addr, t, watchdog.is_some(), shutdown))
        .map_err(|e| tracing::warn!("cannot start the systemd health thread: {e}"))
        .is_ok()
}

fn run(addr: SocketAddr, t: Timing, watchdog: bool, shutdown: Shutdown) {
    let mut last_status = String::new();
    let mut was_healthy = true;
    while !shutdown.is_set() {
        let started = Instant::now();
        let p = probe(addr, t.timeout);
        if shutdown.is_set() {
            // The API closes during shutdown: not a fault worth a status line.
            break;
        }
        let ok = healthy(&p);
        if ok && watchdog {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
        if ok != was_healthy {
            if ok {
                tracing::info!("{PROBE_PATH} answers again");
            } else {
                tracing::warn!(
                    "{PROBE_PATH} did not answer ({}){}",
                    status_text(&p),
                    if watchdog {
                        "; the watchdog is not fed"
                    } else {
                        ""
                    }
                );
            }
            was_healthy = ok;
        }
        let text = status_text(&p);
        if text != last_status {
            let _ = sd_notify::notify(&[NotifyState::Status(&text)]);
            last_status = text;
        }
        let next = started + t.period;
        while !shutdown.is_set() {
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Status("Stopping: finishing the current step")]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Probe {
        Probe::Answer {
            status,
            body: Some(body),
        }
    }

    fn progress(stage: &str, progress: i64, extra: Value) -> Value {
        let mut data = json!({"stage": stage, "progress": progress, "message": "", "error": null});
        if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        json!({"code": 200, "msg": "success", "data": data})
    }

    #[test]
    fn watchdog_is_fed_only_for_a_200_envelope() {
        assert!(healthy(&answer(200, progress("idle", 0, json!({})))));
        // A failed update is still a healthy daemon.
        let failed = json!({"code": 500, "msg": "DOWNLOAD_FAILED: x", "stage": "failed",
            "progress": 0, "data": {"stage": "failed", "progress": 0, "message": "",
            "error": "DOWNLOAD_FAILED: x"}});
        assert!(healthy(&answer(200, failed)));

        assert!(!healthy(&Probe::NoAnswer("connection refused".into())));
        assert!(!healthy(&Probe::NoAnswer("timed out".into())));
        assert!(!healthy(&answer(503, progress("idle", 0, json!({})))));
        assert!(!healthy(&answer(200, json!({"hello": "world"}))));
        assert!(!healthy(&answer(200, json!({"code": 200, "data": null}))));
        assert!(!healthy(&Probe::Answer {
            status: 200,
            body: None
        }));
    }

    #[test]
    fn status_lines_say_what_the_updater_does() {
        let v = json!({"version": "1.2.3"});
        let cases = [
            (
                progress("idle", 0, json!({})),
                "Idle, waiting for an update",
            ),
            (
                progress("downloading", 47, v.clone()),
                "Downloading 47% (version 1.2.3)",
            ),
            (progress("downloading", 5, json!({})), "Downloading 5%"),
            (
                progress("verifying", 30, v.clone()),
                "Verifying 30% (version 1.2.3)",
            ),
            (
                progress("toInstall", 100, v.clone()),
                "Downloaded (version 1.2.3), ready to install",
            ),
            (
                progress("success", 100, v.clone()),
                "Updated (version 1.2.3)",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(status_text(&answer(200, body)), want);
        }
        let mut installing = progress("installing", 66, v.clone());
        installing["data"]["message"] = json!("Deploying module device-api (2/3)");
        assert_eq!(
            status_text(&answer(200, installing)),
            "Installing 66% (version 1.2.3): Deploying module device-api (2/3)"
        );
        let mut failed = progress("failed", 12, v);
        failed["data"]["error"] = json!("DOWNLOAD_FAILED: connection reset");
        assert_eq!(
            status_text(&answer(200, failed)),
            "Failed (version 1.2.3): DOWNLOAD_FAILED: connection reset"
        );
        assert_eq!(
            status_text(&Probe::NoAnswer("timed out".into())),
            "API not answering: timed out"
        );
        assert_eq!(
            status_text(&answer(404, json!("nope"))),
            "API answered HTTP 404 without its envelope"
        );
    }

    #[test]
    fn a_status_line_never_carries_a_second_assignment() {
        let mut failed = progress("failed", 0, json!({}));
        failed["data"]["error"] = json!("INTERNAL_ERROR: bad\nREADY=1\rMAINPID=1");
        let text = status_text(&answer(200, failed));
        assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
        assert_eq!(text, "Failed: INTERNAL_ERROR: bad READY=1 MAINPID=1");

        let long = "x".repeat(1000);
        let cut = one_line(&long, MAX_STATUS_CHARS);
        assert_eq!(cut.chars().count(), MAX_STATUS_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(one_line("short", MAX_STATUS_CHARS), "short");
    }

    #[test]
    fn probe_timing_follows_the_watchdog_interval() {
        assert_eq!(
            timing(Some(Duration::from_secs(30))),
            Timing {
                period: Duration::from_secs(2),
                timeout: Duration::from_millis(7500).min(Duration::from_secs(5)),
            }
        );
        let t = timing(Some(Duration::from_secs(2)));
        assert_eq!(t.period, Duration::from_millis(500));
        assert_eq!(t.timeout, Duration::from_millis(500));
        // Several probes always fit in one interval.
        for secs in [1u64, 2, 5, 10, 30, 120] {
            let w = Duration::from_secs(secs);
            let t = timing(Some(w));
            assert!(t.period * 3 <= w, "{w:?}: {t:?}");
            assert!(t.timeout <= w / 2 || t.timeout == Duration::from_millis(200));
        }
        assert_eq!(timing(None).period, STATUS_PERIOD);
    }

    #[test]
    fn a_silent_server_is_no_answer_within_the_timeout() {
        // Accepts connections (backlog) but never answers: a wedged API.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let p = probe(addr, Duration::from_millis(300));
        assert!(matches!(p, Probe::NoAnswer(_)), "{p:?}");
        assert!(!healthy(&p));
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
        // Nothing listening: refused at once.
        assert!(!healthy(&probe(addr, Duration::from_millis(300))));
    }
}
