//! The outcome of the last operation (`./tmp/outcome.json`) and the install history
//! (`./tmp/history.jsonl`), docs/API.md section 8.5.
//!
//! Every `success` or `failed` is written here durably ([`crate::fsutil::write_atomic`]) before it is
//! reported, with `delivered: false`; once device-api has answered the final report with HTTP
//! 200 the file is rewritten with `delivered: true`. After a restart the daemon shows the
//! outcome on `/progress` until the next accepted `/download` and reports it again.
//!
//! The history keeps the last [`HISTORY_LEN`] outcomes, one JSON object per line, oldest first,
//! for `tope-updater status` and for people debugging a printer. It is rewritten atomically on
//! every outcome (at most a few tens of KiB); a failure to write it is logged, never fatal: the
//! outcome file is the record that counts.

use std::io;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checksum::Checksum;
use crate::fsutil::ReadBack;
use crate::lifecycle::{self, Lifecycle, Stage};
use crate::workdir::{OwnFile, OwnFileError};

/// Outcomes kept in the history.
pub const HISTORY_LEN: usize = 50;
/// Longest `message` or `error` kept (in bytes); longer ones are cut, so that the history
/// stays far below [`crate::fsutil::MAX_READ_BACK`].
const MAX_TEXT: usize = 2048;

/// A finished operation: an installation, or a download, verification or expiry that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Tells this outcome from any other (nanoseconds since the epoch when it was recorded).
    pub id: u64,
    /// `success` or `failed`.
    pub stage: Stage,
    /// The package version it is about (empty when unknown).
    pub version: String,
    /// The `message` of `/progress`.
    pub message: String,
    /// `"<CODE>: <detail>"` for `failed`.
    pub error: Option<String>,
    /// The `progress` shown with it.
    pub progress: u8,
    /// ISO 8601 time it was recorded.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    /// The package's announced MD5, lowercase hex on disk as always.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::checksum::md5_hex_opt"
    )]
    pub package_md5: Option<Checksum>,
    /// `"<algorithm>:<hex>"` of a fleet artifact checked with another hash than MD5 (then
    /// `package_md5` is absent; docs/API.md 9.1).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::checksum::tagged_opt"
    )]
    pub package_checksum: Option<Checksum>,
    /// The installation it ends, when it ends one (see `Lifecycle::install_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<u64>,
    /// device-api answered the final report with HTTP 200.
    pub delivered: bool,
}

impl Outcome {
    /// The outcome the lifecycle shows, if it shows one (`success` or `failed`), recorded now.
    pub fn of(l: &Lifecycle, now: OffsetDateTime) -> Option<Outcome> {
        if !matches!(l.stage(), Stage::Success | Stage::Failed) {
            return None;
        }
        let s = l.status();
        Some(Outcome {
            id: u64::try_from(now.unix_timestamp_nanos()).unwrap_or(0),
            stage: s.stage,
            version: s.version.unwrap_or_default(),
            message: cut(&s.message),
            error: s.error.as_deref().map(cut),
            progress: s.progress,
            at: lifecycle::iso8601(now),
            package_name: l.package().map(|p| p.package_name.clone()),
            package_md5: l.package().and_then(|p| p.package_md5.split_md5().0),
            package_checksum: l.package().and_then(|p| p.package_md5.split_md5().1),
            install_id: l.install_id(),
            delivered: false,
        })
    }

    /// Whether this outcome says what the lifecycle shows (same stage, version and error).
    pub fn describes(&self, l: &Lifecycle) -> bool {
        self.stage == l.stage()
            && l.version().unwrap_or_default() == self.version
            && l.error().map(|e| cut(&e.to_string())) == self.error
    }

    fn parse(bytes: &[u8]) -> Result<Outcome, NotAnOutcome> {
        let o: Outcome = serde_json::from_slice(bytes).map_err(NotAnOutcome::Json)?;
        if !matches!(o.stage, Stage::Success | Stage::Failed) {
            return Err(NotAnOutcome::Stage(o.stage));
        }
        Ok(o)
    }
}

/// Why `outcome.json` (or a line of the history) is not an outcome.
#[derive(Debug, thiserror::Error)]
pub enum NotAnOutcome {
    #[error("{0}")]
    Json(serde_json::Error),
    /// A stage other than `success` or `failed`.
    #[error("stage {0} is not an outcome")]
    Stage(Stage),
}

/// Why `installed.json` names no installed version.
#[derive(Debug, thiserror::Error)]
pub enum NoInstalledVersion {
    #[error("not JSON: {0}")]
    Json(serde_json::Error),
    #[error("no x.y.z `version`")]
    Version,
}

/// Cut `s` to [`MAX_TEXT`] bytes at a character boundary.
fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The version the last successful installation put in place, as [`save_installed`] wrote it;
/// `None` when none is known (a new printer, or an unusable file, set aside).
pub fn installed(file: &OwnFile) -> Option<String> {
    file.load(|bytes| {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(NoInstalledVersion::Json)?;
        v.get("version")
            .and_then(serde_json::Value::as_str)
            .filter(|v| crate::package::is_semver(v))
            .map(str::to_string)
            .ok_or(NoInstalledVersion::Version)
    })
}

/// Record durably that `version` is installed (at each success; the downgrade policy reads it).
pub fn save_installed(file: &OwnFile, version: &str, now: OffsetDateTime) -> io::Result<()> {
    let body = serde_json::json!({"version": version, "at": lifecycle::iso8601(now)});
    file.save(body.to_string().as_bytes())
}

/// The last outcome, if a usable one is recorded.
pub fn load(file: &OwnFile) -> Option<Outcome> {
    file.load(Outcome::parse)
}

/// Read the last outcome without touching anything (for `status`): `Err` says why it is
/// not usable.
pub fn peek(file: &OwnFile) -> Result<Option<Outcome>, OwnFileError<NotAnOutcome>> {
    file.peek(Outcome::parse)
}

/// Write the outcome durably.
pub fn save(file: &OwnFile, o: &Outcome) -> io::Result<()> {
    file.save_json(o)
}

/// The history, oldest first. Lines that do not parse are skipped.
pub fn history(file: &OwnFile) -> Vec<Outcome> {
    match file.read() {
        ReadBack::Data(bytes) => parse_history(&bytes),
        _ => Vec::new(),
    }
}

fn parse_history(bytes: &[u8]) -> Vec<Outcome> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| Outcome::parse(line).ok())
        .collect()
}

/// Add `o` to the history, keeping the last [`HISTORY_LEN`]. An entry with the same `id` is
/// replaced (its `delivered` flag changed).
pub fn append_history(file: &OwnFile, o: &Outcome) -> io::Result<()> {
    let mut all = match file.read() {
        ReadBack::Missing => Vec::new(),
        ReadBack::Data(bytes) => parse_history(&bytes),
        ReadBack::Refused(why) => {
            tracing::warn!(
                "history {} unusable ({why}); starting a new one",
                file.path().display()
            );
            let _ = file.set_aside();
            Vec::new()
        }
    };
    match all.iter_mut().find(|h| h.id == o.id) {
        Some(h) => *h = o.clone(),
        None => all.push(o.clone()),
    }
    let skip = all.len().saturating_sub(HISTORY_LEN);
    let mut out = Vec::new();
    for h in &all[skip..] {
        serde_json::to_writer(&mut out, h).map_err(io::Error::other)?;
        out.push(b'\n');
    }
    file.save(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Algorithm;
    use crate::error;
    use crate::lifecycle::{PackageSpec, Validator};
    use crate::workdir::Unusable;

    fn spec() -> PackageSpec {
        PackageSpec {
            version: "1.2.3".into(),
            package_url: "https://a/p.zip".into(),
            package_name: "p.zip".into(),
            package_size: 10,
            package_md5: Checksum::from_hex(Algorithm::Md5, "0123456789abcdef0123456789abcdef")
                .unwrap(),
        }
    }

    fn failed() -> Lifecycle {
        let mut l = Lifecycle::restored_to_install(spec(), Validator::default(), now());
        l.begin_install(7).unwrap();
        l.failed(error::deployment_failed("post command exited 1"))
            .unwrap();
        l
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn contract_8_5_outcome_of_a_failure_roundtrips() {
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::OwnFile::new(d.path().join("outcome.json"));
        let l = failed();
        let o = Outcome::of(&l, now()).unwrap();
        assert_eq!(o.stage, Stage::Failed);
        assert_eq!(o.version, "1.2.3");
        assert_eq!(
            o.error.as_deref(),
            Some("DEPLOYMENT_FAILED: post command exited 1")
        );
        assert_eq!(o.package_name.as_deref(), Some("p.zip"));
        assert!(!o.delivered);
        assert!(o.describes(&l));
        save(&f, &o).unwrap();
        assert_eq!(load(&f), Some(o.clone()));
        assert_eq!(peek(&f).unwrap(), Some(o));
        assert!(Outcome::of(&Lifecycle::new(), now()).is_none());
    }

    /// docs/API.md 8.5: an outcome written by 0.1.0 (the fixture is its exact output) loads,
    /// its `package_md5` a checksum, and is written back byte for byte.
    #[test]
    fn api_8_5_outcome_of_0_1_0_loads_and_keeps_its_format() {
        let bytes = include_bytes!("../tests/fixtures/outcome-0.1.0.json");
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::OwnFile::new(d.path().join("outcome.json"));
        std::fs::write(f.path(), bytes).unwrap();
        let o = load(&f).unwrap();
        assert_eq!(
            o.package_md5,
            Checksum::from_hex(Algorithm::Md5, "d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(serde_json::to_vec_pretty(&o).unwrap(), bytes);
        // Without the field (a failed download of no package) it is still an outcome.
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let mut v = v.as_object().unwrap().clone();
        v.remove("package_md5");
        let o: Outcome = serde_json::from_value(v.into()).unwrap();
        assert_eq!(o.package_md5, None);
    }

    #[test]
    fn an_outcome_describes_only_the_same_stage_version_and_error() {
        let o = Outcome::of(&failed(), now()).unwrap();
        assert!(!o.describes(&Lifecycle::restored_success("1.2.3")));
        let other = Lifecycle::restored_failed(error::internal("x"), None, Some("1.2.3"), 0);
        assert!(!o.describes(&other));
        let same = Lifecycle::restored_failed(
            error::deployment_failed("post command exited 1"),
            None,
            Some("1.2.3"),
            0,
        );
        assert!(o.describes(&same));
    }

    #[test]
    fn unusable_outcome_files_are_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::OwnFile::new(d.path().join("outcome.json"));
        let p = f.path().to_path_buf();
        let idle = br#"{"id":1,"stage":"idle","version":"","message":"","error":null,"progress":0,"at":"","delivered":false}"#;
        std::fs::write(&p, idle).unwrap();
        let e = peek(&f).unwrap_err();
        assert!(
            matches!(e.kind, Unusable::Parse(NotAnOutcome::Stage(Stage::Idle))),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!("{}: stage idle is not an outcome", p.display())
        );
        for bad in [&b"{\"stage\": \"succ"[..], b"[]", idle] {
            std::fs::write(&p, bad).unwrap();
            assert!(peek(&f).is_err());
            assert_eq!(load(&f), None);
            assert!(!p.exists());
            assert!(d.path().join("outcome.json.unusable").exists());
        }
        std::fs::create_dir(&p).unwrap();
        assert_eq!(load(&f), None);
        assert!(d.path().join("outcome.json.unusable").is_dir());
    }

    #[test]
    fn contract_8_5_history_keeps_the_last_50() {
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::OwnFile::new(d.path().join("history.jsonl"));
        let p = f.path().to_path_buf();
        let base = Outcome::of(&failed(), now()).unwrap();
        for i in 0..60u64 {
            let o = Outcome {
                id: i,
                ..base.clone()
            };
            append_history(&f, &o).unwrap();
        }
        let h = history(&f);
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.first().unwrap().id, 10);
        assert_eq!(h.last().unwrap().id, 59);
        // Marking one delivered replaces it in place.
        let mut last = h.last().unwrap().clone();
        last.delivered = true;
        append_history(&f, &last).unwrap();
        let h = history(&f);
        assert_eq!(h.len(), HISTORY_LEN);
        assert!(h.last().unwrap().delivered);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), HISTORY_LEN);
    }

    #[test]
    fn long_texts_are_cut_so_the_history_stays_small() {
        let mut l = Lifecycle::restored_to_install(spec(), Validator::default(), now());
        l.begin_install(7).unwrap();
        l.failed(error::deployment_failed("é".repeat(10_000)))
            .unwrap();
        let o = Outcome::of(&l, now()).unwrap();
        assert!(o.error.as_ref().unwrap().len() <= MAX_TEXT + 3);
        assert!(o.message.len() <= MAX_TEXT + 3);
        assert!(o.describes(&l));
        let d = tempfile::tempdir().unwrap();
        let f = crate::workdir::OwnFile::new(d.path().join("history.jsonl"));
        let p = f.path().to_path_buf();
        for i in 0..HISTORY_LEN as u64 {
            append_history(&f, &Outcome { id: i, ..o.clone() }).unwrap();
        }
        assert!(std::fs::metadata(&p).unwrap().len() < crate::fsutil::MAX_READ_BACK / 4);
    }
}
