//! The update package: a ZIP with `manifest.json` at its root (docs/API.md sections 4, 8.3,
//! 8.6 and 8.8). The daemon ([`open_package`]) and the package author's tools (`pack`,
//! `verify`) check a package through the one path, [`Package::open`]; nothing is deployed
//! before it passed:
//! - SWU envelope (docs/API.md 9.3, `INVALID_PACKAGE`): a file whose first bytes are a cpio
//!   magic (never decided by its name) is read by `swu`, its image's sha256 checked against
//!   `sw-description` in one streaming pass, and the ZIP inside it read in place through a
//!   [`Window`] (a plain ZIP is a window over the whole file), so every rule below applies to
//!   both alike; `software.version` must be the manifest's `version`.
//! - ZIP level (`INVALID_PACKAGE`, `archive.rs`): a central directory of more than 65536
//!   entries or 8 MiB, refused from its end record before it is read; an unreadable or corrupt
//!   archive, duplicate names (also after normalising `a//b` and `./a` to `a/b`), entries
//!   overlapping each other or the central directory, encrypted entries, compression other
//!   than stored or deflate, symlinks and other special files, names that are absolute,
//!   contain `..`, `\` or NUL or would escape the root, a name that is both a file and a
//!   directory, more than 8 GiB uncompressed in total, and entries over 1 MiB that expand more
//!   than 1000 times.
//! - Signature (`INVALID_PACKAGE`, `signature.rs`): `manifest.sig` against the trusted keys,
//!   before the manifest is even parsed, and the signed `sha256` map.
//! - Manifest level (`INVALID_MANIFEST`, `manifest.rs`): missing or oversized `manifest.json`,
//!   unknown keys (named, with the likely intended key), and every rule of sections 4 and 8.4
//!   (see [`validate_manifest`]); a `src` that matches nothing.
//! - Space (`DISK_FULL`, daemon only): the filesystem of each destination must hold the new
//!   files while the old ones still exist (they are kept as backups until the installation
//!   commits).
//!
//! The zip crate's `extract()` is never used; every entry is streamed by index through
//! [`Package::extract_to`], which checks the size, lets the reader verify the CRC32 and checks
//! the entry's SHA-256 when the manifest names it, before the caller commits anything.

mod archive;
mod error;
mod manifest;
mod signature;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use archive::{
    canonical_rel, check_central_directory, deploy_mode, CentralDirectory, DEFAULT_MODE,
    MAX_CENTRAL_DIRECTORY,
};
pub use error::{EntryProblem, KeyError, PackageError};
pub use manifest::{
    check_downgrade, compare_versions, is_semver, parse_manifest, validate_manifest, Manifest,
    Module, PostCmd, DEFAULT_HEALTH_TIMEOUT_S, MAX_HEALTH_TIMEOUT_S,
};
pub use signature::{check_signature, PublicKey, SigningKey, MAX_SIGNATURE_BYTES, SIGNATURE_NAME};

use archive::EntryInfo;
use signature::EntryHashes;

use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::paths::normalize_abs;
use crate::swu::{self, Envelope, Window};

/// Name of the manifest at the root of the package.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Largest accepted `manifest.json`.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Most entries a package may hold.
pub const MAX_ENTRIES: usize = 65536;
/// Largest total uncompressed size of a package.
pub const MAX_TOTAL_UNCOMPRESSED: u64 = 8 * 1024 * 1024 * 1024;
/// Entries above this size are checked for their compression ratio.
pub const RATIO_CHECK_MIN: u64 = 1024 * 1024;
/// Highest uncompressed/compressed ratio accepted for an entry above [`RATIO_CHECK_MIN`].
pub const MAX_RATIO: u64 = 1000;
/// Slack per file for the free-space check (block rounding, metadata).
const PER_FILE_SLACK: u64 = 4096;

/// Which signatures a package must carry. The default: no keys, `manifest.sig` ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signatures<'a> {
    /// Keys a `manifest.sig` is verified with (config `trusted_keys`).
    pub trusted_keys: &'a [PublicKey],
    /// Refuse a package without a verified signature (config `require_signature`).
    pub require_signature: bool,
}

/// What a package is checked against, besides its own consistency.
#[derive(Debug, Clone, Copy)]
pub struct PackagePolicy<'a> {
    /// Every `dst` must lie inside one of these; `None` applies no root rule (the package
    /// author's tools without `--config`).
    pub allowed_roots: Option<&'a [PathBuf]>,
    pub signatures: Signatures<'a>,
}

/// One file to deploy: ZIP entry `entry` of module `module` (index in the manifest) to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub module: usize,
    /// Index of the entry in the ZIP.
    pub entry: usize,
    /// Normalised absolute destination.
    pub dst: PathBuf,
    /// Permission bits to give the file.
    pub mode: u32,
    /// Uncompressed size.
    pub size: u64,
}

/// An opened, checked package, ready to be deployed.
pub struct Package {
    archive: zip::ZipArchive<Window>,
    /// The SWU envelope the package came in (docs/API.md 9.3); `None` for a plain ZIP.
    pub envelope: Option<Envelope>,
    pub manifest: Manifest,
    /// Every file to deploy, module by module in manifest order.
    pub files: Vec<PlannedFile>,
    /// The trusted key that verified `manifest.sig`; `None`: treated as unsigned.
    pub signed_by: Option<PublicKey>,
    /// Expected SHA-256 of entries, checked by [`Package::extract_to`].
    hashes: EntryHashes,
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Package")
            .field("envelope", &self.envelope)
            .field("manifest", &self.manifest)
            .field("files", &self.files)
            .field("signed_by", &self.signed_by)
            .finish_non_exhaustive()
    }
}

/// Map every module's `src` to the files to deploy.
fn plan(
    manifest: &Manifest,
    entries: &HashMap<String, EntryInfo>,
) -> Result<Vec<PlannedFile>, PackageError> {
    // Entries in ZIP order, so planning is deterministic.
    let mut ordered: Vec<(&String, &EntryInfo)> = entries.iter().collect();
    ordered.sort_by_key(|(_, i)| i.index);
    let mut files = Vec::new();
    for (mi, md) in manifest.modules.iter().enumerate() {
        let name = &md.name;
        let (Some(src), Some(dst)) = (canonical_rel(&md.src), normalize_abs(&md.dst)) else {
            return Err(PackageError::Unplannable {
                module: name.clone(),
            });
        };
        match entries.get(&src) {
            Some(e) if !e.is_dir => files.push(PlannedFile {
                module: mi,
                entry: e.index,
                dst,
                mode: e.mode,
                size: e.size,
            }),
            found => {
                let prefix = format!("{src}/");
                let before = files.len();
                for (n, e) in &ordered {
                    if e.is_dir {
                        continue;
                    }
                    if let Some(rel) = n.strip_prefix(&prefix) {
                        files.push(PlannedFile {
                            module: mi,
                            entry: e.index,
                            dst: dst.join(rel),
                            mode: e.mode,
                            size: e.size,
                        });
                    }
                }
                if files.len() == before {
                    let (module, src) = (name.clone(), md.src.clone());
                    return Err(if found.is_some() {
                        PackageError::SrcEmptyDirectory { module, src }
                    } else {
                        PackageError::SrcNotFound { module, src }
                    });
                }
            }
        }
    }
    // No destination written twice, and none below another (file vs directory). Staging names
    // are the updater's own (docs/API.md 9.6): `<dst>.tmp` is an ordinary destination.
    let mut owner: HashMap<&Path, usize> = HashMap::new();
    for f in &files {
        if let Some(other) = owner.insert(&f.dst, f.module) {
            return Err(PackageError::BothWrite {
                first: manifest.modules[other].name.clone(),
                second: manifest.modules[f.module].name.clone(),
                dst: f.dst.clone(),
            });
        }
    }
    for f in &files {
        let conflict = f
            .dst
            .ancestors()
            .skip(1)
            .find_map(|a| owner.get(a).map(|m| (a, *m)));
        if let Some((path, other)) = conflict {
            return Err(PackageError::DstConflict {
                module: manifest.modules[f.module].name.clone(),
                dst: f.dst.clone(),
                other: manifest.modules[other].name.clone(),
                other_dst: path.to_path_buf(),
            });
        }
    }
    Ok(files)
}

/// The nearest existing ancestor of `p`, symlinks followed (at worst `/`).
pub fn existing_ancestor(p: &Path) -> &Path {
    p.ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.metadata().is_ok())
        .unwrap_or(Path::new("/"))
}

/// Every filesystem receiving files must have room for them (old files stay until commit).
fn check_space(files: &[PlannedFile]) -> Result<(), PackageError> {
    use std::os::unix::fs::MetadataExt;
    // Per filesystem (device id): bytes needed and a directory on it.
    let mut need: HashMap<u64, (u64, PathBuf)> = HashMap::new();
    for f in files {
        let anc = existing_ancestor(&f.dst);
        let dev = std::fs::metadata(anc)
            .map_err(|source| PackageError::Inspect {
                path: anc.to_path_buf(),
                source,
            })?
            .dev();
        let slot = need.entry(dev).or_insert((0, anc.to_path_buf()));
        slot.0 = slot.0.saturating_add(f.size).saturating_add(PER_FILE_SLACK);
    }
    for (bytes, dir) in need.values() {
        let avail =
            crate::fsutil::available_bytes(dir).map_err(|source| PackageError::FreeSpace {
                dir: dir.clone(),
                source,
            })?;
        if avail < *bytes {
            return Err(PackageError::NoRoom {
                needed: *bytes,
                dir: dir.clone(),
                available: avail,
            });
        }
    }
    Ok(())
}

/// Open and check the package at `path` for installation as `expected_version` (see the
/// module documentation), free space included, and plan its files.
pub fn open_package(
    path: &Path,
    expected_version: &str,
    allowed_roots: &[PathBuf],
    signatures: Signatures,
) -> Result<Package, PackageError> {
    let policy = PackagePolicy {
        allowed_roots: Some(allowed_roots),
        signatures,
    };
    let pkg = Package::open(path, Some(expected_version), &policy)?;
    check_space(&pkg.files)?;
    Ok(pkg)
}

/// The package ZIP's bytes in `file`: the whole file, or, when its first bytes are a cpio
/// magic (never its name), the image of a SWU envelope (docs/API.md 9.3) once its sha256 is
/// the one `sw-description` states. Read in place either way: nothing is copied.
fn zip_window(file: File, path: &Path) -> Result<(Window, Option<Envelope>), PackageError> {
    let envelope_err = |source| PackageError::Envelope { source };
    let mut first = [0u8; 6];
    let n = file
        .read_at(&mut first, 0)
        .map_err(|source| PackageError::ReadFailed { source })?;
    if !swu::is_envelope(&first[..n]) {
        let zip = Window::whole(file).map_err(|source| PackageError::Metadata { source })?;
        return Ok((zip, None));
    }
    let len = file
        .metadata()
        .map_err(|source| PackageError::Metadata { source })?
        .len();
    let mut reader = &file;
    let env = swu::read(&mut reader, len).map_err(envelope_err)?;
    let copy = file
        .try_clone()
        .map_err(|source| PackageError::Metadata { source })?;
    env.verify_sha256_of(copy, path).map_err(envelope_err)?;
    let zip = env
        .window(file)
        .map_err(|source| PackageError::Metadata { source })?;
    Ok((zip, Some(env)))
}

/// What a signed package's central directory and `manifest.json` say, read before the data
/// of any other entry (docs/API.md 9.5): the manifest, the files it deploys and the signed
/// SHA-256 of each, by entry index.
#[derive(Debug)]
pub struct SignedDirectory {
    pub manifest: Manifest,
    pub files: Vec<PlannedFile>,
    pub sha256: HashMap<usize, Checksum>,
}

/// Read `manifest.json` and `manifest.sig` of `archive` (their local headers and data must be
/// readable, those of the other entries need not be), verify the signature with
/// `trusted_keys`, and check the manifest and the plan by the same rules as [`Package::open`].
/// `Ok(None)`: the package carries no `manifest.sig` (or no key is trusted).
pub fn read_signed_directory(
    archive: &mut zip::ZipArchive<Window>,
    expected_version: &str,
    allowed_roots: &[PathBuf],
    trusted_keys: &[PublicKey],
) -> Result<Option<SignedDirectory>, PackageError> {
    let entries = archive::scan_directory(archive)?;
    let (Some(info), Some(sig_info)) = (entries.get(MANIFEST_NAME), entries.get(SIGNATURE_NAME))
    else {
        return Ok(None);
    };
    if info.is_dir || sig_info.is_dir || trusted_keys.is_empty() {
        return Ok(None);
    }
    let bytes = archive::read_small_entry(
        archive,
        info,
        MANIFEST_NAME,
        MAX_MANIFEST_BYTES,
        |size, max| PackageError::ManifestTooBig { size, max },
    )?;
    let sig = archive::read_small_entry(
        archive,
        sig_info,
        SIGNATURE_NAME,
        MAX_SIGNATURE_BYTES,
        |size, max| PackageError::SignatureTooBig { size, max },
    )?;
    if check_signature(Some(&sig), &bytes, trusted_keys, true)?.is_none() {
        return Ok(None);
    }
    let manifest = parse_manifest(&bytes)?;
    validate_manifest(&manifest, Some(expected_version), Some(allowed_roots))?;
    let files = plan(&manifest, &entries)?;
    let sha256 = signature::entry_hashes(&manifest, &entries, &files, true)?
        .into_iter()
        .map(|(index, (_, sum))| (index, sum))
        .collect();
    Ok(Some(SignedDirectory {
        manifest,
        files,
        sha256,
    }))
}

impl Package {
    /// The signed SHA-256 of the entry `f` deploys, when the manifest names it.
    pub fn entry_sha256(&self, f: &PlannedFile) -> Option<&Checksum> {
        self.hashes.get(&f.entry).map(|(_, sum)| sum)
    }

    /// Every check of the package that does not depend on the device (the one checking path
    /// of the daemon, `pack` and `verify`): ZIP safety, the signature, the manifest, the plan.
    pub fn open(
        path: &Path,
        expected_version: Option<&str>,
        policy: &PackagePolicy,
    ) -> Result<Package, PackageError> {
        let file = File::open(path).map_err(|source| PackageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (zip, envelope) = zip_window(file, path)?;
        let cd = archive::check_central_directory(&zip)?;
        let mut archive =
            zip::ZipArchive::new(zip).map_err(|source| PackageError::NotZip { source })?;
        if archive.len() as u64 != cd.entries {
            return Err(PackageError::EntryCountMismatch {
                found: archive.len(),
                declared: cd.entries,
            });
        }
        let entries = archive::scan_entries(&mut archive)?;
        let bytes = match entries.get(MANIFEST_NAME) {
            Some(info) if !info.is_dir => archive::read_small_entry(
                &mut archive,
                info,
                MANIFEST_NAME,
                MAX_MANIFEST_BYTES,
                |size, max| PackageError::ManifestTooBig { size, max },
            )?,
            _ => return Err(PackageError::ManifestMissing),
        };
        let Signatures {
            trusted_keys,
            require_signature,
        } = policy.signatures;
        let sig = match entries.get(SIGNATURE_NAME) {
            _ if trusted_keys.is_empty() && !require_signature => None,
            Some(info) if !info.is_dir => Some(archive::read_small_entry(
                &mut archive,
                info,
                SIGNATURE_NAME,
                MAX_SIGNATURE_BYTES,
                |size, max| PackageError::SignatureTooBig { size, max },
            )?),
            Some(_) => return Err(PackageError::SignatureIsDirectory),
            None => None,
        };
        // Authenticate the bytes before parsing them.
        let signed_by = check_signature(sig.as_deref(), &bytes, trusted_keys, require_signature)?;
        let manifest = parse_manifest(&bytes)?;
        if let Some(env) = envelope.as_ref().filter(|e| e.version != manifest.version) {
            return Err(PackageError::EnvelopeVersion {
                envelope: env.version.clone(),
                manifest: manifest.version.clone(),
            });
        }
        validate_manifest(&manifest, expected_version, policy.allowed_roots)?;
        let files = plan(&manifest, &entries)?;
        let hashes = signature::entry_hashes(&manifest, &entries, &files, signed_by.is_some())?;
        Ok(Package {
            archive,
            envelope,
            manifest,
            files,
            signed_by,
            hashes,
        })
    }

    /// Stream the entry of `f` into `out` with bounded memory; returns the bytes written.
    ///
    /// A read error, CRC32 mismatch, a size other than `f.size` or a SHA-256 other than the
    /// manifest's is `INVALID_PACKAGE`, returned after the last byte was written and before
    /// the caller commits the file; a write error is `DISK_FULL` when the disk is full, else
    /// `INTERNAL_ERROR` (the caller names the file and decides what the installation reports).
    pub fn extract_to(
        &mut self,
        f: &PlannedFile,
        out: &mut impl Write,
    ) -> Result<u64, PackageError> {
        let expected = self.hashes.get(&f.entry);
        let mut hasher = expected.map(|_| Hasher::new(Algorithm::Sha256));
        let mut entry = self
            .archive
            .by_index(f.entry)
            .map_err(|source| PackageError::Entry {
                index: f.entry,
                source,
            })?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut done: u64 = 0;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(PackageError::EntryRead {
                        index: f.entry,
                        dst: f.dst.clone(),
                        source,
                    })
                }
            };
            done += n as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            if done > f.size {
                return Err(PackageError::EntryTooLong {
                    index: f.entry,
                    dst: f.dst.clone(),
                    declared: f.size,
                });
            }
            out.write_all(&buf[..n])
                .map_err(|source| PackageError::Write {
                    dst: f.dst.clone(),
                    source,
                })?;
        }
        if done != f.size {
            return Err(PackageError::EntryTooShort {
                index: f.entry,
                dst: f.dst.clone(),
                read: done,
                declared: f.size,
            });
        }
        if let (Some((name, want)), Some(h)) = (expected, hasher) {
            let got = h.finalize();
            if &got != want {
                return Err(PackageError::EntryHashMismatch {
                    name: name.clone(),
                    dst: f.dst.clone(),
                    expected: want.clone(),
                    found: got,
                });
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
pub(crate) mod tests;
