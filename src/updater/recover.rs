//! Start-up, before the API answers: the crash-loop guard, recovery of an interrupted
//! installation, the state files read back, the decision of `crate::startup` carried out
//! (what `/progress` shows, the outcome recorded, `./tmp/` cleaned, a download or a
//! verification resumed).

use std::time::Duration;

use time::OffsetDateTime;

use super::{lock, panic_text, Updater};
use crate::deploy;
use crate::error;
use crate::guard::{self, Gate};
use crate::lifecycle::Lifecycle;
use crate::outcome::{self, Outcome};
use crate::startup::{self, Found, GuardStep, Next, OutcomeStep, Plan, Recovered};
use crate::state::{self, LoadOutcome};
use crate::workdir::{self, OwnFile};

impl Updater {
    /// Before the API answers: finish or roll back an interrupted installation, read the state
    /// files, and resume what was running. Blocking. Never fails: a crash in here is shown as
    /// `failed` `INTERNAL_ERROR` (and counted by the crash-loop guard).
    pub fn recover(&self) {
        let run = std::panic::AssertUnwindSafe(|| self.recover_inner());
        if let Err(p) = std::panic::catch_unwind(run) {
            let why = panic_text(&p);
            tracing::error!("start-up recovery crashed: {why}");
            let err = error::internal(format!(
                "start-up recovery crashed ({why}); it is tried again at the next start"
            ));
            *lock(&self.inner.life) = Lifecycle::restored_failed(err, None, None, 0);
            self.report_now();
        }
    }

    fn recover_inner(&self) {
        let cfg = &self.inner.cfg;
        let work = cfg.work();
        let counter = work.recovery();
        let journal = work.journal();
        let (recovered, counted) = match guard::gate(guard::load(&counter).as_ref()) {
            Gate::GivenUp {
                attempts,
                last_error,
            } => {
                tracing::error!(
                    "start-up recovery did not complete {attempts} times in a row: not trying \
                     again; {} is kept for inspection (delete {} and restart to retry)",
                    journal.path().display(),
                    counter.path().display()
                );
                (
                    Recovered::NotTried {
                        attempts,
                        last_error,
                    },
                    None,
                )
            }
            Gate::Try { attempt } => {
                let counted =
                    match guard::begin_attempt(&counter, attempt, OffsetDateTime::now_utc()) {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::error!(
                                "cannot count the start-up recovery in {}: {e}; the crash-loop \
                                 guard cannot protect this start",
                                counter.path().display()
                            );
                            None
                        }
                    };
                self.record_committed_success();
                (self.recover_journal(attempt), counted)
            }
        };
        let state = match state::load(&work.state()) {
            LoadOutcome::Loaded(st) => Some(*st),
            LoadOutcome::Missing => None,
            LoadOutcome::Unusable(why) => {
                set_aside(&work.state(), &why);
                None
            }
        };
        let found_outcome = outcome::load(&work.outcome());
        let package_len = state.as_ref().and_then(|s| {
            let len = std::fs::metadata(self.package_path(&s.package_name))
                .ok()?
                .len();
            // docs/API.md 9.5: a package assembled by a delta download is complete.
            Some(crate::delta::effective_len(&work, &s.spec(), len))
        });
        let plan = startup::decide(&Found {
            recovered,
            state: state.as_ref(),
            outcome: found_outcome.as_ref(),
            package_len,
            journal: journal.path(),
            counter: counter.path(),
        });
        self.carry_out(plan, found_outcome, counted.as_ref(), &counter);
    }

    /// `deploy::recover`, a panic in it counted as a failure.
    fn recover_journal(&self, attempt: u32) -> Recovered {
        let cfg = &self.inner.cfg;
        let backups = cfg.work().backups();
        let stop = Duration::from_secs(cfg.stop_timeout_s);
        let roots = &cfg.allowed_roots;
        let run = std::panic::AssertUnwindSafe(|| deploy::recover(&backups, roots, stop));
        match std::panic::catch_unwind(run) {
            Ok(Ok(r)) => Recovered::Done(r),
            Ok(Err(e)) => {
                tracing::error!("recovery of an interrupted installation failed: {e}");
                Recovered::Failed { error: e, attempt }
            }
            Err(p) => {
                let e = error::internal(format!(
                    "recovery of an interrupted installation crashed: {}",
                    panic_text(&p)
                ));
                tracing::error!("{e}");
                Recovered::Failed { error: e, attempt }
            }
        }
    }

    /// A committed journal means the installation completed: its success is recorded before
    /// recovery removes the journal, so a power cut in between cannot turn it into a failure.
    fn record_committed_success(&self) {
        let Ok(Some(j)) = workdir::peek_journal(&self.inner.cfg.work()) else {
            return;
        };
        let (Some(version), Some("committed")) = (j.version.as_deref(), j.phase.as_deref()) else {
            return;
        };
        let life = Lifecycle::restored_success(version);
        let Some(mut o) = Outcome::of(&life, OffsetDateTime::now_utc()) else {
            return;
        };
        if let LoadOutcome::Loaded(st) = state::load(&self.inner.cfg.work().state()) {
            if st.version == version {
                o.package_name = Some(st.package_name.clone());
                (o.package_md5, o.package_checksum) = st.checksum().split_md5();
                o.install_id = st.install_id;
            }
        }
        // Already on record (and not yet delivered): keep it as it is.
        let current = outcome::peek(&self.outcome_file()).ok().flatten();
        if current
            .is_some_and(|c| c.describes(&life) && !c.delivered && c.install_id == o.install_id)
        {
            return;
        }
        let _order = lock(&self.inner.persist);
        if let Err(e) = self.write_outcome(&o, true) {
            tracing::error!("{e}");
        }
    }

    fn carry_out(
        &self,
        plan: Plan,
        found_outcome: Option<Outcome>,
        counted: Option<&guard::Attempts>,
        counter: &OwnFile,
    ) {
        if plan.touch_tmp {
            self.remove_strays(plan.keep_package.as_deref());
        }
        {
            let _order = lock(&self.inner.persist);
            match plan.outcome {
                OutcomeStep::Keep => *lock(&self.inner.outcome) = found_outcome,
                OutcomeStep::Record => {
                    if let Some(o) = Outcome::of(&plan.life, OffsetDateTime::now_utc()) {
                        // A failed write is retried; the outcome is shown all the same.
                        let _ = self.write_outcome(&o, false);
                    }
                }
                OutcomeStep::None => *lock(&self.inner.outcome) = None,
            }
            if plan.touch_tmp {
                if let Err(e) = self.write_state(&plan.life) {
                    tracing::error!("{e}");
                }
            }
            *lock(&self.inner.life) = plan.life;
        }
        match (&plan.guard, counted) {
            (GuardStep::Reset, _) => {
                if let Err(e) = guard::reset(counter) {
                    tracing::error!("cannot reset {}: {e}", counter.path().display());
                }
            }
            (GuardStep::Failed(e), Some(a)) => {
                if let Err(w) = guard::record_failure(counter, a, e) {
                    tracing::error!("cannot write {}: {w}", counter.path().display());
                }
            }
            _ => {}
        }
        let status = self.status();
        tracing::info!("starting in stage {}", status.stage);
        // What a restart found (an outcome not yet delivered, a resumed download) is
        // reported: device-api may have missed it. An outcome device-api has answered with
        // HTTP 200 is not sent again at every start, nor is an idle start (no stage change).
        if plan.report {
            let shown = lock(&self.inner.outcome)
                .clone()
                .filter(|o| o.describes(&lock(&self.inner.life)));
            match shown {
                Some(o) if o.delivered => tracing::info!(
                    "the {} of version {} was reported to device-api before; not sent again",
                    o.stage.as_str(),
                    o.version
                ),
                Some(o) => self.report_outcome(&o),
                None => self.report_now(),
            }
        }
        match plan.next {
            Next::Nothing => {}
            Next::Download(s, from, v) => {
                tracing::info!("resuming the download of {} at byte {from}", s.package_name);
                self.spawn_job("download", move |u| u.run_download(s, from, v));
            }
            Next::Verify(s) => self.spawn_job("verify", move |u| u.run_verify(s)),
        }
    }

    /// Remove from `./tmp/` what no state refers to (docs/API.md section 8.5).
    fn remove_strays(&self, keep_package: Option<&str>) {
        let tmp = self.inner.cfg.work().tmp();
        let entries = match std::fs::read_dir(&tmp) {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", tmp.display());
                return;
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            // A name that is not UTF-8 is none of the updater's.
            let text = name.to_str().unwrap_or("\u{fffd}");
            if !startup::is_stray(text, keep_package) {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let res = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match res {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(
                        "removed {} (left behind, no state refers to it)",
                        path.display()
                    );
                }
                Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
            }
        }
        if removed > 0 {
            if let Err(e) = crate::fsutil::fsync_dir(&tmp) {
                tracing::warn!("cannot sync {}: {e}", tmp.display());
            }
        }
    }
}

/// Move an unusable file of the updater's aside, with a warning; never blocks start-up.
fn set_aside(file: &OwnFile, why: &str) {
    let path = file.path();
    if std::fs::symlink_metadata(path).is_err() {
        tracing::warn!("ignoring {}: {why}; starting fresh", path.display());
        return;
    }
    match file.set_aside() {
        Ok(aside) => tracing::warn!(
            "ignoring {}: {why}; set aside as {}, starting fresh",
            path.display(),
            aside.display()
        ),
        Err(e) => {
            tracing::warn!(
                "ignoring {}: {why}; cannot set it aside ({e}), removing it",
                path.display()
            );
            let _ = crate::fsutil::remove_durable(path);
        }
    }
}
