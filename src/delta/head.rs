//! The start of a delta download (docs/API.md 9.5): the end record, the central directory, the
//! signed manifest, and the plan of what must cross the network; or the part file of an
//! interrupted one, opened again.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

use super::plan::{self, Span};
use super::record::{Pending, Record};
use super::{installed, part_err, Delta, Opened, Step, TAIL};
use crate::download::DownloadError;
use crate::lifecycle::Validator;
use crate::package::{self, MANIFEST_NAME, SIGNATURE_NAME};
use crate::swu::Window;

/// Why the directory read from the part file cannot drive a delta (the package then comes
/// whole).
#[derive(Debug, thiserror::Error)]
pub(super) enum DirectoryError {
    #[error("its end record: {0}")]
    EndRecord(#[source] crate::package::PackageError),
    #[error("its central directory: {0}")]
    CentralDirectory(#[source] zip::result::ZipError),
    #[error("entry {index}: {source}")]
    Entry {
        index: usize,
        source: zip::result::ZipError,
    },
    #[error("entries share or overlap offsets")]
    Overlapping,
    #[error("the package is not signed by a trusted key")]
    Unsigned,
    #[error("{0}")]
    Package(#[source] crate::package::PackageError),
}

impl Delta<'_> {
    /// The part file of an interrupted delta, if it is still usable.
    pub(super) fn reopen(&self, rec: Record) -> Option<(Record, Opened)> {
        let part = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(self.work.delta_part())
            .ok()?;
        if part.metadata().ok()?.len() != self.p.spec.package_size {
            return None;
        }
        match self.open_directory(part) {
            Ok(Ok(o)) => {
                tracing::info!(
                    "{}: resuming the delta download at {} of {} bytes",
                    rec.package_name,
                    rec.done(),
                    rec.total()
                );
                Some((rec, o))
            }
            _ => None,
        }
    }

    /// Read the central directory and the signed manifest from the part file.
    pub(super) fn open_directory(
        &self,
        part: File,
    ) -> Result<Result<Opened, DirectoryError>, DownloadError> {
        let part_path = self.work.delta_part();
        let err = part_err(&part_path);
        let window = Window::whole(part.try_clone().map_err(&err)?).map_err(&err)?;
        let cd = match package::check_central_directory(&window) {
            Ok(cd) => cd,
            Err(e) => return Ok(Err(DirectoryError::EndRecord(e))),
        };
        let mut archive = match zip::ZipArchive::new(window) {
            Ok(a) => a,
            Err(e) => return Ok(Err(DirectoryError::CentralDirectory(e))),
        };
        let mut starts = Vec::with_capacity(archive.len());
        for i in 0..archive.len() {
            match archive.by_index_data(i) {
                Ok(e) => starts.push((i, e.header_start())),
                Err(source) => return Ok(Err(DirectoryError::Entry { index: i, source })),
            }
        }
        let Some(entries) = plan::entry_spans(&starts, cd.offset) else {
            return Ok(Err(DirectoryError::Overlapping));
        };
        let cfg = self.p.cfg;
        let dir = match package::read_signed_directory(
            &mut archive,
            &self.p.spec.version,
            &cfg.allowed_roots,
            &cfg.trusted_keys,
        ) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Err(DirectoryError::Unsigned)),
            Err(e) => return Ok(Err(DirectoryError::Package(e))),
        };
        Ok(Ok(Opened {
            part,
            archive,
            entries,
            dir,
        }))
    }

    /// A fresh delta: the end record, the central directory, the signed manifest, the plan.
    pub(super) async fn head(&self) -> Result<Result<(Record, Opened), Step>, DownloadError> {
        let spec = self.p.spec;
        let size = spec.package_size;
        let part_path = self.work.delta_part();
        let err = part_err(&part_path);
        let part = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&part_path)
            .map_err(&err)?;
        part.set_len(size).map_err(&err)?;
        let mut validator = Validator::default();
        let tail = Span {
            start: size.saturating_sub(TAIL),
            end: size,
        };
        tracing::info!(
            "{}: delta download: reading the central directory and signed manifest from {}",
            spec.package_name,
            self.shown_url
        );
        if let Err(step) = self.fetch_whole(&part, &mut validator, tail).await? {
            return Ok(Err(step));
        }
        let mut head_bytes = tail.bytes();
        let window = Window::whole(part.try_clone().map_err(&err)?).map_err(&err)?;
        let cd = match package::check_central_directory(&window) {
            Ok(cd) => cd,
            Err(e) => return Ok(Err(Step::Whole(format!("its end record: {e}")))),
        };
        drop(window);
        if cd.offset < tail.start {
            let rest = Span {
                start: cd.offset,
                end: tail.start,
            };
            if let Err(step) = self.fetch_whole(&part, &mut validator, rest).await? {
                return Ok(Err(step));
            }
            head_bytes += rest.bytes();
        }
        // The manifest and its signature, found through the directory.
        let window = Window::whole(part.try_clone().map_err(&err)?).map_err(&err)?;
        let archive = match zip::ZipArchive::new(window) {
            Ok(a) => a,
            Err(e) => return Ok(Err(Step::Whole(format!("its central directory: {e}")))),
        };
        let mut starts = Vec::with_capacity(archive.len());
        for i in 0..archive.len() {
            match archive.by_index_data(i) {
                Ok(e) => starts.push((i, e.header_start())),
                Err(e) => return Ok(Err(Step::Whole(format!("entry {i}: {e}")))),
            }
        }
        let Some(entries) = plan::entry_spans(&starts, cd.offset) else {
            return Ok(Err(Step::Whole("entries share or overlap offsets".into())));
        };
        let signed: Vec<usize> = [MANIFEST_NAME, SIGNATURE_NAME]
            .iter()
            .filter_map(|n| archive.index_for_name(n))
            .collect();
        if signed.len() != 2 {
            return Ok(Err(Step::Whole(
                "the package carries no manifest.sig".into(),
            )));
        }
        // Not again what the directory's reads already brought (a small package).
        let have = plan::Cover::new([Span {
            start: cd.offset.min(tail.start),
            end: size,
        }]);
        let head_spans: Vec<Span> = entries
            .iter()
            .filter(|(i, s)| signed.contains(i) && !have.contains(s))
            .map(|&(_, s)| s)
            .collect();
        for s in plan::coalesce(head_spans, plan::COALESCE_GAP) {
            if let Err(step) = self.fetch_whole(&part, &mut validator, s).await? {
                return Ok(Err(step));
            }
            head_bytes += s.bytes();
        }
        drop(archive);
        let opened = match self.open_directory(part)? {
            Ok(o) => o,
            Err(why) => return Ok(Err(Step::Whole(why.to_string()))),
        };
        // Which entries must cross the network.
        let mut record = installed::load(&self.work.installed_files()).unwrap_or_default();
        let mut by_entry: HashMap<usize, Vec<&package::PlannedFile>> = HashMap::new();
        for f in &opened.dir.files {
            by_entry.entry(f.entry).or_default().push(f);
        }
        let mut fetch = Vec::new();
        let (mut same, mut changed) = (0usize, 0usize);
        for &(index, span) in &opened.entries {
            if signed.contains(&index) {
                continue;
            }
            let unchanged = match (by_entry.get(&index), opened.dir.sha256.get(&index)) {
                (Some(files), Some(want)) => files.iter().all(|f| {
                    matches!(installed::sha256_now(&f.dst, &mut record), Ok(Some(s)) if &s == want)
                }),
                _ => false,
            };
            if unchanged {
                same += 1;
            } else {
                if by_entry.contains_key(&index) {
                    changed += 1;
                }
                fetch.push(span);
            }
        }
        if let Err(e) = self.work.installed_files().save_json(&record) {
            tracing::warn!("cannot update the installed files' hashes: {e}");
        }
        let spans: Vec<Pending> = plan::coalesce(fetch, plan::COALESCE_GAP)
            .into_iter()
            .map(|s| Pending {
                start: s.start,
                end: s.end,
                done: 0,
            })
            .collect();
        let rec = Record {
            package_url: spec.package_url.clone(),
            package_name: spec.package_name.clone(),
            package_md5: spec.package_md5.to_hex(),
            package_size: size,
            etag: validator.etag.clone(),
            last_modified: validator.last_modified.clone(),
            head_bytes,
            spans,
            refetched: Vec::new(),
            assembled: None,
        };
        tracing::info!(
            "{}: delta plan: {changed} changed entries to fetch ({} bytes in {} requests), \
             {same} unchanged taken from the installed files",
            spec.package_name,
            rec.total() - head_bytes,
            rec.spans.len()
        );
        opened.part.sync_data().map_err(&err)?;
        self.save(&rec)?;
        self.checkpoint_state(&rec);
        Ok(Ok((rec, opened)))
    }
}
