//! How the updater's state reaches the disk, and what happens when it cannot
//! (docs/API.md sections 8.1 and 8.5).
//!
//! - A stage change ([`Updater::advance`]) is computed on a copy of the lifecycle, written to
//!   `state.json`, and only then made visible and reported. If the write fails the change is
//!   not made; the caller fails the job with `INTERNAL_ERROR`, never claiming a stage the disk
//!   does not back.
//! - An outcome ([`Updater::conclude`]) is written before it is shown or reported. For a
//!   `success` the outcome file comes first and `state.json` is deleted after it; if the outcome
//!   cannot be written the success is not claimed (the caller fails with `INTERNAL_ERROR` and
//!   keeps the committed journal, so the next start reports the success). For a `failed`,
//!   `state.json` comes first, then the outcome; if they cannot be written the failure is shown
//!   all the same, kept in memory, and the writes are retried.
//! - Every failed write is retried every [`RETRY_EVERY`] by a thread started on the first
//!   failure, and by every later write.
//! - When device-api has answered the final report with HTTP 200, the outcome is rewritten
//!   with `delivered: true`.

use std::time::Duration;

use time::OffsetDateTime;

use super::{lock, Updater};
use crate::error::{self, OtaError};
use crate::lifecycle::{Lifecycle, Refused, Stage};
use crate::outcome::{self, Outcome};
use crate::report::Report;
use crate::state;
use crate::workdir::{OwnFile, OUTCOME_FILE};

/// How often failed writes of the updater's own files are retried.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Writes that failed and wait for a retry.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// `state.json` does not match the lifecycle.
    state: bool,
    /// The outcome in memory is not (entirely) on disk.
    outcome: bool,
    /// The history lacks the outcome in memory.
    history: bool,
    /// The retry thread runs.
    retrying: bool,
}

impl Updater {
    pub(super) fn outcome_file(&self) -> OwnFile {
        self.inner.cfg.work().outcome()
    }

    pub(super) fn installed_file(&self) -> OwnFile {
        self.inner.cfg.work().installed()
    }

    fn history_file(&self) -> OwnFile {
        self.inner.cfg.work().history()
    }

    /// Write the state file to match the lifecycle. Call with the `persist` lock held.
    pub(super) fn write_state(&self, l: &Lifecycle) -> Result<(), OtaError> {
        let file = self.inner.cfg.work().state();
        match state::save(&file, l) {
            Ok(()) => {
                lock(&self.inner.pending).state = false;
                Ok(())
            }
            Err(e) => {
                let err = error::internal(format!("cannot write {}: {e}", file.path().display()));
                self.retry_later(&err, |p| p.state = true);
                Err(err)
            }
        }
    }

    /// Write the state file to match the lifecycle now (a checkpoint, the start of a job).
    pub(super) fn persist(&self) -> Result<(), OtaError> {
        let _order = lock(&self.inner.persist);
        let snapshot = lock(&self.inner.life).clone();
        self.write_state(&snapshot)
    }

    /// A stage change: applied to a copy, written, then made visible and reported. `Err`: the
    /// transition was refused, or the state file could not be written (nothing changed).
    pub(super) fn advance(
        &self,
        f: impl FnOnce(&mut Lifecycle) -> Result<(), Refused>,
    ) -> Result<(), OtaError> {
        let order = lock(&self.inner.persist);
        let mut next = lock(&self.inner.life).clone();
        f(&mut next)?;
        self.write_state(&next)?;
        *lock(&self.inner.life) = next;
        drop(order);
        self.report_now();
        Ok(())
    }

    /// An outcome (`success` or `failed`): applied to a copy, recorded, then made visible and
    /// reported. `Err`: the transition was refused, or a success could not be recorded (then
    /// nothing changed and the caller must fail the job).
    pub(super) fn conclude(
        &self,
        f: impl FnOnce(&mut Lifecycle) -> Result<(), Refused>,
    ) -> Result<(), OtaError> {
        let order = lock(&self.inner.persist);
        let mut next = lock(&self.inner.life).clone();
        f(&mut next)?;
        let Some(o) = Outcome::of(&next, OffsetDateTime::now_utc()) else {
            return Err(error::internal(format!(
                "stage {} is not an outcome",
                next.stage()
            )));
        };
        if next.stage() == Stage::Success {
            // On record before state.json goes: a restart in between still knows.
            self.write_outcome(&o, true)?;
            if let Err(e) = self.write_state(&next) {
                tracing::error!("{e}; the success is recorded in {OUTCOME_FILE}");
            }
        } else {
            let written = self.write_state(&next);
            let recorded = self.write_outcome(&o, false);
            if let Err(e) = written.and(recorded) {
                tracing::error!("{e}; the failure is kept in memory and written later");
            }
        }
        *lock(&self.inner.life) = next;
        drop(order);
        self.report_outcome(&o);
        Ok(())
    }

    /// Make `o` the outcome in memory and write it (and add it to the history). With `strict`,
    /// a failed write leaves nothing changed; otherwise it is kept and retried.
    pub(super) fn write_outcome(&self, o: &Outcome, strict: bool) -> Result<(), OtaError> {
        let file = self.outcome_file();
        if let Err(e) = outcome::save(&file, o) {
            let err = error::internal(format!("cannot write {}: {e}", file.path().display()));
            if strict {
                tracing::error!("{err}");
            } else {
                *lock(&self.inner.outcome) = Some(o.clone());
                self.retry_later(&err, |p| {
                    p.outcome = true;
                    p.history = true;
                });
            }
            return Err(err);
        }
        *lock(&self.inner.outcome) = Some(o.clone());
        lock(&self.inner.pending).outcome = false;
        self.write_history(o);
        if o.stage == Stage::Success && !o.version.is_empty() {
            let installed = self.installed_file();
            // Not fatal: a stale record only lets more through (config `allow_downgrade`).
            if let Err(e) =
                outcome::save_installed(&installed, &o.version, OffsetDateTime::now_utc())
            {
                tracing::error!("cannot write {}: {e}", installed.path().display());
            }
        }
        Ok(())
    }

    /// Add (or update) `o` in the history; a failure is logged and retried, never fatal.
    fn write_history(&self, o: &Outcome) {
        let file = self.history_file();
        match outcome::append_history(&file, o) {
            Ok(()) => lock(&self.inner.pending).history = false,
            Err(e) => {
                let err = error::internal(format!("cannot write {}: {e}", file.path().display()));
                self.retry_later(&err, |p| p.history = true);
            }
        }
    }

    /// Queue the final report of `o` (its id lets the reporter say when it got its 200).
    pub(super) fn report_outcome(&self, o: &Outcome) {
        let mut r = Report::from(&self.status());
        if r.stage == o.stage.as_str() {
            r.outcome = Some(o.id);
        }
        self.publish(&r);
    }

    /// device-api answered the final report of outcome `id` with HTTP 200: record it.
    pub(super) fn outcome_delivered(&self, id: u64) {
        let _order = lock(&self.inner.persist);
        let o = {
            let mut cur = lock(&self.inner.outcome);
            match cur.as_mut() {
                Some(o) if o.id == id && !o.delivered => {
                    o.delivered = true;
                    o.clone()
                }
                _ => return,
            }
        };
        tracing::info!(
            "device-api received the outcome ({} {})",
            o.stage,
            o.version
        );
        let file = self.outcome_file();
        match outcome::save(&file, &o) {
            Ok(()) => self.write_history(&o),
            Err(e) => {
                let err = error::internal(format!("cannot write {}: {e}", file.path().display()));
                self.retry_later(&err, |p| {
                    p.outcome = true;
                    p.history = true;
                });
            }
        }
    }

    /// Note a failed write for the retry thread (started on the first one).
    fn retry_later(&self, err: &OtaError, mark: impl FnOnce(&mut Pending)) {
        let mut p = lock(&self.inner.pending);
        let first = !(p.state || p.outcome || p.history);
        mark(&mut p);
        if first {
            tracing::error!("{err}; retrying every {} s", RETRY_EVERY.as_secs());
        } else {
            tracing::debug!("{err}");
        }
        if p.retrying {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("persist-retry".into())
            .spawn(move || me.retry_loop());
        match spawned {
            Ok(_) => p.retrying = true,
            Err(e) => tracing::error!("cannot start the retry thread: {e}"),
        }
    }

    /// Retry the failed writes until they succeed; then keep watching for the next failure.
    fn retry_loop(&self) {
        loop {
            std::thread::sleep(RETRY_EVERY);
            let pending = {
                let p = lock(&self.inner.pending);
                p.state || p.outcome || p.history
            };
            if pending && self.flush() {
                tracing::info!("the updater's state files are written again");
            }
        }
    }

    /// Write whatever is pending; true when nothing is left.
    pub(super) fn flush(&self) -> bool {
        let _order = lock(&self.inner.persist);
        let (state, outcome, history) = {
            let p = lock(&self.inner.pending);
            (p.state, p.outcome, p.history)
        };
        if state {
            let snapshot = lock(&self.inner.life).clone();
            if let Err(e) = state::save(&self.inner.cfg.work().state(), &snapshot) {
                tracing::debug!("retry of the state file failed: {e}");
            } else {
                lock(&self.inner.pending).state = false;
            }
        }
        let current = lock(&self.inner.outcome).clone();
        if let Some(o) = current.filter(|_| outcome || history) {
            if outcome {
                match outcome::save(&self.outcome_file(), &o) {
                    Ok(()) => lock(&self.inner.pending).outcome = false,
                    Err(e) => tracing::debug!("retry of the outcome failed: {e}"),
                }
            }
            if history && outcome::append_history(&self.history_file(), &o).is_ok() {
                lock(&self.inner.pending).history = false;
            }
        } else {
            let mut p = lock(&self.inner.pending);
            p.outcome = false;
            p.history = false;
        }
        let p = lock(&self.inner.pending);
        !(p.state || p.outcome || p.history)
    }
}
