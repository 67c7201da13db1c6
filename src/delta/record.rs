//! `tmp/delta.json`, the plan and progress of a delta download, and what the rest of the
//! updater asks of it (docs/API.md 9.5).

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::installed;
use super::plan::Span;
use crate::config::Config;
use crate::lifecycle::{PackageSpec, Validator};
use crate::package;
use crate::workdir::WorkDir;

/// One range to fetch and how much of it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) done: u64,
}

impl Pending {
    pub(super) fn span(&self) -> Span {
        Span {
            start: self.start,
            end: self.end,
        }
    }
}

/// The assembled package file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AssembledFile {
    pub(super) sha256: String,
    pub(super) len: u64,
}

/// `tmp/delta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) package_url: String,
    pub(super) package_name: String,
    pub(super) package_md5: String,
    pub(super) package_size: u64,
    pub(super) etag: Option<String>,
    pub(super) last_modified: Option<String>,
    /// Bytes fetched before the plan (end record, central directory, manifest, signature).
    pub(super) head_bytes: u64,
    pub(super) spans: Vec<Pending>,
    /// Entries fetched a second time after a mismatch.
    pub(super) refetched: Vec<usize>,
    pub(super) assembled: Option<AssembledFile>,
}

impl Record {
    pub(super) fn is_for(&self, spec: &PackageSpec) -> bool {
        self.package_url == spec.package_url
            && self.package_name == spec.package_name
            && self.package_md5 == spec.package_md5.to_hex()
            && self.package_size == spec.package_size
    }
    pub(super) fn total(&self) -> u64 {
        self.head_bytes + self.spans.iter().map(|s| s.end - s.start).sum::<u64>()
    }
    pub(super) fn done(&self) -> u64 {
        self.head_bytes + self.spans.iter().map(|s| s.done).sum::<u64>()
    }
    pub(super) fn validator(&self) -> Validator {
        Validator {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        }
    }
}

pub(super) fn load_record(work: &WorkDir) -> Option<Record> {
    work.delta().load(parse_record)
}

/// Why a `tmp/delta.json` that parses as JSON cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "range {index} ({start}..{end}, {done} done) is not inside the package of {size} bytes"
    )]
    Span {
        index: usize,
        start: u64,
        end: u64,
        done: u64,
        size: u64,
    },
    #[error("{head} bytes read before the plan exceed the package of {size} bytes")]
    Head { head: u64, size: u64 },
}

/// `tmp/delta.json` read and checked: every range lies inside the package and has at most
/// its own length done, so the byte counts shown and resumed from can never overflow or go
/// past the package, whatever the file holds.
pub(super) fn parse_record(bytes: &[u8]) -> Result<Record, RecordError> {
    let rec: Record = serde_json::from_slice(bytes)?;
    let size = rec.package_size;
    if rec.head_bytes > size {
        return Err(RecordError::Head {
            head: rec.head_bytes,
            size,
        });
    }
    for (index, s) in rec.spans.iter().enumerate() {
        if s.start > s.end || s.end > size || s.done > s.end - s.start {
            return Err(RecordError::Span {
                index,
                start: s.start,
                end: s.end,
                done: s.done,
                size,
            });
        }
    }
    // Ranges inside the package, each at most its size: the sum of their lengths is at most
    // their count times the size, far from u64's limit for any file a printer can hold, but
    // checked all the same.
    let mut total = rec.head_bytes;
    for s in &rec.spans {
        total = total
            .checked_add(s.end - s.start)
            .ok_or(RecordError::Head {
                head: u64::MAX,
                size,
            })?;
    }
    Ok(rec)
}

/// For the fuzz target of the work dir's own files: the bytes done and to do of a
/// `tmp/delta.json` as the daemon would read it, or why it would be set aside.
pub fn progress_of_record(bytes: &[u8]) -> Result<(u64, u64), RecordError> {
    parse_record(bytes).map(|r| (r.done(), r.total()))
}

/// Remove the delta's record and part file (a finished, abandoned or replaced delta).
pub fn forget(work: &WorkDir) {
    if let Err(e) = work.delta().remove() {
        tracing::warn!("cannot remove {}: {e}", work.delta().path().display());
    }
    let part = work.delta_part();
    if let Err(e) = crate::fsutil::remove_durable(&part) {
        tracing::warn!("cannot remove {}: {e}", part.display());
    }
}

/// A package assembled by a delta download that is no longer the file assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembledError {
    #[error("{} changed since it was assembled: sha256 {found} instead of {expected}", path.display())]
    Changed {
        path: std::path::PathBuf,
        found: crate::checksum::Checksum,
        expected: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// For a package assembled by a delta download: `Some(Ok)` when the file at `path` is still
/// the one assembled (its SHA-256, which stands in for `package_md5`), `Some(Err(why))` when it
/// changed; `None` when the package did not come from a delta (check `package_md5`).
pub fn check_assembled(
    work: &WorkDir,
    spec: &PackageSpec,
    path: &Path,
) -> Option<Result<(), AssembledError>> {
    let rec = load_record(work).filter(|r| r.is_for(spec))?;
    let done = rec.assembled?;
    let found = File::open(path).and_then(|mut f| installed::hash_open(&mut f));
    Some(match found {
        Ok(sum) if sum.to_hex() == done.sha256 => Ok(()),
        Ok(found) => Err(AssembledError::Changed {
            path: path.to_path_buf(),
            found,
            expected: done.sha256,
        }),
        Err(source) => Err(AssembledError::Read {
            path: path.to_path_buf(),
            source,
        }),
    })
}

/// The length start-up compares with `package_size`: an assembled delta package counts as
/// complete while it has the length it was assembled with.
pub fn effective_len(work: &WorkDir, spec: &PackageSpec, len: u64) -> u64 {
    match load_record(work)
        .filter(|r| r.is_for(spec))
        .and_then(|r| r.assembled)
    {
        Some(a) if a.len == len => spec.package_size,
        _ => len,
    }
}

/// After a successful installation: record what the package deployed (docs/API.md 9.5), and
/// drop the delta's files. Never fails the installation: a missing record only means the next
/// download is whole.
pub fn installation_succeeded(work: &WorkDir, pkg: &Path, version: &str, cfg: &Config) {
    forget(work);
    let policy = package::PackagePolicy {
        allowed_roots: Some(&cfg.allowed_roots),
        signatures: cfg.signatures(),
    };
    let deployed: Vec<_> = match package::Package::open(pkg, Some(version), &policy) {
        Ok(p) => p
            .files
            .iter()
            .filter_map(|f| p.entry_sha256(f).map(|s| (f.dst.clone(), s.clone())))
            .collect(),
        Err(e) => {
            tracing::warn!("cannot record the installed files of {version}: {e}");
            Vec::new()
        }
    };
    let file = work.installed_files();
    if let Err(e) = installed::record_installation(&file, version, &deployed) {
        tracing::warn!("cannot write {}: {e}", file.path().display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{Algorithm, Checksum, Hasher};

    /// A record of `s` with one range of 100..300 and nothing assembled.
    fn record_of(s: &PackageSpec, done: u64) -> Record {
        Record {
            package_url: s.package_url.clone(),
            package_name: s.package_name.clone(),
            package_md5: s.package_md5.to_hex(),
            package_size: s.package_size,
            etag: None,
            last_modified: None,
            head_bytes: 10,
            spans: vec![Pending {
                start: 100,
                end: 300,
                done,
            }],
            refetched: Vec::new(),
            assembled: None,
        }
    }

    fn spec(url: &str) -> PackageSpec {
        PackageSpec {
            version: "1.2.3".into(),
            package_url: url.into(),
            package_name: "p.zip".into(),
            package_size: 1000,
            package_md5: Checksum {
                algorithm: Algorithm::Md5,
                digest: vec![7; 16],
            },
        }
    }

    /// docs/API.md 9.5: an assembled package stands for the whole one while it is the file
    /// assembled (length at start-up, sha256 at `/update`), and only for its own package.
    #[test]
    fn an_assembled_package_is_complete_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let work = WorkDir::new(dir.path());
        std::fs::create_dir_all(work.tmp()).unwrap();
        let path = work.package("p.zip");
        std::fs::write(&path, b"assembled").unwrap();
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"assembled");
        let s = spec("https://h/p.zip");
        let rec = Record {
            assembled: Some(AssembledFile {
                sha256: h.finalize().to_hex(),
                len: 9,
            }),
            ..record_of(&s, 200)
        };
        work.delta().save_json(&rec).unwrap();
        assert_eq!(load_record(&work), Some(rec));
        assert_eq!(effective_len(&work, &s, 9), 1000);
        assert_eq!(effective_len(&work, &s, 8), 8);
        assert!(matches!(check_assembled(&work, &s, &path), Some(Ok(()))));
        let other = spec("https://h/other.zip");
        assert!(check_assembled(&work, &other, &path).is_none());
        assert_eq!(effective_len(&work, &other, 9), 9);
        std::fs::write(&path, b"assembleD").unwrap();
        assert!(matches!(check_assembled(&work, &s, &path), Some(Err(_))));
        forget(&work);
        assert_eq!(load_record(&work), None);
    }

    /// docs/API.md 9.5: a `tmp/delta.json` whose ranges lie outside the package, run
    /// backwards or claim more done than their length is set aside, never used to resume.
    #[test]
    fn a_record_with_impossible_ranges_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let work = WorkDir::new(dir.path());
        std::fs::create_dir_all(work.tmp()).unwrap();
        let s = spec("https://h/p.zip");
        let good = record_of(&s, 50);
        work.delta().save_json(&good).unwrap();
        assert_eq!(load_record(&work), Some(good.clone()));
        assert_eq!(
            progress_of_record(&serde_json::to_vec(&good).unwrap()).unwrap(),
            (60, 210)
        );
        let bad = [
            Pending {
                start: 300,
                end: 100,
                done: 0,
            },
            Pending {
                start: 100,
                end: 300,
                done: 201,
            },
            Pending {
                start: 900,
                end: 1001,
                done: 0,
            },
        ];
        for p in bad {
            let rec = Record {
                spans: vec![p],
                ..good.clone()
            };
            work.delta().save_json(&rec).unwrap();
            assert_eq!(load_record(&work), None, "{p:?}");
            assert!(!work.delta().path().exists(), "{p:?} stays in the way");
        }
        let rec = Record {
            head_bytes: 1001,
            ..good
        };
        work.delta().save_json(&rec).unwrap();
        assert_eq!(load_record(&work), None);
    }
}
