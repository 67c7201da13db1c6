//! The install journal of release 0.1.0 and its rollback (docs/API.md 9.4: this release reads
//! everything an earlier one left in the work dir, and rolls back the installation it
//! interrupted).
//!
//! 0.1.0 wrote `backups/journal.json` without a `format` field: the version, a phase
//! (`prepared` before it stopped anything, `deploying` once every old file was backed up as
//! `backups/files/<n>`, `committed`), the manifest's modules, every target with its absolute
//! destination, its absolute backup path and whether it existed, and the directories it
//! created. It is read strictly ([`parse`]: exactly those fields), then checked before anything
//! is touched ([`LegacyJournal::check`]): every backup must be `files/<name>` beneath this work
//! dir's `backups/` once that prefix is removed, every destination and created directory a plain
//! absolute path strictly inside one of `allowed_roots`. A journal that fails the check is set
//! aside by the caller, nothing touched.
//!
//! The rollback ([`rollback`]) does what 0.1.0's did, through today's primitives (directories
//! reached beneath their root with `O_NOFOLLOW`, the backups beneath a descriptor of
//! `backups/files`):
//! - `prepared`: nothing was deployed; the modules' processes are started again.
//! - `deploying`: the modules' processes are stopped (last started first); each target, last
//!   first, loses its `<name>.tmp` (0.1.0's temporary; a directory there is left alone), then
//!   gets its backup back (hard link to `.tope-stage-legacy-<n>`, renamed over the name, the
//!   directory flushed) or, when it did not exist before, is removed; created directories are
//!   removed when empty, innermost first; then the processes are started again.
//! - `committed`: the installation stands; only the cleanup is left.
//!
//! Starting again is 0.1.0's: in start order, a module's `service` with `systemctl start`, else
//! its `start_cmd` (skipped when a process of its `process_name` already runs), with the tools'
//! environment (0.1.0 recorded nothing of how a process ran). Failures to start are logged.
//! The cleanup removes the journal (durably), then the backups it names and `backups/files`
//! when that is left empty: anything else in `backups/` (the Python updater's) stays.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::process;

use super::apply::Roots;
use super::beneath::{legacy_tmp_name, stage_name};
use super::error::RollbackIncomplete;
use super::journal::{self, CreatedDir, JModule};
use super::plan::{start_order, stops};
use super::procs::{self, SYSTEMCTL_TIMEOUT};
use super::rollback::{remove_created, remove_staged, restore_one};

/// The directory of 0.1.0's backups inside `backups/`.
pub const FILES_DIR: &str = "files";

/// How far a 0.1.0 installation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LegacyPhase {
    /// The journal is written; processes are being stopped. No file has changed.
    Prepared,
    /// Every old file is backed up; destinations are being replaced, then post commands and
    /// starts run.
    Deploying,
    /// The installation stands; only the cleanup is left.
    Committed,
}

/// A module as 0.1.0 wrote it: its manifest entry, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyModule {
    pub name: String,
    pub src: String,
    pub dst: PathBuf,
    #[serde(default)]
    pub process_name: Option<String>,
    #[serde(default)]
    pub restart_order: Option<i64>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub start_cmd: Option<Vec<String>>,
    #[serde(default)]
    pub post_cmds: Vec<Vec<String>>,
}

/// One file of a 0.1.0 installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyTarget {
    pub dst: PathBuf,
    pub backup: PathBuf,
    pub existed: bool,
}

/// `backups/journal.json` as 0.1.0 wrote it (no `format` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyJournal {
    pub version: String,
    pub phase: LegacyPhase,
    pub modules: Vec<LegacyModule>,
    pub targets: Vec<LegacyTarget>,
    /// Outermost first.
    pub created_dirs: Vec<PathBuf>,
}

/// Why a 0.1.0 journal is not used.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("journal of 0.1.0 that does not parse: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error(
        "journal of 0.1.0 names the backup {}, which is not `files/<name>` beneath {}",
        .backup.display(), .backups_dir.display()
    )]
    BackupOutside {
        backup: PathBuf,
        backups_dir: PathBuf,
    },
    #[error(
        "journal of 0.1.0 names {what} {}, which is not a plain path inside the allowed roots {}",
        .path.display(), show_roots(.roots)
    )]
    Outside {
        what: &'static str,
        path: PathBuf,
        roots: Vec<PathBuf>,
    },
}

fn show_roots(roots: &[PathBuf]) -> String {
    let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    format!("[{}]", list.join(", "))
}

/// Parse a journal of 0.1.0: exactly its fields, each once.
pub fn parse(bytes: &[u8]) -> Result<LegacyJournal, LegacyError> {
    serde_json::from_slice(bytes).map_err(LegacyError::Invalid)
}

/// A target located beneath its root and the backups directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub root: PathBuf,
    /// The directory of the destination, relative to the root.
    pub rel: PathBuf,
    pub name: OsString,
    /// The backup's name inside `backups/files`.
    pub backup: OsString,
    pub existed: bool,
}

/// A checked journal: everything it names is known to lie where it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub version: String,
    pub phase: LegacyPhase,
    pub modules: Vec<JModule>,
    pub targets: Vec<Placed>,
    pub created: Vec<CreatedDir>,
}

/// Whether `p` is `/` followed by plain names only (no `.`, no `..`).
fn plain_abs(p: &Path) -> bool {
    let mut c = p.components();
    c.next() == Some(Component::RootDir) && c.all(|c| matches!(c, Component::Normal(_)))
}

/// The most specific root strictly containing the plain absolute path `p`, and `p` relative
/// to it.
fn beneath_root<'r>(p: &Path, roots: &'r [PathBuf]) -> Option<(&'r PathBuf, PathBuf)> {
    if !plain_abs(p) {
        return None;
    }
    roots
        .iter()
        .filter_map(|r| {
            let rel = p.strip_prefix(r).ok()?;
            (!rel.as_os_str().is_empty()).then(|| (r, rel.to_path_buf()))
        })
        .max_by_key(|(r, _)| r.components().count())
}

impl LegacyJournal {
    /// Check everything the journal names before anything is touched (see the module
    /// documentation): `backups_dir` is this work dir's `backups/`, `roots` the configured
    /// `allowed_roots`.
    pub fn check(&self, backups_dir: &Path, roots: &[PathBuf]) -> Result<Checked, LegacyError> {
        let outside = |what: &'static str, path: &Path| LegacyError::Outside {
            what,
            path: path.to_path_buf(),
            roots: roots.to_vec(),
        };
        let mut targets = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let backup =
                backup_name(&t.backup, backups_dir).ok_or_else(|| LegacyError::BackupOutside {
                    backup: t.backup.clone(),
                    backups_dir: backups_dir.to_path_buf(),
                })?;
            let (root, rel) =
                beneath_root(&t.dst, roots).ok_or_else(|| outside("the destination", &t.dst))?;
            let (Some(name), Some(dir)) = (rel.file_name(), rel.parent()) else {
                return Err(outside("the destination", &t.dst));
            };
            targets.push(Placed {
                root: root.clone(),
                rel: dir.to_path_buf(),
                name: name.to_os_string(),
                backup,
                existed: t.existed,
            });
        }
        let mut created = Vec::with_capacity(self.created_dirs.len());
        for d in &self.created_dirs {
            let (root, rel) =
                beneath_root(d, roots).ok_or_else(|| outside("the created directory", d))?;
            created.push(CreatedDir {
                root: root.clone(),
                rel,
            });
        }
        for m in &self.modules {
            if beneath_root(&m.dst, roots).is_none() {
                return Err(outside("the module destination", &m.dst));
            }
        }
        Ok(Checked {
            version: self.version.clone(),
            phase: self.phase,
            modules: self
                .modules
                .iter()
                .map(|m| JModule {
                    name: m.name.clone(),
                    process_name: m.process_name.clone(),
                    service: m.service.clone(),
                    start_cmd: m.start_cmd.clone(),
                    restart_order: m.restart_order,
                })
                .collect(),
            targets,
            created,
        })
    }
}

/// The name of `backup` inside `<backups_dir>/files`, when it is exactly that: the prefix
/// removed, a plain `files/<name>`.
fn backup_name(backup: &Path, backups_dir: &Path) -> Option<OsString> {
    if !plain_abs(backup) {
        return None;
    }
    let rel = backup.strip_prefix(backups_dir).ok()?;
    let mut c = rel.components();
    match (c.next(), c.next(), c.next()) {
        (Some(Component::Normal(dir)), Some(Component::Normal(name)), None)
            if dir == OsStr::new(FILES_DIR) =>
        {
            Some(name.to_os_string())
        }
        _ => None,
    }
}

/// `backups/files`, opened without following a link.
fn open_files(backups_dir: &Path) -> io::Result<OwnedFd> {
    let backups = rustix::fs::open(
        backups_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(rustix::fs::openat(
        &backups,
        FILES_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Put every target back, last first; the ones that could not be, with the cause.
fn restore_files(j: &Checked, roots: &mut Roots, backups_dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let files = match open_files(backups_dir) {
        Ok(fd) => Some(fd),
        Err(e) if j.targets.iter().all(|t| !t.existed) => {
            tracing::debug!("no backups: {e}");
            None
        }
        Err(e) => {
            failures.push(format!("{}: {e}", backups_dir.join(FILES_DIR).display()));
            None
        }
    };
    for (n, t) in j.targets.iter().enumerate().rev() {
        let path = t.root.join(&t.rel).join(&t.name);
        let dir = match roots.dir(&t.root, &t.rel) {
            Ok(dir) => dir,
            // Its directory was never created: the new file was never written.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !t.existed => continue,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let where_ = t.root.join(&t.rel);
        let result = remove_staged(dir.fd.as_fd(), &legacy_tmp_name(&t.name), &where_)
            .and_then(|()| {
                if !t.existed {
                    return super::beneath::unlink_at(dir.fd.as_fd(), &t.name);
                }
                let Some(files) = &files else {
                    return Err(io::Error::other("no backups"));
                };
                let through = stage_name("legacy", n);
                remove_staged(dir.fd.as_fd(), &through, &where_)?;
                restore_one(files.as_fd(), &t.backup, &dir.fd, &through, &t.name)
            })
            .and_then(|()| Ok(rustix::fs::fsync(&dir.fd)?));
        if let Err(e) = result {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    remove_created(&j.created, roots);
    failures
}

/// Start the modules' processes again as 0.1.0 would (see the module documentation).
fn start_again(j: &Checked, stop_timeout: Duration) {
    let mut services = HashSet::new();
    for i in start_order(&j.modules) {
        let m = &j.modules[i];
        if !stops(m) {
            continue;
        }
        if let Some(s) = &m.service {
            if services.insert(s.as_str()) {
                if let Err(e) = process::systemctl("start", s, SYSTEMCTL_TIMEOUT, None) {
                    let e = crate::error::OtaError::from(e);
                    tracing::error!("rollback: module {}: {e}", m.name);
                }
            }
            continue;
        }
        let (Some(cmd), Some(name)) = (&m.start_cmd, &m.process_name) else {
            if let Some(p) = &m.process_name {
                tracing::warn!(
                    "rollback: module {}: process {p} has neither start_cmd nor service: not \
                     started again",
                    m.name
                );
            }
            continue;
        };
        match process::is_running(name) {
            Ok(true) => {
                tracing::info!(
                    "rollback: module {}: process {name} already running",
                    m.name
                );
                continue;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(
                "rollback: module {}: cannot tell whether process {name} runs ({e}); starting it",
                m.name
            ),
        }
        match process::spawn_detached(cmd, &process::ChildEnv::tool(), None) {
            Ok(_) => {
                if procs::wait_running(name, stop_timeout).is_none() {
                    tracing::error!(
                        "rollback: module {}: no process {name} running {} s after its start_cmd",
                        m.name,
                        stop_timeout.as_secs()
                    );
                } else {
                    tracing::info!("rollback: module {}: process {name} started again", m.name);
                }
            }
            Err(e) => {
                let e = crate::error::OtaError::from(e);
                tracing::error!("rollback: module {}: {e}", m.name);
            }
        }
    }
}

/// Remove the journal (durably), then the backups it names and `backups/files` if that is
/// left empty. A committed journal left behind is finished by the next start.
pub fn cleanup(j: &Checked, backups_dir: &Path) {
    if let Err(e) = fsutil::remove_durable(&journal::path(backups_dir)) {
        tracing::error!("cannot remove {}: {e}", journal::JOURNAL_NAME);
        return;
    }
    let Ok(files) = open_files(backups_dir) else {
        return;
    };
    for t in &j.targets {
        if let Err(e) = super::beneath::unlink_at(files.as_fd(), &t.backup) {
            tracing::warn!(
                "cannot remove the backup {}: {e}",
                backups_dir.join(FILES_DIR).join(&t.backup).display()
            );
        }
    }
    if let Err(e) = rustix::fs::fsync(&files) {
        tracing::warn!("flushing {}: {e}", backups_dir.join(FILES_DIR).display());
    }
    match rustix::fs::unlinkat(
        rustix::fs::CWD,
        backups_dir.join(FILES_DIR),
        AtFlags::REMOVEDIR,
    ) {
        Ok(()) => {
            if let Err(e) = fsutil::fsync_dir(backups_dir) {
                tracing::warn!("flushing {}: {e}", backups_dir.display());
            }
        }
        Err(e) => tracing::info!(
            "{} kept ({e}): it holds files of no 0.1.0 installation",
            backups_dir.join(FILES_DIR).display()
        ),
    }
}

/// Roll back a checked 0.1.0 installation that was not committed (see the module
/// documentation). A file that cannot be restored keeps the journal: the next start retries.
pub fn rollback(
    j: &Checked,
    backups_dir: &Path,
    stop_timeout: Duration,
) -> Result<(), RollbackIncomplete> {
    tracing::warn!(
        "rolling back the installation of version {} that release 0.1.0 left in phase {:?}",
        j.version,
        j.phase
    );
    let mut failures = Vec::new();
    if j.phase == LegacyPhase::Deploying {
        let mut services = HashSet::new();
        for &i in start_order(&j.modules).iter().rev() {
            if let Err(e) = procs::stop_module(&j.modules[i], stop_timeout, &mut services, None) {
                tracing::error!("rollback: module {}: {e}", j.modules[i].name);
            }
        }
        failures = restore_files(j, &mut Roots::default(), backups_dir);
    }
    start_again(j, stop_timeout);
    if !failures.is_empty() {
        tracing::error!(
            "rollback incomplete, files not restored: {}",
            failures.join("; ")
        );
        return Err(RollbackIncomplete { files: failures });
    }
    cleanup(j, backups_dir);
    tracing::info!("rollback of version {} done", j.version);
    Ok(())
}
