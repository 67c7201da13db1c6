//! What the lifecycle answers: the `/download` and `/update` decisions, the progress and the
//! `/progress` picture.

use time::OffsetDateTime;

use super::super::{
    download_percent, iso8601, mb, share_percent, DownloadDecision, PackageSpec, Stage, Status,
    UpdateDecision,
};
use super::{Lifecycle, State};
use crate::error::{self, OtaError};

impl Lifecycle {
    /// Which answer `/download` gets.
    pub fn decide_download(&self, req: &PackageSpec) -> Result<DownloadDecision, OtaError> {
        if let Some(e) = self.blocked_error() {
            return Err(e.clone());
        }
        let same = self.package().is_some_and(|p| p.same_package(req));
        match self.stage() {
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
                let resume_from = if same && self.package() == Some(req) {
                    self.bytes_done()
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
        if let Some(e) = self.blocked_error() {
            return Err(e.clone());
        }
        match &self.state {
            State::Installing(_) | State::Rebooting(_) => Err(error::in_progress(format!(
                "installation of {} is running",
                self.package_label()
            ))),
            State::Verifying(_) => Err(error::not_verified(format!(
                "package {} is still being verified",
                self.package_label()
            ))),
            State::Downloading(_) => Err(error::incomplete(format!(
                "package {} is still downloading ({}%)",
                self.package_label(),
                self.progress()
            ))),
            State::Idle | State::Success(_) | State::Failed(_) => Err(error::incomplete(
                "no verified package is waiting; POST /download first",
            )),
            State::ToInstall(v) => {
                if v.spec.version != version {
                    return Err(error::not_found(format!(
                        "version {version} is not downloaded (the verified package is {})",
                        v.spec.version
                    )));
                }
                // Saturating: a window longer than a Duration can hold never expires (the
                // configuration accepts any positive integer; `Duration::hours` would panic).
                let window = i64::try_from(trust_window_hours)
                    .ok()
                    .and_then(|h| h.checked_mul(3600))
                    .map_or(time::Duration::MAX, time::Duration::seconds);
                if now - v.verified_at > window {
                    return Ok(UpdateDecision::Expired(error::expired(format!(
                        "Package verified at {} has exceeded {}-hour trust window, please re-download",
                        iso8601(v.verified_at),
                        trust_window_hours
                    ))));
                }
                Ok(UpdateDecision::Install)
            }
        }
    }

    fn package_label(&self) -> String {
        match self.package() {
            Some(p) => format!("{} ({})", p.package_name, p.version),
            None => "a package".to_string(),
        }
    }

    fn total(&self) -> u64 {
        self.package().map_or(0, |p| p.package_size)
    }

    /// Progress 0..=100 as the contract defines it per stage.
    pub fn progress(&self) -> u8 {
        match &self.state {
            State::Idle => 0,
            State::Downloading(t) => download_percent(t.done, t.spec.package_size),
            State::Verifying(t) => share_percent(t.done, t.spec.package_size),
            State::ToInstall(_) | State::Rebooting(_) | State::Success(_) => 100,
            State::Installing(i) => share_percent(i.modules.done as u64, i.modules.total as u64),
            State::Failed(f) => f.progress,
        }
    }

    /// The `data` of `/progress`.
    pub fn status(&self) -> Status {
        let message = match &self.state {
            State::Idle => "Idle".to_string(),
            State::Downloading(t) => format!(
                "Downloading package... {} / {}",
                mb(t.done),
                mb(t.spec.package_size)
            ),
            State::Verifying(t) => format!(
                "Verifying package MD5... {} / {}",
                mb(t.done),
                mb(t.spec.package_size)
            ),
            State::ToInstall(v) => {
                format!("Package {} verified, ready to install", v.spec.version)
            }
            State::Installing(i) | State::Rebooting(i) => i.note.clone(),
            State::Success(_) => match self.version() {
                Some(v) => format!("Update to {v} completed"),
                None => "Update completed".into(),
            },
            State::Failed(f) => format!("Update failed: {}", f.error),
        };
        Status {
            stage: self.stage(),
            progress: self.progress(),
            message,
            error: self.error().map(|e| e.to_string()),
            version: self.version().map(str::to_string),
            bytes_downloaded: self.bytes_done(),
            bytes_total: self.total(),
        }
    }
}
