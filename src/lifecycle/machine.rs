//! [`Lifecycle`]: the state of the updater, changed only through named transitions.
//!
//! Each transition says which stages it may start from and keeps its own invariants (the
//! error is set exactly in `failed`, the install progress is reset when an installation
//! begins, a download's durable byte count never exceeds what was received...). A transition
//! from a stage it does not accept changes nothing and returns `INTERNAL_ERROR` (a bug in the
//! caller, logged by it). The `restored_*` constructors rebuild a lifecycle at start-up from
//! what was found on disk (see `crate::startup`), outside the transition rules.

use time::OffsetDateTime;

use super::{
    download_percent, iso8601, mb, share_percent, DownloadDecision, InstallProgress, PackageSpec,
    Stage, Status, UpdateDecision, Validator,
};
use crate::error::{self, OtaError};

/// The whole lifecycle state. Its fields are private: only the transitions below change them.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    stage: Stage,
    /// The package of the current (or last) download; also a failed download's partial.
    package: Option<PackageSpec>,
    /// Bytes of the package received (downloading) or hashed (verifying): what is shown.
    bytes_done: u64,
    /// Bytes of the download known to be on disk (fdatasync'd): what the state file may claim.
    bytes_durable: u64,
    validator: Validator,
    verified_at: Option<OffsetDateTime>,
    /// Set exactly when the stage is `failed`.
    error: Option<OtaError>,
    install: InstallProgress,
    /// Free text shown for stages whose message is not derived from numbers.
    note: String,
    /// The progress value kept when the stage became `failed`.
    failed_progress: u8,
    /// The version an outcome restored at start-up is about (its package is no longer known).
    outcome_version: Option<String>,
    /// Tells this installation from any other, also of the same package (set when it begins,
    /// kept in the state file and the outcome).
    install_id: Option<u64>,
    /// Set when start-up recovery is given up (crash-loop guard): `/download` and `/update`
    /// answer this error until an operator clears the guard and restarts the daemon.
    blocked: Option<OtaError>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    /// `idle`: nothing known.
    pub fn new() -> Lifecycle {
        Lifecycle {
            stage: Stage::Idle,
            package: None,
            bytes_done: 0,
            bytes_durable: 0,
            validator: Validator::default(),
            verified_at: None,
            error: None,
            install: InstallProgress::default(),
            note: String::new(),
            failed_progress: 0,
            outcome_version: None,
            install_id: None,
            blocked: None,
        }
    }

    // ------------------------------------------------------------ reading

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn package(&self) -> Option<&PackageSpec> {
        self.package.as_ref()
    }

    pub fn bytes_done(&self) -> u64 {
        self.bytes_done
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn verified_at(&self) -> Option<OffsetDateTime> {
        self.verified_at
    }

    /// The error of the `failed` stage (`None` in every other stage).
    pub fn error(&self) -> Option<&OtaError> {
        self.error.as_ref()
    }

    /// The version this state is about: the package's, or the restored outcome's.
    pub fn version(&self) -> Option<&str> {
        self.package
            .as_ref()
            .map(|p| p.version.as_str())
            .or(self.outcome_version.as_deref())
    }

    /// The id of the current (or last) installation, set by [`Lifecycle::begin_install`].
    pub fn install_id(&self) -> Option<u64> {
        self.install_id
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// `bytes_downloaded` for the state file: never more than is durable while a download's
    /// bytes are in flight (or were, when it failed).
    pub fn persisted_bytes(&self) -> u64 {
        match self.stage {
            Stage::Downloading | Stage::Failed => self.bytes_done.min(self.bytes_durable),
            _ => self.bytes_done,
        }
    }

    // ------------------------------------------------------------ transitions

    /// Refuse a transition named `what` unless the stage is one of `from`.
    fn require(&self, what: &str, from: &[Stage]) -> Result<(), OtaError> {
        if from.contains(&self.stage) {
            Ok(())
        } else {
            Err(error::internal(format!(
                "transition `{what}` is not allowed in stage {}",
                self.stage
            )))
        }
    }

    /// Enter `to`, which the table of [`Stage::can_go_to`] must allow.
    fn enter(&mut self, to: Stage) {
        debug_assert!(self.stage == to || self.stage.can_go_to(to));
        if to != Stage::Failed {
            self.error = None;
        }
        self.stage = to;
    }

    /// A `/download` was accepted: fetch `spec`, keeping `resume_from` bytes of a partial of
    /// the same package (validated by `validator`), from `idle`, `success`, `failed` or
    /// `toInstall`.
    pub fn begin_download(
        &mut self,
        spec: PackageSpec,
        resume_from: u64,
        validator: Validator,
    ) -> Result<(), OtaError> {
        self.require(
            "begin_download",
            &[Stage::Idle, Stage::Success, Stage::Failed, Stage::ToInstall],
        )?;
        if let Some(e) = &self.blocked {
            return Err(e.clone());
        }
        let resume_from = resume_from.min(spec.package_size);
        self.enter(Stage::Downloading);
        self.package = Some(spec);
        self.bytes_done = resume_from;
        self.bytes_durable = resume_from;
        self.validator = validator;
        self.verified_at = None;
        self.note.clear();
        self.outcome_version = None;
        self.install_id = None;
        Ok(())
    }

    /// `bytes` of the package are on disk (not necessarily durable yet).
    pub fn download_progress(&mut self, bytes: u64) {
        if self.stage == Stage::Downloading {
            self.bytes_done = bytes;
        }
    }

    /// `bytes` are durable on disk, served under `validator`: what the state file may claim.
    pub fn checkpointed(&mut self, bytes: u64, validator: Validator) {
        if self.stage == Stage::Downloading {
            self.bytes_durable = bytes;
            self.validator = validator;
        }
    }

    /// The download is complete (its MD5 computed on the way): `downloading` -> `verifying`.
    pub fn begin_verify(&mut self) -> Result<(), OtaError> {
        self.require("begin_verify", &[Stage::Downloading])?;
        self.enter(Stage::Verifying);
        self.bytes_done = self.total();
        self.bytes_durable = self.bytes_done;
        Ok(())
    }

    /// `bytes` of the file hashed (a verification resumed at start-up).
    pub fn verify_progress(&mut self, bytes: u64) {
        if self.stage == Stage::Verifying {
            self.bytes_done = bytes.min(self.total());
        }
    }

    /// The MD5 matched at `at`: `verifying` -> `toInstall`.
    pub fn verified(&mut self, at: OffsetDateTime) -> Result<(), OtaError> {
        self.require("verified", &[Stage::Verifying])?;
        self.enter(Stage::ToInstall);
        self.bytes_done = self.total();
        self.verified_at = Some(at);
        Ok(())
    }

    /// `/update` was accepted: `toInstall` -> `installing`, as installation `id`.
    pub fn begin_install(&mut self, id: u64) -> Result<(), OtaError> {
        self.require("begin_install", &[Stage::ToInstall])?;
        if let Some(e) = &self.blocked {
            return Err(e.clone());
        }
        self.enter(Stage::Installing);
        self.install_id = Some(id);
        self.install = InstallProgress::default();
        self.note = "Checking package integrity".into();
        Ok(())
    }

    /// The processes of `module` are being stopped.
    pub fn stopping(&mut self, module: &str) -> Result<(), OtaError> {
        self.require("stopping", &[Stage::Installing])?;
        self.note = format!("Stopping processes of module {module}");
        Ok(())
    }

    /// Module `index` of `total` (1-based) is being deployed.
    pub fn deploying(&mut self, module: &str, index: usize, total: usize) -> Result<(), OtaError> {
        self.require("deploying", &[Stage::Installing])?;
        self.install = InstallProgress {
            done: index.saturating_sub(1).min(total),
            total,
        };
        self.note = format!("Deploying module {module} ({index}/{total})");
        Ok(())
    }

    /// Every file is in place; `module` is being started again: `installing` -> `rebooting`
    /// (or still `rebooting`). Returns whether the stage changed.
    pub fn restarting(&mut self, module: &str) -> Result<bool, OtaError> {
        let changed = self.enter_rebooting("restarting")?;
        self.note = format!("Restarting module {module}");
        Ok(changed)
    }

    /// The health of `module` is being checked after the restarts (stage `rebooting`,
    /// progress 100). Returns whether the stage changed.
    pub fn checking(&mut self, module: &str) -> Result<bool, OtaError> {
        let changed = self.enter_rebooting("checking")?;
        self.note = format!("Checking module {module}");
        Ok(changed)
    }

    fn enter_rebooting(&mut self, what: &str) -> Result<bool, OtaError> {
        self.require(what, &[Stage::Installing, Stage::Rebooting])?;
        self.install.done = self.install.total;
        let changed = self.stage == Stage::Installing;
        self.enter(Stage::Rebooting);
        Ok(changed)
    }

    /// A step failed and the installation is being rolled back (stage unchanged).
    pub fn rolling_back(&mut self, reason: &str) -> Result<(), OtaError> {
        self.require("rolling_back", &[Stage::Installing, Stage::Rebooting])?;
        self.note = format!("Rolling back: {reason}");
        Ok(())
    }

    /// The installation is complete and its outcome recorded: -> `success`.
    pub fn succeeded(&mut self) -> Result<(), OtaError> {
        self.require("succeeded", &[Stage::Installing, Stage::Rebooting])?;
        self.install.done = self.install.total;
        self.note = match self.version() {
            Some(v) => format!("Update to {v} completed"),
            None => "Update completed".into(),
        };
        self.enter(Stage::Success);
        Ok(())
    }

    /// The stages an operation can fail from.
    const FAILABLE: [Stage; 5] = [
        Stage::Downloading,
        Stage::Verifying,
        Stage::ToInstall,
        Stage::Installing,
        Stage::Rebooting,
    ];

    /// The running operation failed with `err` (from a busy stage, or `toInstall`). The
    /// partial download, if any, is kept for a resume; the progress shown stays where it was.
    pub fn failed(&mut self, err: OtaError) -> Result<(), OtaError> {
        self.require("failed", &Self::FAILABLE)?;
        self.failed_progress = self.progress();
        self.enter(Stage::Failed);
        self.error = Some(err);
        Ok(())
    }

    /// As [`Lifecycle::failed`], the package file having been deleted: nothing to resume, and
    /// the download or verification progress drops to 0.
    pub fn failed_file_deleted(&mut self, err: OtaError) -> Result<(), OtaError> {
        self.require("failed_file_deleted", &Self::FAILABLE)?;
        self.bytes_done = 0;
        self.bytes_durable = 0;
        self.failed(err)
    }

    /// The verified package outlived the trust window: `toInstall` -> `failed` with `err`;
    /// the package is forgotten (its file and the state file are deleted by the caller).
    pub fn expired(&mut self, err: OtaError) -> Result<(), OtaError> {
        self.require("expired", &[Stage::ToInstall])?;
        let version = self.package.take().map(|p| p.version);
        self.failed(err)?;
        self.bytes_done = 0;
        self.bytes_durable = 0;
        self.outcome_version = version;
        Ok(())
    }

    // ------------------------------------------------------------ start-up

    /// A download to resume at `bytes` (start-up).
    pub fn restored_download(spec: PackageSpec, bytes: u64, validator: Validator) -> Lifecycle {
        let mut l = Lifecycle::new();
        l.stage = Stage::Downloading;
        l.bytes_done = bytes.min(spec.package_size);
        l.bytes_durable = l.bytes_done;
        l.package = Some(spec);
        l.validator = validator;
        l
    }

    /// A complete file whose MD5 is to be checked (start-up).
    pub fn restored_verify(spec: PackageSpec, validator: Validator) -> Lifecycle {
        let mut l = Lifecycle::new();
        l.stage = Stage::Verifying;
        l.package = Some(spec);
        l.validator = validator;
        l
    }

    /// A package verified at `verified_at`, waiting for `/update` (start-up).
    pub fn restored_to_install(
        spec: PackageSpec,
        validator: Validator,
        verified_at: OffsetDateTime,
    ) -> Lifecycle {
        let mut l = Lifecycle::new();
        l.stage = Stage::ToInstall;
        l.bytes_done = spec.package_size;
        l.bytes_durable = spec.package_size;
        l.package = Some(spec);
        l.validator = validator;
        l.verified_at = Some(verified_at);
        l
    }

    /// The `success` of an installation of `version` (start-up).
    pub fn restored_success(version: &str) -> Lifecycle {
        let mut l = Lifecycle::new();
        l.stage = Stage::Success;
        l.outcome_version = Some(version.to_string());
        l.note = format!("Update to {version} completed");
        l
    }

    /// `failed` with `err` (start-up). `package` and `bytes`: a partial or complete file of
    /// that package is still on disk, so that the same `/download` resumes it; else
    /// `version` names what the failure was about.
    pub fn restored_failed(
        err: OtaError,
        package: Option<(PackageSpec, u64, Validator)>,
        version: Option<&str>,
        progress: u8,
    ) -> Lifecycle {
        let mut l = Lifecycle::new();
        l.stage = Stage::Failed;
        l.error = Some(err);
        l.failed_progress = progress.min(100);
        match package {
            Some((spec, bytes, validator)) => {
                l.bytes_done = bytes.min(spec.package_size);
                l.bytes_durable = l.bytes_done;
                l.package = Some(spec);
                l.validator = validator;
            }
            None => l.outcome_version = version.map(str::to_string),
        }
        l
    }

    /// Start-up recovery was given up (crash-loop guard): `failed` with `err`, and every
    /// `/download` and `/update` answers `err` until the daemon is restarted.
    pub fn restored_blocked(err: OtaError) -> Lifecycle {
        let mut l = Lifecycle::restored_failed(err.clone(), None, None, 0);
        l.blocked = Some(err);
        l
    }

    // ------------------------------------------------------------ decisions

    /// Which answer `/download` gets.
    pub fn decide_download(&self, req: &PackageSpec) -> Result<DownloadDecision, OtaError> {
        if let Some(e) = &self.blocked {
            return Err(e.clone());
        }
        let same = self.package.as_ref().is_some_and(|p| p.same_package(req));
        match self.stage {
            Stage::Downloading | Stage::Verifying if same => Ok(DownloadDecision::Join),
            Stage::Downloading | Stage::Verifying => Err(error::in_progress(format!(
                "a download of {} is running; wait for it to finish",
                self.package_label()
            ))),
            Stage::Installing | Stage::Rebooting => Err(error::in_progress(format!(
                "installation of {} is running",
                self.package_label()
            ))),
            Stage::ToInstall if same => Ok(DownloadDecision::AlreadyVerified),
            Stage::Idle | Stage::Success | Stage::Failed | Stage::ToInstall => {
                let resume_from = if same && self.package.as_ref() == Some(req) {
                    self.bytes_done
                } else {
                    0
                };
                Ok(DownloadDecision::Start { resume_from })
            }
        }
    }

    /// Which answer `/update` gets, given the time now and the trust window.
    pub fn decide_update(
        &self,
        version: &str,
        now: OffsetDateTime,
        trust_window_hours: u64,
    ) -> Result<UpdateDecision, OtaError> {
        if let Some(e) = &self.blocked {
            return Err(e.clone());
        }
        match self.stage {
            Stage::Installing | Stage::Rebooting => Err(error::in_progress(format!(
                "installation of {} is running",
                self.package_label()
            ))),
            Stage::Verifying => Err(error::not_verified(format!(
                "package {} is still being verified",
                self.package_label()
            ))),
            Stage::Downloading => Err(error::incomplete(format!(
                "package {} is still downloading ({}%)",
                self.package_label(),
                self.progress()
            ))),
            Stage::Idle | Stage::Success | Stage::Failed => Err(error::incomplete(
                "no verified package is waiting; POST /download first",
            )),
            Stage::ToInstall => {
                let pkg = self
                    .package
                    .as_ref()
                    .ok_or_else(|| error::incomplete("no verified package is waiting"))?;
                if pkg.version != version {
                    return Err(error::not_found(format!(
                        "version {version} is not downloaded (the verified package is {})",
                        pkg.version
                    )));
                }
                let verified_at = self.verified_at.unwrap_or(now);
                // Saturating: a window longer than a Duration can hold never expires (the
                // configuration accepts any positive integer; `Duration::hours` would panic).
                let window = i64::try_from(trust_window_hours)
                    .ok()
                    .and_then(|h| h.checked_mul(3600))
                    .map_or(time::Duration::MAX, time::Duration::seconds);
                if now - verified_at > window {
                    return Ok(UpdateDecision::Expired(error::expired(format!(
                        "Package verified at {} has exceeded {}-hour trust window, please re-download",
                        iso8601(verified_at),
                        trust_window_hours
                    ))));
                }
                Ok(UpdateDecision::Install)
            }
        }
    }

    fn package_label(&self) -> String {
        match &self.package {
            Some(p) => format!("{} ({})", p.package_name, p.version),
            None => "a package".to_string(),
        }
    }

    fn total(&self) -> u64 {
        self.package.as_ref().map_or(0, |p| p.package_size)
    }

    /// Progress 0..=100 as the contract defines it per stage.
    pub fn progress(&self) -> u8 {
        match self.stage {
            Stage::Idle => 0,
            Stage::Downloading => download_percent(self.bytes_done, self.total()),
            Stage::Verifying => share_percent(self.bytes_done, self.total()),
            Stage::ToInstall | Stage::Rebooting | Stage::Success => 100,
            Stage::Installing => share_percent(self.install.done as u64, self.install.total as u64),
            Stage::Failed => self.failed_progress,
        }
    }

    /// The `data` of `/progress`.
    pub fn status(&self) -> Status {
        let message = match self.stage {
            Stage::Idle => "Idle".to_string(),
            Stage::Downloading => format!(
                "Downloading package... {} / {}",
                mb(self.bytes_done),
                mb(self.total())
            ),
            Stage::Verifying => format!(
                "Verifying package MD5... {} / {}",
                mb(self.bytes_done),
                mb(self.total())
            ),
            Stage::ToInstall => match &self.package {
                Some(p) => format!("Package {} verified, ready to install", p.version),
                None => "Package verified, ready to install".to_string(),
            },
            Stage::Failed => match &self.error {
                Some(e) => format!("Update failed: {e}"),
                None => "Update failed".to_string(),
            },
            _ => self.note.clone(),
        };
        Status {
            stage: self.stage,
            progress: self.progress(),
            message,
            error: match self.stage {
                Stage::Failed => self.error.as_ref().map(|e| e.to_string()),
                _ => None,
            },
            version: self.version().map(str::to_string),
            bytes_downloaded: self.bytes_done,
            bytes_total: self.total(),
        }
    }
}

#[cfg(test)]
mod tests;
