//! The errors of an installation as values: what failed ([`Cause`]), in which step
//! ([`Step`]), and how the rollback that followed went ([`Rollback`]). The contract code of a
//! failed installation is decided here, in one function ([`contract_code`]), and the error
//! becomes the rest of the updater's [`OtaError`] only at the edge of `deploy`
//! (`From<DeployError> for OtaError`), as `"<CODE>: <cause>; rolled back"`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{self, ErrorCode, OtaError};
use crate::process::ProcessError;

use super::steps::Step;

/// Why a step of an installation failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// An I/O error on the printer's files; `what` says what was being done.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A module's health check failed (docs/API.md 8.4).
    #[error("health check of {module} failed: {source}")]
    Health {
        module: String,
        #[source]
        source: HealthError,
    },
    /// A package, process or journal error, with the code the rest of the updater gave it.
    #[error("{}", .0.detail)]
    Other(#[source] OtaError),
}

impl Cause {
    /// An I/O error while doing `what`.
    pub fn io(what: impl std::fmt::Display, source: io::Error) -> Cause {
        Cause::Io {
            what: what.to_string(),
            source,
        }
    }

    /// The same cause, its detail prefixed with `prefix: ` (e.g. `module app`).
    pub fn within(self, prefix: impl std::fmt::Display) -> Cause {
        match self {
            Cause::Io { what, source } => Cause::Io {
                what: format!("{prefix}: {what}"),
                source,
            },
            Cause::Other(e) => {
                Cause::Other(OtaError::new(e.code, format!("{prefix}: {}", e.detail)))
            }
            health @ Cause::Health { .. } => {
                Cause::Other(error::deployment_failed(format!("{prefix}: {health}")))
            }
        }
    }

    /// The code of the cause itself: `DISK_FULL` for a full disk (ENOSPC, EDQUOT), the code
    /// an [`OtaError`] carries, `DEPLOYMENT_FAILED` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            Cause::Io { source, .. } if error::is_disk_full(source) => ErrorCode::DiskFull,
            Cause::Io { .. } | Cause::Health { .. } => ErrorCode::DeploymentFailed,
            Cause::Other(e) => e.code,
        }
    }
}

impl From<OtaError> for Cause {
    fn from(e: OtaError) -> Cause {
        Cause::Other(e)
    }
}

/// A cause met before any step ran (while checking and planning): reported with its own code.
impl From<Cause> for OtaError {
    fn from(c: Cause) -> OtaError {
        OtaError::new(c.code(), c.to_string())
    }
}

/// Why a module is not healthy (docs/API.md 8.4). Displays as the `<why>` of
/// `DEPLOYMENT_FAILED: health check of <module> failed: <why>`.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// `/proc` could not tell whether the started process still runs.
    #[error("process {name} (pid {pid}) cannot be checked: {source}")]
    Unknown {
        name: String,
        pid: i32,
        #[source]
        source: io::Error,
    },
    /// The started process is gone and another of its name runs: it crashed and was
    /// respawned.
    #[error("process {name} (pid {pid}) exited and was replaced by pid {now} (crash and respawn)")]
    Respawned { name: String, pid: i32, now: i32 },
    /// The started process is gone and none of its name runs.
    #[error("process {name} (pid {pid}) is no longer running")]
    Gone { name: String, pid: i32 },
    /// `systemctl is-active` did not say `active`.
    #[error("service {service} is not active: {source}")]
    Inactive {
        service: String,
        #[source]
        source: Box<ProcessError>,
    },
    /// `health_cmd` never exited 0 within its time limit; `last` is why its last run failed
    /// (its exit status, its time limit, or why it could not be started, with its output).
    #[error("health_cmd did not succeed within {} s: {}", .timeout.as_secs(), last.as_ref().map_or(String::new(), ToString::to_string))]
    TimedOut {
        timeout: Duration,
        #[source]
        last: Option<Box<ProcessError>>,
    },
    /// The updater is stopping (SIGTERM).
    #[error("interrupted by shutdown")]
    Interrupted,
    /// The thread running the check panicked.
    #[error("the check crashed")]
    Crashed,
}

/// A rollback that could not put every file back: the journal is kept, so the next start
/// retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollback incomplete, files not restored (retried at next start): {}", .files.join("; "))]
pub struct RollbackIncomplete {
    /// Each file not restored, with why.
    pub files: Vec<String>,
}

impl From<RollbackIncomplete> for OtaError {
    fn from(e: RollbackIncomplete) -> OtaError {
        error::deployment_failed(e.to_string())
    }
}

/// How the rollback after a failed step went.
#[derive(Debug, thiserror::Error)]
pub enum Rollback {
    #[error("rolled back")]
    Done,
    #[error(transparent)]
    Incomplete(RollbackIncomplete),
}

/// A failed installation: the step, the cause, and the rollback that followed.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; {rollback}")]
pub struct DeployError {
    pub step: Step,
    #[source]
    pub cause: Cause,
    pub rollback: Rollback,
}

impl DeployError {
    /// The contract code of this failure ([`contract_code`]).
    pub fn code(&self) -> ErrorCode {
        contract_code(self.step, self.cause.code())
    }
}

/// The contract code of an installation that failed in `step` for a cause of code `cause`
/// (docs/API.md 3): `DISK_FULL`, `PROCESS_KILL_FAILED` and `INTERNAL_ERROR` keep their code,
/// `INVALID_PACKAGE` keeps it while staging (the package's bytes are read only then); anything
/// else is `DEPLOYMENT_FAILED`.
pub fn contract_code(step: Step, cause: ErrorCode) -> ErrorCode {
    match cause {
        ErrorCode::DiskFull | ErrorCode::ProcessKillFailed | ErrorCode::InternalError => cause,
        ErrorCode::InvalidPackage if step == Step::Stage => cause,
        _ => ErrorCode::DeploymentFailed,
    }
}

/// At the edge of `deploy`: `"<CODE>: <cause>; rolled back"`, or `"...; rollback incomplete,
/// ..."` when files could not be restored.
impl From<DeployError> for OtaError {
    fn from(e: DeployError) -> OtaError {
        OtaError::new(e.code(), e.to_string())
    }
}

/// Where a destination is not allowed to go (docs/API.md 8.3); the detail of an
/// `INVALID_MANIFEST`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{} has no parent directory", .0.display())]
    NoParent(PathBuf),
    /// A component exists but cannot be resolved.
    #[error("{} cannot be resolved (dangling symbolic link?)", .0.display())]
    Dangling(PathBuf),
    #[error("{} cannot be resolved", .0.display())]
    Unresolvable(PathBuf),
    /// `via`: where its directory resolves to, when that differs from its path.
    #[error("{} is outside the allowed roots {roots:?}{}", .dst.display(), .via.as_ref().map(|v| format!(" (its directory resolves to {})", v.display())).unwrap_or_default())]
    Outside {
        dst: PathBuf,
        roots: Vec<PathBuf>,
        via: Option<PathBuf>,
    },
}

/// Why an install journal cannot be used (it is set aside, docs/API.md 8.3).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("not a journal: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("journal format {0} is not known to this version")]
    UnknownFormat(u64),
    #[error("journal without a format (written by an older version)")]
    NoFormat,
    #[error("invalid journal: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("journal names an unsafe staging id `{0}`")]
    UnsafeStageId(String),
    #[error("journal of format {0} without a staging id")]
    MissingStageId(u32),
    #[error("journal of format {0} with a staging id")]
    UnexpectedStageId(u32),
    #[error("journal names an unsafe directory {}", .0.display())]
    UnsafeDirectory(PathBuf),
    #[error("journal names an unsafe file name `{0}`")]
    UnsafeFileName(String),
    #[error("journal names module #{module} of {modules}")]
    NoSuchModule { module: usize, modules: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/API.md 3: the code of a failed installation, step by step.
    #[test]
    fn docs_api_3_contract_code_table() {
        use ErrorCode::*;
        for step in Step::INSTALL {
            for kept in [DiskFull, ProcessKillFailed, InternalError] {
                assert_eq!(contract_code(step, kept), kept, "{step:?}");
            }
            for other in [
                DeploymentFailed,
                InvalidManifest,
                DownloadFailed,
                Md5Mismatch,
            ] {
                assert_eq!(contract_code(step, other), DeploymentFailed, "{step:?}");
            }
            let invalid = if step == Step::Stage {
                InvalidPackage
            } else {
                DeploymentFailed
            };
            assert_eq!(contract_code(step, InvalidPackage), invalid, "{step:?}");
        }
    }

    #[test]
    fn texts_are_the_contract_details() {
        let full = Cause::io("flushing the new files", io::Error::from_raw_os_error(28));
        assert_eq!(full.code(), ErrorCode::DiskFull);
        let e = DeployError {
            step: Step::Stage,
            cause: full.within("module app"),
            rollback: Rollback::Done,
        };
        let e = OtaError::from(e);
        assert_eq!(e.code, ErrorCode::DiskFull);
        assert!(
            e.detail
                .starts_with("module app: flushing the new files: No space left on device"),
            "{e}"
        );
        assert!(e.detail.ends_with("; rolled back"), "{e}");
        let e = OtaError::from(DeployError {
            step: Step::Health,
            cause: Cause::Health {
                module: "web".into(),
                source: HealthError::Gone {
                    name: "web".into(),
                    pid: 7,
                },
            },
            rollback: Rollback::Incomplete(RollbackIncomplete {
                files: vec!["/opt/tope/a: gone".into(), "/opt/tope/b: gone".into()],
            }),
        });
        assert_eq!(
            e.to_string(),
            "DEPLOYMENT_FAILED: health check of web failed: process web (pid 7) is no longer \
             running; rollback incomplete, files not restored (retried at next start): \
             /opt/tope/a: gone; /opt/tope/b: gone"
        );
        let t = HealthError::TimedOut {
            timeout: Duration::from_secs(3),
            last: None,
        };
        assert_eq!(t.to_string(), "health_cmd did not succeed within 3 s: ");
    }
}
