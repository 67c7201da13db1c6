//! Checks on the device before anything is touched: where each destination really is
//! (symlinks followed, docs/API.md section 8.3), what is in the way, which directories will be
//! created, and whether there is room for the backups.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{self, OtaError};
use crate::fsutil;
use crate::package::PlannedFile;

use super::beneath::{lstat_at, resolve_dst, Resolved, Root};
use super::journal::CreatedDir;
use super::plan::Group;

/// Owner (uid, gid) of an existing destination.
pub type Owner = (u32, u32);

/// What the checks found, per planned file and overall.
#[derive(Debug)]
pub struct Survey {
    /// The opened roots, by index into `allowed_roots`.
    pub roots: Vec<Option<Root>>,
    /// Per planned file: the owner of the file it replaces (`None`: a new file).
    pub owners: Vec<Option<Owner>>,
    /// Directories to create, outermost first.
    pub created: Vec<CreatedDir>,
}

/// Resolve every destination (refused with `INVALID_MANIFEST` when it leads outside the
/// roots or into the updater's own backups).
pub fn resolve(
    files: &[PlannedFile],
    roots: &[PathBuf],
    backups_dir: &Path,
) -> Result<Vec<Resolved>, OtaError> {
    let backups = fs::canonicalize(backups_dir).unwrap_or_else(|_| backups_dir.to_path_buf());
    files
        .iter()
        .map(|f| {
            let r =
                resolve_dst(&f.dst, roots).map_err(|e| error::invalid_manifest(e.to_string()))?;
            let real_root =
                fs::canonicalize(&roots[r.root]).unwrap_or_else(|_| roots[r.root].clone());
            if real_root.join(&r.dir).starts_with(&backups) {
                return Err(error::invalid_manifest(format!(
                    "{} is inside the updater's backups directory",
                    f.dst.display()
                )));
            }
            Ok(r)
        })
        .collect()
}

fn refuse(p: &Path, why: impl std::fmt::Display) -> OtaError {
    error::deployment_failed(format!("{} {why}; nothing was changed", p.display()))
}

/// Open the roots the groups need (creating a missing root, which the operator configured),
/// find the owner of each file to replace and the directories to create. Refuses a destination
/// that is a directory, or below something that is not one.
pub fn survey(
    files: &[PlannedFile],
    groups: &[Group],
    roots: &[PathBuf],
) -> Result<Survey, OtaError> {
    let mut opened: Vec<Option<Root>> = roots.iter().map(|_| None).collect();
    let mut owners = vec![None; files.len()];
    let mut created = Vec::new();
    let mut seen = HashSet::new();
    for g in groups {
        if opened[g.root].is_none() {
            let path = &roots[g.root];
            if !path.exists() {
                tracing::warn!(
                    "allowed root {} does not exist: creating it",
                    path.display()
                );
                fsutil::create_dirs_durable(path)
                    .map_err(|e| refuse(path, format!("cannot be created: {e}")))?;
            }
            opened[g.root] =
                Some(Root::open(path).map_err(|e| refuse(path, format!("cannot be opened: {e}")))?);
        }
        let Some(root) = opened[g.root].as_ref() else {
            continue;
        };
        let dir = match root.dir(&g.rel, None) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The deepest existing directory; the rest will be created.
                let names: Vec<_> = g.rel.components().collect();
                let mut have = PathBuf::new();
                for c in &names {
                    let next = have.join(c);
                    match root.dir(&next, None) {
                        Ok(_) => have = next,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                        Err(e) => return Err(refuse(&root.path.join(&next), e)),
                    }
                }
                let mut rel = have;
                for c in &names[rel.components().count()..] {
                    rel.push(c);
                    if seen.insert((g.root, rel.clone())) {
                        created.push(CreatedDir {
                            root: root.path.clone(),
                            rel: rel.clone(),
                        });
                    }
                }
                None
            }
            Err(e) => return Err(refuse(&root.path.join(&g.rel), e)),
        };
        let Some(dir) = dir else { continue };
        for (i, name) in &g.files {
            let at = root.path.join(&dir.rel).join(name);
            match lstat_at(std::os::fd::AsFd::as_fd(&dir.fd), name) {
                Ok(Some(m)) if m.is_dir() => {
                    return Err(refuse(&at, "is a directory on the device"))
                }
                Ok(Some(m)) => owners[*i] = Some((m.uid(), m.gid())),
                Ok(None) => {}
                Err(e) => return Err(refuse(&at, format!("cannot be inspected: {e}"))),
            }
        }
    }
    Ok(Survey {
        roots: opened,
        owners,
        created,
    })
}

/// Backups on another filesystem than their file are copies: check there is room for them.
pub fn backup_space(
    backups_dir: &Path,
    files: &[PlannedFile],
    owners: &[Option<Owner>],
) -> Result<(), OtaError> {
    let bdev = fs::metadata(backups_dir)
        .map_err(|e| error::internal(format!("{}: {e}", backups_dir.display())))?
        .dev();
    let need: u64 = files
        .iter()
        .zip(owners)
        .filter(|(_, o)| o.is_some())
        .filter_map(|(f, _)| fs::symlink_metadata(&f.dst).ok())
        .filter(|m| m.is_file() && m.dev() != bdev)
        .map(|m| m.len().saturating_add(4096))
        .fold(0u64, u64::saturating_add);
    if need == 0 {
        return Ok(());
    }
    let avail = fsutil::available_bytes(backups_dir)
        .map_err(|e| error::internal(format!("free space of {}: {e}", backups_dir.display())))?;
    if avail < need {
        return Err(error::disk_full(format!(
            "backups need {need} bytes in {}, {avail} available",
            backups_dir.display()
        )));
    }
    Ok(())
}
