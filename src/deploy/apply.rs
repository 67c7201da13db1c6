//! Putting the new files in place, with O(directories) flushes instead of O(files):
//!
//! 1. [`stage`] (no process stopped yet): every new file is streamed from the ZIP into a
//!    staging name of the updater's own beside its destination (`.tope-stage-<id>-<n>`,
//!    [`Journal::staging_name`], created with `O_EXCL`: docs/API.md 9.6), with size, CRC and,
//!    for signed packages, SHA-256 checked on the way, its mode and the owner of the file it
//!    replaces; missing directories are created. Then one flush barrier: `syncfs` once per filesystem touched, so every temporary's
//!    data and directory entry is on disk before any rename can point a name at it.
//! 2. [`backup`] (processes stopped): every existing destination is hard-linked into
//!    `backups/install-files/<n>` (copied across filesystems); `backups/install-files` and `backups` are flushed
//!    (`syncfs` when anything was copied). Which destinations did not exist is known exactly
//!    now, and the caller journals it before the first rename.
//! 3. [`swap`]: in each directory, every temporary is renamed over its destination, then the
//!    directory is flushed once.
//!
//! Why this is crash-safe: a rename is only ever issued for a temporary flushed by the barrier
//! of step 1, so a name never points at unwritten data; the backups are flushed and journalled
//! before the first rename, so a restart can always put every old file back; and the journal
//! says `committed` only after every directory holding a rename has been flushed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{self, ErrorCode, OtaError};
use crate::package::{Package, PlannedFile};

use super::beneath::{lstat_at, unlink_at, Dir, Root};
use super::check::{Owner, Survey};
use super::error::Cause;
use super::journal::Journal;
use super::plan::Group;
use super::InstallEvent;

/// Directory of the backups inside the backups directory: a name of the updater's own, so that
/// what the Python updater kept in `backups/` is never touched.
pub const FILES_DIR: &str = "install-files";

/// A deployment I/O error while doing `what` (`DISK_FULL` when the disk is full, else
/// `DEPLOYMENT_FAILED`: [`Cause::code`]).
fn io_err(what: impl std::fmt::Display, e: io::Error) -> Cause {
    Cause::io(what, e)
}

/// The roots a journal names, opened once.
#[derive(Debug, Default)]
pub struct Roots(HashMap<PathBuf, Root>);

impl Roots {
    pub fn get(&mut self, path: &Path) -> io::Result<&Root> {
        if !self.0.contains_key(path) {
            let r = Root::open(path)?;
            self.0.insert(path.to_path_buf(), r);
        }
        self.0
            .get(path)
            .ok_or_else(|| io::Error::other("root vanished from the table"))
    }

    /// The directory `rel` beneath `root`, never created.
    pub fn dir(&mut self, root: &Path, rel: &Path) -> io::Result<Dir> {
        self.get(root)?.dir(rel, None)
    }
}

/// One file descriptor per filesystem, to flush each once.
#[derive(Default)]
struct Filesystems(HashMap<u64, OwnedFd>);

impl Filesystems {
    fn note(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let dev = File::from(fd.try_clone_to_owned()?).metadata()?.dev();
        if let std::collections::hash_map::Entry::Vacant(v) = self.0.entry(dev) {
            v.insert(fd.try_clone_to_owned()?);
        }
        Ok(())
    }

    fn syncfs_all(&self) -> io::Result<()> {
        for fd in self.0.values() {
            rustix::fs::syncfs(fd)?;
        }
        Ok(())
    }
}

/// Whether staging ran to its end or stopped on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Done,
    Cancelled,
}

/// Whether none of the staging names `j` gives exists yet (checked before the journal is
/// written; an id whose names are taken is replaced by another, so the updater never writes
/// to, or removes, a name it did not create).
pub fn staging_names_free(j: &Journal, roots: &mut Roots) -> Result<bool, Cause> {
    let mut n = 0usize;
    for d in &j.dirs {
        let first = n;
        n += d.files.len();
        let where_ = d.root.join(&d.rel);
        let dir = match roots.dir(&d.root, &d.rel) {
            Ok(dir) => dir,
            // Created by the installation: empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(format_args!("opening {}", where_.display()), e)),
        };
        for (i, name) in d.files.iter().enumerate() {
            let staged = j.staging_name(first + i, name);
            match lstat_at(dir.fd.as_fd(), &staged) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    tracing::warn!(
                        "{} exists and is not this installation's: another staging id is taken",
                        where_.join(&staged).display()
                    );
                    return Ok(false);
                }
                Err(e) => {
                    return Err(io_err(
                        format_args!("inspecting {}", where_.join(&staged).display()),
                        e,
                    ))
                }
            }
        }
    }
    Ok(true)
}

/// Step 1 (see the module documentation). Events: one `Deploying` per module. `groups` are the
/// plan `j` was made from (one journal directory per group, in the same order). A staging name
/// found taken is noted in `j.foreign`, so that the rollback leaves it alone.
pub fn stage(
    pkg: &mut Package,
    j: &mut Journal,
    groups: &[Group],
    survey: &Survey,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(InstallEvent),
) -> Result<Flow, Cause> {
    let total = pkg.manifest.modules.len();
    let names: Vec<String> = pkg
        .manifest
        .modules
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let files: Vec<PlannedFile> = pkg.files.clone();
    let mut filesystems = Filesystems::default();
    let mut announced = None;
    let mut n = 0usize;
    for g in groups {
        if announced != Some(g.module) {
            announced = Some(g.module);
            on_event(InstallEvent::Deploying {
                module: &names[g.module],
                index: g.module + 1,
                total,
            });
        }
        let Some(root) = survey.roots[g.root].as_ref() else {
            return Err(error::internal("a root of the plan was not opened").into());
        };
        let where_ = root.path.join(&g.rel);
        let dir = root
            .dir(&g.rel, Some(&mut Vec::new()))
            .map_err(|e| io_err(format_args!("creating directory {}", where_.display()), e))?;
        filesystems
            .note(dir.fd.as_fd())
            .map_err(|e| io_err(format_args!("inspecting {}", where_.display()), e))?;
        for (i, name) in &g.files {
            let f = &files[*i];
            let staged = j.staging_name(n, &name.to_string_lossy());
            let mut taken = false;
            let written = write_staged(pkg, f, &dir, &staged, survey.owners[*i], &mut taken);
            if taken {
                j.foreign.insert(n);
            }
            n += 1;
            written.map_err(|e| e.within(format_args!("module {}", names[f.module])))?;
            if cancel.load(Ordering::SeqCst) {
                return Ok(Flow::Cancelled);
            }
        }
    }
    filesystems
        .syncfs_all()
        .map_err(|e| io_err("flushing the new files", e))?;
    Ok(Flow::Done)
}

/// Stream one entry into the new file `staged` in `dir`, with its mode and `owner`. The name is
/// created here (`O_EXCL`): nothing that was there before is ever removed or written to; when
/// something is, `taken` is set and the installation fails.
fn write_staged(
    pkg: &mut Package,
    f: &PlannedFile,
    dir: &Dir,
    staged: &OsStr,
    owner: Option<Owner>,
    taken: &mut bool,
) -> Result<(), Cause> {
    let shown = f.dst.display();
    let fd = match rustix::fs::openat(
        &dir.fd,
        staged,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::EXIST) => {
            *taken = true;
            return Err(error::deployment_failed(format!(
                "{} appeared while {shown} was staged: it is not the updater's, left alone",
                dir_path_hint(f, staged)
            ))
            .into());
        }
        Err(e) => {
            return Err(io_err(
                format_args!(
                    "creating the staging file {} for {shown}",
                    staged.to_string_lossy()
                ),
                e.into(),
            ))
        }
    };
    let mut out = File::from(fd);
    pkg.extract_to(f, &mut out)
        .map_err(OtaError::from)
        .map_err(|e| match e.code {
            ErrorCode::InternalError => error::deployment_failed(e.detail),
            _ => e,
        })?;
    rustix::fs::fchmod(&out, Mode::from_raw_mode(f.mode))
        .map_err(|e| io_err(format_args!("setting the mode of {shown}"), e.into()))?;
    if let Some((uid, gid)) = owner {
        set_owner(&out, uid, gid, &f.dst);
    }
    Ok(())
}

/// `staged` beside `f`'s destination, for messages.
fn dir_path_hint(f: &PlannedFile, staged: &OsStr) -> String {
    f.dst.with_file_name(staged).display().to_string()
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

/// Open `backups/install-files`, creating it.
pub fn files_dir(backups_dir: &Path, create: bool) -> io::Result<OwnedFd> {
    let dir = backups_dir.join(FILES_DIR);
    if create {
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rustix::fs::open(
        &dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Step 2 (see the module documentation): fills `j`'s `new` sets.
pub fn backup(j: &mut Journal, roots: &mut Roots, backups_dir: &Path) -> Result<(), Cause> {
    let files =
        files_dir(backups_dir, true).map_err(|e| io_err("creating backups/install-files", e))?;
    let mut copied = false;
    let mut n = 0usize;
    for d in &mut j.dirs {
        let where_ = d.root.join(&d.rel);
        let dir = roots
            .dir(&d.root, &d.rel)
            .map_err(|e| io_err(format_args!("opening {}", where_.display()), e))?;
        for name in &d.files {
            let num = n.to_string();
            n += 1;
            let shown = where_.join(name);
            match rustix::fs::linkat(
                &dir.fd,
                name.as_str(),
                &files,
                num.as_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => {}
                Err(rustix::io::Errno::NOENT) => {
                    d.new.insert(name.clone());
                }
                // Another filesystem, or one without hard links (vfat answers EPERM).
                Err(
                    rustix::io::Errno::XDEV | rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP,
                ) => {
                    copy_at(
                        dir.fd.as_fd(),
                        OsStr::new(name),
                        files.as_fd(),
                        OsStr::new(&num),
                    )
                    .map_err(|e| io_err(format_args!("backing up {}", shown.display()), e))?;
                    copied = true;
                }
                Err(e) => {
                    return Err(io_err(
                        format_args!("backing up {}", shown.display()),
                        e.into(),
                    ))
                }
            }
        }
    }
    let flushed = if copied {
        rustix::fs::syncfs(&files)
    } else {
        rustix::fs::fsync(&files)
    };
    flushed
        .map_err(io::Error::from)
        .and_then(|()| crate::fsutil::fsync_dir(backups_dir))
        .map_err(|e| io_err("flushing the backups", e))
}

/// Copy `name` in `from` to the new `to_name` in `to`: a symlink as a symlink, a file with its
/// mode and owner. Not flushed (the caller's barrier does that).
pub fn copy_at(
    from: BorrowedFd<'_>,
    name: &OsStr,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<()> {
    let Some(meta) = lstat_at(from, name)? else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "vanished"));
    };
    unlink_at(to, to_name)?;
    if meta.file_type().is_symlink() {
        let target = rustix::fs::readlinkat(from, name, Vec::new())?;
        rustix::fs::symlinkat(target.as_c_str(), to, to_name)?;
        return Ok(());
    }
    let src = rustix::fs::openat(
        from,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let out = rustix::fs::openat(
        to,
        to_name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let (mut src, mut out) = (File::from(src), File::from(out));
    io::copy(&mut src, &mut out)?;
    rustix::fs::fchmod(&out, Mode::from_raw_mode(meta.mode() & 0o7777))?;
    set_owner(&out, meta.uid(), meta.gid(), Path::new(to_name));
    Ok(())
}

/// Step 3 (see the module documentation).
pub fn swap(j: &Journal, roots: &mut Roots) -> Result<(), Cause> {
    let mut n = 0usize;
    for d in &j.dirs {
        let where_ = d.root.join(&d.rel);
        let dir = roots
            .dir(&d.root, &d.rel)
            .map_err(|e| io_err(format_args!("opening {}", where_.display()), e))?;
        for name in &d.files {
            let staged = j.staging_name(n, name);
            n += 1;
            rustix::fs::renameat(&dir.fd, &staged, &dir.fd, name.as_str()).map_err(|e| {
                io_err(
                    format_args!("renaming into {}", where_.join(name).display()),
                    e.into(),
                )
            })?;
        }
        rustix::fs::fsync(&dir.fd)
            .map_err(|e| io_err(format_args!("flushing {}", where_.display()), e.into()))?;
    }
    Ok(())
}
