//! The update package: a ZIP with `manifest.json` at its root (CONTRACT.md section 4).
//!
//! [`open_package`] refuses anything unsafe before a single byte is deployed:
//! - ZIP level (`INVALID_PACKAGE`): unreadable or corrupt archive, more than 65536 entries,
//!   duplicate names (also after normalising `a//b` and `./a` to `a/b`), entries overlapping
//!   each other or the central directory, encrypted entries, compression other than stored or
//!   deflate, symlinks and other special files, names that are absolute, contain `..`, `\` or
//!   NUL or would escape the root, a name that is both a file and a directory, more than 8 GiB
//!   uncompressed in total, and entries over 1 MiB that expand more than 1000 times.
//! - Manifest level (`INVALID_MANIFEST`): missing or oversized `manifest.json`, unknown keys,
//!   and every rule of section 4 (see [`validate_manifest`]); a `src` that matches nothing.
//! - Space (`DISK_FULL`): the filesystem of each destination must hold the new files while the
//!   old ones still exist (they are kept as backups until the installation commits).
//!
//! The zip crate's `extract()` is never used; every entry is streamed by index through
//! [`Package::extract_to`], which checks the size and lets the reader verify the CRC32.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zip::CompressionMethod;

use crate::config::normalize_abs;
use crate::error::{self, OtaError};

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
/// Mode of a deployed file whose entry carries no permission bits.
pub const DEFAULT_MODE: u32 = 0o644;
/// Slack per file for the free-space check (block rounding, metadata).
const PER_FILE_SLACK: u64 = 4096;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: String,
    pub modules: Vec<Module>,
}

/// One module of the manifest: what to deploy where, and how to stop and start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub name: String,
    /// A file or directory inside the ZIP.
    pub src: String,
    /// Absolute destination on the device; for a directory `src`, the directory it maps to.
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
    /// Run every second after the starts until it exits 0 (CONTRACT.md section 8.4).
    #[serde(default)]
    pub health_cmd: Option<Vec<String>>,
    /// Time limit of the health command, seconds (>= 1).
    #[serde(default = "default_health_timeout")]
    pub health_timeout_s: u64,
}

fn default_health_timeout() -> u64 {
    30
}

impl Module {
    /// The argv of each post command, in order.
    pub fn post_argvs(&self) -> Vec<Vec<String>> {
        self.post_cmds.clone()
    }
}

/// Parse `manifest.json`; a syntax error or unknown key is `INVALID_MANIFEST` naming it.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, OtaError> {
    serde_json::from_slice(bytes)
        .map_err(|e| error::invalid_manifest(format!("{MANIFEST_NAME}: {e}")))
}

/// `^\d+\.\d+\.\d+$`.
pub fn is_semver(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The components of a relative ZIP path or manifest `src`, with empty and `.` components
/// dropped. `None` when it is absolute, contains `..`, `\` or NUL, or names nothing.
fn canonical_rel(name: &str) -> Option<String> {
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

fn check_argv(module: &str, field: &str, argv: &[String]) -> Result<(), OtaError> {
    match argv.first() {
        None => Err(error::invalid_manifest(format!(
            "module {module}: {field} must not be empty"
        ))),
        Some(a0) if a0.is_empty() => Err(error::invalid_manifest(format!(
            "module {module}: {field}[0] (the program) must not be empty"
        ))),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => Err(error::invalid_manifest(format!(
            "module {module}: {field} contains a NUL byte"
        ))),
        Some(_) => Ok(()),
    }
}

/// Check every rule of CONTRACT.md section 4 that needs no ZIP. Each error names the module
/// and the field. Besides the contract's rules: no NUL in any string, `process_name` without
/// `/`, and a `service` may not start with `-` (it would be read as a systemctl option).
pub fn validate_manifest(
    m: &Manifest,
    expected_version: &str,
    allowed_roots: &[PathBuf],
) -> Result<(), OtaError> {
    let bad = |msg: String| Err(error::invalid_manifest(msg));
    if !is_semver(&m.version) {
        return bad(format!("version `{}` is not of the form x.y.z", m.version));
    }
    if m.version != expected_version {
        return bad(format!(
            "version {} differs from the requested version {expected_version}",
            m.version
        ));
    }
    if m.modules.is_empty() {
        return bad("modules: at least one module is required".into());
    }
    let roots: Vec<PathBuf> = allowed_roots
        .iter()
        .filter_map(|r| normalize_abs(r))
        .collect();
    let mut names = HashSet::new();
    let mut dsts: HashMap<PathBuf, &str> = HashMap::new();
    for (i, md) in m.modules.iter().enumerate() {
        if md.name.is_empty() {
            return bad(format!("module #{}: name must not be empty", i + 1));
        }
        let name = md.name.as_str();
        if name.contains('\0') {
            return bad(format!("module #{}: name contains a NUL byte", i + 1));
        }
        if !names.insert(name) {
            return bad(format!("module {name}: name is used by two modules"));
        }
        if md.src.is_empty() {
            return bad(format!("module {name}: src must not be empty"));
        }
        if md.src.starts_with('/') {
            return bad(format!(
                "module {name}: src `{}` must be relative (no leading /)",
                md.src
            ));
        }
        if md.src.split('/').any(|c| c == "..") {
            return bad(format!(
                "module {name}: src `{}` must not contain `..`",
                md.src
            ));
        }
        if canonical_rel(&md.src).is_none() {
            return bad(format!(
                "module {name}: src `{}` is not a path inside the package",
                md.src
            ));
        }
        let dst_s = md.dst.to_string_lossy();
        if dst_s.contains('\0') {
            return bad(format!("module {name}: dst contains a NUL byte"));
        }
        if !md.dst.is_absolute() {
            return bad(format!("module {name}: dst `{dst_s}` must be absolute"));
        }
        let Some(dst) = normalize_abs(&md.dst) else {
            return bad(format!(
                "module {name}: dst `{dst_s}` must not contain `..`"
            ));
        };
        if !roots.iter().any(|r| dst.starts_with(r)) {
            return bad(format!(
                "module {name}: dst `{dst_s}` is outside the allowed roots {:?}",
                roots
            ));
        }
        if roots.iter().any(|r| &dst == r) {
            return bad(format!(
                "module {name}: dst `{dst_s}` is an allowed root itself, not a path inside it"
            ));
        }
        if let Some(other) = dsts.insert(dst, name) {
            return bad(format!(
                "module {name}: dst `{dst_s}` is also the dst of module {other}"
            ));
        }
        if let Some(p) = &md.process_name {
            if p.is_empty() || p.contains('/') || p.contains('\0') {
                return bad(format!(
                    "module {name}: process_name `{p}` must be a non-empty name without `/`"
                ));
            }
        }
        if let Some(s) = &md.service {
            if s.is_empty() || s.starts_with('-') || s.contains('\0') {
                return bad(format!(
                    "module {name}: service `{s}` must be a non-empty unit name"
                ));
            }
        }
        if let Some(c) = &md.start_cmd {
            check_argv(name, "start_cmd", c)?;
        }
        for (k, c) in md.post_cmds.iter().enumerate() {
            check_argv(name, &format!("post_cmds[{k}]"), c)?;
        }
    }
    Ok(())
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
    archive: zip::ZipArchive<File>,
    pub manifest: Manifest,
    /// Every file to deploy, module by module in manifest order.
    pub files: Vec<PlannedFile>,
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Package")
            .field("manifest", &self.manifest)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What the scan of the central directory keeps of an entry.
struct EntryInfo {
    index: usize,
    is_dir: bool,
    size: u64,
    mode: u32,
}

/// The mode a file gets: the entry's permission bits without setuid, setgid and sticky (a
/// package must not be able to plant a setuid-root program through the updater), or
/// [`DEFAULT_MODE`] when the entry carries none.
fn deploy_mode(unix_mode: Option<u32>) -> u32 {
    match unix_mode.map(|m| m & 0o777) {
        Some(m) if m != 0 => m,
        _ => DEFAULT_MODE,
    }
}

/// Scan the central directory: every safety rule on entries, and the map from canonical name
/// to entry.
fn scan_entries(
    archive: &mut zip::ZipArchive<File>,
) -> Result<HashMap<String, EntryInfo>, OtaError> {
    let bad = |msg: String| Err(error::invalid_package(msg));
    if archive.len() > MAX_ENTRIES {
        return bad(format!(
            "{} entries, more than the {MAX_ENTRIES} allowed",
            archive.len()
        ));
    }
    if archive.has_duplicate_names() {
        return bad("two entries have the same name".into());
    }
    match archive.has_overlapping_entries() {
        Ok(false) => {}
        Ok(true) => return bad("entries overlap each other (zip bomb or corrupt ZIP)".into()),
        Err(e) => return bad(format!("corrupt ZIP: {e}")),
    }
    let mut entries: HashMap<String, EntryInfo> = HashMap::new();
    let mut total: u64 = 0;
    for index in 0..archive.len() {
        let e = archive
            .by_index_data(index)
            .map_err(|e| error::invalid_package(format!("entry {index}: {e}")))?;
        let raw = String::from_utf8_lossy(e.name_raw()).into_owned();
        let name = match e.name() {
            Ok(n) => n.into_owned(),
            Err(err) => return bad(format!("entry {index} ({raw}): unreadable name: {err}")),
        };
        if e.encrypted() {
            return bad(format!("entry {name}: encrypted entries are not supported"));
        }
        if e.is_symlink() {
            return bad(format!("entry {name}: symbolic links are not allowed"));
        }
        if e.enclosed_name().is_none() {
            return bad(format!("entry {name}: path escapes the package root"));
        }
        if name.starts_with('/') || name.contains('\\') || name.split('/').any(|c| c == "..") {
            return bad(format!(
                "entry {name}: absolute paths, `..` and `\\` are not allowed"
            ));
        }
        let Some(canon) = canonical_rel(&name) else {
            return bad(format!("entry {name}: not a path inside the package"));
        };
        let is_dir = e.is_dir();
        let mode = e.unix_mode();
        if let Some(m) = mode {
            let kind = m & S_IFMT;
            let ok = match kind {
                0 => true,
                S_IFDIR => is_dir,
                S_IFREG => !is_dir,
                _ => false,
            };
            if !ok {
                return bad(format!(
                    "entry {name}: file type {kind:o} is not a plain file or directory"
                ));
            }
        }
        if !is_dir {
            let method = e.compression();
            if method != CompressionMethod::Stored && method != CompressionMethod::Deflated {
                return bad(format!(
                    "entry {name}: compression method {method:?} is not supported"
                ));
            }
        }
        let size = e.size();
        total = match total.checked_add(size) {
            Some(t) if t <= MAX_TOTAL_UNCOMPRESSED => t,
            _ => {
                return bad(format!(
                    "more than {MAX_TOTAL_UNCOMPRESSED} bytes uncompressed in total"
                ))
            }
        };
        if size > RATIO_CHECK_MIN && size / e.compressed_size().max(1) > MAX_RATIO {
            return bad(format!(
                "entry {name}: compression ratio above {MAX_RATIO} (zip bomb)"
            ));
        }
        let info = EntryInfo {
            index,
            is_dir,
            size,
            mode: deploy_mode(mode),
        };
        if entries.insert(canon.clone(), info).is_some() {
            return bad(format!(
                "entry {name}: another entry has the same path {canon}"
            ));
        }
    }
    // A path may not be a file and a directory at once (`a` and `a/b`).
    for name in entries.keys() {
        let mut cur = name.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if entries.get(parent).is_some_and(|p| !p.is_dir) {
                return bad(format!("entry {name}: its parent {parent} is a file"));
            }
            cur = parent;
        }
    }
    Ok(entries)
}

/// Read `manifest.json` (bounded) from the archive.
fn read_manifest(
    archive: &mut zip::ZipArchive<File>,
    entries: &HashMap<String, EntryInfo>,
) -> Result<Vec<u8>, OtaError> {
    let info = match entries.get(MANIFEST_NAME) {
        Some(i) if !i.is_dir => i,
        _ => {
            return Err(error::invalid_manifest(format!(
                "{MANIFEST_NAME} not found at the root of the package"
            )))
        }
    };
    if info.size > MAX_MANIFEST_BYTES {
        return Err(error::invalid_manifest(format!(
            "{MANIFEST_NAME} is {} bytes, more than {MAX_MANIFEST_BYTES}",
            info.size
        )));
    }
    let entry = archive
        .by_index(info.index)
        .map_err(|e| error::invalid_package(format!("{MANIFEST_NAME}: {e}")))?;
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error::invalid_package(format!("{MANIFEST_NAME}: {e}")))?;
    if bytes.len() as u64 != info.size {
        return Err(error::invalid_package(format!(
            "{MANIFEST_NAME}: {} bytes read, {} declared",
            bytes.len(),
            info.size
        )));
    }
    Ok(bytes)
}

/// Map every module's `src` to the files to deploy.
fn plan(
    manifest: &Manifest,
    entries: &HashMap<String, EntryInfo>,
) -> Result<Vec<PlannedFile>, OtaError> {
    // Entries in ZIP order, so planning is deterministic.
    let mut ordered: Vec<(&String, &EntryInfo)> = entries.iter().collect();
    ordered.sort_by_key(|(_, i)| i.index);
    let mut files = Vec::new();
    for (mi, md) in manifest.modules.iter().enumerate() {
        let name = &md.name;
        let (Some(src), Some(dst)) = (canonical_rel(&md.src), normalize_abs(&md.dst)) else {
            return Err(error::invalid_manifest(format!(
                "module {name}: invalid src or dst"
            )));
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
                    return Err(error::invalid_manifest(if found.is_some() {
                        format!("module {name}: src {} is a directory without files", md.src)
                    } else {
                        format!("module {name}: src {} not found in package", md.src)
                    }));
                }
            }
        }
    }
    // No destination written twice, none below another (file vs directory), and none equal
    // to another's temporary name (`<dst>.tmp`, used while deploying).
    let mut owner: HashMap<&Path, usize> = HashMap::new();
    for f in &files {
        if let Some(other) = owner.insert(&f.dst, f.module) {
            return Err(error::invalid_manifest(format!(
                "modules {} and {} both write {}",
                manifest.modules[other].name,
                manifest.modules[f.module].name,
                f.dst.display()
            )));
        }
    }
    for f in &files {
        let conflict = f
            .dst
            .ancestors()
            .skip(1)
            .find_map(|a| owner.get(a).map(|m| (a, *m)))
            .or_else(|| {
                let tmp = crate::fsutil::tmp_sibling(&f.dst);
                owner.get(tmp.as_path()).map(|m| (f.dst.as_path(), *m))
            });
        if let Some((path, other)) = conflict {
            return Err(error::invalid_manifest(format!(
                "module {}: {} conflicts with {} of module {}",
                manifest.modules[f.module].name,
                f.dst.display(),
                path.display(),
                manifest.modules[other].name
            )));
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
fn check_space(files: &[PlannedFile]) -> Result<(), OtaError> {
    use std::os::unix::fs::MetadataExt;
    // Per filesystem (device id): bytes needed and a directory on it.
    let mut need: HashMap<u64, (u64, PathBuf)> = HashMap::new();
    for f in files {
        let anc = existing_ancestor(&f.dst);
        let dev = std::fs::metadata(anc)
            .map_err(|e| error::internal(format!("cannot inspect {}: {e}", anc.display())))?
            .dev();
        let slot = need.entry(dev).or_insert((0, anc.to_path_buf()));
        slot.0 = slot.0.saturating_add(f.size).saturating_add(PER_FILE_SLACK);
    }
    for (bytes, dir) in need.values() {
        let avail = crate::fsutil::available_bytes(dir).map_err(|e| {
            error::internal(format!("cannot read free space of {}: {e}", dir.display()))
        })?;
        if avail < *bytes {
            return Err(error::disk_full(format!(
                "the package needs {bytes} bytes on the filesystem of {}, {avail} available",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Open and check the package at `path` (see the module documentation) and plan its files.
pub fn open_package(
    path: &Path,
    expected_version: &str,
    allowed_roots: &[PathBuf],
) -> Result<Package, OtaError> {
    let file = File::open(path)
        .map_err(|e| error::invalid_package(format!("cannot open {}: {e}", path.display())))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| error::invalid_package(format!("not a readable ZIP: {e}")))?;
    let entries = scan_entries(&mut archive)?;
    let bytes = read_manifest(&mut archive, &entries)?;
    let manifest = parse_manifest(&bytes)?;
    validate_manifest(&manifest, expected_version, allowed_roots)?;
    let files = plan(&manifest, &entries)?;
    check_space(&files)?;
    Ok(Package {
        archive,
        manifest,
        files,
    })
}

impl Package {
    /// Stream the entry of `f` into `out` with bounded memory; returns the bytes written.
    ///
    /// A read error, CRC32 mismatch or a size other than `f.size` is `INVALID_PACKAGE`; a write
    /// error is `DISK_FULL` when the disk is full, else `INTERNAL_ERROR` (the caller names the
    /// file and decides what the installation reports).
    pub fn extract_to(&mut self, f: &PlannedFile, out: &mut impl Write) -> Result<u64, OtaError> {
        let mut entry = self
            .archive
            .by_index(f.entry)
            .map_err(|e| error::invalid_package(format!("entry {}: {e}", f.entry)))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut done: u64 = 0;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(error::invalid_package(format!(
                        "entry {} for {}: {e}",
                        f.entry,
                        f.dst.display()
                    )))
                }
            };
            done += n as u64;
            if done > f.size {
                return Err(error::invalid_package(format!(
                    "entry {} for {}: more than the {} bytes declared",
                    f.entry,
                    f.dst.display(),
                    f.size
                )));
            }
            out.write_all(&buf[..n]).map_err(|e| {
                if error::is_disk_full(&e) {
                    error::disk_full(format!("writing {}: {e}", f.dst.display()))
                } else {
                    error::internal(format!("writing {}: {e}", f.dst.display()))
                }
            })?;
        }
        if done != f.size {
            return Err(error::invalid_package(format!(
                "entry {} for {}: {done} bytes, {} declared",
                f.entry,
                f.dst.display(),
                f.size
            )));
        }
        Ok(done)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use zip::write::SimpleFileOptions;

    /// One entry of a test ZIP.
    pub(crate) enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    pub(crate) fn build_zip(path: &Path, entries: &[E]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        for e in entries {
            match e {
                E::File(n, data, mode) => {
                    let o = SimpleFileOptions::default()
                        .compression_method(CompressionMethod::Deflated)
                        .unix_permissions(*mode);
                    w.start_file(*n, o).unwrap();
                    w.write_all(data).unwrap();
                }
                E::Dir(n) => w.add_directory(*n, SimpleFileOptions::default()).unwrap(),
                E::Symlink(n, t) => w.add_symlink(*n, *t, SimpleFileOptions::default()).unwrap(),
            }
        }
        w.finish().unwrap();
    }

    pub(crate) fn manifest_json(version: &str, modules: &str) -> String {
        format!(r#"{{"version": "{version}", "modules": [{modules}]}}"#)
    }

    struct Fx {
        _d: tempfile::TempDir,
        zip: PathBuf,
        root: PathBuf,
    }

    fn fx() -> Fx {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        Fx {
            zip: d.path().join("p.zip"),
            root,
            _d: d,
        }
    }

    fn module(root: &Path, name: &str, src: &str, dst: &str) -> String {
        format!(
            r#"{{"name": "{name}", "src": "{src}", "dst": "{}/{dst}"}}"#,
            root.display()
        )
    }

    fn open(f: &Fx) -> Result<Package, OtaError> {
        open_package(&f.zip, "1.2.3", std::slice::from_ref(&f.root))
    }

    fn err(f: &Fx) -> OtaError {
        open(f).unwrap_err()
    }

    /// Replace every occurrence of `from` by `to` (same length) in the file's bytes.
    fn patch(path: &Path, from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        let mut b = std::fs::read(path).unwrap();
        let mut hits = 0;
        let mut i = 0;
        while i + from.len() <= b.len() {
            if &b[i..i + from.len()] == from {
                b[i..i + from.len()].copy_from_slice(to);
                hits += 1;
            }
            i += 1;
        }
        assert!(hits > 0);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn file_and_directory_src_are_planned_with_modes() {
        let f = fx();
        let m = manifest_json(
            "1.2.3",
            &[
                module(&f.root, "api", "mods/api/api-bin", "api/api-bin"),
                module(&f.root, "web", "mods/web/", "web"),
            ]
            .join(","),
        );
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::Dir("mods/"),
                E::File("mods/api/api-bin", b"#!/bin/sh\n", 0o755),
                E::Dir("mods/web/"),
                E::Dir("mods/web/static/"),
                E::File("mods/web/index.html", b"<html>", 0o644),
                E::File("mods/web/static/app.js", b"js", 0o600),
            ],
        );
        let mut p = open(&f).unwrap();
        assert_eq!(p.manifest.modules.len(), 2);
        let got: Vec<(usize, PathBuf, u32, u64)> = p
            .files
            .iter()
            .map(|x| (x.module, x.dst.clone(), x.mode, x.size))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, f.root.join("api/api-bin"), 0o755, 10),
                (1, f.root.join("web/index.html"), 0o644, 6),
                (1, f.root.join("web/static/app.js"), 0o600, 2),
            ]
        );
        let pf = p.files[1].clone();
        let mut out = Vec::new();
        assert_eq!(p.extract_to(&pf, &mut out).unwrap(), 6);
        assert_eq!(out, b"<html>");
    }

    #[test]
    fn unsafe_entries_are_invalid_package() {
        let cases: Vec<(&str, Vec<E>)> = vec![
            ("symlink", vec![E::Symlink("mods/a", "/etc/passwd")]),
            ("absolute", vec![E::File("Xetc/evil", b"x", 0o644)]),
            ("dotdot", vec![E::File("XX/evil", b"x", 0o644)]),
            ("inner dotdot", vec![E::File("a/XX/b", b"x", 0o644)]),
            ("backslash", vec![E::File("aXb", b"x", 0o644)]),
            (
                "duplicate",
                vec![E::File("dup1", b"x", 0o644), E::File("dup2", b"y", 0o644)],
            ),
            (
                "same canonical",
                vec![E::File("a//b", b"x", 0o644), E::File("a/b", b"y", 0o644)],
            ),
            (
                "file and dir",
                vec![E::File("a", b"x", 0o644), E::File("a/b", b"y", 0o644)],
            ),
        ];
        for (what, mut entries) in cases {
            let f = fx();
            let m = manifest_json("1.2.3", &module(&f.root, "a", "manifest.json", "m"));
            entries.push(E::File("manifest.json", m.as_bytes(), 0o644));
            build_zip(&f.zip, &entries);
            match what {
                "absolute" => patch(&f.zip, b"Xetc/evil", b"/etc/evil"),
                "dotdot" => patch(&f.zip, b"XX/evil", b"../evil"),
                "inner dotdot" => patch(&f.zip, b"a/XX/b", b"a/../b"),
                "backslash" => patch(&f.zip, b"aXb", b"a\\b"),
                "duplicate" => patch(&f.zip, b"dup2", b"dup1"),
                _ => {}
            }
            let e = err(&f);
            assert_eq!(e.code, ErrorCode::InvalidPackage, "{what}: {e}");
        }
    }

    #[test]
    fn overlapping_entries_are_invalid_package() {
        let f = fx();
        let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
        let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
        w.start_file("manifest.json", SimpleFileOptions::default())
            .unwrap();
        w.write_all(m.as_bytes()).unwrap();
        w.start_file("x", SimpleFileOptions::default()).unwrap();
        w.write_all(b"data").unwrap();
        w.shallow_copy_file("x", "y").unwrap();
        w.finish().unwrap();
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
        assert!(e.detail.contains("overlap"), "{e}");
    }

    #[test]
    fn not_a_zip_or_missing_is_invalid_package() {
        let f = fx();
        std::fs::write(&f.zip, b"this is not a zip").unwrap();
        assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
        std::fs::remove_file(&f.zip).unwrap();
        assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
    }

    #[test]
    fn zip_bomb_ratio_is_refused() {
        let f = fx();
        let m = manifest_json("1.2.3", &module(&f.root, "a", "big", "big"));
        let zeros = vec![0u8; 8 * 1024 * 1024];
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("big", &zeros, 0o644),
            ],
        );
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
        assert!(e.detail.contains("ratio"), "{e}");
    }

    #[test]
    fn manifest_problems_are_invalid_manifest() {
        let f = fx();
        build_zip(&f.zip, &[E::File("x", b"x", 0o644)]);
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        assert!(e.detail.contains("not found"), "{e}");

        // Not at the root.
        let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
        build_zip(
            &f.zip,
            &[
                E::File("sub/manifest.json", m.as_bytes(), 0o644),
                E::File("x", b"x", 0o644),
            ],
        );
        assert_eq!(err(&f).code, ErrorCode::InvalidManifest);

        // Incompressible, so that the zip-bomb rule does not fire first.
        let mut x: u32 = 1;
        let big: Vec<u8> = (0..=MAX_MANIFEST_BYTES)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        build_zip(&f.zip, &[E::File("manifest.json", &big, 0o644)]);
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        assert!(e.detail.contains("more than"), "{e}");

        let cases = [
            (
                manifest_json("1.2.4", &module(&f.root, "a", "x", "x")),
                "differs",
            ),
            (
                manifest_json("1.2.3", &module(&f.root, "a", "nope", "x")),
                "src nope not found",
            ),
            (
                manifest_json("1.2.3", &module(&f.root, "a", "../x", "x")),
                "src",
            ),
            (
                manifest_json("1.2.3", &module(&f.root, "a", "x", "../x")),
                "dst",
            ),
            (
                manifest_json(
                    "1.2.3",
                    r#"{"name": "a", "src": "x", "dst": "/etc/passwd"}"#,
                ),
                "outside",
            ),
            (
                manifest_json(
                    "1.2.3",
                    &module(&f.root, "a", "x", "x").replace("\"dst\"", "\"dts\""),
                ),
                "dts",
            ),
            (
                manifest_json(
                    "1.2.3",
                    &[
                        module(&f.root, "a", "x", "x"),
                        module(&f.root, "a", "x", "y"),
                    ]
                    .join(","),
                ),
                "module a: name",
            ),
        ];
        for (m, needle) in cases {
            build_zip(
                &f.zip,
                &[
                    E::File("manifest.json", m.as_bytes(), 0o644),
                    E::File("x", b"x", 0o644),
                ],
            );
            let e = err(&f);
            assert_eq!(e.code, ErrorCode::InvalidManifest, "{m}: {e}");
            assert!(e.detail.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn planned_destinations_may_not_collide() {
        let f = fx();
        let m = manifest_json(
            "1.2.3",
            &[
                module(&f.root, "a", "d", "t"),
                module(&f.root, "b", "x", "t/y"),
            ]
            .join(","),
        );
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("d/y", b"1", 0o644),
                E::File("x", b"2", 0o644),
            ],
        );
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
        assert!(e.detail.contains("both write"), "{e}");
    }

    fn valid() -> Manifest {
        Manifest {
            version: "1.2.3".into(),
            modules: vec![Module {
                name: "api".into(),
                src: "a".into(),
                dst: "/opt/tope/api".into(),
                process_name: Some("api".into()),
                restart_order: Some(1),
                service: None,
                start_cmd: Some(vec!["/opt/tope/api".into()]),
                post_cmds: vec![vec!["true".into()]],
                health_cmd: None,
                health_timeout_s: 30,
            }],
        }
    }

    #[test]
    fn validate_manifest_rules_name_module_and_field() {
        let roots = [PathBuf::from("/opt/tope")];
        validate_manifest(&valid(), "1.2.3", &roots).unwrap();
        type Edit = fn(&mut Manifest);
        let cases: Vec<(Edit, &str)> = vec![
            (|m| m.version = "1.2".into(), "version"),
            (|m| m.version = "1.2.x".into(), "version"),
            (|m| m.version = "01.2.3 ".into(), "version"),
            (|m| m.modules.clear(), "at least one"),
            (|m| m.modules[0].name.clear(), "name"),
            (|m| m.modules[0].src.clear(), "module api: src"),
            (|m| m.modules[0].src = "/a".into(), "module api: src"),
            (|m| m.modules[0].src = "a/../../b".into(), "module api: src"),
            (
                |m| m.modules[0].dst = "opt/tope/x".into(),
                "module api: dst",
            ),
            (
                |m| m.modules[0].dst = "/opt/tope/../x".into(),
                "module api: dst",
            ),
            (|m| m.modules[0].dst = "/opt/tope".into(), "module api: dst"),
            (
                |m| m.modules[0].dst = "/opt/tope/.".into(),
                "module api: dst",
            ),
            (
                |m| m.modules[0].dst = "/opt/topeX/a".into(),
                "module api: dst",
            ),
            (
                |m| m.modules[0].start_cmd = Some(vec![]),
                "module api: start_cmd",
            ),
            (
                |m| m.modules[0].start_cmd = Some(vec!["".into()]),
                "module api: start_cmd",
            ),
            (
                |m| m.modules[0].post_cmds = vec![vec![]],
                "module api: post_cmds[0]",
            ),
            (
                |m| m.modules[0].process_name = Some("".into()),
                "module api: process_name",
            ),
            (
                |m| m.modules[0].process_name = Some("a/b".into()),
                "module api: process_name",
            ),
            (
                |m| m.modules[0].service = Some("".into()),
                "module api: service",
            ),
            (
                |m| m.modules[0].service = Some("--force".into()),
                "module api: service",
            ),
            (
                |m| {
                    let mut b = m.modules[0].clone();
                    b.name = "b".into();
                    b.dst = "/opt/tope/./api".into();
                    m.modules.push(b);
                },
                "module b: dst",
            ),
        ];
        for (edit, needle) in cases {
            let mut m = valid();
            edit(&mut m);
            let e = validate_manifest(&m, &m.version.clone(), &roots).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidManifest);
            assert!(e.detail.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn parse_manifest_defaults_and_unknown_keys() {
        let m = parse_manifest(
            br#"{"version":"1.0.0","modules":[{"name":"a","src":"a","dst":"/opt/tope/a"}]}"#,
        )
        .unwrap();
        assert!(m.modules[0].post_cmds.is_empty());
        assert_eq!(m.modules[0].restart_order, None);
        let e = parse_manifest(br#"{"version":"1.0.0","modules":[],"extra":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        assert!(e.detail.contains("extra"), "{e}");
        let e = parse_manifest(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidManifest);
        // Round trip through the journal's serialisation.
        let back: Manifest =
            serde_json::from_str(&serde_json::to_string(&valid()).unwrap()).unwrap();
        assert_eq!(back, valid());
    }

    #[test]
    fn corrupted_data_fails_crc_on_extract() {
        let f = fx();
        let m = manifest_json("1.2.3", &module(&f.root, "a", "data", "data"));
        let payload = b"PAYLOAD-PAYLOAD-PAYLOAD-PAYLOAD!".repeat(4);
        {
            let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
            w.start_file("manifest.json", SimpleFileOptions::default())
                .unwrap();
            w.write_all(m.as_bytes()).unwrap();
            let o = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
            w.start_file("data", o).unwrap();
            w.write_all(&payload).unwrap();
            w.finish().unwrap();
        }
        patch(&f.zip, b"PAYLOAD!", b"PAYLOAD?");
        let mut p = open(&f).unwrap();
        let pf = p.files[0].clone();
        let mut out = Vec::new();
        let e = p.extract_to(&pf, &mut out).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    }

    #[test]
    fn space_is_checked_per_filesystem() {
        let f = fx();
        let pf = |size| PlannedFile {
            module: 0,
            entry: 0,
            dst: f.root.join("new/dir/file"),
            mode: 0o644,
            size,
        };
        check_space(&[pf(10)]).unwrap();
        let e = check_space(&[pf(u64::MAX / 4), pf(u64::MAX / 4)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::DiskFull, "{e}");
        assert_eq!(existing_ancestor(&f.root.join("new/dir/file")), f.root);
    }

    #[test]
    fn modes_drop_special_bits() {
        assert_eq!(deploy_mode(Some(0o104755)), 0o755);
        assert_eq!(deploy_mode(Some(0o100000)), DEFAULT_MODE);
        assert_eq!(deploy_mode(None), DEFAULT_MODE);
        assert!(is_semver("0.10.200"));
        assert!(!is_semver("1.2.3.4"));
        assert_eq!(canonical_rel("./a//b/"), Some("a/b".into()));
        assert_eq!(canonical_rel("a/../b"), None);
    }
}
