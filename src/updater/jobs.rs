//! Job control: one job (a download, a verification or an installation) at a time, on a
//! thread of its own, with a stop token of its own derived from the daemon's (SIGTERM stops
//! it; so does the updater itself when the job's state cannot be written, without touching
//! the daemon's token). A job that panics never leaves the stage stuck.

use std::thread::JoinHandle;
use std::time::Duration;

use super::{lock, panic_text, Discard, Updater};
use crate::deploy;
use crate::error::{self, OtaError};
use crate::lifecycle::Stage;
use crate::shutdown::Shutdown;

/// The running job.
#[derive(Default)]
pub(super) struct JobSlot {
    handle: Option<JoinHandle<()>>,
    /// Its stop token while it runs.
    stop: Option<Shutdown>,
    /// Why the updater stopped it, when it did (not SIGTERM).
    error: Option<OtaError>,
}

impl Updater {
    pub(super) fn spawn_job(&self, name: &str, f: impl FnOnce(Updater) + Send + 'static) {
        let me = self.clone();
        let job_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let u = me.clone();
                let run = std::panic::AssertUnwindSafe(move || f(u));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    me.after_panic(&job_name, panic_text(&panic));
                }
            });
        match handle {
            Ok(h) => {
                // The previous job has finished its work (the lifecycle allows one at a time).
                lock(&self.inner.job).handle = Some(h);
            }
            Err(e) => self.fail(
                error::internal(format!("cannot start {name} job: {e}")),
                Discard::Nothing,
            ),
        }
    }

    /// A job died of a bug: never leave the stage stuck. An installation is rolled back from
    /// its journal at once, as a restart would.
    pub(super) fn after_panic(&self, job: &str, why: String) {
        tracing::error!("{job} job crashed: {why}");
        let stage = lock(&self.inner.life).stage();
        let err = if matches!(stage, Stage::Installing | Stage::Rebooting) {
            let cfg = &self.inner.cfg;
            match deploy::recover(
                &cfg.work().backups(),
                &cfg.allowed_roots,
                Duration::from_secs(cfg.stop_timeout_s),
            ) {
                Ok(_) => error::deployment_failed(format!(
                    "internal error during installation ({why}); rolled back"
                )),
                Err(e) => e,
            }
        } else {
            error::internal(format!("{job} job crashed: {why}"))
        };
        if stage.is_busy() {
            self.fail(err, Discard::Nothing);
        }
    }

    /// Wait for the running job to reach a safe point (after SIGTERM).
    pub fn join_job(&self) {
        let h = lock(&self.inner.job).handle.take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// A stop token for the job about to run: set by SIGTERM, or by [`Updater::stop_job`].
    pub(super) fn job_stop(&self) -> Shutdown {
        let stop = self.inner.shutdown.child();
        let mut slot = lock(&self.inner.job);
        slot.error = None;
        slot.stop = Some(stop.clone());
        stop
    }

    /// Stop the running job because of `err` (the first reason is kept).
    pub(super) fn stop_job(&self, err: OtaError) {
        let mut slot = lock(&self.inner.job);
        if slot.error.is_none() {
            slot.error = Some(err);
        }
        if let Some(stop) = slot.stop.as_ref() {
            stop.trigger();
        }
    }

    /// The job's work is done: its token is dropped; `Some` when the updater stopped it.
    pub(super) fn job_ended(&self) -> Option<OtaError> {
        let mut slot = lock(&self.inner.job);
        slot.stop = None;
        slot.error.take()
    }

    /// Why the updater stopped the running job, if it did; the job goes on holding its token.
    pub(super) fn job_error(&self) -> Option<OtaError> {
        lock(&self.inner.job).error.take()
    }
}
