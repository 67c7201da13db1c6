//! Undoing an installation from its journal: after a failure, and at start-up after a power cut
//! ([`super::recover`]). Idempotent: a power cut during a rollback means the next start rolls
//! back again.
//!
//! By phase:
//! - `staging`, `staged`: only staging files and new directories exist: they are removed.
//!   Staging files are named by the journal ([`Journal::staging_name`]: the updater's own
//!   `.tope-stage-<id>-<n>`, or `<name>.tmp` in a journal of format 2), so nothing the
//!   installation did not create is ever removed (docs/API.md 9.6).
//! - `stopping`: the same, then the processes recorded in the journal are started again.
//! - `swapping`: the modules' processes are stopped (the new ones, or whatever the system
//!   started after a reboot); every destination gets its backup back (hard link to its staging
//!   name, or a flushed copy across filesystems, renamed over the name, the directory flushed) or,
//!   when it did not exist before, is removed; then the old processes are started again as they
//!   ran (the argv recorded before they were stopped) and the modules' services started.
//! - `committed`: nothing to undo.
//!
//! The journal is removed (durably) before the backups, so a journal never points at missing
//! backups. A file that cannot be restored keeps the journal, so the next start retries.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::fsutil;

use super::apply::{copy_at, files_dir, Roots, FILES_DIR};
use super::beneath::unlink_at;
use super::error::RollbackIncomplete;
use super::journal::{self, CreatedDir, Journal, Phase};
use super::plan::{start_order, stops};
use super::{procs, InstallEvent};

/// Put every file back (see the module documentation); the files that could not be restored.
pub fn restore_files(j: &Journal, roots: &mut Roots, backups_dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let swapped = j.phase == Phase::Swapping;
    let files = if swapped {
        match files_dir(backups_dir, false) {
            Ok(fd) => Some(fd),
            Err(e) => {
                failures.push(format!("{}: {e}", backups_dir.join(FILES_DIR).display()));
                None
            }
        }
    } else {
        None
    };
    // Last directory first, as deployed in reverse; backups are numbered in journal order.
    let mut next = j.target_count();
    for d in j.dirs.iter().rev() {
        let first = next - d.files.len();
        next = first;
        let where_ = d.root.join(&d.rel);
        let dir = match roots.dir(&d.root, &d.rel) {
            Ok(dir) => dir,
            // Never created (interrupted early), or only new files were to go there.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && d.files.iter().all(|f| d.new.contains(f)) =>
            {
                continue
            }
            // Before the swap only temporaries can be there; a directory that can no longer
            // be reached beneath its root (moved, replaced by a link) holds none of ours.
            Err(e) if !swapped => {
                tracing::warn!("rollback: {} skipped: {e}", where_.display());
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: {e}", where_.display()));
                continue;
            }
        };
        for (fi, name) in d.files.iter().enumerate().rev() {
            let n = first + fi;
            let staged = j.staging_name(n, name);
            // Staging found the name taken by someone else: it is theirs (nothing was swapped).
            if j.foreign.contains(&n) {
                continue;
            }
            let result = remove_staged(dir.fd.as_fd(), &staged, &where_).and_then(|()| {
                if !swapped {
                    return Ok(());
                }
                if d.new.contains(name) {
                    return unlink_at(dir.fd.as_fd(), OsStr::new(name));
                }
                let Some(files) = &files else {
                    return Err(io::Error::other("no backups"));
                };
                let through = j.restore_name(n, name);
                remove_staged(dir.fd.as_fd(), &through, &where_)?;
                let num = n.to_string();
                restore_one(
                    files.as_fd(),
                    OsStr::new(&num),
                    &dir.fd,
                    &through,
                    OsStr::new(name),
                )
            });
            if let Err(e) = result {
                failures.push(format!("{}: {e}", where_.join(name).display()));
            }
        }
        if let Err(e) = rustix::fs::fsync(&dir.fd) {
            failures.push(format!("flushing {}: {e}", where_.display()));
        }
    }
    remove_created(&j.created, roots);
    failures
}

/// Remove the staging file `name` of the installation from `dir` (at `where_`). The updater
/// only ever creates regular files there: a directory at that name (a `<name>.tmp/` named by a
/// journal of format 2) is someone else's and stays.
pub(super) fn remove_staged(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    where_: &Path,
) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => {
            tracing::warn!(
                "rollback: {} is a directory, not a staging file of the updater: left alone",
                where_.join(name).display()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Put backup `num` back as `name` in `dir`, through `tmp` (the installation's own name,
/// already removed).
pub(super) fn restore_one(
    files: std::os::fd::BorrowedFd<'_>,
    num: &OsStr,
    dir: &std::os::fd::OwnedFd,
    tmp: &OsStr,
    name: &OsStr,
) -> io::Result<()> {
    match rustix::fs::linkat(files, num, dir, tmp, AtFlags::empty()) {
        Ok(()) => {}
        Err(rustix::io::Errno::XDEV | rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP) => {
            copy_at(files, OsStr::new(num), dir.as_fd(), tmp)?;
            // Rare path (backups on another filesystem): flush the copy itself.
            if let Ok(fd) = rustix::fs::openat(
                dir,
                tmp,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                rustix::fs::fsync(&fd)?;
            }
        }
        Err(rustix::io::Errno::NOENT) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("backup {} is missing", Path::new(num).display()),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    rustix::fs::renameat(dir, tmp, dir, name)?;
    // Renaming a link over another link of the same file (already restored) does nothing and
    // leaves the staging name behind.
    unlink_at(dir.as_fd(), tmp)
}

/// Remove the directories the installation created, innermost first, when empty.
pub(super) fn remove_created(created: &[CreatedDir], roots: &mut Roots) {
    for c in created.iter().rev() {
        let (Some(parent), Some(name)) = (c.rel.parent(), c.rel.file_name()) else {
            continue;
        };
        let Ok(dir) = roots.dir(&c.root, parent) else {
            continue;
        };
        match rustix::fs::unlinkat(&dir.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                if let Err(e) = rustix::fs::fsync(&dir.fd) {
                    tracing::warn!("flushing {}: {e}", c.root.join(parent).display());
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => tracing::debug!("directory {} kept: {e}", c.root.join(&c.rel).display()),
        }
    }
}

/// Remove the journal (durably), then the backups. Problems are logged: a committed journal
/// left behind is finished by the next start.
pub fn cleanup(backups_dir: &Path) {
    if let Err(e) = fsutil::remove_durable(&journal::path(backups_dir)) {
        tracing::error!("cannot remove {}: {e}", journal::JOURNAL_NAME);
        return;
    }
    remove_backup_files(backups_dir);
}

pub fn remove_backup_files(backups_dir: &Path) {
    let files = backups_dir.join(FILES_DIR);
    match std::fs::remove_dir_all(&files) {
        Ok(()) => {
            if let Err(e) = fsutil::fsync_dir(backups_dir) {
                tracing::warn!("fsync of {} failed: {e}", backups_dir.display());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", files.display()),
    }
}

/// Roll back the installation described by `j` (see the module documentation).
pub fn rollback(
    j: &Journal,
    backups_dir: &Path,
    stop_timeout: Duration,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<(), RollbackIncomplete> {
    tracing::warn!(
        "rolling back the installation of version {} (phase {:?})",
        j.version,
        j.phase
    );
    let order = start_order(&j.modules);
    if j.phase == Phase::Swapping {
        let mut services = HashSet::new();
        for &i in order.iter().rev() {
            if let Err(e) = procs::stop_module(&j.modules[i], stop_timeout, &mut services, None) {
                tracing::error!("rollback: module {}: {e}", j.modules[i].name);
            }
        }
    }
    let mut roots = Roots::default();
    let failures = restore_files(j, &mut roots, backups_dir);
    if matches!(j.phase, Phase::Stopping | Phase::Swapping) {
        let stopped: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| stops(&j.modules[i]))
            .collect();
        procs::start_old(j, &stopped, stop_timeout, on_event);
    }
    if !failures.is_empty() {
        tracing::error!(
            "rollback incomplete, files not restored: {}",
            failures.join("; ")
        );
        return Err(RollbackIncomplete { files: failures });
    }
    cleanup(backups_dir);
    tracing::info!("rollback of version {} done", j.version);
    Ok(())
}
