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
/// Most a journal grows after [`record`]: a longer phase name.
const JOURNAL_GROWTH: usize = 64;
/// How often a start's completion is looked for.
const POLL: Duration = Duration::from_millis(50);

/// Record how the processes of every module that is about to be stopped run (docs/API.md 9.6:
/// argv and environment as bytes, working directory, user, group and supplementary groups, from
/// `/proc`), so a rollback can start them again exactly so. A `/proc` that cannot be read is
/// `PROCESS_KILL_FAILED`: nothing is stopped on a guess. A command line the journal cannot
/// hold (over 1 MiB, or too large for the journal's 1 MiB with the rest) refuses the
/// installation here, before anything is stopped, naming the command line.
pub fn record(j: &mut Journal, order: &[usize]) -> Result<(), OtaError> {
    let mut seen = HashSet::new();
    for &i in order {
        let Some(name) = &j.modules[i].process_name else {
            continue;
        };
        let module = &j.modules[i].name;
        let unreadable = |e: std::io::Error| {
            error::kill_failed(format!(
                "module {module}: cannot tell how process {name} runs, so it cannot be stopped: {e}"
            ))
        };
        let found = process::scan(name).map_err(unreadable)?;
        for p in found {
            if !seen.insert(p.id) {
                continue;
            }
            if p.argv.is_empty() {
                tracing::warn!(
                    "module {module}: process {name} (pid {}) shows no command line; a rollback \
                     does not start it again",
                    p.id.pid
                );
                continue;
            }
            // Gone meanwhile: nothing to stop, nothing to start again.
            let Some(who) = process::identity(&p.id).map_err(unreadable)? else {
                continue;
            };
            if !p.argv_complete || !who.env_complete {
                return Err(too_long(module, name, p.id.pid, &p.argv, None));
            }
            j.stopped.push(Stopped {
                module: i,
                argv: p.argv,
                cwd: p.cwd,
                uid: Some(who.uid),
                gid: Some(who.gid),
                groups: Some(who.groups),
                env: Some(who.env),
                comm: Some(p.comm),
            });
        }
    }
    // The phases still to be written may make the journal a few bytes longer.
    let size = serde_json::to_vec(&*j).map_or(0, |b| b.len()) + JOURNAL_GROWTH;
    if size as u64 > crate::fsutil::MAX_READ_BACK {
        let largest = j
            .stopped
            .iter()
            .max_by_key(|s| serde_json::to_vec(s).map_or(0, |b| b.len()));
        if let Some(s) = largest {
            let m = &j.modules[s.module];
            let name = m.process_name.as_deref().unwrap_or_default();
            return Err(too_long(&m.name, name, 0, &s.argv, Some(size)));
        }
    }
    Ok(())
}

/// The refusal of a command line the journal cannot hold (see [`record`]).
fn too_long(
    module: &str,
    name: &str,
    pid: i32,
    argv: &[std::ffi::OsString],
    journal_size: Option<usize>,
) -> OtaError {
    let bytes: usize = argv.iter().map(|a| a.len() + 1).sum();
    let mut shown: String = argv
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(80)
        .collect();
    shown.push_str("...");
    let pid = if pid > 0 {
        format!(" (pid {pid})")
    } else {
        String::new()
    };
    let why = match journal_size {
        Some(n) => format!(
            "with its environment it would make the install journal {n} bytes, more than the {} \
             it may take",
            crate::fsutil::MAX_READ_BACK
        ),
        None => format!(
            "its command line or environment is longer than the {} bytes the updater reads",
            crate::fsutil::MAX_READ_BACK
        ),
    };
    error::deployment_failed(format!(
        "module {module}: the command line of process {name}{pid} ({bytes} bytes: `{shown}`) \
         cannot be recorded to start it again after a rollback: {why}; nothing was stopped"
    ))
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
    /// The process of its `process_name` found running once started; with the transient
    /// unit it was started in under systemd (`systemd-run`), if it was.
    Process(String, ProcId, Option<String>),
    /// Spawned, nothing to watch (no `process_name`), or nothing to start.
    Nothing,
}

/// Wait until a process named `name` runs (at most `limit`); a `/proc` that cannot be read
/// counts as "not yet".
pub(super) fn wait_running(name: &str, limit: Duration) -> Option<ProcId> {
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
                    .map_err(|e| fail(OtaError::from(e).detail))?;
            }
            started[i] = Started::Service(s.clone());
        } else if let Some(cmd) = &m.start_cmd {
            if let Some(p) = &m.process_name {
                let running = process::scan(p)
                    .map_err(|e| fail(format!("cannot tell whether process {p} runs: {e}")))?;
                if let Some(running) = running.first() {
                    tracing::info!("module {}: process {p} already running", m.name);
                    started[i] = Started::Process(p.clone(), running.id, None);
                    continue;
                }
            }
            on_event(InstallEvent::Restarting { module: &m.name });
            let launched = process::spawn_detached(
                cmd,
                &process::ChildEnv::module(&m.name, version),
                Some(cancel),
            )
            .map_err(|e| fail(OtaError::from(e).detail))?;
            let unit = match launched {
                process::Started::Unit { name } => Some(name),
                process::Started::Process { .. } => None,
            };
            if let Some(p) = &m.process_name {
                let found = wait_running(p, stop_timeout).ok_or_else(|| {
                    fail(format!(
                        "start_cmd ran but no process {p} was running within {} s",
                        stop_timeout.as_secs()
                    ))
                })?;
                started[i] = Started::Process(p.clone(), found, unit);
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
/// argv, working directory, credentials and environment: docs/API.md 9.6), and the services of the modules that stop. Failures are logged, never fatal: the
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
                    let e = OtaError::from(e);
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
            let how = process::AsItRan {
                argv: &old.argv,
                cwd: old.cwd.as_deref(),
                uid: old.uid,
                gid: old.gid,
                groups: old.groups.as_deref(),
                env: old.env.as_deref(),
                comm: old.comm.as_deref(),
            };
            match process::start_as_it_ran(&how) {
                Ok(how) => tracing::info!(
                    "rollback: module {}: old process started again ({how})",
                    m.name
                ),
                Err(e) => tracing::error!("rollback: module {}: {}", m.name, OtaError::from(e)),
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

#[cfg(test)]
mod tests {
    use super::super::journal::{Phase, FORMAT};
    use super::*;
    use crate::error::ErrorCode;
    use crate::process::tests::{named_sleep, wait_found};

    fn journal(name: &str) -> Journal {
        Journal {
            format: FORMAT,
            version: "9.6.0".into(),
            phase: Phase::Staged,
            modules: vec![JModule {
                name: "svc".into(),
                process_name: Some(name.into()),
                service: None,
                start_cmd: None,
                restart_order: None,
            }],
            dirs: vec![],
            created: vec![],
            stopped: vec![],
            stage_id: Some("0123456789abcdef".into()),
            foreign: Default::default(),
        }
    }

    /// docs/API.md 9.6: a command line within what is read from `/proc` but, with the
    /// environment, too large for the journal refuses the installation before any stop, naming
    /// the command line; a small one is recorded as it ran.
    #[test]
    fn docs_api_9_6_a_command_line_the_journal_cannot_hold_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let (name, path) = named_sleep(d.path());
        // Ten arguments of 104 600 bytes: 1 046 000 bytes, under the 1 MiB read from /proc.
        let zero = format!("0.{}", "0".repeat(104_598));
        let mut child = std::process::Command::new(&path)
            .arg("1000")
            .args(std::iter::repeat_n(&zero, 10))
            .env_clear()
            .env("PAD", "x".repeat(3000))
            .spawn()
            .unwrap();
        assert_eq!(wait_found(&name, 1).len(), 1);
        let mut j = journal(&name);
        let e = record(&mut j, &[0]).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
        assert!(e.detail.contains("command line of process"), "{e}");
        assert!(e.detail.contains("would make the install journal"), "{e}");
        assert!(e.detail.contains(&name), "{e}");
        assert!(e.detail.contains("nothing was stopped"), "{e}");
        assert!(!e.detail.contains("files"), "{e}");
        assert!(e.detail.len() < 1000, "{e}");
        assert!(child.try_wait().unwrap().is_none(), "never stopped");
        child.kill().unwrap();
        child.wait().unwrap();

        let mut child = std::process::Command::new(&path)
            .args(["1000", "0"])
            .env_clear()
            .env("PRINTER_PORT", "/dev/ttyS1")
            .spawn()
            .unwrap();
        assert_eq!(wait_found(&name, 1).len(), 1);
        let mut j = journal(&name);
        record(&mut j, &[0]).unwrap();
        assert_eq!(j.stopped.len(), 1);
        let s = &j.stopped[0];
        assert_eq!(s.argv, [path.as_os_str(), "1000".as_ref(), "0".as_ref()]);
        assert_eq!(
            s.env.as_deref(),
            Some(&["PRINTER_PORT=/dev/ttyS1".into()][..])
        );
        assert_eq!(s.uid, Some(rustix::process::getuid().as_raw()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
