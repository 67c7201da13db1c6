//! The OTA lifecycle as a pure state machine: stages, the allowed transitions, which command is
//! allowed when, progress math and the 5 % report steps. No I/O here: `updater` drives it
//! through the named transitions of [`Lifecycle`] (in `machine`) and persists what it says.
//!
//! The stages and how they follow each other are drawn once, in docs/ARCHITECTURE.md
//! ("Stages"); the transitions that make each change:
//!
//! | transition | from | to |
//! |---|---|---|
//! | `begin_download` | idle, success, failed, toInstall | downloading |
//! | `download_progress`, `checkpointed`, `restart_download` | downloading | downloading |
//! | `begin_verify` | downloading | verifying |
//! | `verified` | verifying | toInstall |
//! | `begin_install` | toInstall | installing |
//! | `stopping`, `deploying` | installing | installing |
//! | `restarting`, `checking` | installing, rebooting | rebooting |
//! | `rolling_back` | installing, rebooting | (unchanged) |
//! | `succeeded` | installing, rebooting | success |
//! | `failed`, `failed_file_deleted` | downloading, verifying, toInstall, installing, rebooting | failed |
//! | `expired` | toInstall | failed |
//!
//! A transition from a stage it does not accept changes nothing and answers
//! [`Refused`]. Start-up rebuilds the state found on disk with the `restored_*` constructors
//! (see `crate::startup`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checksum::Checksum;
use crate::error::OtaError;

mod machine;
pub use machine::{Lifecycle, Refused};

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

    /// The stage changes the contract allows; every named transition of [`Lifecycle`] stays
    /// inside this table (checked by its tests).
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

/// What `/download` asked for, validated at the API edge (`crate::api::request`), or as
/// `state.json` recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    pub version: String,
    pub package_url: String,
    pub package_name: String,
    pub package_size: u64,
    /// The whole package's announced hash (an [`Algorithm::Md5`](crate::checksum::Algorithm)
    /// digest: `package_md5`).
    pub package_md5: Checksum,
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

    #[test]
    fn stage_names_match_contract() {
        let all = [
            Stage::Idle,
            Stage::Downloading,
            Stage::Verifying,
            Stage::ToInstall,
            Stage::Installing,
            Stage::Rebooting,
            Stage::Success,
            Stage::Failed,
        ];
        let names: Vec<_> = all.iter().map(|s| s.as_str()).collect();
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
        for s in all {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn contract_1_progress_math() {
        assert_eq!(download_percent(0, 1000), 0);
        assert_eq!(download_percent(999, 1000), 99);
        assert_eq!(download_percent(1000, 1000), 100);
        assert_eq!(download_percent(5, 0), 0);
        assert_eq!(share_percent(2, 3), 66);
        assert_eq!(share_percent(5, 3), 100);
        assert_eq!(report_step(47), 45);
        assert_eq!(report_step(100), 100);
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
