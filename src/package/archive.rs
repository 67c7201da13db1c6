//! The ZIP reader's safety rules: the size of the central directory before the zip crate loads
//! it, then every entry's name, type, compression and size (see the rules in `package/mod.rs`).

use std::collections::HashMap;
use std::io::Read;

use zip::CompressionMethod;

use super::error::{EntryProblem, PackageError};
use super::{MAX_ENTRIES, MAX_RATIO, MAX_TOTAL_UNCOMPRESSED, RATIO_CHECK_MIN};
use crate::swu::Window;

/// Largest central directory accepted: room for [`MAX_ENTRIES`] entries with names of about
/// 80 bytes. The zip crate holds the whole directory (parsed) in memory.
pub const MAX_CENTRAL_DIRECTORY: u64 = 8 * 1024 * 1024;
/// Largest "extensible data" of a zip64 end record (the zip crate reads it into memory; real
/// archives leave it empty).
const MAX_ZIP64_EXTENSIBLE: u64 = 64 * 1024;

/// Mode of a deployed file whose entry carries no permission bits.
pub const DEFAULT_MODE: u32 = 0o644;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

const EOCD_SIG: [u8; 4] = *b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIG: [u8; 4] = *b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_SIG: [u8; 4] = *b"PK\x06\x06";
/// Fixed part of the zip64 end record, signature and size field included.
const ZIP64_EOCD_LEN: usize = 56;
const CDFH_SIG: [u8; 4] = *b"PK\x01\x02";
/// Smallest central directory file header.
const CDFH_MIN_LEN: u64 = 46;

/// What the end records say about the central directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentralDirectory {
    pub entries: u64,
    pub size: u64,
    pub offset: u64,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn read_at(file: &Window, offset: u64, len: usize) -> Result<Vec<u8>, PackageError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|source| PackageError::ReadFailed { source })?;
    Ok(buf)
}

/// Read the end-of-central-directory record (and the zip64 one) and refuse, before anything
/// big is read, an archive whose central directory holds more than [`MAX_ENTRIES`] entries or
/// more than [`MAX_CENTRAL_DIRECTORY`] bytes (docs/API.md section 8.3).
///
/// Hand-written because the zip crate has no such cap: `ZipArchive::new` parses the whole
/// central directory into memory, so a package of 300 000 empty entries or 100 MB of names
/// would cost hundreds of MB before any of our checks could run. Only the standard layout is
/// accepted, so that the record read here is the one the zip crate uses: the end record ends
/// the file exactly (with its comment), no second end signature follows it, and the central
/// directory ends where its end record (or the zip64 one) begins, which also means nothing
/// was prepended to the archive. `zip -r`, Python's zipfile and `tope-updater pack` all write
/// that layout.
///
/// `file` is the ZIP's bytes: the whole file, or the image inside a SWU envelope (docs/API.md
/// 9.3), so offsets are the ZIP's own and the rules are the same for both.
pub fn check_central_directory(file: &Window) -> Result<CentralDirectory, PackageError> {
    let len = file.len();
    if len < EOCD_LEN as u64 {
        return Err(PackageError::TooShort { len });
    }
    let tail_len = len.min((EOCD_LEN + usize::from(u16::MAX)) as u64) as usize;
    let tail_start = len - tail_len as u64;
    let tail = read_at(file, tail_start, tail_len)?;
    // An end record candidate: its signature, and its comment ends at or before the end of
    // the file (the zip crate tolerates bytes after the comment).
    let end_of = |i: usize| {
        (tail[i..i + 4] == EOCD_SIG).then(|| i + EOCD_LEN + u16_at(&tail, i + 20) as usize)
    };
    let candidates = || {
        (0..=tail_len - EOCD_LEN)
            .rev()
            .filter_map(|i| Some((i, end_of(i)?)))
    };
    // Ours: the last one whose comment ends exactly at the end of the file. The zip crate
    // tries candidates from the end backwards, so any later one it would accept comes first.
    let Some(at) = candidates()
        .find(|&(_, end)| end == tail_len)
        .map(|(i, _)| i)
    else {
        return Err(PackageError::NoEndRecord);
    };
    if candidates().any(|(i, end)| i > at && end <= tail_len) {
        return Err(PackageError::AmbiguousEnd);
    }
    let eocd = &tail[at..at + EOCD_LEN];
    let eocd_pos = tail_start + at as u64;
    let (disk, cd_disk) = (u16_at(eocd, 4), u16_at(eocd, 6));
    let (entries_here, entries) = (u16_at(eocd, 8), u16_at(eocd, 10));
    let (size, offset) = (u32_at(eocd, 12), u32_at(eocd, 16));
    // The zip crate's own test for "maybe zip64": it then uses the zip64 record.
    let zip64 = entries == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF;
    let (cd, end_pos) = if zip64 {
        zip64_record(file, eocd_pos)?
    } else {
        if disk != 0 || cd_disk != 0 || entries_here != entries {
            return Err(PackageError::MultiDisk);
        }
        (
            CentralDirectory {
                entries,
                size,
                offset,
            },
            eocd_pos,
        )
    };
    if cd.entries > MAX_ENTRIES as u64 {
        return Err(PackageError::TooManyEntries {
            entries: cd.entries,
        });
    }
    if cd.size > MAX_CENTRAL_DIRECTORY {
        return Err(PackageError::CentralDirectoryTooBig {
            size: cd.size,
            max: MAX_CENTRAL_DIRECTORY,
        });
    }
    if cd.offset.checked_add(cd.size) != Some(end_pos) {
        return Err(PackageError::NotPlain);
    }
    if cd.entries.saturating_mul(CDFH_MIN_LEN) > cd.size {
        return Err(PackageError::EntriesDoNotFit {
            entries: cd.entries,
            size: cd.size,
        });
    }
    if cd.entries > 0 && read_at(file, cd.offset, 4)? != CDFH_SIG {
        return Err(PackageError::NoCentralDirectory);
    }
    Ok(cd)
}

/// The zip64 end record located just before the end record at `eocd_pos`; returns it and its
/// position (where the central directory must end).
fn zip64_record(file: &Window, eocd_pos: u64) -> Result<(CentralDirectory, u64), PackageError> {
    let bad = |why: &'static str| Err(PackageError::CorruptZip64 { why });
    let Some(loc_pos) = eocd_pos.checked_sub(ZIP64_LOCATOR_LEN) else {
        return bad("no zip64 end record locator");
    };
    let loc = read_at(file, loc_pos, ZIP64_LOCATOR_LEN as usize)?;
    if loc[..4] != ZIP64_LOCATOR_SIG {
        return bad("no zip64 end record locator");
    }
    if u32_at(&loc, 4) != 0 || u32_at(&loc, 16) > 1 {
        return bad("multi-disk ZIP archives are not supported");
    }
    let rec_pos = u64_at(&loc, 8);
    if rec_pos.saturating_add(ZIP64_EOCD_LEN as u64) > loc_pos {
        return bad("the zip64 end record is not before its locator");
    }
    let rec = read_at(file, rec_pos, ZIP64_EOCD_LEN)?;
    if rec[..4] != ZIP64_EOCD_SIG {
        return bad("no zip64 end record where the locator points");
    }
    // The record's size field counts what follows it (the 12 first bytes excluded).
    let extensible = u64_at(&rec, 4).checked_sub(ZIP64_EOCD_LEN as u64 - 12);
    match extensible {
        Some(x) if x <= MAX_ZIP64_EXTENSIBLE && rec_pos + ZIP64_EOCD_LEN as u64 + x == loc_pos => {}
        _ => return bad("the zip64 end record's size is wrong"),
    }
    if u32_at(&rec, 16) != 0 || u32_at(&rec, 20) != 0 || u64_at(&rec, 24) != u64_at(&rec, 32) {
        return bad("multi-disk ZIP archives are not supported");
    }
    let cd = CentralDirectory {
        entries: u64_at(&rec, 32),
        size: u64_at(&rec, 40),
        offset: u64_at(&rec, 48),
    };
    Ok((cd, rec_pos))
}

/// The components of a relative ZIP path or manifest `src`, with empty and `.` components
/// dropped. `None` when it is absolute, contains `..`, `\` or NUL, or names nothing.
pub fn canonical_rel(name: &str) -> Option<String> {
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

/// What the scan of the central directory keeps of an entry.
pub struct EntryInfo {
    pub index: usize,
    pub is_dir: bool,
    pub size: u64,
    pub mode: u32,
}

/// Bits of an entry's mode never deployed (docs/API.md 9.6): group and other write. The mode
/// bits lie outside the signed manifest, so a package rewritten outside its signature must not
/// be able to make a root-run file writable by others.
pub const MODE_MASK: u32 = 0o022;

/// The mode a file gets: the entry's permission bits without setuid, setgid and sticky (a
/// package must not be able to plant a setuid-root program through the updater) and without
/// [`MODE_MASK`], or [`DEFAULT_MODE`] when the entry carries none.
pub fn deploy_mode(unix_mode: Option<u32>) -> u32 {
    match unix_mode.map(|m| m & 0o777) {
        Some(m) if m != 0 => m & !MODE_MASK,
        _ => DEFAULT_MODE,
    }
}

/// Scan the central directory: every safety rule on entries, and the map from canonical name
/// to entry.
pub fn scan_entries(
    archive: &mut zip::ZipArchive<Window>,
) -> Result<HashMap<String, EntryInfo>, PackageError> {
    if archive.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries {
            entries: archive.len() as u64,
        });
    }
    if archive.has_duplicate_names() {
        return Err(PackageError::DuplicateNames);
    }
    match archive.has_overlapping_entries() {
        Ok(false) => {}
        Ok(true) => return Err(PackageError::Overlapping),
        Err(source) => return Err(PackageError::Corrupt { source }),
    }
    scan_directory(archive)
}

/// Every rule of [`scan_entries`] that the central directory alone decides: the local headers
/// are not read (docs/API.md 9.5: a delta download reads the directory before any entry).
pub fn scan_directory(
    archive: &zip::ZipArchive<Window>,
) -> Result<HashMap<String, EntryInfo>, PackageError> {
    if archive.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries {
            entries: archive.len() as u64,
        });
    }
    if archive.has_duplicate_names() {
        return Err(PackageError::DuplicateNames);
    }
    let mut entries: HashMap<String, EntryInfo> = HashMap::new();
    let mut total: u64 = 0;
    for index in 0..archive.len() {
        let e = archive
            .by_index_data(index)
            .map_err(|source| PackageError::Entry { index, source })?;
        let name = match e.name() {
            Ok(n) => n.into_owned(),
            Err(source) => {
                return Err(PackageError::UnreadableName {
                    index,
                    raw: String::from_utf8_lossy(e.name_raw()).into_owned(),
                    source,
                })
            }
        };
        let bad = |why: EntryProblem| {
            Err(PackageError::UnsafeEntry {
                name: name.clone(),
                why,
            })
        };
        if e.encrypted() {
            return bad(EntryProblem::Encrypted);
        }
        if e.is_symlink() {
            return bad(EntryProblem::Symlink);
        }
        if e.enclosed_name().is_none() {
            return bad(EntryProblem::Escapes);
        }
        if name.starts_with('/') || name.contains('\\') || name.split('/').any(|c| c == "..") {
            return bad(EntryProblem::NotRelative);
        }
        let Some(canon) = canonical_rel(&name) else {
            return bad(EntryProblem::NotInside);
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
                return bad(EntryProblem::FileType { kind });
            }
        }
        if !is_dir {
            let method = e.compression();
            if method != CompressionMethod::Stored && method != CompressionMethod::Deflated {
                return bad(EntryProblem::Compression {
                    method: format!("{method:?}"),
                });
            }
        }
        let size = e.size();
        total = match total.checked_add(size) {
            Some(t) if t <= MAX_TOTAL_UNCOMPRESSED => t,
            _ => return Err(PackageError::TooBigUncompressed),
        };
        if size > RATIO_CHECK_MIN && size / e.compressed_size().max(1) > MAX_RATIO {
            return bad(EntryProblem::Ratio);
        }
        let info = EntryInfo {
            index,
            is_dir,
            size,
            mode: deploy_mode(mode),
        };
        if entries.insert(canon.clone(), info).is_some() {
            return bad(EntryProblem::SamePath { canonical: canon });
        }
    }
    // A path may not be a file and a directory at once (`a` and `a/b`).
    for name in entries.keys() {
        let mut cur = name.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if entries.get(parent).is_some_and(|p| !p.is_dir) {
                return Err(PackageError::UnsafeEntry {
                    name: name.clone(),
                    why: EntryProblem::ParentIsFile {
                        parent: parent.to_string(),
                    },
                });
            }
            cur = parent;
        }
    }
    Ok(entries)
}

/// The whole content of a small entry (`manifest.json`, `manifest.sig`), at most `max` bytes;
/// a bigger one is `too_big(size, max)`. Its size is checked against the central directory and
/// the reader checks its CRC32.
pub fn read_small_entry(
    archive: &mut zip::ZipArchive<Window>,
    info: &EntryInfo,
    name: &'static str,
    max: u64,
    too_big: fn(u64, u64) -> PackageError,
) -> Result<Vec<u8>, PackageError> {
    if info.size > max {
        return Err(too_big(info.size, max));
    }
    let entry = archive
        .by_index(info.index)
        .map_err(|source| PackageError::SmallEntry { name, source })?;
    let mut bytes = Vec::new();
    entry
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PackageError::SmallEntryRead { name, source })?;
    if bytes.len() as u64 != info.size {
        return Err(PackageError::SmallEntrySize {
            name,
            read: bytes.len() as u64,
            declared: info.size,
        });
    }
    Ok(bytes)
}
