//! The work dir (docs/API.md section 5) and every file the updater keeps in it: one owner for
//! their names and for the rules they are read and written by.
//!
//! ```text
//! <work_dir>/
//!   tmp/        downloads (<package_name>) and the updater's own files:
//!               state.json, outcome.json, history.jsonl, installed.json, recovery.json
//!   logs/       updater.log and its rotated copies
//!   backups/    journal.json (an installation in progress), install-files/ (its backups);
//!               anything else there is the Python updater's and is never touched
//! ```
//!
//! Each own file is an [`OwnFile`]: read back only when it is a regular file of at most
//! [`crate::fsutil::MAX_READ_BACK`] bytes (docs/API.md 8.3), set aside with a warning when it is not
//! usable ([`OwnFile::load`]) or only looked at ([`OwnFile::peek`], for `status`), written
//! atomically and durably ([`OwnFile::save`]).

mod own_file;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use own_file::{OwnFile, OwnFileError, Unusable};

/// `tmp/state.json`: the download or installation in progress (the Python updater's format).
pub const STATE_FILE: &str = "state.json";
/// `tmp/outcome.json`: the last outcome and whether device-api has it (docs/API.md 8.5).
pub const OUTCOME_FILE: &str = "outcome.json";
/// `tmp/history.jsonl`: the last outcomes, one JSON object per line.
pub const HISTORY_FILE: &str = "history.jsonl";
/// `tmp/installed.json`: the version the last successful installation put in place.
pub const INSTALLED_FILE: &str = "installed.json";
/// `tmp/recovery.json`: the crash-loop guard's count of start-up recoveries.
pub const RECOVERY_FILE: &str = "recovery.json";
/// `tmp/fleet.json`: the fleet server's action in progress and its final feedback until the
/// server took it (docs/API.md 9.1).
pub const FLEET_FILE: &str = "fleet.json";
/// `tmp/installed-files.json`: the files of the last successful installation with their
/// SHA-256 (docs/API.md 9.5).
pub const INSTALLED_FILES_FILE: &str = "installed-files.json";
/// `tmp/delta.json`: the plan and progress of a delta download (docs/API.md 9.5).
pub const DELTA_FILE: &str = "delta.json";
/// `tmp/delta.part`: the byte ranges a delta download fetched, at their offsets (sparse).
pub const DELTA_PART: &str = "delta.part";
/// `backups/journal.json`: the install journal.
pub const JOURNAL_FILE: &str = "journal.json";

/// File names the updater itself uses in `./tmp/` besides packages. With every `*.tmp`
/// (atomic writes) and `*.unusable` (files set aside) they are refused as a `package_name`
/// (docs/API.md section 8.3). At start every other entry of `./tmp/` but the package a state
/// refers to (and the `*.unusable` files) is removed (section 8.5).
pub const OWN_TMP_FILES: [&str; 9] = [
    STATE_FILE,
    FLEET_FILE,
    OUTCOME_FILE,
    RECOVERY_FILE,
    HISTORY_FILE,
    INSTALLED_FILE,
    INSTALLED_FILES_FILE,
    DELTA_FILE,
    DELTA_PART,
];

/// Whether `name` is, or could become, one of the updater's own files in `./tmp/`.
pub fn is_own_tmp_name(name: &str) -> bool {
    OWN_TMP_FILES.contains(&name) || name.ends_with(".tmp") || name.ends_with(".unusable")
}

/// The work dir of one configuration; every path the updater uses in it comes from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDir {
    root: PathBuf,
}

impl WorkDir {
    pub fn new(root: impl Into<PathBuf>) -> WorkDir {
        WorkDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn backups(&self) -> PathBuf {
        self.root.join("backups")
    }
    /// The directories created (0755) at start, the work dir itself first.
    pub fn dirs(&self) -> [PathBuf; 4] {
        [self.root.clone(), self.tmp(), self.logs(), self.backups()]
    }

    /// Where the package `name` (a `package_name` /download accepted) is downloaded.
    pub fn package(&self, name: &str) -> PathBuf {
        self.tmp().join(name)
    }

    pub fn state(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(STATE_FILE))
    }
    pub fn outcome(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(OUTCOME_FILE))
    }
    pub fn history(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(HISTORY_FILE))
    }
    pub fn installed(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(INSTALLED_FILE))
    }
    pub fn fleet(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(FLEET_FILE))
    }
    pub fn installed_files(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(INSTALLED_FILES_FILE))
    }
    pub fn delta(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(DELTA_FILE))
    }
    pub fn delta_part(&self) -> PathBuf {
        self.tmp().join(DELTA_PART)
    }
    pub fn recovery(&self) -> OwnFile {
        OwnFile::new(self.tmp().join(RECOVERY_FILE))
    }
    pub fn journal(&self) -> OwnFile {
        OwnFile::new(self.backups().join(JOURNAL_FILE))
    }
}

/// What people need of an install journal, whatever its format version: the version being
/// installed and how far it got. Read by start-up (to record the success of a committed
/// installation before recovery removes its journal) and by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JournalSummary {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
}

/// A journal file whose content is not a journal of any format.
#[derive(Debug, thiserror::Error)]
#[error("not a journal: {0}")]
pub struct NotAJournal(pub serde_json::Error);

impl JournalSummary {
    pub fn parse(bytes: &[u8]) -> Result<JournalSummary, NotAJournal> {
        serde_json::from_slice(bytes).map_err(NotAJournal)
    }
}

/// The journal's summary, read without touching anything; `Err` says why it cannot be read.
pub fn peek_journal(work: &WorkDir) -> Result<Option<JournalSummary>, OwnFileError<NotAJournal>> {
    work.journal().peek(JournalSummary::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_own_file_lives_where_docs_api_5_says() {
        let w = WorkDir::new("/var/lib/tope-updater");
        assert_eq!(
            w.state().path(),
            Path::new("/var/lib/tope-updater/tmp/state.json")
        );
        assert_eq!(
            w.outcome().path(),
            Path::new("/var/lib/tope-updater/tmp/outcome.json")
        );
        assert_eq!(
            w.history().path(),
            Path::new("/var/lib/tope-updater/tmp/history.jsonl")
        );
        assert_eq!(
            w.installed().path(),
            Path::new("/var/lib/tope-updater/tmp/installed.json")
        );
        assert_eq!(
            w.recovery().path(),
            Path::new("/var/lib/tope-updater/tmp/recovery.json")
        );
        assert_eq!(
            w.journal().path(),
            Path::new("/var/lib/tope-updater/backups/journal.json")
        );
        assert_eq!(
            w.package("p.zip"),
            Path::new("/var/lib/tope-updater/tmp/p.zip")
        );
        assert_eq!(w.logs(), Path::new("/var/lib/tope-updater/logs"));
        // Every own file of tmp/ is a name /download refuses.
        for f in [
            w.state(),
            w.outcome(),
            w.history(),
            w.installed(),
            w.recovery(),
        ] {
            let name = f.path().file_name().unwrap().to_str().unwrap();
            assert!(is_own_tmp_name(name), "{name}");
        }
        assert!(is_own_tmp_name("p.zip.tmp") && is_own_tmp_name("state.json.unusable"));
        assert!(!is_own_tmp_name("p.zip"));
    }

    #[test]
    fn the_journal_summary_reads_any_format() {
        let d = tempfile::tempdir().unwrap();
        let w = WorkDir::new(d.path());
        std::fs::create_dir_all(w.backups()).unwrap();
        assert_eq!(peek_journal(&w).unwrap(), None);
        std::fs::write(
            w.journal().path(),
            br#"{"format": 9, "version": "1.2.3", "phase": "deploying", "more": [1]}"#,
        )
        .unwrap();
        assert_eq!(
            peek_journal(&w).unwrap(),
            Some(JournalSummary {
                version: Some("1.2.3".into()),
                phase: Some("deploying".into())
            })
        );
        std::fs::write(w.journal().path(), b"{\"vers").unwrap();
        let e = peek_journal(&w).unwrap_err();
        assert!(matches!(e.kind, Unusable::Parse(NotAJournal(_))), "{e}");
        assert!(e.to_string().starts_with(&format!(
            "{}: not a journal: EOF while parsing",
            w.journal().path().display()
        )));
        // Peeking never sets anything aside.
        assert!(w.journal().path().exists());
    }
}
