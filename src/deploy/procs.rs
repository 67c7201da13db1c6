//! The printer's processes around a deployment: recorded as they ran, stopped, started again in
//! order (each start complete before the next), and, on a rollback, the old ones started again
//! exactly as they ran. Process control itself is `crate::process`.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::error::{self, OtaError};
use crate::process::{self, ProcId};

use super::journal::{JModule, Journal, Stopped};
use super::plan::stops;
use super::InstallEvent;

/// Time limit of one `systemctl stop|start` (systemd's own default stop timeout is 90 s).
pub const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a start's completion is looked for.
const POLL: Duration = Duration::from_millis(50);

/// Record how the processes of every module that is about to be stopped run (argv and working
/// directory from `/proc`), so a rollback can start them again exactly so. A `/proc` that
/// cannot be read is `PROCESS_KILL_FAILED`: nothing is stopped on a guess.
pub fn record(j: &mut Journal, order: &[usize]) -> Result<(), OtaError> {
    let mut seen = HashSet::new();
    for &i in order {
        let Some(name) = &j.modules[i].process_name else {
            continue;
        };
        let found = process::scan(name).map_err(|e| {
            error::kill_failed(format!(
                "module {}: cannot tell whether process {name} runs, so it cannot be stopped: {e}",
                j.modules[i].name
            ))
        })?;
        for p in found {
            if !seen.insert(p.id) {
                continue;
            }
            match p.argv_utf8() {
                Some(argv) if !argv.is_empty() => j.stopped.push(Stopped {
                    module: i,
                    argv,
                    cwd: p.cwd.clone(),
                }),
                _ => tracing::warn!(
                    "module {}: process {name} (pid {}) has no command line the journal can \
                     keep; a rollback does not start it again",
                    j.modules[i].name,
                    p.id.pid
                ),
            }
        }
    }
    Ok(())
}

/// Stop module `m`'s processes. Errors are `PROCESS_KILL_FAILED`. `cancel` (the updater's
/// shutdown) stops a `systemctl stop` still running; a rollback passes `None` and finishes.
pub fn stop_module(
    m: &JModule,
    stop_timeout: Duration,
    services_done: &mut HashSet<String>,
    cancel: Option<&AtomicBool>,
) -> Result<(), OtaError> {
    if let Some(s) = &m.service {
        if services_done.insert(s.clone()) {
            process::systemctl("stop", s, SYSTEMCTL_TIMEOUT, cancel)?;
        }
    }
    if let Some(p) = &m.process_name {
        process::stop_by_name(p, stop_timeout)?;
    }
    Ok(())
}

/// Stop every stopping module, last started first. On failure, what was stopped is left to
/// the caller's rollback (the journal knows how it ran).
pub fn stop_all(
    j: &Journal,
    order: &[usize],
    stop_timeout: Duration,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<(), OtaError> {
    let mut services = HashSet::new();
    for &i in order.iter().rev() {
        let m = &j.modules[i];
        if !stops(m) {
            continue;
        }
        on_event(InstallEvent::Stopping { module: &m.name });
        stop_module(m, stop_timeout, &mut services, Some(cancel))
            .map_err(|e| error::kill_failed(format!("module {}: {}", m.name, e.detail)))?;
    }
    Ok(())
}

/// How a module was started, for its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// `systemctl start` succeeded.
    Service(String),
    /// The process of its `process_name` found running once started.
    Process(String, ProcId),
    /// Spawned, nothing to watch (no `process_name`), or nothing to start.
    Nothing,
}

/// Wait until a process named `name` runs (at most `limit`); a `/proc` that cannot be read
/// counts as "not yet".
fn wait_running(name: &str, limit: Duration) -> Option<ProcId> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = process::scan(name)
            .ok()
            .and_then(|f| f.first().map(|p| p.id))
        {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Start every module in `order`, one after another, each once the previous start completed
/// (docs/API.md section 8.4): a service once `systemctl start` succeeded; a `start_cmd` with a
/// `process_name` once a process of that name runs (at most `stop_timeout`); a `start_cmd`
/// without one once spawned. A module whose `process_name` already runs (a supervisor restarted
/// it) is not started twice. A `start_cmd` runs with the module's name and `version` in its
/// environment (docs/API.md 9.6).
pub fn start_new(
    modules: &[JModule],
    order: &[usize],
    version: &str,
    stop_timeout: Duration,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<Vec<Started>, OtaError> {
    let mut started = vec![Started::Nothing; modules.len()];
    let mut services = HashSet::new();
    for &i in order {
        let m = &modules[i];
        let fail =
            |detail: String| error::deployment_failed(format!("module {}: {detail}", m.name));
        if let Some(s) = &m.service {
            if services.insert(s.as_str()) {
                on_event(InstallEvent::Restarting { module: &m.name });
                process::systemctl("start", s, SYSTEMCTL_TIMEOUT, Some(cancel))
                    .map_err(|e| fail(e.detail))?;
            }
            started[i] = Started::Service(s.clone());
        } else if let Some(cmd) = &m.start_cmd {
            if let Some(p) = &m.process_name {
                let running = process::scan(p)
                    .map_err(|e| fail(format!("cannot tell whether process {p} runs: {e}")))?;
                if let Some(running) = running.first() {
                    tracing::info!("module {}: process {p} already running", m.name);
                    started[i] = Started::Process(p.clone(), running.id);
                    continue;
                }
            }
            on_event(InstallEvent::Restarting { module: &m.name });
            process::spawn_detached(
                cmd,
                &process::ChildEnv::module(&m.name, version),
                Some(cancel),
            )
            .map_err(|e| fail(e.detail))?;
            if let Some(p) = &m.process_name {
                let found = wait_running(p, stop_timeout).ok_or_else(|| {
                    fail(format!(
                        "start_cmd ran but no process {p} was running within {} s",
                        stop_timeout.as_secs()
                    ))
                })?;
                started[i] = Started::Process(p.clone(), found);
            }
        } else if let Some(p) = &m.process_name {
            tracing::warn!(
                "module {}: process {p} was stopped and has neither start_cmd nor service: not restarted",
                m.name
            );
        }
    }
    Ok(started)
}

/// After a rollback: start the old processes again in start order, as they ran (the journal's
/// argv), and the services of the modules that stop. Failures are logged, never fatal: the
/// rollback goes on.
pub fn start_old(
    j: &Journal,
    order: &[usize],
    stop_timeout: Duration,
    on_event: &mut dyn FnMut(InstallEvent),
) {
    let mut services = HashSet::new();
    for &i in order {
        let m = &j.modules[i];
        if let Some(s) = &m.service {
            if services.insert(s.as_str()) {
                on_event(InstallEvent::Restarting { module: &m.name });
                if let Err(e) = process::systemctl("start", s, SYSTEMCTL_TIMEOUT, None) {
                    tracing::error!("rollback: module {}: {e}", m.name);
                }
            }
            continue;
        }
        let Some(name) = &m.process_name else {
            continue;
        };
        let olds: Vec<&Stopped> = j.stopped.iter().filter(|s| s.module == i).collect();
        if olds.is_empty() {
            continue;
        }
        match process::is_running(name) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::error!(
                "rollback: module {}: cannot tell whether process {name} runs ({e}); starting it",
                m.name
            ),
        }
        on_event(InstallEvent::Restarting { module: &m.name });
        for old in olds {
            match process::spawn_detached_in(&old.argv, old.cwd.as_deref()) {
                Ok(how) => tracing::info!(
                    "rollback: module {}: old process started again ({how})",
                    m.name
                ),
                Err(e) => tracing::error!("rollback: module {}: {e}", m.name),
            }
        }
        if wait_running(name, stop_timeout).is_none() {
            tracing::error!(
                "rollback: module {}: no process {name} running after its restart",
                m.name
            );
        }
    }
}
