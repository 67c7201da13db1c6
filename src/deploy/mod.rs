//! Installation of a verified package as a transaction: plan, check, stage, stop, swap, post
//! commands, start, health, then commit or undo. Everything here is synchronous and runs on a
//! blocking thread.
//!
//! | step | module | touches | journal phase written before it |
//! |---|---|---|---|
//! | open the package, resolve every `dst` beneath the roots, survey the device | `check`, `plan` | nothing | - |
//! | write each new file under a staging name of its own beside its destination, then `syncfs` | `apply::stage` | staging files, new directories | `staging` |
//! | record how the modules' processes run, stop them | `procs` | processes | `staged`, then `stopping` |
//! | hard-link every old file into `backups/install-files`, flush | `apply::backup` | backups | (`stopping`) |
//! | stop what a supervisor started again, rename every temporary over its destination, flush each directory, stop what runs the old program | `stale`, `apply::swap` | the printer's files | `swapping` |
//! | post commands, starts in `restart_order`, health checks (stage `rebooting`) | `procs`, `health` | processes | (`swapping`) |
//! | nothing runs the old program; commit | `stale` | - | `committed` |
//!
//! The caller records the outcome durably, then calls [`finish`], which removes the journal and
//! the backups. Any failure before `committed` rolls back (`rollback`), and a restart that finds
//! a journal ([`recover`]) does the same; a `committed` journal only finishes its cleanup.
//! Services are down only from the stop to the starts: the slow part, extracting and checking
//! every file, happens before anything is stopped.

mod apply;
mod beneath;
mod check;
mod health;
mod journal;
mod plan;
mod procs;
mod rollback;
mod stale;
mod stopped;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{self, ErrorCode, OtaError};
use crate::package::{open_package, Module, Signatures};
use crate::process;

pub use health::HealthCmd;
pub use journal::JOURNAL_NAME;
/// The install journal's reader and writer as start-up recovery uses them (for `fuzz/`).
pub use journal::{encode as encode_journal, parse as parse_journal};

use apply::{Flow, Roots};
use journal::{Journal, Phase};

/// Time limit of each post command.
const POST_CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// Progress of an installation, for the stage message and the callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallEvent<'a> {
    /// A module's files are being extracted and checked (nothing stopped yet).
    Deploying {
        module: &'a str,
        /// 1-based.
        index: usize,
        total: usize,
    },
    Stopping {
        module: &'a str,
    },
    Restarting {
        module: &'a str,
    },
    /// Every module is started again; these modules' health is being checked.
    Checking {
        modules: &'a str,
    },
    RollingBack {
        reason: &'a str,
    },
}

#[derive(Debug)]
pub struct InstallOptions<'a> {
    pub allowed_roots: &'a [PathBuf],
    /// How `manifest.sig` is checked (config `trusted_keys`, `require_signature`).
    pub signatures: Signatures<'a>,
    /// `<work_dir>/backups`.
    pub backups_dir: &'a Path,
    pub stop_timeout: Duration,
    /// Wait between the last start and the health checks (config `settle_s`).
    pub settle: Duration,
    /// Set on SIGTERM: the installation stops at the next safe point.
    pub cancel: &'a AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    Done,
    /// Stopped on `cancel`; the journal is left for [`recover`] at the next start.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    Nothing,
    RolledBack { version: String },
    Completed { version: String },
}

/// A module's health command, as the manifest gives it, run with the module's name and the
/// `version` being installed in its environment.
fn health_cmd(m: &Module, version: &str) -> Option<HealthCmd> {
    m.health_cmd.as_ref().map(|argv| HealthCmd {
        argv: argv.clone(),
        timeout: Duration::from_secs(m.health_timeout_s),
        env: process::ChildEnv::module(&m.name, version),
    })
}

/// Roll back after `cause` and build the error to report: the cause's code for what fails
/// before a file is replaced (`DISK_FULL`, `INVALID_PACKAGE`, `PROCESS_KILL_FAILED`),
/// `DEPLOYMENT_FAILED` otherwise (`DISK_FULL` stays); the detail says whether the rollback
/// succeeded.
fn fail(
    cause: OtaError,
    j: &Journal,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> OtaError {
    let code = match cause.code {
        ErrorCode::DiskFull | ErrorCode::ProcessKillFailed | ErrorCode::InternalError => cause.code,
        ErrorCode::InvalidPackage if j.phase == Phase::Staging => cause.code,
        _ => ErrorCode::DeploymentFailed,
    };
    tracing::error!("installation of {} failed: {cause}", j.version);
    on_event(InstallEvent::RollingBack {
        reason: &cause.detail,
    });
    match rollback::rollback(j, opts.backups_dir, opts.stop_timeout, on_event) {
        Ok(()) => OtaError::new(code, format!("{}; rolled back", cause.detail)),
        Err(e) => OtaError::new(code, format!("{}; {}", cause.detail, e.detail)),
    }
}

/// Write the journal at `phase`; a failure rolls back what the previous phase did.
fn advance(
    j: &mut Journal,
    phase: Phase,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<(), OtaError> {
    let before = j.phase;
    j.phase = phase;
    journal::write(opts.backups_dir, j).map_err(|e| {
        // The journal on disk still says `before` (write_atomic is all or nothing).
        j.phase = before;
        fail(e, j, opts, on_event)
    })
}

/// Tries of a random staging id before giving up (each is 64 random bits: a name taken is
/// someone imitating the updater's names, not chance).
const STAGE_ID_TRIES: usize = 4;

/// The journal of a new installation, with a staging id none of whose names exists on the
/// device (docs/API.md 9.6: the updater never writes to or removes a name it did not create).
fn staging_plan(
    pkg: &crate::package::Package,
    groups: &[plan::Group],
    survey: &check::Survey,
    roots: &[PathBuf],
) -> Result<Journal, OtaError> {
    let mut opened = Roots::default();
    for _ in 0..STAGE_ID_TRIES {
        let mut j = plan::journal(
            &pkg.manifest.version,
            journal::new_stage_id()?,
            &pkg.manifest.modules,
            groups,
            roots,
        );
        j.created = survey.created.clone();
        if apply::staging_names_free(&j, &mut opened)? {
            return Ok(j);
        }
    }
    Err(error::deployment_failed(format!(
        "files named like the updater's staging files ({}...) are in the way; nothing was changed",
        beneath::STAGE_PREFIX
    )))
}

/// Install the package at `package` (already MD5-verified) as the module documentation says.
pub fn install(
    package: &Path,
    expected_version: &str,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<InstallOutcome, OtaError> {
    let backups_dir = opts.backups_dir;
    let cancelled = || opts.cancel.load(Ordering::SeqCst);
    // Check everything before touching anything.
    let mut pkg = open_package(
        package,
        expected_version,
        opts.allowed_roots,
        opts.signatures,
    )?;
    if journal::path(backups_dir).exists() {
        return Err(error::internal(
            "an earlier installation has not been recovered yet (journal present)",
        ));
    }
    let resolved = check::resolve(&pkg.files, opts.allowed_roots, backups_dir)?;
    let groups = plan::group(&pkg.files, &resolved, opts.allowed_roots)?;
    let survey = check::survey(&pkg.files, &groups, opts.allowed_roots)?;
    crate::fsutil::create_dirs_durable(backups_dir)
        .map_err(|e| error::internal(format!("{}: {e}", backups_dir.display())))?;
    check::backup_space(backups_dir, &pkg.files, &survey.owners)?;
    let mut j = staging_plan(&pkg, &groups, &survey, opts.allowed_roots)?;
    journal::encode(&j)?;
    if cancelled() {
        return Ok(InstallOutcome::Interrupted);
    }
    // No journal: leftovers in backups/install-files belong to nobody.
    rollback::remove_backup_files(backups_dir);
    journal::write(backups_dir, &j)?;
    tracing::info!(
        "installing version {}: {} modules, {} files",
        j.version,
        j.modules.len(),
        j.target_count()
    );
    let health: Vec<Option<HealthCmd>> = pkg
        .manifest
        .modules
        .iter()
        .map(|m| health_cmd(m, &j.version))
        .collect();

    // Stage every new file while the printer still runs.
    let t = std::time::Instant::now();
    match apply::stage(&mut pkg, &mut j, &groups, &survey, opts.cancel, on_event) {
        Ok(Flow::Done) => {}
        Ok(Flow::Cancelled) => return Ok(InstallOutcome::Interrupted),
        Err(e) => return Err(fail(e, &j, opts, on_event)),
    }
    tracing::info!(
        "{} files staged in {} ms",
        j.target_count(),
        t.elapsed().as_millis()
    );
    advance(&mut j, Phase::Staged, opts, on_event)?;
    if cancelled() {
        return Ok(InstallOutcome::Interrupted);
    }

    // Stop the processes, remembering how they ran.
    let down = std::time::Instant::now();
    let order = plan::start_order(&j.modules);
    procs::record(&mut j, &order).map_err(|e| fail(e, &j, opts, on_event))?;
    advance(&mut j, Phase::Stopping, opts, on_event)?;
    if let Err(e) = procs::stop_all(&j, &order, opts.stop_timeout, opts.cancel, on_event) {
        // SIGTERM: a `systemctl stop` still running was stopped; the next start rolls back.
        if cancelled() {
            return Ok(InstallOutcome::Interrupted);
        }
        let e = OtaError::new(e.code, format!("{}; nothing was deployed", e.detail));
        return Err(fail(e, &j, opts, on_event));
    }

    // Back up, then replace every destination.
    let mut roots = Roots::default();
    if let Err(e) = apply::backup(&mut j, &mut roots, backups_dir) {
        return Err(fail(e, &j, opts, on_event));
    }
    advance(&mut j, Phase::Swapping, opts, on_event)?;
    // docs/API.md 9.6: a supervisor may have started a module's program again meanwhile.
    if let Err(e) = stale::stop_respawned(&j.modules, &order, opts.stop_timeout) {
        return Err(fail(e, &j, opts, on_event));
    }
    if let Err(e) = apply::swap(&j, &mut roots) {
        return Err(fail(e, &j, opts, on_event));
    }
    drop(roots);
    // Anything of the modules started until now may run the old program.
    let swap_tick = stale::swap_done();
    if let Err(e) = stale::stop_stale(&j.modules, &order, swap_tick, opts.stop_timeout) {
        return Err(fail(e, &j, opts, on_event));
    }
    if cancelled() {
        return Ok(InstallOutcome::Interrupted);
    }

    // Post commands, in start order.
    for &i in &order {
        let m = &pkg.manifest.modules[i];
        let env = process::ChildEnv::module(&m.name, &j.version);
        for cmd in m.post_argvs() {
            if let Err(e) = process::run_to_completion(&cmd, &env, POST_CMD_TIMEOUT, opts.cancel) {
                // SIGTERM: the command's group is gone; the next start rolls back.
                if cancelled() {
                    return Ok(InstallOutcome::Interrupted);
                }
                let detail = OtaError::from(e).detail;
                let cause = error::deployment_failed(format!("module {}: {detail}", m.name));
                return Err(fail(cause, &j, opts, on_event));
            }
            if cancelled() {
                return Ok(InstallOutcome::Interrupted);
            }
        }
    }

    // Start again, one after another, then check.
    let started = match procs::start_new(
        &j.modules,
        &order,
        &j.version,
        opts.stop_timeout,
        opts.cancel,
        on_event,
    ) {
        Ok(s) => s,
        // SIGTERM: a start still running was stopped; the next start rolls back.
        Err(_) if cancelled() => return Ok(InstallOutcome::Interrupted),
        Err(e) => return Err(fail(e, &j, opts, on_event)),
    };
    tracing::info!("processes were down for {} ms", down.elapsed().as_millis());
    match health::check_all(
        &j.modules,
        &order,
        &started,
        &health,
        opts.settle,
        opts.cancel,
        on_event,
    ) {
        Ok(Flow::Done) => {}
        Ok(Flow::Cancelled) => return Ok(InstallOutcome::Interrupted),
        Err(e) => return Err(fail(e, &j, opts, on_event)),
    }

    // docs/API.md 9.6: never `success` over a process running the program from before.
    if let Err(e) = stale::check_none_stale(&j.modules, &order, swap_tick) {
        return Err(fail(e, &j, opts, on_event));
    }

    // Commit. The caller records the outcome, then calls [`finish`]: until then the committed
    // journal tells a restart that the installation completed.
    advance(&mut j, Phase::Committed, opts, on_event)?;
    tracing::info!("version {} installed", j.version);
    Ok(InstallOutcome::Done)
}

/// After [`install`] returned `Done` and the caller has durably recorded the outcome: remove
/// the committed journal and the backups. A power cut before or during this is finished by
/// [`recover`] (phase `committed` means completed), so the outcome is never misreported.
pub fn finish(backups_dir: &Path) {
    rollback::cleanup(backups_dir);
}

/// At start-up, before the API reports anything: finish or roll back an interrupted
/// installation. An error means files could not be restored (the journal is kept and the next
/// start retries), or the journal was unusable (set aside, reported once).
pub fn recover(backups_dir: &Path, stop_timeout: Duration) -> Result<Recovery, OtaError> {
    let _ = std::fs::remove_file(crate::fsutil::tmp_sibling(&journal::path(backups_dir)));
    let j = match journal::read(backups_dir) {
        journal::Found::None => {
            rollback::remove_backup_files(backups_dir);
            return Ok(Recovery::Nothing);
        }
        journal::Found::SetAside(why) => {
            let e = error::internal(format!(
                "the install journal was unusable ({why}); files of the interrupted installation, \
                 if any, were not checked"
            ));
            tracing::error!("{e}");
            return Err(e);
        }
        journal::Found::Journal(j) => j,
    };
    match j.phase {
        Phase::Committed => {
            tracing::info!("finishing the cleanup of installed version {}", j.version);
            rollback::cleanup(backups_dir);
            Ok(Recovery::Completed { version: j.version })
        }
        phase => {
            tracing::warn!(
                "installation of version {} was interrupted (phase {phase:?}): rolling back",
                j.version
            );
            rollback::rollback(&j, backups_dir, stop_timeout, &mut |_| {})?;
            Ok(Recovery::RolledBack { version: j.version })
        }
    }
}
