//! The orchestrator: owns the lifecycle, turns API commands into jobs, persists the state file
//! and the outcome, queues callbacks. One job (download, verification or installation) runs at
//! a time, on a thread of its own, so the API's runtime only ever takes a short lock to answer.
//!
//! The lifecycle changes only through its named transitions (`crate::lifecycle::Lifecycle`).
//! How changes reach the disk is in `record` (a stage change is written before it becomes
//! visible; an outcome is written before it is shown or reported); start-up is in `recover`.

mod cancel;
mod delta;
mod jobs;
mod record;
mod recover;
mod takeover;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::checksum::{Checksum, Hasher};
use crate::config::Config;
use crate::deploy::{self, InstallEvent, InstallOptions, InstallOutcome};
use crate::download::{self, DownloadOutcome, DownloadParams, DownloadSink};
use crate::error::{self, ErrorCode, OtaError};
use crate::fsutil;
use crate::lifecycle::{
    report_step, DownloadDecision, Lifecycle, PackageSpec, Status, UpdateDecision, Validator,
};
use crate::outcome::Outcome;
use crate::report::{Report, Reporter, Sink};
use crate::shutdown::Shutdown;

pub(crate) use crate::sync::lock;
pub use cancel::Cancelled;
use jobs::JobSlot;
use record::Pending;

/// Room kept free on the download filesystem beyond the package itself.
const DISK_MARGIN: u64 = 1 << 20;

#[derive(Clone)]
pub struct Updater {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    life: Mutex<Lifecycle>,
    /// The outcome last recorded (what `/progress` shows while it is `success`/`failed`).
    outcome: Mutex<Option<Outcome>>,
    /// Orders the writers of the state file and the outcome.
    persist: Mutex<()>,
    /// Writes that failed and are retried (see `record`).
    pending: Mutex<Pending>,
    /// Who hears of every report: device-api's reporter first, then the others.
    sinks: Vec<Arc<dyn Sink>>,
    tls: Arc<rustls::ClientConfig>,
    shutdown: Shutdown,
    /// The running job (see `jobs`).
    job: Mutex<JobSlot>,
    /// The last 5 % download step reported.
    last_step: Mutex<Option<u8>>,
}

/// What a failure does to the package file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    /// The partial (or complete) file stays, for a resume.
    Nothing,
    /// The file was deleted.
    File,
}

/// Whether `actual` is the MD5 `/download` announced.
fn md5_matches(spec: &PackageSpec, actual: &Checksum) -> bool {
    spec.package_md5 == *actual
}

impl Updater {
    /// The updater reporting to device-api through `reporter`.
    pub fn new(
        cfg: Config,
        tls: Arc<rustls::ClientConfig>,
        reporter: Arc<Reporter>,
        shutdown: Shutdown,
    ) -> Updater {
        Updater::with_sinks(cfg, tls, reporter, Vec::new(), shutdown)
    }

    /// [`Updater::new`], with more consumers of the reports than device-api's.
    pub fn with_sinks(
        cfg: Config,
        tls: Arc<rustls::ClientConfig>,
        reporter: Arc<Reporter>,
        others: Vec<Arc<dyn Sink>>,
        shutdown: Shutdown,
    ) -> Updater {
        let mut sinks: Vec<Arc<dyn Sink>> = vec![reporter.clone()];
        sinks.extend(others);
        let u = Updater {
            inner: Arc::new(Inner {
                cfg,
                life: Mutex::new(Lifecycle::new()),
                outcome: Mutex::new(None),
                persist: Mutex::new(()),
                pending: Mutex::new(Pending::default()),
                sinks,
                tls,
                shutdown,
                job: Mutex::new(JobSlot::default()),
                last_step: Mutex::new(None),
            }),
        };
        let weak = Arc::downgrade(&u.inner);
        reporter.on_outcome_delivered(Arc::new(move |id| {
            if let Some(inner) = weak.upgrade() {
                Updater { inner }.outcome_delivered(id);
            }
        }));
        u
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// A consistent snapshot for `/progress`.
    pub fn status(&self) -> Status {
        lock(&self.inner.life).status()
    }

    fn package_path(&self, name: &str) -> PathBuf {
        self.inner.cfg.work().package(name)
    }

    /// Hand `r` to every sink.
    fn publish(&self, r: &Report) {
        for sink in &self.inner.sinks {
            sink.publish(r);
        }
    }

    /// Queue a callback with the current status.
    fn report_now(&self) {
        let s = self.status();
        self.publish(&Report::from(&s));
    }

    /// Record a failure: stage `failed` with `err`, written (state file, outcome), then shown
    /// and reported. A write that fails is retried later; the failure is shown all the same.
    fn fail(&self, err: OtaError, discard: Discard) {
        tracing::error!("{err}");
        let res = self.conclude(|l| match discard {
            Discard::Nothing => l.failed(err),
            Discard::File => l.failed_file_deleted(err),
        });
        if let Err(e) = res {
            tracing::error!("{e}");
        }
    }

    // ---------------------------------------------------------------- commands

    /// `POST /download`, validated. Answers at once; the download runs on the job thread.
    pub fn request_download(&self, spec: PackageSpec) -> Result<&'static str, OtaError> {
        let mut l = lock(&self.inner.life);
        let resume_from = match l.decide_download(&spec)? {
            DownloadDecision::Join => return Ok("downloading"),
            DownloadDecision::AlreadyVerified => return Ok("toInstall"),
            DownloadDecision::Start { resume_from } => resume_from,
        };
        // A different package's file is discarded (its bytes count as free space).
        let discard = l
            .package()
            .filter(|old| !old.same_package(&spec) || old.package_name != spec.package_name)
            .map(|old| self.package_path(&old.package_name));
        let freed = discard
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let validator = if resume_from > 0 {
            l.validator().clone()
        } else {
            Validator::default()
        };
        let need = spec.package_size - resume_from + DISK_MARGIN;
        let tmp = self.inner.cfg.work().tmp();
        let avail = fsutil::available_bytes(&tmp)
            .map_err(|e| error::internal(format!("cannot stat {}: {e}", tmp.display())))?;
        l.begin_download(spec.clone(), resume_from, validator.clone())?;
        *lock(&self.inner.last_step) = None;
        drop(l);
        if avail.saturating_add(freed) < need {
            let err = error::disk_full(format!(
                "{} bytes needed for {} but only {} free in {}",
                need,
                spec.package_name,
                avail.saturating_add(freed),
                tmp.display()
            ));
            let _ = std::fs::remove_file(self.package_path(&spec.package_name));
            self.fail(err.clone(), Discard::File);
            return Err(err);
        }
        tracing::info!(
            "download of {} {} accepted ({} bytes, resuming at {resume_from})",
            spec.package_name,
            spec.version,
            spec.package_size
        );
        self.spawn_job("download", move |u| {
            if let Some(p) = discard {
                if let Err(e) = fsutil::remove_durable(&p) {
                    tracing::warn!("cannot remove old package {}: {e}", p.display());
                }
            }
            if let Err(e) = u.persist() {
                u.fail(e, Discard::Nothing);
                return;
            }
            u.run_download(spec, resume_from, validator);
        });
        Ok("downloading")
    }

    /// `POST /update`, validated.
    pub fn request_update(&self, version: &str) -> Result<&'static str, OtaError> {
        let mut l = lock(&self.inner.life);
        let now = OffsetDateTime::now_utc();
        match l.decide_update(version, now, self.inner.cfg.trust_window_hours)? {
            UpdateDecision::Install => {
                let id = u64::try_from(now.unix_timestamp_nanos()).unwrap_or(0);
                l.begin_install(id)?;
                drop(l);
                tracing::info!("installation of {version} accepted");
                self.spawn_job("install", |u| {
                    // Nothing is touched unless `installing` is on disk: a restart must know.
                    if let Err(e) = u.persist() {
                        u.fail(e, Discard::Nothing);
                        return;
                    }
                    u.report_now();
                    u.run_install();
                });
                Ok("installing")
            }
            UpdateDecision::Expired(err) => {
                let name = l.package().map(|p| p.package_name.clone());
                drop(l);
                // The contract deletes package and state file: nothing of it is kept.
                if let Some(n) = name {
                    let _ = fsutil::remove_durable(&self.package_path(&n));
                }
                tracing::error!("{err}");
                if let Err(e) = self.conclude(|l| l.expired(err.clone())) {
                    tracing::error!("{e}");
                }
                Err(err)
            }
        }
    }

    // ---------------------------------------------------------------- jobs

    fn run_download(&self, spec: PackageSpec, mut resume_from: u64, mut validator: Validator) {
        let path = self.package_path(&spec.package_name);
        self.report_now();
        let stop = self.job_stop();
        // docs/API.md 9.5: only the changed entries, when a delta applies.
        let delta = crate::delta::DeltaParams {
            spec: &spec,
            path: &path,
            cfg: &self.inner.cfg,
            tls: self.inner.tls.clone(),
            shutdown: &stop,
            resume_from,
        };
        let step = crate::delta::run(&delta, self);
        // A checkpoint that could not be written ends the download (see `checkpoint`).
        if let Some(err) = self.job_error() {
            return self.fail(err, Discard::Nothing);
        }
        match step {
            Ok(crate::delta::Step::NotApplicable) => {}
            Ok(crate::delta::Step::Complete) => return self.finish_delta(&spec),
            Ok(crate::delta::Step::Interrupted) => return,
            Ok(crate::delta::Step::Whole(_)) => {
                if let Err(e) = lock(&self.inner.life).restart_download() {
                    return self.fail(e.into(), Discard::Nothing);
                }
                if let Err(e) = self.persist() {
                    return self.fail(e, Discard::Nothing);
                }
                *lock(&self.inner.last_step) = None;
                (resume_from, validator) = (0, Validator::default());
            }
            Err(err) if err.keeps_partial() => {
                return self.fail(OtaError::from(err), Discard::Nothing)
            }
            // A full disk (or another local failure): nothing of the delta is kept.
            Err(err) => {
                crate::delta::forget(&self.inner.cfg.work());
                let _ = fsutil::remove_durable(&path);
                return self.fail(OtaError::from(err), Discard::File);
            }
        }
        let params = DownloadParams {
            spec: &spec,
            path: &path,
            resume_from,
            validator,
            hasher: Hasher::new(spec.package_md5.algorithm),
            max_bytes_per_s: self.inner.cfg.max_download_bytes_per_s,
            tls: self.inner.tls.clone(),
            allow_http: self.inner.cfg.allow_http,
            shutdown: &stop,
            authorization: self
                .inner
                .cfg
                .fleet
                .as_ref()
                .and_then(|f| f.authorization_for(&spec.package_url)),
        };
        let result = download::download(params, self);
        // A checkpoint that could not be written ends the download (see `checkpoint`).
        if let Some(err) = self.job_ended() {
            self.fail(err, Discard::Nothing);
            return;
        }
        match result {
            Ok(DownloadOutcome::Complete {
                checksum,
                unvalidated_prefix: true,
            }) if !md5_matches(&spec, &checksum) => {
                tracing::warn!(
                    "{} resumed without ETag/Last-Modified does not match its MD5 (the file \
                     changed on the server since the partial download): downloading it whole",
                    spec.package_name
                );
                // The state file stops vouching for the old bytes before any new one lands.
                if let Err(e) = lock(&self.inner.life).restart_download() {
                    self.fail(e.into(), Discard::Nothing);
                    return;
                }
                if let Err(e) = self.persist() {
                    self.fail(e, Discard::Nothing);
                    return;
                }
                self.run_download(spec, 0, Validator::default());
            }
            Ok(DownloadOutcome::Complete { checksum, .. }) => {
                self.finish_verification(&spec, &checksum)
            }
            Ok(DownloadOutcome::Interrupted { bytes }) => {
                tracing::info!(
                    "download stopped by shutdown at byte {bytes}; it resumes at the next start"
                );
            }
            Err(err) => {
                let keep_partial = err.keeps_partial();
                let err = OtaError::from(err);
                if !keep_partial {
                    let _ = fsutil::remove_durable(&path);
                }
                let discard = if keep_partial {
                    Discard::Nothing
                } else {
                    Discard::File
                };
                self.fail(err, discard);
            }
        }
    }

    /// The file is complete and `md5` is its digest: `verifying` -> `toInstall` or `failed`.
    fn finish_verification(&self, spec: &PackageSpec, md5: &Checksum) {
        if let Err(e) = self.advance(|l| l.begin_verify()) {
            self.fail(e, Discard::Nothing);
            return;
        }
        self.conclude_verification(spec, md5);
    }

    /// In `verifying` with the file's digest: `toInstall`, or `failed` MD5_MISMATCH.
    fn conclude_verification(&self, spec: &PackageSpec, md5: &Checksum) {
        if md5_matches(spec, md5) {
            tracing::info!(
                "{} verified ({} {md5})",
                spec.package_name,
                md5.algorithm.name()
            );
            if let Err(e) = self.advance(|l| l.verified(OffsetDateTime::now_utc())) {
                self.fail(e, Discard::Nothing);
            }
        } else {
            self.reject_mismatch(spec, md5, "");
        }
    }

    /// The package's digest is wrong: delete it and fail with MD5_MISMATCH (`how` says when).
    fn reject_mismatch(&self, spec: &PackageSpec, md5: &Checksum, how: &str) {
        let _ = fsutil::remove_durable(&self.package_path(&spec.package_name));
        self.fail(
            error::md5_mismatch(format!(
                "{}{how}: expected {}, got {md5}; the file was deleted",
                spec.package_name, spec.package_md5
            )),
            Discard::File,
        );
    }

    /// Hash a complete file left by a previous run (stage `verifying` at start).
    fn run_verify(&self, spec: PackageSpec) {
        if let Some(intact) = self.delta_package_intact(&spec) {
            if intact {
                if let Err(e) = self.advance(|l| l.verified(OffsetDateTime::now_utc())) {
                    self.fail(e, Discard::Nothing);
                }
            }
            return;
        }
        let path = self.package_path(&spec.package_name);
        let res = download::hash_file(
            &path,
            spec.package_md5.algorithm,
            Some(&self.inner.shutdown),
            &mut |n| {
                lock(&self.inner.life).verify_progress(n);
            },
        );
        match res {
            Ok(Some(md5)) => self.conclude_verification(&spec, &md5),
            Ok(None) => {}
            Err(e) => self.fail(
                error::internal(format!("cannot read {}: {e}", path.display())),
                Discard::File,
            ),
        }
    }

    fn run_install(&self) {
        let Some(spec) = lock(&self.inner.life).package().cloned() else {
            self.fail(error::internal("no package to install"), Discard::Nothing);
            return;
        };
        let path = self.package_path(&spec.package_name);
        // The file may have changed since it was verified.
        let delta = self.delta_package_intact(&spec);
        match download::hash_file(&path, spec.package_md5.algorithm, None, &mut |_| {}) {
            _ if delta == Some(false) => return,
            _ if delta == Some(true) => {}
            Ok(Some(md5)) if md5_matches(&spec, &md5) => {}
            Ok(Some(md5)) => {
                self.reject_mismatch(&spec, &md5, " changed since verification");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                self.fail(
                    error::md5_mismatch(format!(
                        "cannot read {} to check it again: {e}",
                        path.display()
                    )),
                    Discard::File,
                );
                return;
            }
        }
        let cfg = &self.inner.cfg;
        let installed = crate::outcome::installed(&self.installed_file());
        if let Err(e) = crate::package::check_downgrade(
            installed.as_deref(),
            &spec.version,
            cfg.allow_downgrade,
        ) {
            let _ = fsutil::remove_durable(&path);
            self.fail(OtaError::from(e), Discard::File);
            return;
        }
        self.start_ota_gui();

        let backups = cfg.work().backups();
        let opts = InstallOptions {
            allowed_roots: &cfg.allowed_roots,
            signatures: cfg.signatures(),
            backups_dir: &backups,
            stop_timeout: Duration::from_secs(cfg.stop_timeout_s),
            settle: Duration::from_secs(cfg.settle_s),
            cancel: self.inner.shutdown.flag(),
            listen: cfg.listen,
        };
        let mut on_event = |ev: InstallEvent<'_>| self.on_install_event(ev);
        match deploy::install(&path, &spec.version, &opts, &mut on_event) {
            Ok(InstallOutcome::Done) if self.hand_over() => {}
            Ok(InstallOutcome::Done) => {
                tracing::info!("update to {} completed", spec.version);
                match self.conclude(|l| l.succeeded()) {
                    Ok(()) => {
                        // The outcome is durable: now the journal may go.
                        deploy::finish(&backups);
                        crate::delta::installation_succeeded(
                            &cfg.work(),
                            &path,
                            &spec.version,
                            cfg,
                        );
                        if let Err(e) = fsutil::remove_durable(&path) {
                            tracing::warn!("cannot remove {}: {e}", path.display());
                        }
                    }
                    Err(e) => self.fail(
                        error::internal(format!(
                            "version {} is installed but its outcome cannot be recorded ({}); \
                             the committed journal is kept, so the next start reports the \
                             success",
                            spec.version, e.detail
                        )),
                        Discard::Nothing,
                    ),
                }
            }
            Ok(InstallOutcome::Interrupted) => {
                tracing::warn!(
                    "installation interrupted by shutdown; whatever it changed is rolled back at the next start"
                );
            }
            Err(err) => {
                let unusable = matches!(
                    err.code,
                    ErrorCode::InvalidManifest | ErrorCode::InvalidPackage
                );
                if unusable {
                    let _ = fsutil::remove_durable(&path);
                }
                let discard = if unusable {
                    Discard::File
                } else {
                    Discard::Nothing
                };
                self.fail(err, discard);
            }
        }
    }

    fn on_install_event(&self, ev: InstallEvent<'_>) {
        let mut stage_changed = false;
        let res = {
            let mut l = lock(&self.inner.life);
            match ev {
                InstallEvent::Stopping { module } => {
                    tracing::info!("stopping processes of module {module}");
                    l.stopping(module)
                }
                InstallEvent::Deploying {
                    module,
                    index,
                    total,
                } => {
                    tracing::info!("deploying module {module} ({index}/{total})");
                    l.deploying(module, index, total)
                }
                InstallEvent::Restarting { module } => {
                    tracing::info!("restarting module {module}");
                    l.restarting(module).map(|changed| stage_changed = changed)
                }
                InstallEvent::Checking { modules } => {
                    tracing::info!("checking the health of {modules}");
                    l.checking(modules).map(|changed| stage_changed = changed)
                }
                InstallEvent::RollingBack { reason } => {
                    tracing::warn!("rolling back: {reason}");
                    l.rolling_back(reason)
                }
            }
        };
        if let Err(e) = res {
            tracing::error!("{e}");
        }
        if stage_changed {
            // `rebooting` on disk changes nothing a restart decides (the journal does), so a
            // failed write is retried later and does not stop the installation.
            if let Err(e) = self.persist() {
                tracing::error!("{e}");
            }
        }
        if matches!(ev, InstallEvent::Stopping { .. }) {
            return;
        }
        self.report_now();
    }

    /// Start ota-gui if it exists and is not running; never let it affect the update.
    fn start_ota_gui(&self) {
        let gui = &self.inner.cfg.ota_gui_path;
        if !gui.is_file() {
            tracing::debug!("ota-gui {} not present", gui.display());
            return;
        }
        let name = gui
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match crate::process::is_running(&name) {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                tracing::warn!("cannot tell whether ota-gui runs, not starting it: {e}");
                return;
            }
        }
        match crate::process::spawn_detached(
            &[gui.as_os_str()],
            &crate::process::ChildEnv::tool(),
            None,
        ) {
            Ok(started) => tracing::info!("started ota-gui ({started})"),
            Err(e) => tracing::warn!("cannot start ota-gui: {}", OtaError::from(e)),
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

impl DownloadSink for Updater {
    /// Called for every chunk. A chunk may cross several 5 % steps at once (the HTTP stack
    /// hands over up to a few hundred KiB): one report per step crossed, each carrying its
    /// step value, so device-api sees 0, 5, 10, ... 100 as the contract says.
    fn progress(&self, bytes: u64) {
        let (from, to, status) = {
            let mut l = lock(&self.inner.life);
            l.download_progress(bytes);
            let step = report_step(l.progress());
            let mut last = lock(&self.inner.last_step);
            let from = match *last {
                Some(prev) if prev == step => return,
                // Crossed forward: every step after the last one reported.
                Some(prev) if prev < step => prev + 5,
                // First report of this download, or it started over (server sent 200).
                _ => step,
            };
            *last = Some(step);
            (from, step, l.status())
        };
        for p in (from..=to).step_by(5) {
            let mut r = Report::from(&status);
            r.progress = p;
            self.publish(&r);
        }
    }

    /// Called from the checkpoint thread, possibly while newer chunks are already counted in
    /// `bytes_done`: only the durable count moves, so `/progress` never goes backwards. A
    /// state file that cannot be written ends the download with INTERNAL_ERROR (a resume after
    /// a restart would start from a stale position).
    fn checkpoint(&self, bytes: u64, validator: &Validator) {
        lock(&self.inner.life).checkpointed(bytes, validator.clone());
        if let Err(e) = self.persist() {
            self.stop_job(e);
        }
    }
}

#[cfg(test)]
mod tests;
