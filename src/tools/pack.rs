//! `tope-updater pack DIR --out FILE [--key FILE] [--config PATH] [--board NAME]
//! [--hardware-compatibility REV]...`: build a package from a directory holding
//! `manifest.json` and the files it names.
//!
//! Streaming and single pass: every file is read once, in chunks, hashed (SHA-256) and
//! compressed into the ZIP as it is read (only its first 64 KiB are read once more, to store
//! rather than deflate what does not shrink); `manifest.json` (with the `sha256` map when signing)
//! and `manifest.sig` come last. Memory stays flat whatever the size of the files. The ZIP is
//! written to a new file of its own beside `FILE` (`.tope-pack-<random>`, created exclusively:
//! a `FILE.tmp` of someone else's is never touched, docs/API.md 9.6), checked by the daemon's
//! own [`Package::open`], then renamed to `FILE`: a failed run never leaves a package behind.
//!
//! `--out FILE.swu` (docs/API.md 9.3): the ZIP written as above is wrapped by
//! [`crate::swu::write_envelope_for`] into a second temporary of its own (the image named
//! after `FILE`, `--board` and `--hardware-compatibility` in `sw-description`), the ZIP
//! removed, and the envelope checked and renamed to `FILE`; the JSON line describes the
//! envelope.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use super::error::{Doing, ToolError};
use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::package::{
    parse_manifest, validate_manifest, Manifest, Package, PackagePolicy, PublicKey, Signatures,
    SigningKey, MANIFEST_NAME, MAX_ENTRIES, MAX_MANIFEST_BYTES, SIGNATURE_NAME,
};
use crate::swu::EnvelopeMeta;

/// Read and write buffer size.
const CHUNK: usize = 256 * 1024;
/// Deflate level: 6 is what `zip -r` uses.
const LEVEL: i64 = 6;
/// Size of the head of a file compressed to decide whether deflating it is worth it.
const SAMPLE: usize = 64 * 1024;
/// Files of at least this size get zip64 headers (deflate may grow incompressible data a
/// little, and a 4 GiB entry without them is an error).
const LARGE_FILE: u64 = u32::MAX as u64 - 64 * 1024 * 1024;
/// Largest private key file read.
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// The line `pack` prints: the body of a `/download` without `package_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packed {
    pub version: String,
    pub package_name: String,
    pub package_size: u64,
    pub package_md5: String,
}

/// A file of DIR to put in the package.
#[derive(Debug)]
struct Source {
    /// Entry name in the ZIP (`/`-separated, relative).
    name: String,
    path: PathBuf,
    mode: u32,
    size: u64,
}

/// What `pack` writes around the ZIP when `--out` names a `.swu` file: a SWU envelope
/// (docs/API.md 9.3), the image standing in `board`'s section when one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wrap {
    pub board: Option<String>,
    pub hardware_compatibility: Vec<String>,
}

/// Whether `out` names a SWU envelope: its extension is `.swu` (in any case).
pub fn is_swu(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("swu"))
}

/// Build the package (see the module documentation).
pub fn run(
    dir: &Path,
    out: &Path,
    key: Option<&Path>,
    config: Option<&Path>,
    wrap: &Wrap,
) -> Result<Packed, ToolError> {
    let swu = is_swu(out);
    if !swu && (wrap.board.is_some() || !wrap.hardware_compatibility.is_empty()) {
        return Err(ToolError::Usage(format!(
            "--board and --hardware-compatibility describe a SWU envelope; --out {} is not a \
             .swu file",
            out.display()
        )));
    }
    let cfg = super::load_config(config)?;
    let roots = cfg.as_ref().map(|c| c.allowed_roots.clone());
    let key = key.map(read_key).transpose()?;
    let manifest_path = dir.join(MANIFEST_NAME);
    let original = read_bounded(&manifest_path, MAX_MANIFEST_BYTES)?;
    let manifest = parse_manifest(&original)?;
    validate_manifest(&manifest, None, roots.as_deref())?;
    let package_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| crate::state::usable_package_name(n))
        .ok_or_else(|| {
            ToolError::Usage(format!(
                "--out {}: its file name is the package_name device-api sends, and /download \
                 would refuse it (a plain UTF-8 name of at most 255 bytes, not ending in .tmp)",
                out.display()
            ))
        })?
        .to_string();
    let meta = swu.then(|| EnvelopeMeta {
        version: manifest.version.clone(),
        board: wrap.board.clone(),
        hardware_compatibility: wrap.hardware_compatibility.clone(),
    });
    if let Some(m) = &meta {
        // Refused before anything is packed, not after a 500 MB ZIP is written.
        crate::swu::check_meta(m).map_err(|e| ToolError::Usage(e.to_string()))?;
    }
    let sources = collect(dir, &manifest)?;
    // Modes are packed as they are; the daemon masks them on deployment (docs/API.md 9.6).
    for s in &sources {
        let deployed = crate::package::deploy_mode(Some(s.mode));
        if deployed != s.mode & 0o7777 {
            eprintln!(
                "tope-updater pack: warning: {} has mode {:04o}; the updater deploys it as {deployed:04o} \
                 (no setuid, setgid, sticky or group/other write)",
                s.name,
                s.mode & 0o7777
            );
        }
    }

    let mut made = Vec::new();
    let job = Job {
        out,
        sources: &sources,
        original: &original,
        manifest: &manifest,
        key: key.as_ref(),
        roots: roots.as_deref(),
        meta: meta.as_ref(),
    };
    let (package_size, package_md5) = match job.build(&mut made) {
        Ok(x) => x,
        Err(e) => {
            for tmp in &made {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
    };
    Ok(Packed {
        version: manifest.version,
        package_name,
        package_size,
        package_md5,
    })
}

/// One run of `pack` once its inputs are read.
struct Job<'a> {
    out: &'a Path,
    sources: &'a [Source],
    original: &'a [u8],
    manifest: &'a Manifest,
    key: Option<&'a SigningKey>,
    roots: Option<&'a [PathBuf]>,
    /// `Some`: wrap the ZIP in a SWU envelope.
    meta: Option<&'a EnvelopeMeta>,
}

impl Job<'_> {
    /// Write the ZIP (and the envelope) to temporaries of its own beside `out` (each pushed
    /// to `made` as soon as it exists, for the caller to remove on failure), check the result
    /// as the daemon would, then rename it to `out`. Returns its size and MD5.
    fn build(&self, made: &mut Vec<PathBuf>) -> Result<(u64, String), ToolError> {
        let (zip_tmp, file) = create_own_tmp(self.out)?;
        made.push(zip_tmp.clone());
        write_zip(
            &zip_tmp,
            file,
            self.sources,
            self.original,
            self.manifest,
            self.key,
        )?;
        let done = match self.meta {
            None => zip_tmp,
            Some(meta) => {
                let (env_tmp, file) = create_own_tmp(self.out)?;
                drop(file);
                made.push(env_tmp.clone());
                // The image is named after `out` (`printer-1.2.swu` holds `printer-1.2.zip`).
                crate::swu::write_envelope_for(&env_tmp, &zip_tmp, meta, self.out)
                    .map_err(ToolError::Envelope)?;
                std::fs::remove_file(&zip_tmp)
                    .map_err(|e| ToolError::file(Doing::Removing, &zip_tmp, e))?;
                env_tmp
            }
        };
        self.check(&done)?;
        let (size, md5) = md5_of(&done)?;
        std::fs::rename(&done, self.out).map_err(|source| ToolError::Rename {
            from: done.clone(),
            to: self.out.to_path_buf(),
            source,
        })?;
        crate::fsutil::fsync_parent(self.out)
            .map_err(|e| ToolError::file(Doing::SyncingDirOf, self.out, e))?;
        Ok((size, md5))
    }

    /// The daemon's own checks ([`Package::open`]), on the file just written: a ZIP, or the
    /// envelope with the package in it.
    fn check(&self, path: &Path) -> Result<(), ToolError> {
        let own: Vec<PublicKey> = self.key.map(|k| k.public_key()).into_iter().collect();
        let policy = PackagePolicy {
            allowed_roots: self.roots,
            signatures: Signatures {
                trusted_keys: &own,
                require_signature: self.key.is_some(),
            },
        };
        Package::open(path, None, &policy)
            .map(|_| ())
            .map_err(|e| ToolError::Built(e.into()))
    }
}

fn read_key(path: &Path) -> Result<SigningKey, ToolError> {
    let text = read_bounded(path, MAX_KEY_BYTES)?;
    SigningKey::from_pem(&text).map_err(|source| ToolError::KeyFile {
        path: path.to_path_buf(),
        source,
    })
}

/// A file a person names on the command line: a regular file (a symlink to one is followed)
/// of at most `max` bytes, never a FIFO that would block or a device that never ends.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ToolError> {
    match crate::fsutil::read_operator_file(path, max) {
        crate::fsutil::ReadBack::Data(b) => Ok(b),
        crate::fsutil::ReadBack::Missing => Err(ToolError::Missing {
            path: path.to_path_buf(),
        }),
        crate::fsutil::ReadBack::Refused(why) => Err(ToolError::Refused {
            path: path.to_path_buf(),
            why,
        }),
    }
}

/// Every file the modules name, each once, in a stable order. Symbolic links and special
/// files are refused (the daemon refuses them in a package).
fn collect(dir: &Path, manifest: &Manifest) -> Result<Vec<Source>, ToolError> {
    let mut out: BTreeMap<String, Source> = BTreeMap::new();
    for md in &manifest.modules {
        // validate_manifest has checked that src is a relative path without `..`.
        let name = crate::package::canonical_rel(&md.src).ok_or_else(|| {
            ToolError::Content(format!(
                "module {}: src `{}` is not a path",
                md.name, md.src
            ))
        })?;
        if name == MANIFEST_NAME || name == SIGNATURE_NAME {
            return Err(ToolError::Content(format!(
                "module {}: src `{name}` is the package's own {name}",
                md.name
            )));
        }
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path).map_err(|source| ToolError::ModuleSrc {
            module: md.name.clone(),
            path: path.clone(),
            source,
        })?;
        add(&mut out, name, path, &meta)?;
    }
    if out.len() + 2 > MAX_ENTRIES {
        return Err(ToolError::Content(format!(
            "{} files, more than a package may hold ({MAX_ENTRIES} entries)",
            out.len()
        )));
    }
    Ok(out.into_values().collect())
}

fn add(
    out: &mut BTreeMap<String, Source>,
    name: String,
    path: PathBuf,
    meta: &std::fs::Metadata,
) -> Result<(), ToolError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(ToolError::Content(format!(
            "{} is a symbolic link: packages may not hold links (copy the file instead)",
            path.display()
        )));
    }
    if kind.is_file() {
        out.entry(name.clone()).or_insert(Source {
            name,
            path,
            mode: meta.permissions().mode() & 0o7777,
            size: meta.size(),
        });
        return Ok(());
    }
    if !kind.is_dir() {
        return Err(ToolError::Content(format!(
            "{} is not a regular file or directory",
            path.display()
        )));
    }
    if out.len() > MAX_ENTRIES {
        return Err(ToolError::Content(format!("more than {MAX_ENTRIES} files")));
    }
    let mut children = Vec::new();
    for e in std::fs::read_dir(&path).map_err(|e| ToolError::inspect(&path, e))? {
        let e = e.map_err(|e| ToolError::inspect(&path, e))?;
        let child = e.file_name().into_string().map_err(|n| {
            ToolError::Content(format!("{}: the name {n:?} is not UTF-8", path.display()))
        })?;
        if child.contains('\\') {
            return Err(ToolError::Content(format!(
                "{}: the name {child} holds a `\\`, which packages may not",
                path.display()
            )));
        }
        children.push(child);
    }
    children.sort();
    for child in children {
        let p = path.join(&child);
        let meta = std::fs::symlink_metadata(&p).map_err(|e| ToolError::inspect(&p, e))?;
        add(out, format!("{name}/{child}"), p, &meta)?;
    }
    Ok(())
}

/// A new file beside `out`, named `.tope-pack-<16 random hex digits>` and created here (never
/// an existing one), for the ZIP until it is complete and checked.
fn create_own_tmp(out: &Path) -> Result<(PathBuf, File), ToolError> {
    use ring::rand::SecureRandom;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let rng = ring::rand::SystemRandom::new();
    let mut last = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    for _ in 0..4 {
        let mut bytes = [0u8; 8];
        rng.fill(&mut bytes).map_err(|_| ToolError::Random)?;
        let tmp = dir.join(format!(".tope-pack-{}", crate::checksum::hex(&bytes)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(ToolError::file(Doing::Creating, tmp, e)),
        }
    }
    Err(ToolError::NoTempName {
        dir: dir.to_path_buf(),
        last,
    })
}

/// Write the ZIP to `tmp` (opened as `file`).
fn write_zip(
    tmp: &Path,
    file: File,
    sources: &[Source],
    original: &[u8],
    manifest: &Manifest,
    key: Option<&SigningKey>,
) -> Result<(), ToolError> {
    let werr = |e: std::io::Error| ToolError::file(Doing::Writing, tmp, e);
    let zerr = |source: zip::result::ZipError| ToolError::Zip {
        path: tmp.to_path_buf(),
        source,
    };
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(CHUNK, file));
    let mut hashes: BTreeMap<String, Checksum> = BTreeMap::new();
    let mut buf = vec![0u8; CHUNK];
    for s in sources {
        let opts = options(s.mode, method_for(&s.path)?).large_file(s.size >= LARGE_FILE);
        zip.start_file(s.name.as_str(), opts).map_err(zerr)?;
        let mut input =
            File::open(&s.path).map_err(|e| ToolError::file(Doing::Opening, &s.path, e))?;
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut done: u64 = 0;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ToolError::file(Doing::Reading, &s.path, e)),
            };
            hasher.update(&buf[..n]);
            zip.write_all(&buf[..n]).map_err(werr)?;
            done += n as u64;
        }
        if done != s.size {
            return Err(ToolError::Changed {
                path: s.path.clone(),
                before: s.size,
                after: done,
            });
        }
        hashes.insert(s.name.clone(), hasher.finalize());
    }
    let manifest_bytes = match key {
        Some(_) => with_hashes(original, &hashes)?,
        None => {
            check_stale_hashes(manifest, &hashes)?;
            original.to_vec()
        }
    };
    zip.start_file(MANIFEST_NAME, options(0o644, CompressionMethod::Deflated))
        .map_err(zerr)?;
    zip.write_all(&manifest_bytes).map_err(werr)?;
    if let Some(k) = key {
        zip.start_file(SIGNATURE_NAME, options(0o644, CompressionMethod::Stored))
            .map_err(zerr)?;
        zip.write_all(k.sign_manifest(&manifest_bytes).as_bytes())
            .map_err(werr)?;
    }
    let mut w = zip.finish().map_err(zerr)?;
    w.flush().map_err(werr)?;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    drop(file);
    Ok(())
}

/// Deflate a file only when a sample of its head shrinks: already compressed data (images,
/// archives, compressed firmware) is stored, which makes packing it several times faster and
/// the package no bigger.
fn method_for(path: &Path) -> Result<CompressionMethod, ToolError> {
    let mut head = Vec::with_capacity(SAMPLE);
    File::open(path)
        .and_then(|f| f.take(SAMPLE as u64).read_to_end(&mut head))
        .map_err(|e| ToolError::file(Doing::Reading, path, e))?;
    if head.len() < SAMPLE {
        return Ok(CompressionMethod::Deflated);
    }
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let packed = enc
        .write_all(&head)
        .and_then(|()| enc.finish())
        .map_err(|e| ToolError::file(Doing::Compressing, path, e))?;
    Ok(if packed.len() * 100 > head.len() * 95 {
        CompressionMethod::Stored
    } else {
        CompressionMethod::Deflated
    })
}

fn options(mode: u32, method: CompressionMethod) -> SimpleFileOptions {
    let level = (method == CompressionMethod::Deflated).then_some(LEVEL);
    SimpleFileOptions::default()
        .compression_method(method)
        .compression_level(level)
        .unix_permissions(mode)
        .last_modified_time(zip::DateTime::default())
}

/// `manifest.json` with its `sha256` map set to the files packed (the author's keys and
/// values otherwise kept).
fn with_hashes(original: &[u8], hashes: &BTreeMap<String, Checksum>) -> Result<Vec<u8>, ToolError> {
    let json_err = |source| ToolError::ManifestJson {
        name: MANIFEST_NAME,
        source,
    };
    let mut v: Value = serde_json::from_slice(original).map_err(json_err)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ToolError::Content(format!(
            "{MANIFEST_NAME}: not a JSON object"
        )));
    };
    let map = hashes
        .iter()
        .map(|(k, c)| (k.clone(), Value::String(c.to_hex())))
        .collect();
    obj.insert("sha256".to_string(), Value::Object(map));
    let mut bytes = serde_json::to_vec_pretty(&v).map_err(json_err)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Unsigned, the author's manifest is packed as it is: a `sha256` map it already holds must
/// match the files (the daemon checks it).
fn check_stale_hashes(
    manifest: &Manifest,
    hashes: &BTreeMap<String, Checksum>,
) -> Result<(), ToolError> {
    for (name, hex) in manifest.sha256.iter().flatten() {
        let actual = crate::package::canonical_rel(name).and_then(|n| hashes.get(&n));
        match actual {
            Some(c) if c.to_hex() == *hex => {}
            Some(c) => {
                return Err(ToolError::Content(format!(
                    "{MANIFEST_NAME}: the sha256 of {name} is {hex}, the file's is {c} \
                     (pack with --key to have the map written, or fix it)"
                )))
            }
            None => {
                return Err(ToolError::Content(format!(
                    "{MANIFEST_NAME}: the sha256 map names {name}, which no module packs"
                )))
            }
        }
    }
    Ok(())
}

/// Size and MD5 of the package (what device-api announces in `/download`).
fn md5_of(path: &Path) -> Result<(u64, String), ToolError> {
    let mut f = File::open(path).map_err(|e| ToolError::file(Doing::Opening, path, e))?;
    let mut h = Hasher::new(Algorithm::Md5);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ToolError::file(Doing::Reading, path, e)),
        }
    }
    Ok((size, h.finalize().to_hex()))
}
