//! The package file of a delta download (docs/API.md 9.5): a ZIP written entry by entry in
//! the package's own order, fetched entries copied byte for byte (compressed data, CRC32, mode
//! and name as the server sent them) from the sparse part file, unchanged entries stored from
//! the installed file after its SHA-256 is checked again as it is copied. The result is an
//! ordinary package: the installation opens and checks it like any other (signature, every
//! entry's size, CRC32 and signed SHA-256), and never reads an installed file as a source.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::download::DownloadError;
use crate::swu::Window;

/// An unchanged entry: taken from `dst`, whose content must hash to `sha256`.
pub(super) struct Reuse {
    pub dst: PathBuf,
    pub sha256: Checksum,
}

pub(super) enum Assembled {
    /// Written and fsynced: the file's own SHA-256 and length.
    Done { sha256: Checksum, len: u64 },
    /// These entries' installed files no longer hold the signed content: fetch them.
    Stale(Vec<usize>),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AssembleError {
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot copy entry {index} of the package")]
    Zip {
        index: usize,
        #[source]
        source: zip::result::ZipError,
    },
}

impl AssembleError {
    /// As a download's write error, its I/O error kept (a full disk stays `DISK_FULL`).
    pub(super) fn into_download_error(self, out: &Path) -> DownloadError {
        let source = match self {
            AssembleError::Write { source, .. } => source,
            AssembleError::Zip {
                source: zip::result::ZipError::Io(io),
                ..
            } => io,
            e @ AssembleError::Zip { .. } => std::io::Error::other(crate::download::chain(&e)),
        };
        DownloadError::Write {
            path: out.to_path_buf(),
            source,
        }
    }
}

const CHUNK: usize = 256 * 1024;

/// Write the package to `out` from `archive` (the part file) and the installed files of
/// `reuse` (entry index -> where from). Every entry not in `reuse` must be fetched.
pub(super) fn assemble(
    archive: &mut zip::ZipArchive<Window>,
    reuse: &HashMap<usize, Reuse>,
    out: &Path,
) -> Result<Assembled, AssembleError> {
    let werr = |source: std::io::Error| AssembleError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(out)
        .map_err(werr)?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(CHUNK, file));
    let mut stale = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    for index in 0..archive.len() {
        let zerr = |source| AssembleError::Zip { index, source };
        let Some(r) = reuse.get(&index) else {
            let entry = archive.by_index_raw(index).map_err(zerr)?;
            zip.raw_copy_file(entry).map_err(zerr)?;
            continue;
        };
        let data = archive.by_index_data(index).map_err(zerr)?;
        // The name as the package reader decodes it (UTF-8, or CP437 without the flag).
        let name = data.name().map_err(zerr)?.into_owned();
        let opts = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .unix_permissions(data.unix_mode().unwrap_or(0o644) & 0o777)
            .last_modified_time(data.last_modified().unwrap_or_default())
            .large_file(data.size() >= u64::from(u32::MAX));
        let size = data.size();
        drop(data);
        zip.start_file(name, opts).map_err(zerr)?;
        let mut input = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&r.dst)
        {
            Ok(f) => f,
            Err(_) => {
                stale.push(index);
                continue;
            }
        };
        if !copy_checked(&mut input, &mut zip, &mut buf, size, &r.sha256).map_err(werr)? {
            stale.push(index);
        }
    }
    if !stale.is_empty() {
        drop(zip);
        let _ = std::fs::remove_file(out);
        return Ok(Assembled::Stale(stale));
    }
    let w = zip.finish().map_err(|source| AssembleError::Zip {
        index: usize::MAX,
        source,
    })?;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    drop(file);
    // Its name durable too before the record says it is assembled.
    crate::fsutil::fsync_parent(out).map_err(werr)?;
    let mut back = File::open(out).map_err(werr)?;
    let len = back.metadata().map_err(werr)?.len();
    let sha256 = super::installed::hash_open(&mut back).map_err(werr)?;
    Ok(Assembled::Done { sha256, len })
}

/// Copy `input` into the open entry; `false` when it is not `size` bytes hashing to `want`
/// (the bytes written then belong to a file that is discarded).
fn copy_checked(
    input: &mut File,
    out: &mut impl Write,
    buf: &mut [u8],
    size: u64,
    want: &Checksum,
) -> std::io::Result<bool> {
    if !input
        .metadata()
        .is_ok_and(|m| m.file_type().is_file() && m.len() == size)
    {
        return Ok(false);
    }
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut done: u64 = 0;
    loop {
        let n = match input.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(false),
        };
        done += n as u64;
        if done > size {
            return Ok(false);
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok(done == size && &h.finalize() == want)
}
