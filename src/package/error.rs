//! The package checks' errors as values, with their facts as fields and their sources, and the
//! one place where they get their contract code (`From<PackageError> for OtaError`).
//!
//! Each `Display` is the whole contract detail (the source's message included, as
//! `config.rs` does), so `OtaError::from(e).detail == e.to_string()`; outside tests compare
//! these texts, so they stay as they are. The `"<CODE>: "` prefix is added by `OtaError` only.

use std::io;
use std::path::PathBuf;

use zip::result::ZipError;

use super::{MANIFEST_NAME, MAX_ENTRIES, MAX_RATIO, MAX_TOTAL_UNCOMPRESSED, SIGNATURE_NAME};
use crate::checksum::Checksum;
use crate::error::{self, ErrorCode, OtaError};
use crate::swu::SwuError;

/// What is wrong with one entry of the ZIP (the "unsafe entry" rules of docs/API.md 4 and 8.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("encrypted entries are not supported")]
    Encrypted,
    #[error("symbolic links are not allowed")]
    Symlink,
    #[error("path escapes the package root")]
    Escapes,
    #[error("absolute paths, `..` and `\\` are not allowed")]
    NotRelative,
    #[error("not a path inside the package")]
    NotInside,
    /// `kind`: the `S_IFMT` bits of the entry's unix mode.
    #[error("file type {kind:o} is not a plain file or directory")]
    FileType { kind: u32 },
    /// `method`: the zip crate's name of the method.
    #[error("compression method {method} is not supported")]
    Compression { method: String },
    #[error("compression ratio above {MAX_RATIO} (zip bomb)")]
    Ratio,
    #[error("another entry has the same path {canonical}")]
    SamePath { canonical: String },
    #[error("its parent {parent} is a file")]
    ParentIsFile { parent: String },
}

/// Why a package was refused, or could not be read or extracted.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    // --- The file and its ZIP structure (INVALID_PACKAGE) ---
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read the package: {source}")]
    Metadata { source: io::Error },
    /// A read of the end records failed (a file shorter than they say, an I/O error).
    #[error("not a readable ZIP: {source}")]
    ReadFailed { source: io::Error },
    /// The zip crate refused the archive.
    #[error("not a readable ZIP: {source}")]
    NotZip { source: ZipError },
    #[error("not a ZIP: {len} bytes")]
    TooShort { len: u64 },
    #[error("not a ZIP: no end-of-central-directory record at the end of the file")]
    NoEndRecord,
    #[error("ambiguous ZIP: a second end-of-central-directory record follows the first")]
    AmbiguousEnd,
    #[error("multi-disk ZIP archives are not supported")]
    MultiDisk,
    /// The zip64 end records are inconsistent; `why` says how.
    #[error("corrupt zip64 ZIP: {why}")]
    CorruptZip64 { why: &'static str },
    #[error("{entries} entries, more than the {MAX_ENTRIES} allowed")]
    TooManyEntries { entries: u64 },
    #[error("central directory of {size} bytes, more than the {max} allowed")]
    CentralDirectoryTooBig { size: u64, max: u64 },
    #[error(
        "the central directory does not end where its end record begins \
         (data prepended or inserted: not a plain ZIP)"
    )]
    NotPlain,
    #[error("{entries} entries cannot fit in a central directory of {size} bytes")]
    EntriesDoNotFit { entries: u64, size: u64 },
    #[error("corrupt ZIP: no central directory at the offset its end record names")]
    NoCentralDirectory,
    #[error("the ZIP reader found {found} entries where the end record declares {declared}")]
    EntryCountMismatch { found: usize, declared: u64 },
    #[error("two entries have the same name")]
    DuplicateNames,
    #[error("entries overlap each other (zip bomb or corrupt ZIP)")]
    Overlapping,
    #[error("corrupt ZIP: {source}")]
    Corrupt { source: ZipError },
    #[error("more than {MAX_TOTAL_UNCOMPRESSED} bytes uncompressed in total")]
    TooBigUncompressed,

    // --- The SWU envelope around the ZIP (docs/API.md 9.3) ---
    /// The envelope is unreadable or refused; the detail is `SWU envelope: <what>`.
    #[error("{}", source.detail())]
    Envelope { source: SwuError },
    /// `software.version` of `sw-description` is not the inner manifest's `version`.
    #[error(
        "SWU envelope: sw-description's software.version {envelope} differs from the version          {manifest} of the package's {}",
        MANIFEST_NAME
    )]
    EnvelopeVersion { envelope: String, manifest: String },

    // --- Entries ---
    /// The zip crate cannot give entry `index`.
    #[error("entry {index}: {source}")]
    Entry { index: usize, source: ZipError },
    /// `raw`: the name's bytes, shown lossily.
    #[error("entry {index} ({raw}): unreadable name: {source}")]
    UnreadableName {
        index: usize,
        raw: String,
        source: ZipError,
    },
    #[error("entry {name}: {why}")]
    UnsafeEntry { name: String, why: EntryProblem },
    /// Reading `manifest.json` or `manifest.sig` failed in the zip crate.
    #[error("{name}: {source}")]
    SmallEntry {
        name: &'static str,
        source: ZipError,
    },
    /// Reading `manifest.json` or `manifest.sig` failed (CRC32, I/O).
    #[error("{name}: {source}")]
    SmallEntryRead {
        name: &'static str,
        source: io::Error,
    },
    #[error("{name}: {read} bytes read, {declared} declared")]
    SmallEntrySize {
        name: &'static str,
        read: u64,
        declared: u64,
    },
    /// Extracting entry `index` for `dst` failed (CRC32, corrupt data, I/O).
    #[error("entry {index} for {}: {source}", dst.display())]
    EntryRead {
        index: usize,
        dst: PathBuf,
        source: io::Error,
    },
    #[error("entry {index} for {}: more than the {declared} bytes declared", dst.display())]
    EntryTooLong {
        index: usize,
        dst: PathBuf,
        declared: u64,
    },
    #[error("entry {index} for {}: {read} bytes, {declared} declared", dst.display())]
    EntryTooShort {
        index: usize,
        dst: PathBuf,
        read: u64,
        declared: u64,
    },
    #[error(
        "entry {name} for {}: sha256 {found} differs from the manifest's {expected}",
        dst.display()
    )]
    EntryHashMismatch {
        name: String,
        dst: PathBuf,
        expected: Checksum,
        found: Checksum,
    },
    /// Writing an extracted entry failed: `DISK_FULL` when the disk is full, else
    /// `INTERNAL_ERROR` (the caller decides what the installation reports).
    #[error("writing {}: {source}", dst.display())]
    Write { dst: PathBuf, source: io::Error },

    // --- Signature and the signed sha256 map (INVALID_PACKAGE, docs/API.md 8.6) ---
    #[error(
        "the package is not signed ({} missing) and require_signature = true",
        SIGNATURE_NAME
    )]
    Unsigned,
    #[error("{} is a directory", SIGNATURE_NAME)]
    SignatureIsDirectory,
    #[error("{} is {size} bytes, more than {max}", SIGNATURE_NAME)]
    SignatureTooBig { size: u64, max: u64 },
    #[error("{} is not the base64 of a 64-byte Ed25519 signature", SIGNATURE_NAME)]
    SignatureMalformed,
    #[error(
        "{} is not verified by any of the {keys} trusted key(s): signed with another key, or \
         manifest.json was changed after signing",
        SIGNATURE_NAME
    )]
    Untrusted { keys: usize },
    #[error("the sha256 map names `{name}`, which is not a file of the package")]
    HashOfNoFile { name: String },
    #[error("the sha256 of `{name}` is not 64 lowercase hex digits")]
    HashMalformed { name: String },
    #[error("the sha256 map names `{name}` twice")]
    HashTwice { name: String },
    #[error(
        "entry {entry} (for {}, module {module}) has no sha256 in the signed manifest",
        dst.display()
    )]
    HashMissing {
        entry: String,
        dst: PathBuf,
        module: String,
    },
    /// The downgrade policy (config `allow_downgrade = false`).
    #[error("downgrade from {installed} to {new} refused (allow_downgrade = false)")]
    Downgrade { installed: String, new: String },

    // --- The manifest (INVALID_MANIFEST) ---
    #[error("{} not found at the root of the package", MANIFEST_NAME)]
    ManifestMissing,
    #[error("{} is {size} bytes, more than {max}", MANIFEST_NAME)]
    ManifestTooBig { size: u64, max: u64 },
    /// Not JSON, or a value of the wrong type (with its line and column).
    #[error("{}: {source}", MANIFEST_NAME)]
    ManifestSyntax { source: serde_json::Error },
    /// `place`: "at the top level" or "in module <name>"; `hint`: the known key probably meant.
    #[error(
        "{}: unknown key `{key}` {place}{}; known keys: {}",
        MANIFEST_NAME,
        hint.map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default(),
        known.join(", ")
    )]
    UnknownKey {
        key: String,
        place: String,
        hint: Option<&'static str>,
        known: &'static [&'static str],
    },
    #[error("version `{version}` is not of the form x.y.z")]
    BadVersion { version: String },
    #[error("version {found} differs from the requested version {expected}")]
    VersionMismatch { expected: String, found: String },
    #[error("modules: at least one module is required")]
    NoModules,
    /// A rule on one field of a module. `module`: its name, or `#<n>` (1-based) when the name
    /// itself is what is wrong; `why` starts with the value when it names one.
    #[error("module {module}: {field} {why}")]
    Field {
        module: String,
        field: String,
        why: String,
    },
    /// `dst` lies outside every root of config `allowed_roots` (docs/API.md 4, 8.3).
    #[error("module {module}: dst `{dst}` is outside the allowed roots {roots:?}")]
    DstOutsideRoots {
        module: String,
        dst: String,
        roots: Vec<PathBuf>,
    },
    #[error("module {module}: invalid src or dst")]
    Unplannable { module: String },
    #[error("module {module}: src {src} not found in package")]
    SrcNotFound { module: String, src: String },
    #[error("module {module}: src {src} is a directory without files")]
    SrcEmptyDirectory { module: String, src: String },
    #[error("modules {first} and {second} both write {}", dst.display())]
    BothWrite {
        first: String,
        second: String,
        dst: PathBuf,
    },
    /// One module writes a file below a file another module writes.
    #[error(
        "module {module}: {} conflicts with {} of module {other}",
        dst.display(),
        other_dst.display()
    )]
    DstConflict {
        module: String,
        dst: PathBuf,
        other: String,
        other_dst: PathBuf,
    },

    // --- Room on the device (daemon only) ---
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot read free space of {}: {source}", dir.display())]
    FreeSpace { dir: PathBuf, source: io::Error },
    #[error(
        "the package needs {needed} bytes on the filesystem of {}, {available} available",
        dir.display()
    )]
    NoRoom {
        needed: u64,
        dir: PathBuf,
        available: u64,
    },
}

impl PackageError {
    /// A rule on a field of module `module` (see [`PackageError::Field`]).
    pub(crate) fn field(
        module: impl Into<String>,
        field: impl Into<String>,
        why: impl Into<String>,
    ) -> PackageError {
        PackageError::Field {
            module: module.into(),
            field: field.into(),
            why: why.into(),
        }
    }

    /// The contract code (docs/API.md 3) this error is reported with.
    pub fn code(&self) -> ErrorCode {
        use PackageError::*;
        match self {
            ManifestMissing
            | ManifestTooBig { .. }
            | ManifestSyntax { .. }
            | UnknownKey { .. }
            | BadVersion { .. }
            | VersionMismatch { .. }
            | NoModules
            | Field { .. }
            | DstOutsideRoots { .. }
            | Unplannable { .. }
            | SrcNotFound { .. }
            | SrcEmptyDirectory { .. }
            | BothWrite { .. }
            | DstConflict { .. } => ErrorCode::InvalidManifest,
            Write { source, .. } if error::is_disk_full(source) => ErrorCode::DiskFull,
            NoRoom { .. } => ErrorCode::DiskFull,
            Write { .. } | Inspect { .. } | FreeSpace { .. } => ErrorCode::InternalError,
            Envelope { source } => source.code(),
            Open { .. }
            | Metadata { .. }
            | ReadFailed { .. }
            | NotZip { .. }
            | TooShort { .. }
            | NoEndRecord
            | AmbiguousEnd
            | MultiDisk
            | CorruptZip64 { .. }
            | TooManyEntries { .. }
            | CentralDirectoryTooBig { .. }
            | NotPlain
            | EntriesDoNotFit { .. }
            | NoCentralDirectory
            | EntryCountMismatch { .. }
            | DuplicateNames
            | Overlapping
            | Corrupt { .. }
            | TooBigUncompressed
            | EnvelopeVersion { .. }
            | Entry { .. }
            | UnreadableName { .. }
            | UnsafeEntry { .. }
            | SmallEntry { .. }
            | SmallEntryRead { .. }
            | SmallEntrySize { .. }
            | EntryRead { .. }
            | EntryTooLong { .. }
            | EntryTooShort { .. }
            | EntryHashMismatch { .. }
            | Unsigned
            | SignatureIsDirectory
            | SignatureTooBig { .. }
            | SignatureMalformed
            | Untrusted { .. }
            | HashOfNoFile { .. }
            | HashMalformed { .. }
            | HashTwice { .. }
            | HashMissing { .. }
            | Downgrade { .. } => ErrorCode::InvalidPackage,
        }
    }
}

impl From<PackageError> for OtaError {
    fn from(e: PackageError) -> OtaError {
        OtaError::new(e.code(), e.to_string())
    }
}

/// Why a private key of the package author's tools (`keygen`, `pack --key`) cannot be used.
/// Never a contract error: only the tools read keys, and they print it as it is.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system's random generator failed")]
    Random,
    #[error("not a PEM file: {source}")]
    NotPem { source: pem::PemError },
    #[error(
        "a PEM `{tag}`, not a `{}` (PKCS#8)",
        super::signature::PRIVATE_KEY_LABEL
    )]
    NotPrivateKey { tag: String },
    /// `rejected` is not a `source`: ring built without `std` does not implement `Error` for it.
    #[error("not an Ed25519 PKCS#8 private key: {rejected}")]
    NotEd25519 { rejected: ring::error::KeyRejected },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Algorithm;

    fn io(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    fn ota(e: PackageError) -> OtaError {
        OtaError::from(e)
    }

    /// docs/API.md 3: every package error reaches the contract with its code, and its detail is
    /// exactly the text the updater has always reported (outside tests compare it).
    #[test]
    fn contract_3_package_errors_keep_their_codes_and_details() {
        let cases: Vec<(PackageError, ErrorCode, &str)> = vec![
            (
                PackageError::TooShort { len: 3 },
                ErrorCode::InvalidPackage,
                "not a ZIP: 3 bytes",
            ),
            (
                PackageError::TooManyEntries { entries: 70000 },
                ErrorCode::InvalidPackage,
                "70000 entries, more than the 65536 allowed",
            ),
            (
                PackageError::UnsafeEntry {
                    name: "../x".into(),
                    why: EntryProblem::NotRelative,
                },
                ErrorCode::InvalidPackage,
                "entry ../x: absolute paths, `..` and `\\` are not allowed",
            ),
            (
                PackageError::UnsafeEntry {
                    name: "dev".into(),
                    why: EntryProblem::FileType { kind: 0o020000 },
                },
                ErrorCode::InvalidPackage,
                "entry dev: file type 20000 is not a plain file or directory",
            ),
            (
                PackageError::Unsigned,
                ErrorCode::InvalidPackage,
                "the package is not signed (manifest.sig missing) and require_signature = true",
            ),
            (
                PackageError::Untrusted { keys: 2 },
                ErrorCode::InvalidPackage,
                "manifest.sig is not verified by any of the 2 trusted key(s): signed with \
                 another key, or manifest.json was changed after signing",
            ),
            (
                PackageError::Downgrade {
                    installed: "1.10.0".into(),
                    new: "1.9.0".into(),
                },
                ErrorCode::InvalidPackage,
                "downgrade from 1.10.0 to 1.9.0 refused (allow_downgrade = false)",
            ),
            (
                PackageError::ManifestMissing,
                ErrorCode::InvalidManifest,
                "manifest.json not found at the root of the package",
            ),
            (
                PackageError::ManifestTooBig {
                    size: 2_000_000,
                    max: 1_048_576,
                },
                ErrorCode::InvalidManifest,
                "manifest.json is 2000000 bytes, more than 1048576",
            ),
            (
                PackageError::UnknownKey {
                    key: "dest".into(),
                    place: "in module api".into(),
                    hint: Some("dst"),
                    known: &["name", "dst"],
                },
                ErrorCode::InvalidManifest,
                "manifest.json: unknown key `dest` in module api (did you mean `dst`?); \
                 known keys: name, dst",
            ),
            (
                PackageError::UnknownKey {
                    key: "zzz".into(),
                    place: "at the top level".into(),
                    hint: None,
                    known: &["version"],
                },
                ErrorCode::InvalidManifest,
                "manifest.json: unknown key `zzz` at the top level; known keys: version",
            ),
            (
                PackageError::VersionMismatch {
                    expected: "1.2.3".into(),
                    found: "1.2.4".into(),
                },
                ErrorCode::InvalidManifest,
                "version 1.2.4 differs from the requested version 1.2.3",
            ),
            (
                PackageError::field("api", "src", "`/a` must be relative (no leading /)"),
                ErrorCode::InvalidManifest,
                "module api: src `/a` must be relative (no leading /)",
            ),
            (
                PackageError::DstOutsideRoots {
                    module: "api".into(),
                    dst: "/etc/x".into(),
                    roots: vec!["/opt/tope".into()],
                },
                ErrorCode::InvalidManifest,
                "module api: dst `/etc/x` is outside the allowed roots [\"/opt/tope\"]",
            ),
            (
                PackageError::NoRoom {
                    needed: 10,
                    dir: "/opt".into(),
                    available: 5,
                },
                ErrorCode::DiskFull,
                "the package needs 10 bytes on the filesystem of /opt, 5 available",
            ),
            (
                // EACCES: its text is the same in glibc and musl (the ARM build), EIO's is not.
                PackageError::FreeSpace {
                    dir: "/opt".into(),
                    source: io(13),
                },
                ErrorCode::InternalError,
                "cannot read free space of /opt: Permission denied (os error 13)",
            ),
        ];
        for (e, code, detail) in cases {
            assert_eq!(e.code(), code, "{e}");
            let o = ota(e);
            assert_eq!((o.code, o.detail.as_str()), (code, detail));
        }
    }

    /// A write error while extracting is DISK_FULL only when the disk is full.
    #[test]
    fn contract_3_extraction_write_errors_are_disk_full_only_when_full() {
        let full = PackageError::Write {
            dst: "/opt/tope/a".into(),
            source: io(28),
        };
        assert_eq!(full.code(), ErrorCode::DiskFull);
        assert_eq!(
            ota(full).to_string(),
            "DISK_FULL: writing /opt/tope/a: No space left on device (os error 28)"
        );
        let denied = PackageError::Write {
            dst: "/opt/tope/a".into(),
            source: io(13),
        };
        assert_eq!(denied.code(), ErrorCode::InternalError);
    }

    /// The causes stay reachable as values: an I/O error keeps its errno, a hash mismatch
    /// both sums.
    #[test]
    fn sources_and_facts_are_kept() {
        let e = PackageError::Open {
            path: "/w/tmp/p.zip".into(),
            source: io(2),
        };
        let src = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(src.and_then(io::Error::raw_os_error), Some(2));
        let want = Checksum::from_hex(Algorithm::Sha256, &"a".repeat(64)).unwrap();
        let got = Checksum::from_hex(Algorithm::Sha256, &"b".repeat(64)).unwrap();
        let e = PackageError::EntryHashMismatch {
            name: "data/b".into(),
            dst: "/opt/tope/b".into(),
            expected: want.clone(),
            found: got.clone(),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "entry data/b for /opt/tope/b: sha256 {got} differs from the manifest's {want}"
            )
        );
        assert_eq!(e.code(), ErrorCode::InvalidPackage);
    }
}
