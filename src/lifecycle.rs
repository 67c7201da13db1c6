//! The OTA lifecycle as a pure state machine: stages, the allowed transitions, which command is
//! allowed when, progress math and the 5 % report steps. No I/O here: `updater` drives it and
//! persists what it says.
//!
//! ```text
//!            /download                 complete            MD5 ok              /update
//!   idle ─────────────► downloading ─────────────► verifying ──────► toInstall ───────► installing
//!    ▲                    │     ▲                     │                 │   │               │
//!    │ (start, no state)  │     │ /download           │ MD5 mismatch    │   │ expired       │ processes
//!                         ▼     │ (another package)   ▼                 │   ▼               ▼ restarting
//!                       failed ◄──────────────────────┴─────────────────┘ failed         rebooting
//!                         │  ▲                                                              │
//!                         │  └───────────────────── any step fails (rolled back) ◄──────────┤
//!                         │ /download                                                       ▼
//!                         └──────────► downloading ◄──────────── /download ──────────── success
//! ```

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{self, OtaError};

/// Where the updater is. Serialised exactly as the contract spells the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Stage {
    /// Nothing to do: no package known.
    #[serde(rename = "idle")]
    Idle,
    /// A package is being fetched (also while resuming after a restart).
    #[serde(rename = "downloading")]
    Downloading,
    /// The complete file's MD5 is being checked.
    #[serde(rename = "verifying")]
    Verifying,
    /// A verified package waits for `/update` (within the trust window).
    #[serde(rename = "toInstall")]
    ToInstall,
    /// Processes are stopped and files deployed (journalled, rolled back on failure).
    #[serde(rename = "installing")]
    Installing,
    /// Files are in place; processes and services are being started again in order.
    #[serde(rename = "rebooting")]
    Rebooting,
    /// The last update completed; stays until the next accepted `/download`.
    #[serde(rename = "success")]
    Success,
    /// The last operation failed (`error` says why); stays until the next accepted `/download`.
    #[serde(rename = "failed")]
    Failed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Idle => "idle",
            Stage::Downloading => "downloading",
            Stage::Verifying => "verifying",
            Stage::ToInstall => "toInstall",
            Stage::Installing => "installing",
            Stage::Rebooting => "rebooting",
            Stage::Success => "success",
            Stage::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "idle" => Stage::Idle,
            "downloading" => Stage::Downloading,
            "verifying" => Stage::Verifying,
            "toInstall" => Stage::ToInstall,
            "installing" => Stage::Installing,
            "rebooting" => Stage::Rebooting,
            "success" => Stage::Success,
            "failed" => Stage::Failed,
            _ => return None,
        })
    }

    /// The transitions the contract allows; `Lifecycle::transition` refuses every other one.
    pub fn can_go_to(self, to: Stage) -> bool {
        use Stage::*;
        matches!(
            (self, to),
            (Idle, Downloading)
                | (Downloading, Verifying)
                | (Downloading, Failed)
                | (Verifying, ToInstall)
                | (Verifying, Failed)
                | (ToInstall, Installing)
                | (ToInstall, Downloading)
                | (ToInstall, Failed)
                | (Installing, Rebooting)
                | (Installing, Success)
                | (Installing, Failed)
                | (Rebooting, Success)
                | (Rebooting, Failed)
                | (Success, Downloading)
                | (Failed, Downloading)
        )
    }

    /// A download or an installation is running.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            Stage::Downloading | Stage::Verifying | Stage::Installing | Stage::Rebooting
        )
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `/download` asked for, validated (md5 lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    pub version: String,
    pub package_url: String,
    pub package_name: String,
    pub package_size: u64,
    pub package_md5: String,
}

impl PackageSpec {
    /// The contract's identity of a package: same URL and same MD5.
    pub fn same_package(&self, other: &PackageSpec) -> bool {
        self.package_url == other.package_url && self.package_md5 == other.package_md5
    }
}

/// What the server answered about a file, to resume only the same file (`If-Range`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validator {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validator {
    /// The `If-Range` value: a strong ETag, else the Last-Modified date.
    pub fn if_range(&self) -> Option<&str> {
        match (&self.etag, &self.last_modified) {
            (Some(e), _) if !e.starts_with("W/") => Some(e),
            (_, Some(lm)) => Some(lm),
            _ => None,
        }
    }
}

/// Decision on a `/download` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadDecision {
    /// Start a download job (resuming from `resume_from` bytes of the partial on disk).
    Start { resume_from: u64 },
    /// The same package is already being downloaded: answer `downloading`, restart nothing.
    Join,
    /// The same package is verified and waits: answer `toInstall`.
    AlreadyVerified,
}

/// Decision on an `/update` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateDecision {
    Install,
    /// The trust window is over: delete package and state, go `failed` with this error.
    Expired(OtaError),
}

/// The installation's own progress (modules deployed out of the total).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallProgress {
    pub done: usize,
    pub total: usize,
}

/// A consistent picture: the `data` of `/progress` (and, its first four fields, the callback
/// body sent to device-api).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub stage: Stage,
    /// 0-100: bytes/size while downloading, share hashed while verifying, modules done/total
    /// while installing.
    pub progress: u8,
    pub message: String,
    /// `null`, or `"<CODE>: <detail>"` when `stage` is `failed`.
    pub error: Option<String>,
    /// Extra: the package version concerned, if any.
    pub version: Option<String>,
    /// Extra: bytes on disk (downloading) or hashed (verifying).
    pub bytes_downloaded: u64,
    /// Extra: the package size.
    pub bytes_total: u64,
}

/// The whole lifecycle state. One place changes the stage: [`Lifecycle::transition`].
#[derive(Debug, Clone)]
pub struct Lifecycle {
    stage: Stage,
    /// The package of the current (or last) download; also a failed download's partial.
    pub package: Option<PackageSpec>,
    /// Bytes of the package received (downloading) or hashed (verifying): what is shown.
    pub bytes_done: u64,
    /// Bytes of the download known to be on disk (fdatasync'd): what the state file may claim.
    pub bytes_durable: u64,
    pub validator: Validator,
    pub verified_at: Option<OffsetDateTime>,
    pub error: Option<OtaError>,
    pub install: InstallProgress,
    /// Free text shown for stages whose message is not derived from numbers.
    pub note: String,
    /// The progress value kept when the stage became `failed`.
    failed_progress: u8,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
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
        }
    }

    /// Rebuild from what was persisted (start-up); no transition rules apply here.
    pub fn restored(stage: Stage, package: Option<PackageSpec>, bytes_done: u64) -> Lifecycle {
        let mut l = Lifecycle::new();
        l.stage = stage;
        l.package = package;
        l.bytes_done = bytes_done;
        l.bytes_durable = bytes_done;
        l
    }

    /// `bytes_downloaded` for the state file: never more than is durable while a download's
    /// bytes are in flight (or were, when it failed).
    pub fn persisted_bytes(&self) -> u64 {
        match self.stage {
            Stage::Downloading | Stage::Failed => self.bytes_done.min(self.bytes_durable),
            _ => self.bytes_done,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The one place the stage changes. Refuses transitions the contract does not allow.
    pub fn transition(&mut self, to: Stage) -> Result<(), OtaError> {
        if !self.stage.can_go_to(to) {
            return Err(error::internal(format!(
                "transition {} -> {} is not allowed",
                self.stage, to
            )));
        }
        if to == Stage::Failed {
            self.failed_progress = self.progress();
        }
        if to != Stage::Failed {
            self.error = None;
        }
        if to == Stage::Installing {
            self.install = InstallProgress::default();
        }
        self.stage = to;
        Ok(())
    }

    /// Go to `failed` with `err` (from any busy stage, or `toInstall` on expiry).
    pub fn fail(&mut self, err: OtaError) -> Result<(), OtaError> {
        self.transition(Stage::Failed)?;
        self.error = Some(err);
        Ok(())
    }

    /// Set the stage at start-up recovery, outside the transition rules (nothing is running yet).
    pub fn restored_stage(&mut self, stage: Stage) {
        self.stage = stage;
    }

    /// Force `failed` at start-up recovery (the previous run was interrupted).
    pub fn restored_failed(&mut self, err: OtaError) {
        self.failed_progress = self.progress();
        self.stage = Stage::Failed;
        self.error = Some(err);
    }

    /// Which answer `/download` gets. `partial` is the package whose bytes are on disk, if any.
    pub fn decide_download(&self, req: &PackageSpec) -> Result<DownloadDecision, OtaError> {
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
                let window = time::Duration::hours(trust_window_hours.min(i64::MAX as u64) as i64);
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
            version: self.package.as_ref().map(|p| p.version.clone()),
            bytes_downloaded: self.bytes_done,
            bytes_total: self.total(),
        }
    }
}

/// Download progress: bytes/size, and 100 only when complete.
pub fn download_percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    if done >= total {
        return 100;
    }
    ((done as u128 * 100 / total as u128) as u8).min(99)
}

fn share_percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    (done.min(total) as u128 * 100 / total as u128) as u8
}

/// The 5 % step a progress value belongs to (a callback is due when it changes).
pub fn report_step(progress: u8) -> u8 {
    progress / 5 * 5
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// ISO 8601 / RFC 3339 in UTC, seconds precision: `2026-11-26T17:33:34Z`.
pub fn iso8601(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parse an ISO 8601 time as written by this updater (RFC 3339) or by the Python updater
/// (`datetime.isoformat()`, possibly without an offset: taken as UTC).
pub fn parse_iso8601(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    let naive = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day][first [T] [ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    time::PrimitiveDateTime::parse(s, &naive)
        .ok()
        .map(|p| p.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn spec(v: &str, url: &str) -> PackageSpec {
        PackageSpec {
            version: v.into(),
            package_url: url.into(),
            package_name: "p.zip".into(),
            package_size: 1000,
            package_md5: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    fn at(stage: Stage) -> Lifecycle {
        Lifecycle::restored(stage, Some(spec("1.2.3", "https://a/p.zip")), 500)
    }

    const ALL: [Stage; 8] = [
        Stage::Idle,
        Stage::Downloading,
        Stage::Verifying,
        Stage::ToInstall,
        Stage::Installing,
        Stage::Rebooting,
        Stage::Success,
        Stage::Failed,
    ];

    #[test]
    fn stage_names_match_contract() {
        let names: Vec<_> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "idle",
                "downloading",
                "verifying",
                "toInstall",
                "installing",
                "rebooting",
                "success",
                "failed"
            ]
        );
        for s in ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn transitions_outside_the_table_are_refused() {
        let mut l = Lifecycle::new();
        assert!(l.transition(Stage::Installing).is_err());
        assert!(l.transition(Stage::Success).is_err());
        l.transition(Stage::Downloading).unwrap();
        assert!(l.transition(Stage::ToInstall).is_err(), "must verify first");
        l.transition(Stage::Verifying).unwrap();
        l.transition(Stage::ToInstall).unwrap();
        l.transition(Stage::Installing).unwrap();
        assert!(l.transition(Stage::Downloading).is_err());
        l.transition(Stage::Rebooting).unwrap();
        l.transition(Stage::Success).unwrap();
        assert!(l.transition(Stage::Installing).is_err());
        l.transition(Stage::Downloading).unwrap();
    }

    #[test]
    fn contract_1_download_decisions() {
        let same = spec("1.2.3", "https://a/p.zip");
        let other = spec("1.2.4", "https://a/q.zip");
        assert_eq!(
            at(Stage::Downloading).decide_download(&same),
            Ok(DownloadDecision::Join)
        );
        assert_eq!(
            at(Stage::Downloading)
                .decide_download(&other)
                .unwrap_err()
                .code,
            ErrorCode::OperationInProgress
        );
        for s in [Stage::Installing, Stage::Rebooting] {
            assert_eq!(
                at(s).decide_download(&same).unwrap_err().code,
                ErrorCode::OperationInProgress
            );
        }
        assert_eq!(
            at(Stage::ToInstall).decide_download(&same),
            Ok(DownloadDecision::AlreadyVerified)
        );
        assert_eq!(
            at(Stage::ToInstall).decide_download(&other),
            Ok(DownloadDecision::Start { resume_from: 0 })
        );
        // A failed download of the same package resumes from its byte position.
        assert_eq!(
            at(Stage::Failed).decide_download(&same),
            Ok(DownloadDecision::Start { resume_from: 500 })
        );
        assert_eq!(
            at(Stage::Success).decide_download(&other),
            Ok(DownloadDecision::Start { resume_from: 0 })
        );
        assert_eq!(
            Lifecycle::new().decide_download(&same),
            Ok(DownloadDecision::Start { resume_from: 0 })
        );
    }

    #[test]
    fn contract_1_update_decisions() {
        let now = OffsetDateTime::now_utc();
        let code = |s: Stage, v: &str| at(s).decide_update(v, now, 24).unwrap_err().code;
        assert_eq!(code(Stage::Verifying, "1.2.3"), ErrorCode::Md5NotVerified);
        assert_eq!(
            code(Stage::Downloading, "1.2.3"),
            ErrorCode::DownloadIncomplete
        );
        assert_eq!(code(Stage::Idle, "1.2.3"), ErrorCode::DownloadIncomplete);
        assert_eq!(
            code(Stage::Installing, "1.2.3"),
            ErrorCode::OperationInProgress
        );
        assert_eq!(code(Stage::ToInstall, "9.9.9"), ErrorCode::PackageNotFound);
        let mut l = at(Stage::ToInstall);
        l.verified_at = Some(now - time::Duration::hours(23));
        assert_eq!(
            l.decide_update("1.2.3", now, 24),
            Ok(UpdateDecision::Install)
        );
    }

    #[test]
    fn contract_1_update_after_trust_window_is_expired_with_exact_message() {
        let now = OffsetDateTime::now_utc();
        let mut l = at(Stage::ToInstall);
        let verified = now - time::Duration::hours(25);
        l.verified_at = Some(verified);
        match l.decide_update("1.2.3", now, 24).unwrap() {
            UpdateDecision::Expired(e) => {
                assert_eq!(e.code, ErrorCode::PackageExpired);
                assert_eq!(
                    e.to_string(),
                    format!(
                        "PACKAGE_EXPIRED: Package verified at {} has exceeded 24-hour trust window, please re-download",
                        iso8601(verified)
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        l.fail(error::expired("x")).unwrap();
        assert_eq!(l.stage(), Stage::Failed);
    }

    #[test]
    fn contract_1_progress_math() {
        assert_eq!(download_percent(0, 1000), 0);
        assert_eq!(download_percent(999, 1000), 99);
        assert_eq!(download_percent(1000, 1000), 100);
        assert_eq!(download_percent(5, 0), 0);
        let mut l = at(Stage::Downloading);
        l.bytes_done = 472;
        let s = l.status();
        assert_eq!(s.progress, 47);
        assert_eq!(s.message, "Downloading package... 0.0 MB / 0.0 MB");
        let mut l = at(Stage::ToInstall);
        l.transition(Stage::Installing).unwrap();
        l.install = InstallProgress { done: 2, total: 3 };
        assert_eq!(l.progress(), 66);
        assert_eq!(report_step(47), 45);
        assert_eq!(report_step(100), 100);
    }

    #[test]
    fn contract_6_state_file_never_claims_more_than_is_durable() {
        let mut l = at(Stage::Downloading);
        l.bytes_done = 700;
        l.bytes_durable = 600;
        assert_eq!(l.persisted_bytes(), 600);
        assert_eq!(
            l.status().bytes_downloaded,
            700,
            "/progress shows what was received"
        );
        l.bytes_done = 0; // started over: nothing of the old file counts
        assert_eq!(l.persisted_bytes(), 0);
        l.bytes_done = 700;
        l.fail(error::download_failed("x")).unwrap();
        assert_eq!(l.persisted_bytes(), 600);
        let mut l = at(Stage::Verifying);
        l.bytes_done = 1000;
        assert_eq!(l.persisted_bytes(), 1000);
    }

    #[test]
    fn failed_keeps_progress_and_error_only_shown_when_failed() {
        let mut l = at(Stage::Downloading);
        l.fail(error::download_failed("boom")).unwrap();
        let s = l.status();
        assert_eq!(s.stage, Stage::Failed);
        assert_eq!(s.progress, 50);
        assert_eq!(s.error.as_deref(), Some("DOWNLOAD_FAILED: boom"));
        l.transition(Stage::Downloading).unwrap();
        assert_eq!(l.status().error, None);
    }

    #[test]
    fn iso_times_roundtrip_and_python_forms_parse() {
        let t = parse_iso8601("2026-11-25T10:00:00Z").unwrap();
        assert_eq!(iso8601(t), "2026-11-25T10:00:00Z");
        assert_eq!(
            parse_iso8601("2026-11-25T10:00:00.123456"),
            Some(t + time::Duration::microseconds(123456))
        );
        assert_eq!(parse_iso8601("2026-11-25T11:00:00+01:00"), Some(t));
        assert_eq!(parse_iso8601("yesterday"), None);
    }

    #[test]
    fn validator_prefers_strong_etag() {
        let v = Validator {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Mon".into()),
        };
        assert_eq!(v.if_range(), Some("\"abc\""));
        let v = Validator {
            etag: Some("W/\"abc\"".into()),
            last_modified: Some("Mon".into()),
        };
        assert_eq!(v.if_range(), Some("Mon"));
        assert_eq!(Validator::default().if_range(), None);
    }
}
