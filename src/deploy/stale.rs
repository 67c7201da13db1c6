//! Processes that would run old code over new files (docs/API.md 9.6). A supervisor (BusyBox
//! init's `::respawn:`, a shell loop, a service's `Restart=`) may start a module's program
//! again after the installation stopped it. So:
//! - right before the swap, the modules' processes are looked for again and any found is
//!   stopped too ([`stop_respawned`]);
//! - right after the swap, any that started before it (its start time, in clock ticks since
//!   boot, at or before the swap's) runs the old executable or script and is stopped
//!   ([`stop_stale`]); a supervisor then starts the new one;
//! - before the commit, one still running that started before the swap fails the installation
//!   ([`check_none_stale`]): `success` is never reported over old code.

use std::time::Duration;

use crate::error::{self, OtaError};
use crate::process::{self, RunningProcess};

use super::journal::JModule;

/// The current time on the clock of a process's start time (field 22 of `/proc/<pid>/stat`):
/// clock ticks since boot, suspend included.
pub fn now_ticks() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let hz = rustix::param::clock_ticks_per_second();
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(hz)
        .saturating_add(nanos.saturating_mul(hz) / 1_000_000_000)
}

/// The tick of the swap, once it has passed: a process started from now on has a later start
/// time, so it can never be taken for one that ran the old program (nor the reverse).
pub fn swap_done() -> u64 {
    let tick = now_ticks();
    while now_ticks() <= tick {
        std::thread::sleep(Duration::from_millis(1));
    }
    tick
}

/// The process names of the modules in `order`, each once.
fn names<'a>(modules: &'a [JModule], order: &[usize]) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for &i in order {
        if let Some(p) = &modules[i].process_name {
            if !out.iter().any(|(_, n)| n == p) {
                out.push((&modules[i].name, p));
            }
        }
    }
    out
}

/// Right before the swap: stop every process of the modules that runs again.
pub fn stop_respawned(
    modules: &[JModule],
    order: &[usize],
    stop_timeout: Duration,
) -> Result<(), OtaError> {
    for (module, name) in names(modules, order) {
        let stopped = process::stop_processes(name, stop_timeout).map_err(|e| {
            error::kill_failed(format!("module {module}: {}", OtaError::from(e).detail))
        })?;
        for p in stopped {
            tracing::warn!(
                "module {module}: process {name} (pid {}) was started again after it was \
                 stopped (a supervisor?): stopped again before the files are replaced",
                p.id.pid
            );
        }
    }
    Ok(())
}

fn older(swap_tick: u64) -> impl Fn(&RunningProcess) -> bool {
    move |p| p.id.start_time <= swap_tick
}

/// Right after the swap: stop every process of the modules started at or before `swap_tick`.
pub fn stop_stale(
    modules: &[JModule],
    order: &[usize],
    swap_tick: u64,
    stop_timeout: Duration,
) -> Result<(), OtaError> {
    for (module, name) in names(modules, order) {
        let stopped = process::stop_processes_where(name, stop_timeout, &older(swap_tick))
            .map_err(|e| {
                error::deployment_failed(format!("module {module}: {}", OtaError::from(e).detail))
            })?;
        for p in stopped {
            tracing::warn!(
                "module {module}: process {name} (pid {}) started before the files were \
                 replaced (a supervisor restarted it) and ran the old program: stopped",
                p.id.pid
            );
        }
    }
    Ok(())
}

/// Before the commit: `DEPLOYMENT_FAILED` when a process of the modules started at or before
/// `swap_tick` still runs (or `/proc` cannot tell).
pub fn check_none_stale(
    modules: &[JModule],
    order: &[usize],
    swap_tick: u64,
) -> Result<(), OtaError> {
    for (module, name) in names(modules, order) {
        let found = process::scan(name).map_err(|e| {
            error::deployment_failed(format!(
                "module {module}: cannot tell which program process {name} runs: {e}"
            ))
        })?;
        if let Some(p) = found.iter().find(|p| older(swap_tick)(p)) {
            return Err(error::deployment_failed(format!(
                "module {module}: process {name} (pid {}) runs the program from before the \
                 installation (started before its files were replaced)",
                p.id.pid
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_api_9_6_now_is_on_the_clock_of_process_start_times() {
        let before = now_ticks();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let after_paren = &stat[stat.rfind(')').unwrap() + 2..];
        let start: u64 = after_paren
            .split_ascii_whitespace()
            .nth(22 - 3)
            .unwrap()
            .parse()
            .unwrap();
        let after = now_ticks();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            before <= start && start <= after,
            "{before} {start} {after}"
        );
    }
}
