//! A fleet server's `cancelAction` (docs/API.md 9.1): the package of an action that is not
//! installing is stopped and its file removed; an installation is never interrupted.

use super::{lock, Discard, Updater};
use crate::error;
use crate::fsutil;
use crate::lifecycle::{Refused, Stage};

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The package's download was stopped or its verified file dropped: stage `failed`, the
    /// file removed.
    Stopped,
    /// Nothing of that version is downloading or waiting (it already ended).
    NothingRunning,
}

impl Updater {
    /// Cancel the package of `version` unless it is installing or installed (`Err` with the
    /// stage then: it runs, or ran, to its end). A running download is stopped and waited for (it stops at its next
    /// chunk); the stage becomes `failed` with `DOWNLOAD_FAILED: <why>` and the file is removed.
    /// Blocking: call it from a blocking thread.
    pub fn cancel_package(&self, version: &str, why: &str) -> Result<Cancelled, Stage> {
        let (stage, ours) = {
            let l = lock(&self.inner.life);
            (l.stage(), l.version() == Some(version))
        };
        if !ours {
            return Ok(Cancelled::NothingRunning);
        }
        let err = error::download_failed(why.to_string());
        match stage {
            // An installation runs to its end; one that already succeeded has its outcome
            // (and the fleet its `closed`/`success` feedback) whatever a late cancel says.
            Stage::Installing | Stage::Rebooting | Stage::Success => return Err(stage),
            Stage::Downloading | Stage::Verifying => {
                tracing::info!("stopping the download of {version}: {why}");
                self.stop_job(err.clone());
                self.join_job();
            }
            _ => {}
        }
        let (stage, name) = {
            let l = lock(&self.inner.life);
            (l.stage(), l.package().map(|p| p.package_name.clone()))
        };
        match stage {
            Stage::ToInstall => {
                let res = self.conclude(|l| {
                    if l.stage() == Stage::ToInstall {
                        l.failed_file_deleted(err)
                    } else {
                        Err(Refused::Stage {
                            transition: "cancel",
                            stage: l.stage(),
                        })
                    }
                });
                if let Err(e) = res {
                    tracing::error!("{e}");
                    let now = lock(&self.inner.life).stage();
                    if matches!(now, Stage::Installing | Stage::Rebooting) {
                        return Err(now);
                    }
                }
            }
            Stage::Installing | Stage::Rebooting | Stage::Success => return Err(stage),
            Stage::Failed => {}
            // The download ended otherwise meanwhile (it cannot reach `success` by itself).
            _ => self.fail(err, Discard::Nothing),
        }
        if let Some(n) = name {
            let path = self.package_path(&n);
            if let Err(e) = fsutil::remove_durable(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
        Ok(Cancelled::Stopped)
    }
}
