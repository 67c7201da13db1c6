//! Checks of a delta download's entries (docs/API.md 9.5) and which ones the installed files
//! supply.

use std::collections::HashMap;

use super::assemble::Reuse;
use super::plan::Span;
use super::record::Record;
use super::Opened;
use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::swu::Window;

/// Check the entries lying within `spans` not yet in `checked`: CRC32 by the reader, the
/// signed SHA-256 when the manifest names the entry. Returns the wrong ones.
pub(super) fn verify_within(
    o: &mut Opened,
    spans: &[Span],
    checked: &mut Vec<usize>,
) -> Vec<usize> {
    let todo: Vec<usize> = o
        .entries
        .iter()
        .filter(|(i, s)| !checked.contains(i) && spans.iter().any(|sp| sp.contains(s)))
        .map(|&(i, _)| i)
        .collect();
    let mut bad = Vec::new();
    for i in todo {
        checked.push(i);
        if !entry_ok(&mut o.archive, i, o.dir.sha256.get(&i)) {
            checked.retain(|&c| c != i);
            bad.push(i);
        }
    }
    bad
}

/// The entries taken from installed files: every deployed entry that no fetched range covers.
pub(super) fn reusable(rec: &Record, o: &Opened) -> HashMap<usize, Reuse> {
    let mut out = HashMap::new();
    for &(i, s) in &o.entries {
        if rec.spans.iter().any(|p| p.span().contains(&s)) {
            continue;
        }
        let file = o.dir.files.iter().find(|f| f.entry == i);
        if let (Some(f), Some(sum)) = (file, o.dir.sha256.get(&i)) {
            out.insert(
                i,
                Reuse {
                    dst: f.dst.clone(),
                    sha256: sum.clone(),
                },
            );
        }
    }
    out
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
