//! [`Lifecycle`]: the state of the updater, one variant per stage holding exactly what is
//! valid in it, changed only through named transitions.
//!
//! Each transition says which stages it may start from. A transition from a stage it does not
//! accept changes nothing and returns [`Refused`] (a bug in the caller, logged by it; turned
//! into `INTERNAL_ERROR` at the edge); a lifecycle blocked by the crash-loop guard refuses
//! `begin_download` and `begin_install` with the guard's error. The `restored_*` constructors
//! rebuild a lifecycle at start-up from what was found on disk (see `crate::startup`).

use time::OffsetDateTime;

use super::{InstallProgress, PackageSpec, Stage, Validator};
use crate::error::{self, OtaError};

/// A transition the lifecycle did not make.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// Not allowed from the current stage: a bug in the caller.
    #[error("transition `{transition}` is not allowed in stage {stage}")]
    Stage {
        transition: &'static str,
        stage: Stage,
    },
    /// Start-up recovery was given up (crash-loop guard): nothing starts until an operator
    /// clears the guard; the guard's own error says how.
    #[error("{0}")]
    Blocked(OtaError),
}

impl From<Refused> for OtaError {
    fn from(r: Refused) -> OtaError {
        match r {
            Refused::Stage { .. } => error::internal(r.to_string()),
            Refused::Blocked(e) => e,
        }
    }
}

/// A package being fetched or hashed.
#[derive(Debug, Clone, PartialEq)]
struct Transfer {
    spec: PackageSpec,
    /// Bytes received (downloading) or hashed (verifying): what is shown.
    done: u64,
    /// Bytes known to be on disk (fdatasync'd): what the state file may claim.
    durable: u64,
    validator: Validator,
}

impl Transfer {
    fn new(spec: PackageSpec, bytes: u64, validator: Validator) -> Transfer {
        let bytes = bytes.min(spec.package_size);
        Transfer {
            spec,
            done: bytes,
            durable: bytes,
            validator,
        }
    }
}

/// A complete package whose MD5 matched.
#[derive(Debug, Clone, PartialEq)]
struct Verified {
    spec: PackageSpec,
    validator: Validator,
    verified_at: OffsetDateTime,
}

/// An installation under way (`installing`, then `rebooting`).
#[derive(Debug, Clone, PartialEq)]
struct Installation {
    package: Verified,
    /// Tells this installation from any other, also of the same package (kept in the state
    /// file and the outcome).
    id: u64,
    modules: InstallProgress,
    /// What it is doing now, for people.
    note: String,
}

/// What a `success` or `failed` is about.
#[derive(Debug, Clone, PartialEq)]
enum About {
    /// Nothing known (a failure restored without a version).
    Nothing,
    /// Only the version: restored from an outcome, or a package forgotten (expired).
    Version(String),
    /// A package whose bytes (partial, complete or deleted) a new `/download` of the same
    /// package can build on.
    Partial(Transfer),
    /// A verified package (an installation's).
    Verified(Verified),
}

/// `failed`.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    error: OtaError,
    /// The progress shown when it failed.
    progress: u8,
    about: About,
    install_id: Option<u64>,
    /// Start-up recovery was given up: `/download` and `/update` answer the error until an
    /// operator clears the guard and restarts the daemon.
    blocked: bool,
}

/// `success`.
#[derive(Debug, Clone, PartialEq)]
struct Done {
    about: About,
    install_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Idle,
    Downloading(Transfer),
    Verifying(Transfer),
    ToInstall(Verified),
    Installing(Installation),
    Rebooting(Installation),
    Success(Done),
    Failed(Failure),
}

impl State {
    fn stage(&self) -> Stage {
        match self {
            State::Idle => Stage::Idle,
            State::Downloading(_) => Stage::Downloading,
            State::Verifying(_) => Stage::Verifying,
            State::ToInstall(_) => Stage::ToInstall,
            State::Installing(_) => Stage::Installing,
            State::Rebooting(_) => Stage::Rebooting,
            State::Success(_) => Stage::Success,
            State::Failed(_) => Stage::Failed,
        }
    }
}

/// The whole lifecycle state. Only the transitions below change it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    state: State,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    /// `idle`: nothing known.
    pub fn new() -> Lifecycle {
        Lifecycle { state: State::Idle }
    }

    // ------------------------------------------------------------ reading

    /// The wire stage, derived from the state.
    pub fn stage(&self) -> Stage {
        self.state.stage()
    }

    fn about(&self) -> Option<&About> {
        match &self.state {
            State::Success(d) => Some(&d.about),
            State::Failed(f) => Some(&f.about),
            _ => None,
        }
    }

    pub fn package(&self) -> Option<&PackageSpec> {
        match &self.state {
            State::Idle => None,
            State::Downloading(t) | State::Verifying(t) => Some(&t.spec),
            State::ToInstall(v) => Some(&v.spec),
            State::Installing(i) | State::Rebooting(i) => Some(&i.package.spec),
            State::Success(_) | State::Failed(_) => match self.about() {
                Some(About::Partial(t)) => Some(&t.spec),
                Some(About::Verified(v)) => Some(&v.spec),
                _ => None,
            },
        }
    }

    /// Bytes received (downloading), hashed (verifying), or of the package (later stages).
    pub fn bytes_done(&self) -> u64 {
        self.bytes().0
    }

    /// (shown, durable) bytes of the package.
    fn bytes(&self) -> (u64, u64) {
        let size = |v: &Verified| (v.spec.package_size, v.spec.package_size);
        match &self.state {
            State::Idle => (0, 0),
            State::Downloading(t) | State::Verifying(t) => (t.done, t.durable),
            State::ToInstall(v) => size(v),
            State::Installing(i) | State::Rebooting(i) => size(&i.package),
            State::Success(_) | State::Failed(_) => match self.about() {
                Some(About::Partial(t)) => (t.done, t.durable),
                Some(About::Verified(v)) => size(v),
                _ => (0, 0),
            },
        }
    }

    pub fn validator(&self) -> &Validator {
        static NONE: Validator = Validator {
            etag: None,
            last_modified: None,
        };
        match &self.state {
            State::Downloading(t) | State::Verifying(t) => &t.validator,
            State::ToInstall(v) => &v.validator,
            State::Installing(i) | State::Rebooting(i) => &i.package.validator,
            State::Success(_) | State::Failed(_) => match self.about() {
                Some(About::Partial(t)) => &t.validator,
                Some(About::Verified(v)) => &v.validator,
                _ => &NONE,
            },
            State::Idle => &NONE,
        }
    }

    /// When the package's MD5 matched (from `toInstall` on, while the package is known).
    pub fn verified_at(&self) -> Option<OffsetDateTime> {
        match &self.state {
            State::ToInstall(v) => Some(v.verified_at),
            State::Installing(i) | State::Rebooting(i) => Some(i.package.verified_at),
            State::Success(_) | State::Failed(_) => match self.about() {
                Some(About::Verified(v)) => Some(v.verified_at),
                _ => None,
            },
            _ => None,
        }
    }

    /// The error of the `failed` stage (`None` in every other stage).
    pub fn error(&self) -> Option<&OtaError> {
        match &self.state {
            State::Failed(f) => Some(&f.error),
            _ => None,
        }
    }

    /// The version this state is about: the package's, or the restored outcome's.
    pub fn version(&self) -> Option<&str> {
        match self.about() {
            Some(About::Version(v)) => Some(v),
            _ => self.package().map(|p| p.version.as_str()),
        }
    }

    /// The id of the current (or last) installation, set by [`Lifecycle::begin_install`].
    pub fn install_id(&self) -> Option<u64> {
        match &self.state {
            State::Installing(i) | State::Rebooting(i) => Some(i.id),
            State::Success(d) => d.install_id,
            State::Failed(f) => f.install_id,
            _ => None,
        }
    }

    pub fn is_blocked(&self) -> bool {
        matches!(&self.state, State::Failed(f) if f.blocked)
    }

    fn blocked_error(&self) -> Option<&OtaError> {
        match &self.state {
            State::Failed(f) if f.blocked => Some(&f.error),
            _ => None,
        }
    }

    /// `bytes_downloaded` for the state file: never more than is durable while a download's
    /// bytes are in flight (or were, when it failed).
    pub fn persisted_bytes(&self) -> u64 {
        let (done, durable) = self.bytes();
        match self.state {
            State::Downloading(_) | State::Failed(_) => done.min(durable),
            _ => done,
        }
    }

    // ------------------------------------------------------------ transitions

    fn refuse(&self, transition: &'static str) -> Refused {
        Refused::Stage {
            transition,
            stage: self.stage(),
        }
    }

    /// Enter `next`, whose stage the table of [`Stage::can_go_to`] must allow.
    fn go(&mut self, next: State) {
        debug_assert!(
            self.stage() == next.stage() || self.stage().can_go_to(next.stage()),
            "{} -> {}",
            self.stage(),
            next.stage()
        );
        self.state = next;
    }

    /// A `/download` was accepted: fetch `spec`, keeping `resume_from` bytes of a partial of
    /// the same package (validated by `validator`), from `idle`, `success`, `failed` or
    /// `toInstall`.
    pub fn begin_download(
        &mut self,
        spec: PackageSpec,
        resume_from: u64,
        validator: Validator,
    ) -> Result<(), Refused> {
        if !matches!(
            self.state,
            State::Idle | State::Success(_) | State::Failed(_) | State::ToInstall(_)
        ) {
            return Err(self.refuse("begin_download"));
        }
        if let Some(e) = self.blocked_error() {
            return Err(Refused::Blocked(e.clone()));
        }
        self.go(State::Downloading(Transfer::new(
            spec,
            resume_from,
            validator,
        )));
        Ok(())
    }

    /// `bytes` of the package are on disk (not necessarily durable yet).
    pub fn download_progress(&mut self, bytes: u64) {
        if let State::Downloading(t) = &mut self.state {
            t.done = bytes;
        }
    }

    /// `bytes` are durable on disk, served under `validator`: what the state file may claim.
    pub fn checkpointed(&mut self, bytes: u64, validator: Validator) {
        if let State::Downloading(t) = &mut self.state {
            t.durable = bytes;
            t.validator = validator;
        }
    }

    /// The download starts over from byte 0 (the bytes on disk belong to another version of
    /// the file): nothing received counts any more, nor does the old validator.
    pub fn restart_download(&mut self) -> Result<(), Refused> {
        let State::Downloading(t) = &mut self.state else {
            return Err(self.refuse("restart_download"));
        };
        t.done = 0;
        t.durable = 0;
        t.validator = Validator::default();
        Ok(())
    }

    /// The download is complete (its MD5 computed on the way): `downloading` -> `verifying`.
    pub fn begin_verify(&mut self) -> Result<(), Refused> {
        let State::Downloading(t) = &self.state else {
            return Err(self.refuse("begin_verify"));
        };
        let size = t.spec.package_size;
        let mut t = t.clone();
        t.done = size;
        t.durable = size;
        self.go(State::Verifying(t));
        Ok(())
    }

    /// `bytes` of the file hashed (a verification resumed at start-up).
    pub fn verify_progress(&mut self, bytes: u64) {
        if let State::Verifying(t) = &mut self.state {
            t.done = bytes.min(t.spec.package_size);
        }
    }

    /// The MD5 matched at `at`: `verifying` -> `toInstall`.
    pub fn verified(&mut self, at: OffsetDateTime) -> Result<(), Refused> {
        let State::Verifying(t) = &self.state else {
            return Err(self.refuse("verified"));
        };
        let v = Verified {
            spec: t.spec.clone(),
            validator: t.validator.clone(),
            verified_at: at,
        };
        self.go(State::ToInstall(v));
        Ok(())
    }

    /// `/update` was accepted: `toInstall` -> `installing`, as installation `id`.
    pub fn begin_install(&mut self, id: u64) -> Result<(), Refused> {
        let State::ToInstall(v) = &self.state else {
            return Err(self.refuse("begin_install"));
        };
        let i = Installation {
            package: v.clone(),
            id,
            modules: InstallProgress::default(),
            note: "Checking package integrity".into(),
        };
        self.go(State::Installing(i));
        Ok(())
    }

    /// The processes of `module` are being stopped.
    pub fn stopping(&mut self, module: &str) -> Result<(), Refused> {
        let State::Installing(i) = &mut self.state else {
            return Err(self.refuse("stopping"));
        };
        i.note = format!("Stopping processes of module {module}");
        Ok(())
    }

    /// Module `index` of `total` (1-based) is being deployed.
    pub fn deploying(&mut self, module: &str, index: usize, total: usize) -> Result<(), Refused> {
        let State::Installing(i) = &mut self.state else {
            return Err(self.refuse("deploying"));
        };
        i.modules = InstallProgress {
            done: index.saturating_sub(1).min(total),
            total,
        };
        i.note = format!("Deploying module {module} ({index}/{total})");
        Ok(())
    }

    /// Every file is in place; `module` is being started again: `installing` -> `rebooting`
    /// (or still `rebooting`). Returns whether the stage changed.
    pub fn restarting(&mut self, module: &str) -> Result<bool, Refused> {
        self.enter_rebooting("restarting", format!("Restarting module {module}"))
    }

    /// The health of `module` is being checked after the restarts (stage `rebooting`,
    /// progress 100). Returns whether the stage changed.
    pub fn checking(&mut self, module: &str) -> Result<bool, Refused> {
        self.enter_rebooting("checking", format!("Checking module {module}"))
    }

    fn enter_rebooting(&mut self, what: &'static str, note: String) -> Result<bool, Refused> {
        let (State::Installing(i) | State::Rebooting(i)) = &self.state else {
            return Err(self.refuse(what));
        };
        let changed = matches!(self.state, State::Installing(_));
        let mut i = i.clone();
        i.modules.done = i.modules.total;
        i.note = note;
        self.go(State::Rebooting(i));
        Ok(changed)
    }

    /// A step failed and the installation is being rolled back (stage unchanged).
    pub fn rolling_back(&mut self, reason: &str) -> Result<(), Refused> {
        let (State::Installing(i) | State::Rebooting(i)) = &mut self.state else {
            return Err(self.refuse("rolling_back"));
        };
        i.note = format!("Rolling back: {reason}");
        Ok(())
    }

    /// The installation is complete and its outcome recorded: -> `success`.
    pub fn succeeded(&mut self) -> Result<(), Refused> {
        let (State::Installing(i) | State::Rebooting(i)) = &self.state else {
            return Err(self.refuse("succeeded"));
        };
        let done = Done {
            about: About::Verified(i.package.clone()),
            install_id: Some(i.id),
        };
        self.go(State::Success(done));
        Ok(())
    }

    /// What a failure from the current (busy or `toInstall`) stage is about; `None` from any
    /// other stage.
    fn failing(&self) -> Option<(About, Option<u64>)> {
        Some(match &self.state {
            State::Downloading(t) | State::Verifying(t) => (About::Partial(t.clone()), None),
            State::ToInstall(v) => (About::Verified(v.clone()), None),
            State::Installing(i) | State::Rebooting(i) => {
                (About::Verified(i.package.clone()), Some(i.id))
            }
            _ => return None,
        })
    }

    fn fail_with(&mut self, about: About, install_id: Option<u64>, error: OtaError) {
        let failure = Failure {
            error,
            progress: self.progress(),
            about,
            install_id,
            blocked: false,
        };
        self.go(State::Failed(failure));
    }

    /// The running operation failed with `err` (from a busy stage, or `toInstall`). The
    /// partial download, if any, is kept for a resume; the progress shown stays where it was.
    pub fn failed(&mut self, err: OtaError) -> Result<(), Refused> {
        let Some((about, id)) = self.failing() else {
            return Err(self.refuse("failed"));
        };
        self.fail_with(about, id, err);
        Ok(())
    }

    /// As [`Lifecycle::failed`], the package file having been deleted: nothing to resume, and
    /// the download or verification progress drops to 0.
    pub fn failed_file_deleted(&mut self, err: OtaError) -> Result<(), Refused> {
        let Some((about, id)) = self.failing() else {
            return Err(self.refuse("failed_file_deleted"));
        };
        let emptied = match about {
            About::Partial(t) => Transfer::new(t.spec, 0, t.validator),
            About::Verified(v) => Transfer::new(v.spec, 0, v.validator),
            About::Nothing | About::Version(_) => return Err(self.refuse("failed_file_deleted")),
        };
        // The progress shown is the one of the emptied package.
        if let State::Downloading(t) | State::Verifying(t) = &mut self.state {
            t.done = 0;
            t.durable = 0;
        }
        self.fail_with(About::Partial(emptied), id, err);
        Ok(())
    }

    /// The verified package outlived the trust window: `toInstall` -> `failed` with `err`;
    /// the package is forgotten (its file and the state file are deleted by the caller).
    pub fn expired(&mut self, err: OtaError) -> Result<(), Refused> {
        let State::ToInstall(v) = &self.state else {
            return Err(self.refuse("expired"));
        };
        let about = About::Version(v.spec.version.clone());
        self.fail_with(about, None, err);
        Ok(())
    }

    // ------------------------------------------------------------ start-up

    /// A download to resume at `bytes` (start-up).
    pub fn restored_download(spec: PackageSpec, bytes: u64, validator: Validator) -> Lifecycle {
        Lifecycle {
            state: State::Downloading(Transfer::new(spec, bytes, validator)),
        }
    }

    /// A complete file whose MD5 is to be checked (start-up).
    pub fn restored_verify(spec: PackageSpec, validator: Validator) -> Lifecycle {
        Lifecycle {
            state: State::Verifying(Transfer::new(spec, 0, validator)),
        }
    }

    /// A package verified at `verified_at`, waiting for `/update` (start-up).
    pub fn restored_to_install(
        spec: PackageSpec,
        validator: Validator,
        verified_at: OffsetDateTime,
    ) -> Lifecycle {
        Lifecycle {
            state: State::ToInstall(Verified {
                spec,
                validator,
                verified_at,
            }),
        }
    }

    /// The `success` of an installation of `version` (start-up).
    pub fn restored_success(version: &str) -> Lifecycle {
        Lifecycle {
            state: State::Success(Done {
                about: About::Version(version.to_string()),
                install_id: None,
            }),
        }
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
        let about = match (package, version) {
            (Some((spec, bytes, validator)), _) => {
                About::Partial(Transfer::new(spec, bytes, validator))
            }
            (None, Some(v)) => About::Version(v.to_string()),
            (None, None) => About::Nothing,
        };
        Lifecycle {
            state: State::Failed(Failure {
                error: err,
                progress: progress.min(100),
                about,
                install_id: None,
                blocked: false,
            }),
        }
    }

    /// Start-up recovery was given up (crash-loop guard): `failed` with `err`, and every
    /// `/download` and `/update` answers `err` until the daemon is restarted.
    pub fn restored_blocked(err: OtaError) -> Lifecycle {
        let mut l = Lifecycle::restored_failed(err, None, None, 0);
        if let State::Failed(f) = &mut l.state {
            f.blocked = true;
        }
        l
    }
}

mod view;

#[cfg(test)]
mod tests;
