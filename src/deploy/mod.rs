//! Installation of a verified package as a transaction: plan and check first, touching
//! nothing, then a list of steps ([`steps::Step::INSTALL`]) run by one driver (`driver`), then
//! commit or undo. Everything here is synchronous and runs on a blocking thread.
//!
//! | step | module | touches | journal phase written before it |
//! |---|---|---|---|
//! | open the package, resolve every `dst` beneath the roots, survey the device, draw a staging id | `check`, `plan` | nothing | - (then the journal is written: `staging`) |
//! | `Stage`: write each new file under a staging name of its own beside its destination, then `syncfs` | `apply::stage` | staging files, new directories | `staging` |
//! | `Probe` (a self-update, docs/API.md 9.4): the staged new updater binary run once with `--version` | `steps`, `handover::probe` | nothing | - |
//! | `Record`: how each module's processes run (argv, cwd, user, groups, environment) | `procs::record` | the journal | `staged` |
//! | `Stop`: stop them | `procs::stop_all` | processes | `stopping` |
//! | `Backup`: hard-link every old file into `backups/install-files`, flush | `apply::backup` | backups | - |
//! | `Swap`: stop what a supervisor started again, rename every temporary over its destination, flush each directory, stop what runs the old program | `stale`, `apply::swap` | the printer's files | `swapping` |
//! | `PostCmds`: post commands in start order | `process` | processes | - |
//! | `Start`: starts in `restart_order`, each complete before the next | `procs::start_new` | processes | - |
//! | `HandOver` (a self-update, docs/API.md 9.4): the new updater binary started with the API's socket and watched through `health_timeout_s` and `settle_s` | `handover` | processes | - |
//! | `Health`: health checks (stage `rebooting`), then nothing may run the old program | `health`, `stale` | - | - |
//! | `Commit` | - | the journal | `committed` |
//!
//! The driver (`driver::drive`) has a safe point before each step: on SIGTERM the installation
//! stops there ([`InstallOutcome::Interrupted`]) and the journal is left for [`recover`]. Any
//! failure (a step's, or a journal write's) is rolled back once (`rollback`) and reported as a
//! `DeployError` (`error`: the step, the cause, the rollback), whose contract code is decided in
//! one place (`error::contract_code`) and which becomes an [`OtaError`] at this module's edge.
//! The caller records the outcome durably, then calls [`finish`], which removes the journal and
//! the backups. A restart that finds a journal ([`recover`]) rolls back what was not committed;
//! a `committed` journal only finishes its cleanup. Services are down only from the stop to the
//! starts: the slow part, extracting and checking every file, happens before anything is
//! stopped.

mod apply;
mod beneath;
mod check;
mod driver;
mod error;
mod health;
mod journal;
mod legacy;
mod own;
mod plan;
mod procs;
mod rollback;
mod stale;
mod steps;
mod stopped;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::OtaError;
use crate::package::{open_package, Signatures};

pub use error::{DeployError, HealthError, JournalError, ResolveError, RollbackIncomplete};
pub use health::HealthCmd;
pub use journal::JOURNAL_NAME;
/// The install journal's reader and writer as start-up recovery uses them (for `fuzz/`).
pub use journal::{encode as encode_journal, parse as parse_journal};
/// The reader of release 0.1.0's journal (docs/API.md 9.4), for `fuzz/`.
pub use legacy::{parse as parse_legacy_journal, LegacyJournal, LegacyPhase};
pub use steps::Step;

use apply::Roots;
use journal::{Journal, Phase};
use steps::Installation;

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
    /// The API's address (config `listen`): where a new updater binary must answer
    /// `/progress` in a self-update (docs/API.md 9.4).
    pub listen: std::net::SocketAddr,
}

impl InstallOptions<'_> {
    /// Whether the updater is stopping (SIGTERM).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
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
    Err(crate::error::deployment_failed(format!(
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
    // Check everything before touching anything.
    let pkg = open_package(
        package,
        expected_version,
        opts.allowed_roots,
        opts.signatures,
    )?;
    // docs/API.md 9.4: never an updater that stops itself in the middle of an installation.
    own::check_modules(&pkg.manifest.modules, &own::Own::current())?;
    if journal::path(backups_dir).exists() {
        return Err(crate::error::internal(
            "an earlier installation has not been recovered yet (journal present)",
        ));
    }
    let resolved = check::resolve(&pkg.files, opts.allowed_roots, backups_dir)?;
    let groups = plan::group(&pkg.files, &resolved, opts.allowed_roots)?;
    let survey = check::survey(&pkg.files, &groups, opts.allowed_roots)?;
    crate::fsutil::create_dirs_durable(backups_dir)
        .map_err(|e| crate::error::internal(format!("{}: {e}", backups_dir.display())))?;
    check::backup_space(backups_dir, &pkg.files, &survey.owners)?;
    let mut j = staging_plan(&pkg, &groups, &survey, opts.allowed_roots)?;
    journal::encode(&j)?;
    // Nothing is touched yet and no journal written: a stop now leaves nothing to recover.
    if opts.cancelled() {
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
    let mut installation = Installation::new(pkg, groups, survey, &j);
    let outcome = driver::drive(&Step::INSTALL, &mut installation, &mut j, opts, on_event)?;
    if let Some(new) = installation.take_new_updater() {
        // docs/API.md 9.4: committed; the caller hands over to the new binary.
        crate::handover::keep(new);
    }
    if outcome == InstallOutcome::Done {
        // The caller records the outcome, then calls [`finish`]: until then the committed
        // journal tells a restart that the installation completed.
        tracing::info!("version {} installed", j.version);
    }
    Ok(outcome)
}

/// After [`install`] returned `Done` and the caller has durably recorded the outcome: remove
/// the committed journal and the backups. A power cut before or during this is finished by
/// [`recover`] (phase `committed` means completed), so the outcome is never misreported.
pub fn finish(backups_dir: &Path) {
    rollback::cleanup(backups_dir);
}

/// At start-up, before the API reports anything: finish or roll back an interrupted
/// installation. An error means files could not be restored (the journal is kept and the next
/// start retries), or the journal was unusable (set aside, reported once). A journal of release
/// 0.1.0 is checked against `allowed_roots` and the backups directory first (`legacy`).
pub fn recover(
    backups_dir: &Path,
    allowed_roots: &[PathBuf],
    stop_timeout: Duration,
) -> Result<Recovery, OtaError> {
    let _ = std::fs::remove_file(crate::fsutil::tmp_sibling(&journal::path(backups_dir)));
    let unusable = |why: String| {
        let e = crate::error::internal(format!(
            "the install journal was unusable ({why}); files of the interrupted installation, \
             if any, were not checked"
        ));
        tracing::error!("{e}");
        e
    };
    let j = match journal::read(backups_dir) {
        journal::Found::None => {
            rollback::remove_backup_files(backups_dir);
            return Ok(Recovery::Nothing);
        }
        journal::Found::SetAside(why) => return Err(unusable(why)),
        journal::Found::Legacy(old) => {
            let checked = match old.check(backups_dir, allowed_roots) {
                Ok(c) => c,
                Err(why) => match journal::set_aside(backups_dir, &why.to_string()) {
                    journal::Found::SetAside(why) => return Err(unusable(why)),
                    _ => return Err(unusable(why.to_string())),
                },
            };
            return recover_legacy(&checked, backups_dir, stop_timeout);
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

/// [`recover`] for a checked journal of release 0.1.0: committed, its cleanup finished;
/// otherwise rolled back as 0.1.0 would have.
fn recover_legacy(
    j: &legacy::Checked,
    backups_dir: &Path,
    stop_timeout: Duration,
) -> Result<Recovery, OtaError> {
    let version = j.version.clone();
    if j.phase == LegacyPhase::Committed {
        tracing::info!("finishing the cleanup of version {version}, installed by release 0.1.0");
        legacy::cleanup(j, backups_dir);
        return Ok(Recovery::Completed { version });
    }
    tracing::warn!(
        "installation of version {version} by release 0.1.0 was interrupted (phase {:?}): \
         rolling back",
        j.phase
    );
    legacy::rollback(j, backups_dir, stop_timeout)?;
    Ok(Recovery::RolledBack { version })
}
