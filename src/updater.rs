//! The orchestrator: owns the lifecycle, turns API commands into jobs, persists the state file,
//! queues callbacks. One job (download, verification or installation) runs at a time, on a
//! thread of its own, so the API's runtime only ever takes a short lock to answer.
//!
//! Persistence: the lifecycle is snapshotted under its lock, then written outside it while a
//! second lock (`persist`) orders writers, so `/progress` never waits for an fsync.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::Config;
use crate::deploy::{self, InstallEvent, InstallOptions, InstallOutcome, Recovery};
use crate::download::{self, DownloadOutcome, DownloadParams, DownloadSink};
use crate::error::{self, ErrorCode, OtaError};
use crate::fsutil;
use crate::lifecycle::{
    self, report_step, DownloadDecision, Lifecycle, PackageSpec, Stage, Status, UpdateDecision,
    Validator,
};
use crate::report::{Report, Reporter};
use crate::shutdown::Shutdown;
use crate::state::{self, LoadOutcome};

/// Room kept free on the download filesystem beyond the package itself.
const DISK_MARGIN: u64 = 1 << 20;

#[derive(Clone)]
pub struct Updater {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    life: Mutex<Lifecycle>,
    persist: Mutex<()>,
    reporter: Arc<Reporter>,
    tls: Arc<rustls::ClientConfig>,
    shutdown: Shutdown,
    job: Mutex<Option<JoinHandle<()>>>,
    /// The last 5 % download step reported.
    last_step: Mutex<Option<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Updater {
    pub fn new(
        cfg: Config,
        tls: Arc<rustls::ClientConfig>,
        reporter: Arc<Reporter>,
        shutdown: Shutdown,
    ) -> Updater {
        Updater {
            inner: Arc::new(Inner {
                cfg,
                life: Mutex::new(Lifecycle::new()),
                persist: Mutex::new(()),
                reporter,
                tls,
                shutdown,
                job: Mutex::new(None),
                last_step: Mutex::new(None),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// A consistent snapshot for `/progress`.
    pub fn status(&self) -> Status {
        lock(&self.inner.life).status()
    }

    fn package_path(&self, name: &str) -> PathBuf {
        self.inner.cfg.tmp_dir().join(name)
    }

    /// Queue a callback with the current status.
    fn report_now(&self) {
        let s = self.status();
        self.inner.reporter.push(Report::from(&s));
    }

    /// Write the state file to match the lifecycle (or delete it). Errors are logged: the
    /// in-memory state stays right, and the next write retries.
    fn persist(&self) {
        let _order = lock(&self.inner.persist);
        let snapshot = lock(&self.inner.life).clone();
        if let Err(e) = state::save(&self.inner.cfg.state_path(), &snapshot) {
            tracing::error!(
                "cannot write {}: {e}",
                self.inner.cfg.state_path().display()
            );
        }
    }

    /// Change the lifecycle under its lock, then persist and report.
    fn change(&self, f: impl FnOnce(&mut Lifecycle)) {
        f(&mut lock(&self.inner.life));
        self.persist();
        self.report_now();
    }

    /// Record a failure: stage `failed` with `err`, persisted, reported, logged.
    fn fail(&self, err: OtaError, f: impl FnOnce(&mut Lifecycle)) {
        tracing::error!("{err}");
        self.change(|l| {
            f(l);
            if let Err(e) = l.fail(err.clone()) {
                tracing::error!("{e}");
            }
        });
    }

    fn spawn_job(&self, name: &str, f: impl FnOnce(Updater) + Send + 'static) {
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
                *lock(&self.inner.job) = Some(h);
            }
            Err(e) => self.fail(
                error::internal(format!("cannot start {name} job: {e}")),
                |_| {},
            ),
        }
    }

    /// A job died of a bug: never leave the stage stuck. An installation is rolled back from
    /// its journal at once, as a restart would.
    fn after_panic(&self, job: &str, why: String) {
        tracing::error!("{job} job crashed: {why}");
        let stage = lock(&self.inner.life).stage();
        let err = if matches!(stage, Stage::Installing | Stage::Rebooting) {
            let cfg = &self.inner.cfg;
            match deploy::recover(&cfg.backups_dir(), Duration::from_secs(cfg.stop_timeout_s)) {
                Ok(_) => error::deployment_failed(format!(
                    "internal error during installation ({why}); rolled back"
                )),
                Err(e) => e,
            }
        } else {
            error::internal(format!("{job} job crashed: {why}"))
        };
        if stage.is_busy() {
            self.fail(err, |_| {});
        }
    }

    /// Wait for the running job to reach a safe point (after SIGTERM).
    pub fn join_job(&self) {
        let h = lock(&self.inner.job).take();
        if let Some(h) = h {
            let _ = h.join();
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
            .package
            .as_ref()
            .filter(|old| !old.same_package(&spec) || old.package_name != spec.package_name)
            .map(|old| self.package_path(&old.package_name));
        let freed = discard
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let validator = if resume_from > 0 {
            l.validator.clone()
        } else {
            Validator::default()
        };
        l.transition(Stage::Downloading)?;
        l.package = Some(spec.clone());
        l.bytes_done = resume_from;
        l.bytes_durable = resume_from;
        l.validator = validator.clone();
        l.verified_at = None;
        *lock(&self.inner.last_step) = None;

        let need = spec.package_size - resume_from + DISK_MARGIN;
        let tmp = self.inner.cfg.tmp_dir();
        let avail = fsutil::available_bytes(&tmp)
            .map_err(|e| error::internal(format!("cannot stat {}: {e}", tmp.display())))?;
        if avail.saturating_add(freed) < need {
            let err = error::disk_full(format!(
                "{} bytes needed for {} but only {} free in {}",
                need,
                spec.package_name,
                avail.saturating_add(freed),
                tmp.display()
            ));
            l.bytes_done = 0;
            l.fail(err.clone())?;
            drop(l);
            tracing::error!("{err}");
            let _ = std::fs::remove_file(self.package_path(&spec.package_name));
            self.persist();
            self.report_now();
            return Err(err);
        }
        drop(l);
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
            u.persist();
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
                l.transition(Stage::Installing)?;
                l.note = "Checking package integrity".into();
                drop(l);
                tracing::info!("installation of {version} accepted");
                self.spawn_job("install", |u| {
                    u.persist();
                    u.report_now();
                    u.run_install();
                });
                Ok("installing")
            }
            UpdateDecision::Expired(err) => {
                let name = l.package.as_ref().map(|p| p.package_name.clone());
                // The contract deletes package and state file: nothing of it is kept.
                l.package = None;
                l.bytes_done = 0;
                l.fail(err.clone())?;
                drop(l);
                if let Some(n) = name {
                    let _ = fsutil::remove_durable(&self.package_path(&n));
                }
                tracing::error!("{err}");
                self.persist();
                self.report_now();
                Err(err)
            }
        }
    }

    // ---------------------------------------------------------------- jobs

    fn run_download(&self, spec: PackageSpec, resume_from: u64, validator: Validator) {
        let path = self.package_path(&spec.package_name);
        self.report_now();
        let params = DownloadParams {
            spec: &spec,
            path: &path,
            resume_from,
            validator,
            max_bytes_per_s: self.inner.cfg.max_download_bytes_per_s,
            tls: self.inner.tls.clone(),
            allow_http: self.inner.cfg.allow_http,
            shutdown: &self.inner.shutdown,
        };
        match download::download(params, self) {
            Ok(DownloadOutcome::Complete { md5 }) => self.finish_verification(&spec, &md5),
            Ok(DownloadOutcome::Interrupted { bytes }) => {
                tracing::info!(
                    "download stopped by shutdown at byte {bytes}; it resumes at the next start"
                );
            }
            Err(err) => {
                let keep_partial = err.code == ErrorCode::DownloadFailed;
                if !keep_partial {
                    let _ = fsutil::remove_durable(&path);
                }
                self.fail(err, |l| {
                    if !keep_partial {
                        l.bytes_done = 0;
                    }
                });
            }
        }
    }

    /// The file is complete and `md5` is its digest: `verifying` -> `toInstall` or `failed`.
    fn finish_verification(&self, spec: &PackageSpec, md5: &str) {
        self.change(|l| {
            if let Err(e) = l.transition(Stage::Verifying) {
                tracing::error!("{e}");
            }
            l.bytes_done = spec.package_size;
        });
        self.conclude_verification(spec, md5);
    }

    /// In `verifying` with the file's digest: `toInstall`, or `failed` MD5_MISMATCH.
    fn conclude_verification(&self, spec: &PackageSpec, md5: &str) {
        if md5 == spec.package_md5 {
            tracing::info!("{} verified (md5 {md5})", spec.package_name);
            self.change(|l| {
                if let Err(e) = l.transition(Stage::ToInstall) {
                    tracing::error!("{e}");
                }
                l.verified_at = Some(OffsetDateTime::now_utc());
            });
        } else {
            self.reject_mismatch(spec, md5, "");
        }
    }

    /// The package's digest is wrong: delete it and fail with MD5_MISMATCH (`how` says when).
    fn reject_mismatch(&self, spec: &PackageSpec, md5: &str, how: &str) {
        let _ = fsutil::remove_durable(&self.package_path(&spec.package_name));
        self.fail(
            error::md5_mismatch(format!(
                "{}{how}: expected {}, got {md5}; the file was deleted",
                spec.package_name, spec.package_md5
            )),
            |l| l.bytes_done = 0,
        );
    }

    /// Hash a complete file left by a previous run (stage `verifying` at start).
    fn run_verify(&self, spec: PackageSpec) {
        let path = self.package_path(&spec.package_name);
        let res = download::md5_file(&path, Some(&self.inner.shutdown), &mut |n| {
            lock(&self.inner.life).bytes_done = n;
        });
        match res {
            Ok(Some(md5)) => self.conclude_verification(&spec, &md5),
            Ok(None) => {}
            Err(e) => self.fail(
                error::internal(format!("cannot read {}: {e}", path.display())),
                |l| l.bytes_done = 0,
            ),
        }
    }

    fn run_install(&self) {
        let Some(spec) = lock(&self.inner.life).package.clone() else {
            self.fail(error::internal("no package to install"), |_| {});
            return;
        };
        let path = self.package_path(&spec.package_name);
        // The file may have changed since it was verified.
        match download::md5_file(&path, None, &mut |_| {}) {
            Ok(Some(md5)) if md5 == spec.package_md5 => {}
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
                    |l| l.bytes_done = 0,
                );
                return;
            }
        }
        self.start_ota_gui();

        let cfg = &self.inner.cfg;
        let backups = cfg.backups_dir();
        let opts = InstallOptions {
            allowed_roots: &cfg.allowed_roots,
            backups_dir: &backups,
            stop_timeout: Duration::from_secs(cfg.stop_timeout_s),
            cancel: self.inner.shutdown.flag(),
        };
        let mut on_event = |ev: InstallEvent<'_>| self.on_install_event(ev);
        match deploy::install(&path, &spec.version, &opts, &mut on_event) {
            Ok(InstallOutcome::Done) => {
                tracing::info!("update to {} completed", spec.version);
                self.change(|l| {
                    if l.stage() == Stage::Installing {
                        l.install.done = l.install.total;
                    }
                    if let Err(e) = l.transition(Stage::Success) {
                        tracing::error!("{e}");
                    }
                    l.note = format!("Update to {} completed", spec.version);
                });
                // The outcome is durable (state.json removed): now the journal may go.
                deploy::finish(&backups);
                if let Err(e) = fsutil::remove_durable(&path) {
                    tracing::warn!("cannot remove {}: {e}", path.display());
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
                self.fail(err, |l| {
                    if unusable {
                        l.bytes_done = 0;
                    }
                });
            }
        }
    }

    fn on_install_event(&self, ev: InstallEvent<'_>) {
        match ev {
            InstallEvent::Stopping { module } => {
                tracing::info!("stopping processes of module {module}");
                lock(&self.inner.life).note = format!("Stopping processes of module {module}");
            }
            InstallEvent::Deploying {
                module,
                index,
                total,
            } => {
                tracing::info!("deploying module {module} ({index}/{total})");
                {
                    let mut l = lock(&self.inner.life);
                    l.install.done = index.saturating_sub(1);
                    l.install.total = total;
                    l.note = format!("Deploying module {module} ({index}/{total})");
                }
                // Nothing the state file keeps has changed (still `installing`): report only.
                self.report_now();
            }
            InstallEvent::Restarting { module } => {
                tracing::info!("restarting module {module}");
                let changed = {
                    let mut l = lock(&self.inner.life);
                    l.note = format!("Restarting module {module}");
                    if l.stage() == Stage::Installing {
                        l.install.done = l.install.total;
                        let _ = l.transition(Stage::Rebooting);
                        true
                    } else {
                        false
                    }
                };
                if changed {
                    self.persist();
                }
                self.report_now();
            }
            InstallEvent::RollingBack { reason } => {
                tracing::warn!("rolling back: {reason}");
                lock(&self.inner.life).note = format!("Rolling back: {reason}");
                self.report_now();
            }
        }
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
        match crate::process::spawn_detached(&[gui.as_os_str()]) {
            Ok(started) => tracing::info!("started ota-gui ({started})"),
            Err(e) => tracing::warn!("cannot start ota-gui: {e}"),
        }
    }

    // ---------------------------------------------------------------- start-up

    /// Before the API answers: finish or roll back an interrupted installation, read the state
    /// file, and resume what was running. Blocking.
    pub fn recover(&self) {
        let cfg = &self.inner.cfg;
        let recovery = deploy::recover(&cfg.backups_dir(), Duration::from_secs(cfg.stop_timeout_s));
        let loaded = match state::load(&cfg.state_path()) {
            LoadOutcome::Loaded(st) => Some(st),
            LoadOutcome::Missing => None,
            LoadOutcome::Unusable(why) => {
                tracing::warn!(
                    "ignoring {}: {why}; starting fresh",
                    cfg.state_path().display()
                );
                let _ = fsutil::remove_durable(&cfg.state_path());
                None
            }
        };
        let spec = loaded.as_ref().map(|s| s.spec());
        let stage = loaded
            .as_ref()
            .and_then(|s| s.stage())
            .unwrap_or(Stage::Idle);
        let bytes = loaded.as_ref().map_or(0, |s| s.bytes_downloaded);
        let mut l = Lifecycle::restored(stage, spec.clone(), bytes);
        if let Some(st) = &loaded {
            l.validator = st.validator();
            l.verified_at = st.verified_at.as_deref().and_then(lifecycle::parse_iso8601);
        }
        let file_len = spec
            .as_ref()
            .and_then(|s| std::fs::metadata(self.package_path(&s.package_name)).ok())
            .map(|m| m.len());

        enum Next {
            Nothing,
            Download(PackageSpec, u64, Validator),
            Verify(PackageSpec),
        }
        let mut next = Next::Nothing;
        match recovery {
            Ok(Recovery::RolledBack { version }) => {
                l.restored_failed(error::deployment_failed(format!(
                    "installation of {version} was interrupted (restart or power loss) and has been rolled back"
                )));
            }
            Ok(Recovery::Completed { version }) => {
                tracing::info!("installation of {version} had completed before the restart");
                l = Lifecycle::restored(Stage::Success, spec.clone(), bytes);
                l.note = format!("Update to {version} completed");
                if let Some(s) = &spec {
                    let _ = fsutil::remove_durable(&self.package_path(&s.package_name));
                }
            }
            Err(e) => {
                tracing::error!("recovery of an interrupted installation failed: {e}");
                l.restored_failed(e);
            }
            Ok(Recovery::Nothing) => match (stage, spec) {
                (Stage::Downloading, Some(s)) => {
                    next = Next::Download(s, bytes, l.validator.clone());
                }
                (Stage::Verifying, Some(s)) => {
                    if file_len == Some(s.package_size) {
                        l.bytes_done = 0;
                        next = Next::Verify(s);
                    } else {
                        next = Next::Download(s, bytes, l.validator.clone());
                        l.restored_stage(Stage::Downloading);
                    }
                }
                (Stage::ToInstall, Some(s)) => {
                    if file_len != Some(s.package_size) {
                        tracing::warn!("verified package {} is gone; back to idle", s.package_name);
                        l = Lifecycle::new();
                    } else if l.verified_at.is_none() {
                        l.restored_stage(Stage::Verifying);
                        l.bytes_done = 0;
                        next = Next::Verify(s);
                    }
                }
                (Stage::Installing | Stage::Rebooting, Some(_)) => {
                    l.restored_failed(error::deployment_failed(
                        "installation was interrupted (restart or power loss) before any file was changed",
                    ));
                }
                (Stage::Failed, Some(_)) => {
                    let err = loaded
                        .as_ref()
                        .and_then(|s| s.error.as_deref())
                        .map(OtaError::parse)
                        .unwrap_or_else(|| error::internal("failed before the restart"));
                    l.restored_failed(err);
                }
                (Stage::Success, _) => {}
                _ => l = Lifecycle::new(),
            },
        }
        tracing::info!("starting in stage {}", l.stage());
        let idle = l.stage() == Stage::Idle;
        *lock(&self.inner.life) = l;
        self.persist();
        // What a restart found (an outcome, a resumed download) is news for device-api;
        // an idle start is not a stage change.
        if !idle {
            self.report_now();
        }
        match next {
            Next::Nothing => {}
            Next::Download(s, from, v) => {
                tracing::info!("resuming the download of {} at byte {from}", s.package_name);
                self.spawn_job("download", move |u| u.run_download(s, from, v));
            }
            Next::Verify(s) => self.spawn_job("verify", move |u| u.run_verify(s)),
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
            l.bytes_done = bytes;
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
            self.inner.reporter.push(r);
        }
    }

    /// Called from the checkpoint thread, possibly while newer chunks are already counted in
    /// `bytes_done`: only the durable count moves, so `/progress` never goes backwards.
    fn checkpoint(&self, bytes: u64, validator: &Validator) {
        {
            let mut l = lock(&self.inner.life);
            l.bytes_durable = bytes;
            l.validator = validator.clone();
        }
        self.persist();
    }
}
