//! Checks of a delta download's entries (docs/API.md 9.5) and which ones the installed files
//! supply.

use std::collections::{HashMap, HashSet};

use super::assemble::Reuse;
use super::plan::{self, Cover, Span};
use super::record::{Pending, Record};
use super::Opened;
use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::swu::Window;

/// Check the entries lying within `spans` not yet in `checked`: CRC32 by the reader, the
/// signed SHA-256 when the manifest names the entry. Returns the wrong ones.
pub(super) fn verify_within(
    o: &mut Opened,
    spans: &[Span],
    checked: &mut HashSet<usize>,
) -> Vec<usize> {
    let cover = Cover::new(spans.iter().copied());
    let todo: Vec<usize> = o
        .entries
        .iter()
        .filter(|(i, s)| !checked.contains(i) && cover.contains(s))
        .map(|&(i, _)| i)
        .collect();
    let mut bad = Vec::new();
    for i in todo {
        if entry_ok(&mut o.archive, i, o.dir.sha256.get(&i)) {
            checked.insert(i);
        } else {
            bad.push(i);
        }
    }
    bad
}

/// The entries taken from installed files: every deployed entry that no fetched range covers.
pub(super) fn reusable(rec: &Record, o: &Opened) -> HashMap<usize, Reuse> {
    let fetched = Cover::new(rec.spans.iter().map(|p| p.span()));
    let mut first_dst = HashMap::new();
    for f in &o.dir.files {
        first_dst.entry(f.entry).or_insert(&f.dst);
    }
    let mut out = HashMap::new();
    for &(i, s) in &o.entries {
        if fetched.contains(&s) {
            continue;
        }
        if let (Some(dst), Some(sum)) = (first_dst.get(&i), o.dir.sha256.get(&i)) {
            out.insert(
                i,
                Reuse {
                    dst: (*dst).clone(),
                    sha256: sum.clone(),
                },
            );
        }
    }
    out
}

/// The ranges that fetch the entries `indices` (again), coalesced.
pub(super) fn pending_for(o: &Opened, indices: &[usize]) -> Vec<Pending> {
    let wanted: HashSet<usize> = indices.iter().copied().collect();
    let spans = o
        .entries
        .iter()
        .filter(|(i, _)| wanted.contains(i))
        .map(|&(_, s)| s)
        .collect();
    plan::coalesce(spans, plan::COALESCE_GAP)
        .into_iter()
        .map(|s| Pending {
            start: s.start,
            end: s.end,
            done: 0,
        })
        .collect()
}

pub(super) fn entry_name(archive: &zip::ZipArchive<Window>, i: usize) -> String {
    archive
        .by_index_data(i)
        .map(|e| String::from_utf8_lossy(e.name_raw()).into_owned())
        .unwrap_or_else(|_| format!("entry {i}"))
}

/// Read entry `i` through (CRC32 checked by the reader) and compare its SHA-256 with `want`.
pub(super) fn entry_ok(
    archive: &mut zip::ZipArchive<Window>,
    i: usize,
    want: Option<&Checksum>,
) -> bool {
    use std::io::Read;
    let Ok(mut e) = archive.by_index(i) else {
        return false;
    };
    if e.is_dir() {
        return true;
    }
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match e.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    want.is_none_or(|w| &h.finalize() == w)
}
