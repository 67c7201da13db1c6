//! Installation of a verified package: journalled, atomic per file, rolled back on failure.
//!
//! Everything here is synchronous and runs on a blocking thread.
//!
//! # Crash-safety protocol
//!
//! The journal `<backups_dir>/journal.json` is always replaced atomically
//! ([`crate::fsutil::write_atomic`]). It holds the version, a phase, the modules (to stop and
//! start their processes) and every target: its destination, its backup
//! (`<backups_dir>/files/<n>`) and whether it existed before, plus the directories the
//! installation will create.
//!
//! 1. [`open_package`] checks the ZIP, the manifest and the free space. An invalid package or a
//!    full disk is reported before anything is touched. A destination that is a directory on
//!    the device, or below a non-directory, is refused here too (`DEPLOYMENT_FAILED`, nothing
//!    changed).
//! 2. The journal is written with phase `prepared`.
//! 3. Processes are stopped, in reverse start order: `service` with `systemctl stop`,
//!    `process_name` with SIGTERM/SIGKILL (both when a module has both). If one will not stop,
//!    what was stopped is started again, the journal is removed and the result is
//!    `PROCESS_KILL_FAILED`: nothing is deployed.
//! 4. Every existing destination is hard-linked into `backups/files/<n>` (copied and fsynced
//!    when the backups are on another filesystem); `backups/files` is fsynced; the journal
//!    moves to phase `deploying`. From here on the journal alone says "roll back".
//! 5. Each module's files are written: missing directories are created (0755, durably),
//!    the entry is streamed into `<dst>.tmp` with its mode (and the owner of the file it
//!    replaces), size and CRC checked, fsynced, renamed over `<dst>`, and the directory fsynced.
//!    After each file the cancel flag (SIGTERM) is checked: if set, the installation stops there
//!    and returns [`InstallOutcome::Interrupted`], leaving the journal, so the next start rolls
//!    back.
//! 6. Every module's `post_cmds` run, in start order; each must exit 0 within 120 s.
//! 7. Processes are started in `restart_order` (lower first, modules without one last, in
//!    manifest order): `service` with `systemctl start`, else `start_cmd` detached (skipped when
//!    a process of that `process_name` already runs). A module with a `process_name` but
//!    neither `start_cmd` nor `service` stays stopped (warning in the log).
//! 8. The journal moves to phase `committed` and `install` returns. The caller records the
//!    outcome durably (state file), then calls [`finish`], which removes the journal and the
//!    backups. A restart in between finds the committed journal: the update completed.
//!
//! Any failure in 4-7 (and a failure to write the `committed` journal) rolls back, then
//! reports `DEPLOYMENT_FAILED` (`DISK_FULL` when the disk filled up) with the cause.
//!
//! # Rollback
//!
//! Shared by failures and by [`recover`] at start-up, and idempotent (a power cut during a
//! rollback means the next start rolls back again):
//! - phase `prepared`: nothing was deployed; the modules' processes are started again.
//! - phase `deploying`: the modules' processes are stopped (new ones, or old ones started by
//!   the system after a reboot); each target, last first, gets its backup back (hard link to
//!   `<dst>.tmp`, or a fsynced copy across filesystems, renamed over `<dst>`, directory
//!   fsynced) or, when it did not exist before, is removed; `<dst>.tmp` leftovers are removed;
//!   created directories are removed when empty. Then the processes are started again in start
//!   order (a `start_cmd` is skipped when its process already runs). The old version's
//!   `post_cmds` are unknown and not run; the journal's (new) `start_cmd` is used.
//! - the journal is removed (durably) before the backups, so a journal never points at missing
//!   backups. If a file cannot be restored, every such file is logged at ERROR and the journal is
//!   kept, so the next start retries.
//!
//! At [`recover`]: no journal means nothing to do; phase `committed` only finishes the cleanup;
//! an unreadable journal is kept aside as `journal.json.corrupt` (logged as an error).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{self, ErrorCode, OtaError};
use crate::fsutil::{
    available_bytes, create_dirs_durable, fsync_dir, fsync_parent, remove_durable, tmp_sibling,
    write_atomic,
};
use crate::package::{existing_ancestor, open_package, Module, Package, PlannedFile};
use crate::process;

/// File name of the journal inside the backups directory.
pub const JOURNAL_NAME: &str = "journal.json";
/// Directory of the backups inside the backups directory.
const FILES_DIR: &str = "files";
/// Time limit of each post command.
const POST_CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of one `systemctl stop|start` (systemd's own default stop timeout is 90 s).
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);

/// Progress of an installation, for the stage message and the callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallEvent<'a> {
    Stopping {
        module: &'a str,
    },
    Deploying {
        module: &'a str,
        /// 1-based.
        index: usize,
        total: usize,
    },
    Restarting {
        module: &'a str,
    },
    RollingBack {
        reason: &'a str,
    },
}

#[derive(Debug)]
pub struct InstallOptions<'a> {
    pub allowed_roots: &'a [PathBuf],
    /// `<work_dir>/backups`.
    pub backups_dir: &'a Path,
    pub stop_timeout: Duration,
    /// Set on SIGTERM: the installation stops after the current file.
    pub cancel: &'a AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    Done,
    /// Stopped on `cancel`; the journal is left for [`recover`] at the next start.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    Nothing,
    RolledBack { version: String },
    Completed { version: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Prepared,
    Deploying,
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Target {
    dst: PathBuf,
    backup: PathBuf,
    existed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    version: String,
    phase: Phase,
    modules: Vec<Module>,
    targets: Vec<Target>,
    /// Directories the installation creates, outermost first.
    created_dirs: Vec<PathBuf>,
}

fn journal_path(backups_dir: &Path) -> PathBuf {
    backups_dir.join(JOURNAL_NAME)
}

fn write_journal(backups_dir: &Path, j: &Journal) -> Result<(), OtaError> {
    let bytes = serde_json::to_vec_pretty(j)
        .map_err(|e| error::internal(format!("cannot serialise the journal: {e}")))?;
    write_atomic(&journal_path(backups_dir), &bytes)
        .map_err(|e| io_err(&format!("writing {JOURNAL_NAME}"), &e))
}

/// An I/O error as `DISK_FULL` when the disk is full, else `DEPLOYMENT_FAILED`.
fn io_err(what: &str, e: &io::Error) -> OtaError {
    if error::is_disk_full(e) {
        error::disk_full(format!("{what}: {e}"))
    } else {
        error::deployment_failed(format!("{what}: {e}"))
    }
}

/// Module indices in start order: `restart_order` ascending, modules without one after those
/// with one, ties in manifest order. Stopping uses the reverse.
fn start_order(modules: &[Module]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..modules.len()).collect();
    idx.sort_by_key(|&i| {
        let o = modules[i].restart_order;
        (o.is_none(), o.unwrap_or(0), i)
    });
    idx
}

/// Stop module `md`'s processes. Errors are `PROCESS_KILL_FAILED`.
fn stop_module(
    md: &Module,
    stop_timeout: Duration,
    services_done: &mut HashSet<String>,
) -> Result<(), OtaError> {
    if let Some(s) = &md.service {
        if services_done.insert(s.clone()) {
            process::systemctl("stop", s, SYSTEMCTL_TIMEOUT)?;
        }
    }
    if let Some(p) = &md.process_name {
        process::stop_by_name(p, stop_timeout)?;
    }
    Ok(())
}

/// Start the modules `order` (indices, already in start order). `strict`: stop at the first
/// failure and return it; otherwise log failures and go on.
fn start_modules(
    modules: &[Module],
    order: &[usize],
    strict: bool,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<(), OtaError> {
    let mut services = HashSet::new();
    let mut names = HashSet::new();
    for &i in order {
        let md = &modules[i];
        let result = if let Some(s) = &md.service {
            if !services.insert(s.as_str()) {
                continue;
            }
            on_event(InstallEvent::Restarting { module: &md.name });
            process::systemctl("start", s, SYSTEMCTL_TIMEOUT)
        } else if let Some(cmd) = &md.start_cmd {
            if let Some(p) = &md.process_name {
                let running = |p: &str| {
                    process::is_running(p).map_err(|e| {
                        error::deployment_failed(format!("cannot tell whether {p} runs: {e}"))
                    })
                };
                if !names.insert(p.as_str()) || running(p)? {
                    tracing::info!("module {}: process {p} already running", md.name);
                    continue;
                }
            }
            on_event(InstallEvent::Restarting { module: &md.name });
            process::spawn_detached(cmd).map(|_| ())
        } else {
            if let Some(p) = &md.process_name {
                tracing::warn!(
                    "module {}: process {p} was stopped and has neither start_cmd nor service: \
                     not restarted",
                    md.name
                );
            }
            continue;
        };
        if let Err(e) = result {
            let e = OtaError::new(e.code, format!("module {}: {}", md.name, e.detail));
            if strict {
                return Err(e);
            }
            tracing::error!("{e}");
        }
    }
    Ok(())
}

/// Copy `src` to `to` (created or truncated) with `src`'s mode and, when allowed, owner, and
/// fsync it. Streams with bounded memory.
fn copy_durable(src: &Path, to: &Path) -> io::Result<()> {
    let mut input = File::open(src)?;
    let meta = input.metadata()?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)?;
    io::copy(&mut input, &mut out)?;
    out.set_permissions(meta.permissions())?;
    set_owner(&out, meta.uid(), meta.gid(), to);
    out.sync_all()
}

/// Give `f` the owner `uid:gid` when it differs; a refusal is only logged (the updater runs
/// as root on the printer; elsewhere it cannot chown and the file keeps the caller's owner).
fn set_owner(f: &File, uid: u32, gid: u32, path: &Path) {
    match f.metadata() {
        Ok(m) if m.uid() == uid && m.gid() == gid => {}
        _ => {
            if let Err(e) = std::os::unix::fs::fchown(f, Some(uid), Some(gid)) {
                tracing::warn!("cannot give {} the owner {uid}:{gid}: {e}", path.display());
            }
        }
    }
}

/// Link (or copy across filesystems) `from` to the new name `to`; a symlink is recreated as a
/// symlink.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(from)?, to);
    }
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        // Another filesystem, or one without hard links (vfat answers EPERM).
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::CrossesDevices
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::Unsupported
            ) =>
        {
            copy_durable(from, to)
        }
        Err(e) => Err(e),
    }
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Put target `t` back as it was before the installation (see the module documentation).
fn restore_target(t: &Target) -> io::Result<()> {
    let tmp = tmp_sibling(&t.dst);
    remove_if_exists(&tmp)?;
    if t.existed {
        link_or_copy(&t.backup, &tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("backup {}: {e}", t.backup.display())))?;
        fs::rename(&tmp, &t.dst)?;
        // Renaming a link over another link of the same file (already restored) does nothing
        // and leaves the temporary name behind.
        remove_if_exists(&tmp)?;
        fsync_parent(&t.dst)
    } else {
        match remove_durable(&t.dst) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Restore every target (last first) and remove the created directories that are empty.
/// Returns the files that could not be restored, with the cause.
fn restore_files(j: &Journal) -> Vec<String> {
    let mut failures = Vec::new();
    for t in j.targets.iter().rev() {
        if let Err(e) = restore_target(t) {
            failures.push(format!("{}: {e}", t.dst.display()));
        }
    }
    for d in j.created_dirs.iter().rev() {
        match fs::remove_dir(d) {
            Ok(()) => {
                if let Err(e) = fsync_parent(d) {
                    tracing::warn!("fsync of the parent of {} failed: {e}", d.display());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("directory {} kept: {e}", d.display()),
        }
    }
    failures
}

/// Remove the journal (durably), then the backups. Problems are logged: a committed journal
/// left behind is finished by the next [`recover`].
fn cleanup(backups_dir: &Path) {
    if let Err(e) = remove_durable(&journal_path(backups_dir)) {
        tracing::error!("cannot remove {JOURNAL_NAME}: {e}");
        return;
    }
    remove_backup_files(backups_dir);
}

fn remove_backup_files(backups_dir: &Path) {
    let files = backups_dir.join(FILES_DIR);
    match fs::remove_dir_all(&files) {
        Ok(()) => {
            if let Err(e) = fsync_dir(backups_dir) {
                tracing::warn!("fsync of {} failed: {e}", backups_dir.display());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", files.display()),
    }
}

/// Roll back the installation described by `j` (see the module documentation).
fn rollback(
    j: &Journal,
    backups_dir: &Path,
    stop_timeout: Duration,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<(), OtaError> {
    tracing::warn!("rolling back the installation of version {}", j.version);
    let order = start_order(&j.modules);
    let mut failures = Vec::new();
    if j.phase == Phase::Deploying {
        let mut services = HashSet::new();
        for &i in order.iter().rev() {
            if let Err(e) = stop_module(&j.modules[i], stop_timeout, &mut services) {
                tracing::error!("rollback: module {}: {e}", j.modules[i].name);
            }
        }
        failures = restore_files(j);
    }
    // Only modules whose processes the installation stops are started again; a module with
    // just a start_cmd was never stopped.
    let stopped: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| j.modules[i].service.is_some() || j.modules[i].process_name.is_some())
        .collect();
    let _ = start_modules(&j.modules, &stopped, false, on_event);
    if !failures.is_empty() {
        let list = failures.join("; ");
        tracing::error!("rollback incomplete, files not restored: {list}");
        return Err(error::deployment_failed(format!(
            "rollback incomplete, files not restored (retried at next start): {list}"
        )));
    }
    cleanup(backups_dir);
    tracing::info!("rollback of version {} done", j.version);
    Ok(())
}

/// Roll back after `cause` and build the error to report: `DISK_FULL` stays, anything else is
/// `DEPLOYMENT_FAILED`; the detail says whether the rollback succeeded.
fn fail(
    cause: OtaError,
    j: &Journal,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> OtaError {
    let code = if cause.code == ErrorCode::DiskFull {
        ErrorCode::DiskFull
    } else {
        ErrorCode::DeploymentFailed
    };
    tracing::error!("installation of {} failed: {cause}", j.version);
    on_event(InstallEvent::RollingBack {
        reason: &cause.detail,
    });
    match rollback(j, opts.backups_dir, opts.stop_timeout, on_event) {
        Ok(()) => OtaError::new(code, format!("{}; rolled back", cause.detail)),
        Err(e) => OtaError::new(code, format!("{}; {}", cause.detail, e.detail)),
    }
}

/// Owner (uid, gid) of an existing destination; `None` when it does not exist.
type Owner = Option<(u32, u32)>;

/// Before anything is touched: each destination must be a non-directory (or absent) below an
/// existing directory, and not inside the backups directory (the journal lives there). Returns, per planned file, whether it exists and its owner, and the
/// directories that will be created (outermost first).
fn survey(
    files: &[PlannedFile],
    backups_dir: &Path,
) -> Result<(Vec<Owner>, Vec<PathBuf>), OtaError> {
    let backups = crate::config::normalize_abs(backups_dir);
    let mut owners = Vec::with_capacity(files.len());
    let mut created: Vec<PathBuf> = Vec::new();
    let mut seen = HashSet::new();
    for f in files {
        let refuse = |why: String| {
            Err(error::deployment_failed(format!(
                "{} {why}; nothing was changed",
                f.dst.display()
            )))
        };
        if backups.as_ref().is_some_and(|b| f.dst.starts_with(b)) {
            return refuse("is inside the updater's backups directory".into());
        }
        match fs::symlink_metadata(&f.dst) {
            Ok(m) if m.is_dir() => return refuse("is a directory on the device".into()),
            Ok(m) => owners.push(Some((m.uid(), m.gid()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => owners.push(None),
            Err(e) => return refuse(format!("cannot be inspected: {e}")),
        }
        let Some(parent) = f.dst.parent() else {
            return refuse("has no parent directory".into());
        };
        let anc = existing_ancestor(parent);
        if !anc.is_dir() {
            return refuse(format!(
                "is below {}, which is not a directory",
                anc.display()
            ));
        }
        let mut missing: Vec<PathBuf> = parent
            .ancestors()
            .take_while(|a| *a != anc)
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for d in missing {
            if seen.insert(d.clone()) {
                created.push(d);
            }
        }
    }
    Ok((owners, created))
}

/// Backups on another filesystem than their file are copies: check there is room for them.
fn check_backup_space(backups_dir: &Path, files: &[PlannedFile]) -> Result<(), OtaError> {
    let bdev = fs::metadata(backups_dir)
        .map_err(|e| error::internal(format!("{}: {e}", backups_dir.display())))?
        .dev();
    let need: u64 = files
        .iter()
        .filter_map(|f| fs::symlink_metadata(&f.dst).ok())
        .filter(|m| m.is_file() && m.dev() != bdev)
        .map(|m| m.len().saturating_add(4096))
        .fold(0u64, u64::saturating_add);
    if need == 0 {
        return Ok(());
    }
    let avail = available_bytes(backups_dir)
        .map_err(|e| error::internal(format!("free space of {}: {e}", backups_dir.display())))?;
    if avail < need {
        return Err(error::disk_full(format!(
            "backups need {need} bytes in {}, {avail} available",
            backups_dir.display()
        )));
    }
    Ok(())
}

/// Step 5 for one file (see the module documentation).
fn deploy_file(
    pkg: &mut Package,
    f: &PlannedFile,
    owner: Option<(u32, u32)>,
) -> Result<(), OtaError> {
    let what = |s: &str| format!("{s} {}", f.dst.display());
    let parent = f
        .dst
        .parent()
        .ok_or_else(|| error::deployment_failed(what("no parent directory for")))?;
    create_dirs_durable(parent).map_err(|e| io_err(&what("creating the directory of"), &e))?;
    let tmp = tmp_sibling(&f.dst);
    remove_if_exists(&tmp).map_err(|e| io_err(&what("removing a leftover of"), &e))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&what("creating a temporary file for"), &e))?;
    let result = (|| {
        pkg.extract_to(f, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(f.mode))
            .map_err(|e| io_err(&what("setting the mode of"), &e))?;
        if let Some((uid, gid)) = owner {
            set_owner(&out, uid, gid, &f.dst);
        }
        out.sync_all().map_err(|e| io_err(&what("writing"), &e))?;
        fs::rename(&tmp, &f.dst).map_err(|e| io_err(&what("renaming into"), &e))?;
        fsync_dir(parent).map_err(|e| io_err(&what("syncing the directory of"), &e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Install the package at `package` (already MD5-verified) following the protocol of the module
/// documentation. Events report progress; `opts.cancel` interrupts between files.
pub fn install(
    package: &Path,
    expected_version: &str,
    opts: &InstallOptions,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<InstallOutcome, OtaError> {
    let backups_dir = opts.backups_dir;
    // 1. Check everything before touching anything.
    let mut pkg = open_package(package, expected_version, opts.allowed_roots)?;
    if journal_path(backups_dir).exists() {
        return Err(error::internal(
            "an earlier installation has not been recovered yet (journal present)",
        ));
    }
    let (owners, created_dirs) = survey(&pkg.files, backups_dir)?;
    create_dirs_durable(backups_dir)
        .map_err(|e| error::internal(format!("{}: {e}", backups_dir.display())))?;
    check_backup_space(backups_dir, &pkg.files)?;
    if opts.cancel.load(Ordering::SeqCst) {
        return Ok(InstallOutcome::Interrupted);
    }
    // No journal: leftovers in backups/files belong to nobody.
    remove_backup_files(backups_dir);
    let files_dir = backups_dir.join(FILES_DIR);
    fs::create_dir(&files_dir)
        .and_then(|()| fsync_dir(backups_dir))
        .map_err(|e| io_err(&format!("creating {}", files_dir.display()), &e))?;

    // 2. Journal, phase prepared.
    let mut journal = Journal {
        version: pkg.manifest.version.clone(),
        phase: Phase::Prepared,
        modules: pkg.manifest.modules.clone(),
        targets: pkg
            .files
            .iter()
            .zip(&owners)
            .enumerate()
            .map(|(n, (f, o))| Target {
                dst: f.dst.clone(),
                backup: files_dir.join(n.to_string()),
                existed: o.is_some(),
            })
            .collect(),
        created_dirs,
    };
    if let Err(e) = write_journal(backups_dir, &journal) {
        remove_backup_files(backups_dir);
        return Err(e);
    }
    tracing::info!(
        "installing version {}: {} modules, {} files",
        journal.version,
        journal.modules.len(),
        journal.targets.len()
    );

    // 3. Stop processes, last started first.
    let order = start_order(&journal.modules);
    let mut stopped: Vec<usize> = Vec::new();
    let mut services = HashSet::new();
    for &i in order.iter().rev() {
        let md = &journal.modules[i];
        if md.service.is_none() && md.process_name.is_none() {
            continue;
        }
        on_event(InstallEvent::Stopping { module: &md.name });
        stopped.push(i);
        if let Err(e) = stop_module(md, opts.stop_timeout, &mut services) {
            let err = error::kill_failed(format!(
                "module {}: {}; nothing was deployed",
                md.name, e.detail
            ));
            tracing::error!("{err}");
            stopped.reverse();
            let _ = start_modules(&journal.modules, &stopped, false, on_event);
            cleanup(backups_dir);
            return Err(err);
        }
    }
    if opts.cancel.load(Ordering::SeqCst) {
        return Ok(InstallOutcome::Interrupted);
    }

    // 4. Back up every existing destination.
    for t in journal.targets.iter().filter(|t| t.existed) {
        if let Err(e) = link_or_copy(&t.dst, &t.backup) {
            let cause = io_err(&format!("backing up {}", t.dst.display()), &e);
            return Err(fail(cause, &journal, opts, on_event));
        }
    }
    let synced = fsync_dir(&files_dir).and_then(|()| fsync_dir(backups_dir));
    if let Err(e) = synced {
        return Err(fail(
            io_err("syncing the backups", &e),
            &journal,
            opts,
            on_event,
        ));
    }
    journal.phase = Phase::Deploying;
    if let Err(e) = write_journal(backups_dir, &journal) {
        // The journal on disk may still say `prepared`: nothing is deployed either way.
        journal.phase = Phase::Prepared;
        return Err(fail(e, &journal, opts, on_event));
    }

    // 5. Deploy, module by module.
    let total = journal.modules.len();
    let files = pkg.files.clone();
    for (mi, md) in journal.modules.iter().enumerate() {
        on_event(InstallEvent::Deploying {
            module: &md.name,
            index: mi + 1,
            total,
        });
        for (f, owner) in files.iter().zip(&owners).filter(|(f, _)| f.module == mi) {
            if let Err(e) = deploy_file(&mut pkg, f, *owner) {
                let cause = OtaError::new(e.code, format!("module {}: {}", md.name, e.detail));
                return Err(fail(cause, &journal, opts, on_event));
            }
            if opts.cancel.load(Ordering::SeqCst) {
                tracing::warn!(
                    "installation interrupted after {}; rolled back at next start",
                    f.dst.display()
                );
                return Ok(InstallOutcome::Interrupted);
            }
        }
    }

    // 6. Post commands, in start order.
    for &i in &order {
        let md = &journal.modules[i];
        for cmd in &md.post_cmds {
            if let Err(e) = process::run_to_completion(cmd, POST_CMD_TIMEOUT, opts.cancel) {
                if opts.cancel.load(Ordering::SeqCst) {
                    // SIGTERM: the command's group is gone; the next start rolls back.
                    return Ok(InstallOutcome::Interrupted);
                }
                let cause = error::deployment_failed(format!("module {}: {}", md.name, e.detail));
                return Err(fail(cause, &journal, opts, on_event));
            }
        }
    }

    // 7. Start processes.
    if let Err(e) = start_modules(&journal.modules, &order, true, on_event) {
        return Err(fail(e, &journal, opts, on_event));
    }

    // 8. Commit. The caller records the outcome, then calls [`finish`]: until then the
    // committed journal tells a restart that the installation completed.
    journal.phase = Phase::Committed;
    if let Err(e) = write_journal(backups_dir, &journal) {
        journal.phase = Phase::Deploying;
        return Err(fail(e, &journal, opts, on_event));
    }
    tracing::info!("version {} installed", journal.version);
    Ok(InstallOutcome::Done)
}

/// After [`install`] returned `Done` and the caller has durably recorded the outcome: remove
/// the committed journal and the backups. A power cut before or during this is finished by
/// [`recover`] (phase `committed` means completed), so the outcome is never misreported.
pub fn finish(backups_dir: &Path) {
    cleanup(backups_dir);
}

/// At start-up, before the API reports anything: finish or roll back an interrupted
/// installation (see the module documentation). An error means files could not be restored;
/// the journal is kept and the next start retries.
pub fn recover(backups_dir: &Path, stop_timeout: Duration) -> Result<Recovery, OtaError> {
    let path = journal_path(backups_dir);
    let _ = remove_if_exists(&tmp_sibling(&path));
    let parsed = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Journal>(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            remove_backup_files(backups_dir);
            return Ok(Recovery::Nothing);
        }
        Err(e) => Err(e.to_string()),
    };
    let journal = match parsed {
        Ok(j) => j,
        Err(e) => {
            let aside = backups_dir.join(format!("{JOURNAL_NAME}.corrupt"));
            tracing::error!(
                "the deploy journal is unreadable ({e}); kept as {}; files of the interrupted \
                 installation, if any, were not checked",
                aside.display()
            );
            if let Err(e) = fs::rename(&path, &aside).and_then(|()| fsync_dir(backups_dir)) {
                tracing::error!("cannot set the journal aside: {e}");
            }
            return Ok(Recovery::Nothing);
        }
    };
    match journal.phase {
        Phase::Committed => {
            tracing::info!(
                "finishing the cleanup of installed version {}",
                journal.version
            );
            cleanup(backups_dir);
            Ok(Recovery::Completed {
                version: journal.version,
            })
        }
        Phase::Prepared | Phase::Deploying => {
            tracing::warn!(
                "installation of version {} was interrupted (phase {:?}): rolling back",
                journal.version,
                journal.phase
            );
            rollback(&journal, backups_dir, stop_timeout, &mut |_| {})?;
            Ok(Recovery::RolledBack {
                version: journal.version,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::tests::{build_zip, manifest_json, E};
    use crate::process::tests::{fake_systemctl, named_sleep, wait_found};
    use crate::process::SYSTEMCTL_OVERRIDE;
    use std::time::Instant;

    struct Fx {
        d: tempfile::TempDir,
        root: PathBuf,
        backups: PathBuf,
        zip: PathBuf,
        cancel: AtomicBool,
    }

    impl Fx {
        fn new() -> Fx {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("root");
            let backups = d.path().join("work/backups");
            fs::create_dir_all(&root).unwrap();
            fs::create_dir_all(&backups).unwrap();
            Fx {
                zip: d.path().join("p.zip"),
                root,
                backups,
                cancel: AtomicBool::new(false),
                d,
            }
        }
        fn install(
            &self,
            stop: Duration,
            events: &mut Vec<String>,
            cancel_at: Option<usize>,
        ) -> Result<InstallOutcome, OtaError> {
            let roots = [self.root.clone()];
            let opts = InstallOptions {
                allowed_roots: &roots,
                backups_dir: &self.backups,
                stop_timeout: stop,
                cancel: &self.cancel,
            };
            let r = install(&self.zip, "1.2.3", &opts, &mut |e| {
                if let (Some(at), InstallEvent::Deploying { index, .. }) = (cancel_at, &e) {
                    if *index == at {
                        self.cancel.store(true, Ordering::SeqCst);
                    }
                }
                events.push(format!("{e:?}"));
            });
            // As the updater does once the outcome is recorded.
            if matches!(r, Ok(InstallOutcome::Done)) {
                assert!(
                    self.backups.join(JOURNAL_NAME).exists(),
                    "the committed journal stays until the caller has recorded the outcome"
                );
                finish(&self.backups);
            }
            r
        }
        fn put(&self, rel: &str, content: &str, mode: u32) {
            let p = self.root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        fn read(&self, rel: &str) -> Option<String> {
            fs::read_to_string(self.root.join(rel)).ok()
        }
        fn mode(&self, rel: &str) -> u32 {
            fs::metadata(self.root.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        }
        fn clean(&self) -> bool {
            !self.backups.join(JOURNAL_NAME).exists() && !self.backups.join(FILES_DIR).exists()
        }
        fn module(&self, name: &str, src: &str, dst: &str, extra: &str) -> String {
            format!(
                r#"{{"name": "{name}", "src": "{src}", "dst": "{}/{dst}"{extra}}}"#,
                self.root.display()
            )
        }
    }

    /// No `<name>.tmp` left anywhere below `dir`.
    fn no_tmp_files(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().flatten().all(|e| {
            let p = e.path();
            !p.to_string_lossy().ends_with(".tmp") && (!p.is_dir() || no_tmp_files(&p))
        })
    }

    /// Two modules: `app` (one executable file over an old one) and `web` (a directory with a
    /// new subdirectory), `web_extra` appended to web's manifest entry.
    fn two_module_package(f: &Fx, web_extra: &str) {
        f.put("app/bin", "old-bin", 0o644);
        f.put("web/index.html", "old-index", 0o644);
        f.put("web/keep.txt", "untouched", 0o640);
        let m = manifest_json(
            "1.2.3",
            &[
                f.module("app", "m/app/bin", "app/bin", ""),
                f.module("web", "m/web", "web", web_extra),
            ]
            .join(","),
        );
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("m/app/bin", b"new-bin", 0o755),
                E::Dir("m/web/"),
                E::File("m/web/js/new/app.js", b"js", 0o600),
                E::File("m/web/index.html", b"new-index", 0o644),
            ],
        );
    }

    fn assert_old(f: &Fx) {
        assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
        assert_eq!(f.mode("app/bin"), 0o644);
        assert_eq!(f.read("web/index.html").as_deref(), Some("old-index"));
        assert_eq!(f.read("web/keep.txt").as_deref(), Some("untouched"));
        assert!(!f.root.join("web/js").exists());
        assert!(no_tmp_files(&f.root));
    }

    #[test]
    fn install_deploys_modes_dirs_and_cleans_backups() {
        let f = Fx::new();
        two_module_package(&f, "");
        let mut ev = Vec::new();
        let r = f.install(Duration::from_secs(1), &mut ev, None).unwrap();
        assert_eq!(r, InstallOutcome::Done);
        assert_eq!(f.read("app/bin").as_deref(), Some("new-bin"));
        assert_eq!(f.mode("app/bin"), 0o755);
        assert_eq!(f.read("web/index.html").as_deref(), Some("new-index"));
        assert_eq!(f.read("web/js/new/app.js").as_deref(), Some("js"));
        assert_eq!(f.mode("web/js/new/app.js"), 0o600);
        assert_eq!(f.mode("web/js"), 0o755);
        assert_eq!(f.mode("web/js/new"), 0o755);
        assert_eq!(f.read("web/keep.txt").as_deref(), Some("untouched"));
        assert!(f.clean());
        assert!(no_tmp_files(&f.root));
        assert_eq!(
            ev,
            vec![
                r#"Deploying { module: "app", index: 1, total: 2 }"#,
                r#"Deploying { module: "web", index: 2, total: 2 }"#,
            ]
        );
        assert_eq!(
            recover(&f.backups, Duration::from_secs(1)).unwrap(),
            Recovery::Nothing
        );
    }

    #[test]
    fn failing_post_cmd_rolls_everything_back() {
        let f = Fx::new();
        two_module_package(&f, r#", "post_cmds": [["true"], ["false"]]"#);
        let mut ev = Vec::new();
        let e = f
            .install(Duration::from_secs(1), &mut ev, None)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
        assert!(e.detail.contains("module web"), "{e}");
        assert!(e.detail.contains("`false`"), "{e}");
        assert!(e.detail.ends_with("rolled back"), "{e}");
        assert_old(&f);
        assert!(f.root.join("web").is_dir());
        assert!(f.clean());
        assert!(ev.last().unwrap().starts_with("RollingBack"), "{ev:?}");
    }

    #[test]
    fn invalid_package_changes_nothing() {
        let f = Fx::new();
        two_module_package(&f, "");
        let roots = [f.root.clone()];
        let opts = InstallOptions {
            allowed_roots: &roots,
            backups_dir: &f.backups,
            stop_timeout: Duration::from_secs(1),
            cancel: &f.cancel,
        };
        let e = install(&f.zip, "9.9.9", &opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        assert_old(&f);
        assert!(f.clean());
    }

    #[test]
    fn directory_in_the_way_is_refused_before_anything() {
        let f = Fx::new();
        two_module_package(&f, "");
        fs::create_dir_all(f.root.join("web/js/new/app.js")).unwrap();
        let e = f
            .install(Duration::from_secs(1), &mut Vec::new(), None)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        assert!(e.detail.contains("nothing was changed"), "{e}");
        assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
        assert!(f.clean());
    }

    #[test]
    fn sigterm_ignoring_process_is_killed_then_restarted() {
        let f = Fx::new();
        let (name, path) = named_sleep(f.d.path());
        let script = format!("trap '' TERM; exec {} 100", path.display());
        let mut old = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap();
        assert_eq!(wait_found(&name, 1).len(), 1);
        let extra = format!(
            r#", "process_name": "{name}", "restart_order": 1, "start_cmd": ["{}", "100"]"#,
            path.display()
        );
        let m = manifest_json("1.2.3", &f.module("svc", "bin/x", "svc/x", &extra));
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("bin/x", b"x", 0o755),
            ],
        );
        let mut ev = Vec::new();
        let t = Instant::now();
        let r = f.install(Duration::from_secs(1), &mut ev, None).unwrap();
        assert_eq!(r, InstallOutcome::Done);
        assert!(t.elapsed() >= Duration::from_secs(1));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(old.wait().unwrap().signal(), Some(9));
        let now = wait_found(&name, 1);
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].pid as u32, old.id());
        assert_eq!(
            ev,
            vec![
                r#"Stopping { module: "svc" }"#,
                r#"Deploying { module: "svc", index: 1, total: 1 }"#,
                r#"Restarting { module: "svc" }"#,
            ]
        );
        process::stop_by_name(&name, Duration::from_secs(5)).unwrap();
        assert!(f.clean());
    }

    fn service_package(f: &Fx) -> PathBuf {
        f.put("a/f", "old-a", 0o644);
        let m = manifest_json(
            "1.2.3",
            &[
                f.module(
                    "a",
                    "a",
                    "a/f",
                    r#", "service": "a.service", "restart_order": 2"#,
                ),
                f.module(
                    "b",
                    "b",
                    "b/f",
                    r#", "service": "b.service", "restart_order": 1"#,
                ),
                f.module("c", "c", "c/f", r#", "service": "c.service""#),
            ]
            .join(","),
        );
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("a", b"new-a", 0o644),
                E::File("b", b"new-b", 0o644),
                E::File("c", b"new-c", 0o644),
            ],
        );
        f.d.path().join("log")
    }

    /// Install `f` with a recording `systemctl` that fails the call `fail_on` ("none": none).
    fn install_with_systemctl(f: &Fx, fail_on: &str) -> Result<InstallOutcome, OtaError> {
        let fake = fake_systemctl(f.d.path(), fail_on);
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        let r = f.install(Duration::from_secs(1), &mut Vec::new(), None);
        SYSTEMCTL_OVERRIDE.with(|o| *o.borrow_mut() = None);
        r
    }

    #[test]
    fn services_stop_in_reverse_and_start_in_restart_order() {
        let f = Fx::new();
        let log = service_package(&f);
        let r = install_with_systemctl(&f, "none");
        assert_eq!(r.unwrap(), InstallOutcome::Done);
        assert_eq!(
            fs::read_to_string(log).unwrap(),
            "stop c.service\nstop a.service\nstop b.service\n\
             start b.service\nstart a.service\nstart c.service\n"
        );
        assert_eq!(f.read("a/f").as_deref(), Some("new-a"));
        assert!(f.clean());
    }

    #[test]
    fn stop_failure_is_kill_failed_and_deploys_nothing() {
        let f = Fx::new();
        let log = service_package(&f);
        let r = install_with_systemctl(&f, "stop b.service");
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::ProcessKillFailed, "{e}");
        assert!(e.detail.contains("module b"), "{e}");
        assert_eq!(
            fs::read_to_string(log).unwrap(),
            "stop c.service\nstop a.service\nstop b.service\n\
             start b.service\nstart a.service\nstart c.service\n"
        );
        assert_eq!(f.read("a/f").as_deref(), Some("old-a"));
        assert!(!f.root.join("b").exists());
        assert!(f.clean());
    }

    #[test]
    fn failed_start_rolls_back_and_restarts_old() {
        let f = Fx::new();
        let log = service_package(&f);
        let r = install_with_systemctl(&f, "start a.service");
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
        assert!(e.detail.contains("module a"), "{e}");
        assert_eq!(f.read("a/f").as_deref(), Some("old-a"));
        assert!(!f.root.join("b").exists());
        assert!(!f.root.join("c").exists());
        let log = fs::read_to_string(log).unwrap();
        assert!(
            log.ends_with(
                "stop c.service\nstop a.service\nstop b.service\n\
                 start b.service\nstart a.service\nstart c.service\n"
            ),
            "{log}"
        );
        assert!(f.clean());
    }

    #[test]
    fn interrupted_install_is_rolled_back_by_recover() {
        let f = Fx::new();
        two_module_package(&f, "");
        let r = f
            .install(Duration::from_secs(1), &mut Vec::new(), Some(1))
            .unwrap();
        assert_eq!(r, InstallOutcome::Interrupted);
        // The first file is new, the journal waits for the next start.
        assert_eq!(f.read("app/bin").as_deref(), Some("new-bin"));
        assert!(f.backups.join(JOURNAL_NAME).exists());
        let j: Journal =
            serde_json::from_slice(&fs::read(f.backups.join(JOURNAL_NAME)).unwrap()).unwrap();
        assert_eq!(j.phase, Phase::Deploying);
        assert_eq!(
            recover(&f.backups, Duration::from_secs(1)).unwrap(),
            Recovery::RolledBack {
                version: "1.2.3".into()
            }
        );
        assert_old(&f);
        assert!(f.clean());
        assert_eq!(
            recover(&f.backups, Duration::from_secs(1)).unwrap(),
            Recovery::Nothing
        );
    }

    #[test]
    fn interrupted_in_web_module_then_rollback_twice() {
        // Interrupted with the new subdirectory created; the rollback is run twice (a power
        // cut during the first one) before recover() finishes it.
        let f = Fx::new();
        two_module_package(&f, "");
        let r = f
            .install(Duration::from_secs(1), &mut Vec::new(), Some(2))
            .unwrap();
        assert_eq!(r, InstallOutcome::Interrupted);
        assert_eq!(f.read("web/js/new/app.js").as_deref(), Some("js"));
        assert_eq!(f.read("web/index.html").as_deref(), Some("old-index"));
        let j: Journal =
            serde_json::from_slice(&fs::read(f.backups.join(JOURNAL_NAME)).unwrap()).unwrap();
        assert!(restore_files(&j).is_empty());
        assert!(restore_files(&j).is_empty());
        assert_old(&f);
        assert_eq!(
            recover(&f.backups, Duration::from_secs(1)).unwrap(),
            Recovery::RolledBack {
                version: "1.2.3".into()
            }
        );
        assert_old(&f);
        assert!(f.clean());
    }

    #[test]
    fn missing_backup_keeps_the_journal() {
        let f = Fx::new();
        two_module_package(&f, "");
        f.install(Duration::from_secs(1), &mut Vec::new(), Some(1))
            .unwrap();
        fs::remove_dir_all(f.backups.join(FILES_DIR)).unwrap();
        let e = recover(&f.backups, Duration::from_secs(1)).unwrap_err();
        assert!(e.detail.contains("app/bin"), "{e}");
        assert!(f.backups.join(JOURNAL_NAME).exists());
    }

    #[test]
    fn committed_journal_completes_cleanup() {
        let f = Fx::new();
        let files = f.backups.join(FILES_DIR);
        fs::create_dir(&files).unwrap();
        fs::write(files.join("0"), "old").unwrap();
        let j = Journal {
            version: "1.2.3".into(),
            phase: Phase::Committed,
            modules: vec![],
            targets: vec![Target {
                dst: f.root.join("x"),
                backup: files.join("0"),
                existed: true,
            }],
            created_dirs: vec![],
        };
        write_journal(&f.backups, &j).unwrap();
        assert_eq!(
            recover(&f.backups, Duration::from_secs(1)).unwrap(),
            Recovery::Completed {
                version: "1.2.3".into()
            }
        );
        assert!(f.clean());
    }

    #[test]
    fn corrupt_journal_is_set_aside() {
        let f = Fx::new();
        fs::write(f.backups.join(JOURNAL_NAME), "{\"version\": \"1.2").unwrap();
        assert_eq!(
            recover(&f.backups, Duration::from_secs(1)).unwrap(),
            Recovery::Nothing
        );
        assert!(!f.backups.join(JOURNAL_NAME).exists());
        assert!(f.backups.join("journal.json.corrupt").exists());
    }

    #[test]
    fn destination_inside_backups_is_refused() {
        let f = Fx::new();
        let pf = |dst: PathBuf| PlannedFile {
            module: 0,
            entry: 0,
            dst,
            mode: 0o644,
            size: 1,
        };
        let e = survey(&[pf(f.backups.join(JOURNAL_NAME))], &f.backups).unwrap_err();
        assert!(e.detail.contains("backups"), "{e}");
        let (owners, created) = survey(&[pf(f.root.join("a/b/c"))], &f.backups).unwrap();
        assert_eq!(owners, vec![None]);
        assert_eq!(created, vec![f.root.join("a"), f.root.join("a/b")]);
    }

    #[test]
    fn start_order_puts_unordered_last() {
        let m = |o: Option<i64>| Module {
            name: "m".into(),
            src: "s".into(),
            dst: "/opt/tope/x".into(),
            process_name: None,
            restart_order: o,
            service: None,
            start_cmd: None,
            post_cmds: vec![],
        };
        let mods = vec![m(None), m(Some(5)), m(Some(-1)), m(None), m(Some(5))];
        assert_eq!(start_order(&mods), vec![2, 1, 4, 0, 3]);
    }
}
