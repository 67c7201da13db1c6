//! The install journal, `<backups_dir>/journal.json`: the durable record that lets a restart
//! finish or undo an installation. Its own versioned format (not the manifest's types), written
//! atomically ([`crate::fsutil::write_atomic`]) before each step it announces, compact so that
//! it stays within the 1 MiB the updater reads back ([`crate::fsutil::MAX_READ_BACK`]).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{self, OtaError};
use crate::fsutil::{self, ReadBack};

use super::beneath::{legacy_tmp_name, stage_name};
use super::error::JournalError;
use super::legacy::{self, LegacyJournal};
pub use super::stopped::Stopped;

/// File name of the journal inside the backups directory (the work dir's layout:
/// [`crate::workdir`]).
pub use crate::workdir::JOURNAL_FILE as JOURNAL_NAME;
/// The format written by this version: 3 stages new files under names of the updater's own
/// (`stage_id`, docs/API.md 9.6).
pub const FORMAT: u32 = 3;
/// The earlier format, still read back: the same fields without `stage_id`, its temporaries
/// named `<name>.tmp` (an installation interrupted by an earlier version is rolled back).
pub const FORMAT_TMP_SUFFIX: u32 = 2;

/// How far an installation got; each phase is written before the step it names begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// New files are being written under their staging names beside their destinations and
    /// missing directories created; nothing the printer uses has changed.
    Staging,
    /// Every temporary is written and flushed; no process has been stopped yet.
    Staged,
    /// Processes are being stopped; `stopped` lists how each ran, to start it again.
    Stopping,
    /// Backups are flushed and `existed` is final; destinations are being replaced, then post
    /// commands, starts and health checks run. Undone by a restart.
    Swapping,
    /// Every check passed: the installation stands; only the cleanup is left.
    Committed,
}

/// A module as the journal needs it to stop and start its processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JModule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_order: Option<i64>,
}

/// The destinations in one directory beneath one root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirTargets {
    /// The allowed root, as configured.
    pub root: PathBuf,
    /// The directory relative to the root, symlinks resolved at check time.
    pub rel: PathBuf,
    /// Destination names in this directory, in deployment order.
    pub files: Vec<String>,
    /// Those of `files` that did not exist before the installation (removed by a rollback).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub new: BTreeSet<String>,
}

/// A directory the installation creates (removed by a rollback when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedDir {
    pub root: PathBuf,
    pub rel: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    /// The installation's random id: destination `n` (in the order of `dirs`, then `files`) is
    /// staged as `.tope-stage-<stage_id>-<n>` in its directory. Absent in format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_id: Option<String>,
    /// Staging names (by number) found taken by someone else when staging tried to create
    /// them: never removed by the rollback that follows. In memory only: the names were checked
    /// free before the journal was written, so only a race within one installation puts one here.
    #[serde(skip)]
    pub foreign: BTreeSet<usize>,
    pub version: String,
    pub phase: Phase,
    pub modules: Vec<JModule>,
    pub dirs: Vec<DirTargets>,
    /// Outermost first.
    #[serde(default)]
    pub created: Vec<CreatedDir>,
    #[serde(default)]
    pub stopped: Vec<Stopped>,
}

impl Journal {
    /// How many destinations; backups are numbered 0.. in the order of `dirs`, then `files`.
    pub fn target_count(&self) -> usize {
        self.dirs.iter().map(|d| d.files.len()).sum()
    }

    /// The name destination `n` (numbered as the backups) called `name` is staged under, and
    /// restored through, in its directory: the updater's own name (format 3), or `<name>.tmp`
    /// for a journal of format 2.
    pub fn staging_name(&self, n: usize, name: &str) -> OsString {
        match &self.stage_id {
            Some(id) => stage_name(id, n),
            None => legacy_tmp_name(OsStr::new(name)),
        }
    }

    /// The name a rollback puts backup `n` back through (linked there, then renamed over the
    /// destination): the staging name; for a journal of format 2, whose `<name>.tmp` may be
    /// someone else's (a directory, say), `.tope-stage-legacy-<n>`, a name of the updater's own.
    pub fn restore_name(&self, n: usize, name: &str) -> OsString {
        match &self.stage_id {
            Some(_) => self.staging_name(n, name),
            None => stage_name("legacy", n),
        }
    }
}

/// A new random installation id for [`Journal::stage_id`]: 16 hex digits.
pub fn new_stage_id() -> Result<String, OtaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| error::internal("the system's random generator failed"))?;
    Ok(crate::checksum::hex(&bytes))
}

pub fn path(backups_dir: &Path) -> PathBuf {
    backups_dir.join(JOURNAL_NAME)
}

/// Serialise, refusing a journal the updater could not read back.
pub fn encode(j: &Journal) -> Result<Vec<u8>, OtaError> {
    let bytes = serde_json::to_vec(j)
        .map_err(|e| error::internal(format!("cannot serialise the journal: {e}")))?;
    if bytes.len() as u64 > fsutil::MAX_READ_BACK {
        return Err(error::invalid_package(format!(
            "{} files are too many for one installation (its journal would take {} bytes, \
             more than {})",
            j.target_count(),
            bytes.len(),
            fsutil::MAX_READ_BACK
        )));
    }
    Ok(bytes)
}

/// Write the journal durably. A failure is one of the updater's own files: `INTERNAL_ERROR`
/// (docs/API.md section 8.1), whatever the cause (a full disk included, named in the detail).
pub fn write(backups_dir: &Path, j: &Journal) -> Result<(), OtaError> {
    let bytes = encode(j)?;
    fsutil::write_atomic(&path(backups_dir), &bytes)
        .map_err(|e| error::internal(format!("writing {JOURNAL_NAME}: {e}")))
}

/// What [`read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    None,
    Journal(Box<Journal>),
    /// A journal of release 0.1.0 (no `format` field: docs/API.md 9.4), not checked yet.
    Legacy(Box<LegacyJournal>),
    /// Unreadable or of an unknown format: set aside as `journal.json.unusable`.
    SetAside(String),
}

/// Read the journal, setting aside (with the reason) one that cannot be used.
pub fn read(backups_dir: &Path) -> Found {
    let p = path(backups_dir);
    let why = match fsutil::read_back(&p, fsutil::MAX_READ_BACK) {
        ReadBack::Missing => return Found::None,
        ReadBack::Data(bytes) => match parse(&bytes) {
            Ok(j) => return Found::Journal(Box::new(j)),
            // Written by release 0.1.0: its own format, read strictly.
            Err(JournalError::NoFormat) => match legacy::parse(&bytes) {
                Ok(j) => return Found::Legacy(Box::new(j)),
                Err(why) => why.to_string(),
            },
            Err(why) => why.to_string(),
        },
        ReadBack::Refused(why) => why,
    };
    set_aside(backups_dir, &why)
}

/// Set the journal aside as unusable, `why` and where it went in the answer.
pub fn set_aside(backups_dir: &Path, why: &str) -> Found {
    match fsutil::set_aside(&path(backups_dir)) {
        Ok(aside) => Found::SetAside(format!("{why}; kept as {}", aside.display())),
        Err(e) => Found::SetAside(format!("{why}; it could not be set aside: {e}")),
    }
}

/// Parse a journal of the current format, or of format 2.
///
/// Read straight from the bytes, field by field, so that a key given twice is refused as the
/// summary reader of start-up and `status` refuses it: both readers see the same journal or none.
pub fn parse(bytes: &[u8]) -> Result<Journal, JournalError> {
    /// The format alone, whatever else the object holds.
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        format: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(JournalError::NotJson)?;
    match head.format.as_ref().and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(FORMAT) || f == u64::from(FORMAT_TMP_SUFFIX) => {}
        Some(f) => return Err(JournalError::UnknownFormat(f)),
        None => return Err(JournalError::NoFormat),
    }
    let j: Journal = serde_json::from_slice(bytes).map_err(JournalError::Invalid)?;
    check_stage_id(&j)?;
    check_paths(&j)?;
    Ok(j)
}

/// Format 3 names its staging id, format 2 none; the id is short plain hex, so that a staging
/// name is always a plain file name of the updater's own.
fn check_stage_id(j: &Journal) -> Result<(), JournalError> {
    match (&j.stage_id, j.format) {
        (None, FORMAT_TMP_SUFFIX) => Ok(()),
        (Some(id), FORMAT)
            if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(())
        }
        (Some(id), FORMAT) => Err(JournalError::UnsafeStageId(id.clone())),
        (None, _) => Err(JournalError::MissingStageId(j.format)),
        (Some(_), _) => Err(JournalError::UnexpectedStageId(j.format)),
    }
}

/// A rollback acts on what the journal names, beneath descriptors of its roots: every root must
/// be an absolute plain path, every directory a relative plain path, every file a plain name,
/// and every module index in range, or the journal is not used at all.
fn check_paths(j: &Journal) -> Result<(), JournalError> {
    use std::path::Component;
    let plain_rel = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
    let plain_abs = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    let plain_name =
        |n: &str| !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0');
    for d in &j.dirs {
        if !plain_abs(&d.root) || !plain_rel(&d.rel) {
            return Err(JournalError::UnsafeDirectory(d.root.join(&d.rel)));
        }
        if let Some(f) = d.files.iter().chain(&d.new).find(|f| !plain_name(f)) {
            return Err(JournalError::UnsafeFileName(f.clone()));
        }
    }
    if let Some(c) = j
        .created
        .iter()
        .find(|c| !plain_abs(&c.root) || !plain_rel(&c.rel) || c.rel.as_os_str().is_empty())
    {
        return Err(JournalError::UnsafeDirectory(c.root.join(&c.rel)));
    }
    if let Some(s) = j.stopped.iter().find(|s| s.module >= j.modules.len()) {
        return Err(JournalError::NoSuchModule {
            module: s.module,
            modules: j.modules.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    pub(crate) fn sample() -> Journal {
        Journal {
            format: FORMAT,
            stage_id: Some("0123456789abcdef".into()),
            foreign: BTreeSet::new(),
            version: "1.2.3".into(),
            phase: Phase::Staging,
            modules: vec![JModule {
                name: "app".into(),
                process_name: Some("app".into()),
                service: None,
                start_cmd: Some(vec!["/opt/tope/app".into()]),
                restart_order: Some(1),
            }],
            dirs: vec![DirTargets {
                root: "/opt/tope".into(),
                rel: "app".into(),
                files: vec!["bin".into(), "lib.so".into()],
                new: ["lib.so".to_string()].into(),
            }],
            created: vec![],
            stopped: vec![Stopped {
                module: 0,
                argv: vec!["/opt/tope/app/bin".into(), "--port".into(), "80".into()],
                cwd: Some("/".into()),
                uid: Some(0),
                gid: Some(0),
                groups: Some(vec![]),
                env: Some(vec!["PATH=/bin".into()]),
                comm: Some("bin".into()),
            }],
        }
    }

    #[test]
    fn roundtrip_and_format_check() {
        let d = tempfile::tempdir().unwrap();
        let j = sample();
        write(d.path(), &j).unwrap();
        assert_eq!(read(d.path()), Found::Journal(Box::new(j.clone())));
        assert_eq!(j.target_count(), 2);
        let old = br#"{"version":"1.2.3","phase":"deploying","modules":[],"targets":[],"created_dirs":[]}"#;
        assert!(parse(old).unwrap_err().to_string().contains("older"));
        assert!(parse(br#"{"format":99}"#)
            .unwrap_err()
            .to_string()
            .contains("99"));
    }

    #[test]
    fn a_key_given_twice_is_refused_by_the_parser_as_by_the_summary_reader() {
        // Found by the `journal` fuzz target: the parser kept the last `version`, the summary
        // reader refused the file, and start-up and `status` disagreed on the journal.
        let twice = br#"{"format":2,"version":"1.2.3","version":"1.2.3","phase":"committed","modules":[],"dirs":[],"created":[],"stopped":[]}"#;
        assert!(parse(twice)
            .unwrap_err()
            .to_string()
            .contains("duplicate field"));
        assert!(crate::workdir::JournalSummary::parse(twice).is_err());
        let once = br#"{"format":2,"version":"1.2.3","phase":"committed","modules":[],"dirs":[],"created":[],"stopped":[]}"#;
        assert_eq!(parse(once).unwrap().version, "1.2.3");
        assert!(crate::workdir::JournalSummary::parse(once).is_ok());
    }

    #[test]
    fn a_journal_naming_unsafe_paths_is_not_used() {
        let bad: [fn(&mut Journal); 10] = [
            |j| j.dirs[0].files[0] = "../../etc/passwd".into(),
            |j| j.dirs[0].files[0] = "..".into(),
            |j| j.dirs[0].rel = "../etc".into(),
            |j| j.dirs[0].rel = "/etc".into(),
            |j| j.dirs[0].root = "opt/tope".into(),
            |j| {
                j.created.push(CreatedDir {
                    root: "/opt/tope".into(),
                    rel: "a/../../etc".into(),
                })
            },
            |j| j.stopped[0].module = 7,
            |j| j.stage_id = Some("../x".into()),
            |j| j.stage_id = None,
            |j| j.format = FORMAT_TMP_SUFFIX,
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut j = sample();
            f(&mut j);
            let bytes = serde_json::to_vec(&j).unwrap();
            assert!(parse(&bytes).is_err(), "case {i} was accepted");
        }
        assert!(parse(&serde_json::to_vec(&sample()).unwrap()).is_ok());
    }

    /// docs/API.md 9.6: staging names are the updater's own and short, whatever the
    /// destination's length; a journal of format 2 keeps its `<name>.tmp` rule.
    #[test]
    fn contract_9_6_staging_names_by_format() {
        let j = sample();
        let long = "x".repeat(255);
        assert_eq!(j.staging_name(7, &long), ".tope-stage-0123456789abcdef-7");
        let old = br#"{"format":2,"version":"1.0.0","phase":"swapping","modules":[],
            "dirs":[{"root":"/opt/tope","rel":"app","files":["bin"]}]}"#;
        let old = parse(old).unwrap();
        assert_eq!(old.stage_id, None);
        assert_eq!(old.staging_name(0, "bin"), "bin.tmp");
        let a = new_stage_id().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, new_stage_id().unwrap());
    }

    #[test]
    fn unusable_journal_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(path(d.path()), "{\"format\": 2, \"vers").unwrap();
        match read(d.path()) {
            Found::SetAside(why) => assert!(why.contains("unusable"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!path(d.path()).exists());
        assert_eq!(read(d.path()), Found::None);
    }

    #[test]
    fn contract_8_3_journal_stays_within_what_is_read_back() {
        let mut j = sample();
        j.dirs[0].files = (0..60_000).map(|i| format!("file-number-{i:08}")).collect();
        let e = encode(&j).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    }
}
