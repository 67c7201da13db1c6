//! The install journal, `<backups_dir>/journal.json`: the durable record that lets a restart
//! finish or undo an installation. Its own versioned format (not the manifest's types), written
//! atomically ([`crate::fsutil::write_atomic`]) before each step it announces, compact so that
//! it stays within the 1 MiB the updater reads back ([`crate::fsutil::MAX_READ_BACK`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{self, OtaError};
use crate::fsutil::{self, ReadBack};

pub use super::stopped::Stopped;

/// File name of the journal inside the backups directory.
pub const JOURNAL_NAME: &str = "journal.json";
/// The format written by this version.
pub const FORMAT: u32 = 2;

/// How far an installation got; each phase is written before the step it names begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// New files are being written as `<name>.tmp` beside their destinations and missing
    /// directories created; nothing the printer uses has changed.
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
            Err(why) => why,
        },
        ReadBack::Refused(why) => why,
    };
    match fsutil::set_aside(&p) {
        Ok(aside) => Found::SetAside(format!("{why}; kept as {}", aside.display())),
        Err(e) => Found::SetAside(format!("{why}; it could not be set aside: {e}")),
    }
}

/// Parse a journal of the current format.
pub fn parse(bytes: &[u8]) -> Result<Journal, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) => return Err(format!("journal format {f} is not known to this version")),
        None => return Err("journal without a format (written by an older version)".into()),
    }
    let j: Journal = serde_json::from_value(v).map_err(|e| format!("invalid journal: {e}"))?;
    check_paths(&j)?;
    Ok(j)
}

/// A rollback acts on what the journal names, beneath descriptors of its roots: every root must
/// be an absolute plain path, every directory a relative plain path, every file a plain name,
/// and every module index in range, or the journal is not used at all.
fn check_paths(j: &Journal) -> Result<(), String> {
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
            return Err(format!(
                "journal names an unsafe directory {}",
                d.root.join(&d.rel).display()
            ));
        }
        if let Some(f) = d.files.iter().chain(&d.new).find(|f| !plain_name(f)) {
            return Err(format!("journal names an unsafe file name `{f}`"));
        }
    }
    if let Some(c) = j
        .created
        .iter()
        .find(|c| !plain_abs(&c.root) || !plain_rel(&c.rel) || c.rel.as_os_str().is_empty())
    {
        return Err(format!(
            "journal names an unsafe directory {}",
            c.root.join(&c.rel).display()
        ));
    }
    if let Some(s) = j.stopped.iter().find(|s| s.module >= j.modules.len()) {
        return Err(format!(
            "journal names module #{} of {}",
            s.module,
            j.modules.len()
        ));
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
        assert!(parse(old).unwrap_err().contains("older"));
        assert!(parse(br#"{"format":99}"#).unwrap_err().contains("99"));
    }

    #[test]
    fn a_journal_naming_unsafe_paths_is_not_used() {
        let bad: [fn(&mut Journal); 7] = [
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
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut j = sample();
            f(&mut j);
            let bytes = serde_json::to_vec(&j).unwrap();
            assert!(parse(&bytes).is_err(), "case {i} was accepted");
        }
        assert!(parse(&serde_json::to_vec(&sample()).unwrap()).is_ok());
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
