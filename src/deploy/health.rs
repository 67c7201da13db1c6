//! The health phase (docs/API.md section 8.4): after every module has been started again, the
//! checks begin `settle_s` seconds after the last start, one thread per module, and the
//! installation is committed only when every check passed:
//! - a module started by its `start_cmd` with a `process_name` (and no `service`): the process
//!   found once it started must still run, the same one (no crash and respawn in between);
//! - a module with a `service`: `systemctl is-active` must say `active`;
//! - a module with a `health_cmd`: it is run every second until it exits 0, for at most
//!   `health_timeout_s` seconds (a run still going then is killed and counts as a failure).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::process;

use super::apply::Flow;
use super::error::{Cause, HealthError};
use super::journal::JModule;
use super::procs::{Started, SYSTEMCTL_TIMEOUT};
use super::InstallEvent;

/// A module's `health_cmd` with its time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCmd {
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Its environment (docs/API.md 9.6).
    pub env: process::ChildEnv,
}

/// Period of `health_cmd` runs.
const PERIOD: Duration = Duration::from_secs(1);
/// How often SIGTERM is looked for while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Sleep `d`, or less when `cancel` is set; false when cancelled.
fn pause(d: Duration, cancel: &AtomicBool) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if cancel.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
    !cancel.load(Ordering::SeqCst)
}

/// The state check of one module (its process or service); `Err` says why it is not healthy.
/// Quick: run on the caller's thread.
fn check_started(started: &Started, cancel: &AtomicBool) -> Result<(), HealthError> {
    match started {
        Started::Process(name, p, unit) => match process::liveness(p) {
            process::Liveness::Alive => Ok(()),
            process::Liveness::Unknown(source) => Err(HealthError::Unknown {
                name: name.clone(),
                pid: p.pid,
                source,
            }),
            process::Liveness::Gone => {
                let now = process::scan(name).unwrap_or_default();
                // docs/API.md 9.6: a start_cmd that daemonizes. The process found was the
                // command's first process, it exited 0, and the process it left behind runs:
                // that one is the module's process. The first process was the updater's own
                // child, or the main process of the transient unit it was started in, which
                // stays active after a clean exit (`RemainAfterExit=yes`) and fails otherwise.
                let first_ok = u32::try_from(p.pid)
                    .ok()
                    .and_then(process::exit_status)
                    .is_some_and(|s| s.success())
                    || unit.as_deref().is_some_and(|u| {
                        process::systemctl("is-active", u, SYSTEMCTL_TIMEOUT, Some(cancel)).is_ok()
                    });
                if let Some(q) = now.iter().find(|q| q.id.start_time >= p.start_time) {
                    if first_ok {
                        tracing::info!(
                            "process {name}: the start command's first process (pid {}) exited \
                             0 and left pid {} running (it daemonized)",
                            p.pid,
                            q.id.pid
                        );
                        return Ok(());
                    }
                }
                Err(match now.first() {
                    Some(q) => HealthError::Respawned {
                        name: name.clone(),
                        pid: p.pid,
                        now: q.id.pid,
                    },
                    None => HealthError::Gone {
                        name: name.clone(),
                        pid: p.pid,
                    },
                })
            }
        },
        Started::Service(s) => process::systemctl("is-active", s, SYSTEMCTL_TIMEOUT, Some(cancel))
            .map_err(|source| HealthError::Inactive {
                service: s.clone(),
                source: Box::new(source),
            }),
        Started::Nothing => Ok(()),
    }
}

/// Run a module's `health_cmd` every second until it exits 0 (see the module documentation).
fn run_health_cmd(h: &HealthCmd, cancel: &AtomicBool) -> Result<(), HealthError> {
    let deadline = Instant::now() + h.timeout;
    let mut last = None;
    loop {
        let begun = Instant::now();
        let left = deadline.saturating_duration_since(begun);
        if left.is_zero() {
            return Err(HealthError::TimedOut {
                timeout: h.timeout,
                last,
            });
        }
        match process::run_to_completion(&h.argv, &h.env, left, cancel) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(Box::new(e)),
        }
        let next = (begun + PERIOD).min(deadline);
        if !pause(next.saturating_duration_since(Instant::now()), cancel) {
            return Err(HealthError::Interrupted);
        }
    }
}

/// Wait `settle`, then check every module (see the module documentation), concurrently.
pub fn check_all(
    modules: &[JModule],
    order: &[usize],
    started: &[Started],
    health: &[Option<HealthCmd>],
    settle: Duration,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<Flow, Cause> {
    if cancel.load(Ordering::SeqCst) {
        return Ok(Flow::Cancelled);
    }
    let checked: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| started[i] != Started::Nothing || health[i].is_some())
        .collect();
    if checked.is_empty() {
        return Ok(Flow::Done);
    }
    let names = checked
        .iter()
        .map(|&i| modules[i].name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    on_event(InstallEvent::Checking { modules: &names });
    if !pause(settle, cancel) {
        return Ok(Flow::Cancelled);
    }
    // Processes and services first (quick), then the health commands side by side.
    let mut results: Vec<(usize, Result<(), HealthError>)> = checked
        .iter()
        .map(|&i| (i, check_started(&started[i], cancel)))
        .collect();
    let cmds: Vec<(usize, Result<(), HealthError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = checked
            .iter()
            .filter_map(|&i| health[i].as_ref().map(|h| (i, h)))
            .map(|(i, h)| (i, s.spawn(move || run_health_cmd(h, cancel))))
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().unwrap_or(Err(HealthError::Crashed))))
            .collect()
    });
    results.extend(cmds);
    results.sort_by_key(|(i, _)| order.iter().position(|o| o == i));
    if cancel.load(Ordering::SeqCst) {
        return Ok(Flow::Cancelled);
    }
    let mut first = None;
    for (i, r) in results {
        if let Err(why) = r {
            tracing::error!("health check of module {} failed: {why}", modules[i].name);
            first.get_or_insert((i, why));
        }
    }
    match first {
        None => {
            tracing::info!("health checks passed: {names}");
            Ok(Flow::Done)
        }
        Some((i, why)) => Err(Cause::Health {
            module: modules[i].name.clone(),
            source: why,
        }),
    }
}
