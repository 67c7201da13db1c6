//! Delta downloads (docs/API.md 9.5): only the ZIP entries that changed cross the network.
//!
//! When the package is signed by a trusted key, the server honours `Range`, and the files of
//! the last successful installation are recorded (`tmp/installed-files.json`, [`installed`]),
//! the end record and central directory of the package are fetched with `Range` requests, then
//! `manifest.json` and `manifest.sig`, and the signature is verified. Every entry a module
//! deploys whose signed SHA-256 is that of the file now at its `dst` is taken from that file;
//! every other entry (changed, missing, directories, anything not deployed) is fetched, the
//! nearby ones by one request ([`plan::coalesce`]). The fetched bytes are written at their
//! offsets into a sparse `tmp/delta.part`, and each fetched entry is checked (CRC32, signed
//! SHA-256) as soon as its range is in and durable: a mismatch is fetched once more, a second
//! one ends the delta. `tmp/delta.json` records the plan and the durable position of each range
//! (written after `fdatasync` of the part file), so a restart goes on where it was.
//!
//! The package file is then written whole by [`assemble`]: an ordinary ZIP with the fetched
//! entries copied raw and the unchanged ones stored from the installed files, their SHA-256
//! checked again as they are copied. Its own SHA-256 replaces `package_md5` (which cannot be
//! checked for a package that did not cross the network whole) at `/update`.
//!
//! Anything else (delta off, no trusted key, unsigned, a server without `Range`, a package that
//! changed on the server, an entry wrong twice) falls back to the full download.

mod assemble;
mod check;
mod fetch;
mod head;
pub mod installed;
pub mod plan;
mod record;

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use assemble::Assembled;
use check::{entry_name, pending_for, reusable, verify_within};
use fetch::{Fetcher, Ranged};
use plan::Span;
pub use record::{
    check_assembled, effective_len, forget, installation_succeeded, progress_of_record,
    AssembledError, RecordError,
};
use record::{load_record, AssembledFile, Pending, Record};

use crate::config::Config;
use crate::download::budget::ATTEMPTS;
use crate::download::pace::CheckpointPace;
use crate::download::{AttemptFailure, DownloadError, DownloadSink, RetryBudget};
use crate::lifecycle::{download_percent, report_step, PackageSpec, Validator};
use crate::net::redact_url;
use crate::package::SignedDirectory;
use crate::shutdown::Shutdown;
use crate::swu::Window;
use crate::workdir::WorkDir;

/// The end of the package read first: the end record and a comment of up to 64 KiB.
const TAIL: u64 = 22 + 65535;

pub struct DeltaParams<'a> {
    pub spec: &'a PackageSpec,
    /// `tmp/<package_name>`.
    pub path: &'a Path,
    pub cfg: &'a Config,
    pub tls: Arc<rustls::ClientConfig>,
    pub shutdown: &'a Shutdown,
    /// Where the state file says the download is (a full download in progress when > 0 and
    /// no delta record is found).
    pub resume_from: u64,
}

/// What the download job does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No delta: the full download runs as asked.
    NotApplicable,
    /// The package file is complete (checked by [`check_assembled`] at `/update`).
    Complete,
    /// SIGTERM: stopped with everything durable; resumes at the next start.
    Interrupted,
    /// Fetch the package whole from byte 0 (why).
    Whole(String),
}

/// Why a delta does not apply to this download; `None`: it does.
fn not_applicable(p: &DeltaParams<'_>) -> Option<&'static str> {
    let cfg = p.cfg;
    if !cfg.delta_downloads {
        Some("delta_downloads = false")
    } else if cfg.trusted_keys.is_empty() {
        Some("no trusted_keys to verify a signed manifest with")
    } else if crate::download::file::is_file_url(&p.spec.package_url) {
        Some("a file:// package is copied, not fetched")
    } else if !cfg.work().installed_files().path().is_file() {
        Some("no record of the installed files")
    } else {
        None
    }
}

/// Run the delta download of `p.spec` if it applies (see the module documentation).
pub fn run(p: &DeltaParams<'_>, sink: &dyn DownloadSink) -> Result<Step, DownloadError> {
    let work = p.cfg.work();
    let record = load_record(&work);
    let mine = record.as_ref().is_some_and(|r| r.is_for(p.spec));
    if record.is_some() && !mine {
        forget(&work);
    }
    if let Some(why) = not_applicable(p) {
        if mine {
            forget(&work);
            return Ok(Step::Whole(format!(
                "delta download no longer applies: {why}"
            )));
        }
        if p.resume_from == 0 {
            tracing::info!("{}: full download ({why})", p.spec.package_name);
        }
        return Ok(Step::NotApplicable);
    }
    if !mine && p.resume_from > 0 {
        return Ok(Step::NotApplicable);
    }
    let rt = crate::download::job_runtime()?;
    let step = rt.block_on(Delta::new(p, sink, &work)?.run(record.filter(|_| mine)))?;
    if let Step::Whole(why) = &step {
        tracing::warn!(
            "{}: delta download abandoned ({why}); downloading the whole package",
            p.spec.package_name
        );
        forget(&work);
    }
    Ok(step)
}

struct Delta<'a> {
    p: &'a DeltaParams<'a>,
    sink: &'a dyn DownloadSink,
    work: &'a WorkDir,
    shown_url: String,
    client: reqwest::Client,
}

/// The opened part file and what its central directory says.
struct Opened {
    part: File,
    archive: zip::ZipArchive<Window>,
    /// Every entry's span, in file order.
    entries: Vec<(usize, Span)>,
    dir: SignedDirectory,
}

/// How fetching the pending ranges ended.
enum Fetched {
    Done,
    Interrupted,
    Whole(String),
}

fn part_err(path: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl<'a> Delta<'a> {
    fn new(
        p: &'a DeltaParams<'a>,
        sink: &'a dyn DownloadSink,
        work: &'a WorkDir,
    ) -> Result<Delta<'a>, DownloadError> {
        Ok(Delta {
            p,
            sink,
            work,
            shown_url: redact_url(&p.spec.package_url),
            client: crate::net::download_client(&p.tls, p.cfg.allow_http)?,
        })
    }

    fn fetcher<'f>(&'f self, part: &'f File, validator: Validator) -> Fetcher<'f> {
        Fetcher {
            client: self.client.clone(),
            url: &self.p.spec.package_url,
            size: self.p.spec.package_size,
            validator,
            part,
            max_bytes_per_s: self.p.cfg.max_download_bytes_per_s,
            shutdown: self.p.shutdown,
            received: 0,
            started: Instant::now(),
        }
    }

    async fn run(self, record: Option<Record>) -> Result<Step, DownloadError> {
        if let Some(r) = record.as_ref().filter(|r| r.assembled.is_some()) {
            if matches!(
                check_assembled(self.work, self.p.spec, self.p.path),
                Some(Ok(()))
            ) {
                self.sink.progress(self.p.spec.package_size);
                return Ok(Step::Complete);
            }
            tracing::warn!(
                "{}: the package assembled by a delta changed on disk: assembling it again",
                r.package_name
            );
        }
        let (mut rec, mut opened) = match record.and_then(|r| self.reopen(r)) {
            Some(found) => found,
            None => match self.head().await? {
                Ok(found) => found,
                Err(step) => return Ok(step),
            },
        };
        rec.assembled = None;
        // Fetch, check, assemble; an installed file changed meanwhile is fetched, then the
        // package is assembled again (each round fetches more, so this ends).
        loop {
            match self.fetch_pending(&mut rec, &mut opened).await? {
                Fetched::Done => {}
                Fetched::Interrupted => return Ok(Step::Interrupted),
                Fetched::Whole(why) => return Ok(Step::Whole(why)),
            }
            let reuse = reusable(&rec, &opened);
            let path = self.p.path;
            match assemble::assemble(&mut opened.archive, &reuse, path) {
                Ok(Assembled::Done { sha256, len }) => {
                    rec.assembled = Some(AssembledFile {
                        sha256: sha256.to_hex(),
                        len,
                    });
                    self.save(&rec)?;
                    let _ = crate::fsutil::remove_durable(&self.work.delta_part());
                    tracing::info!(
                        "{}: delta download complete: {} of {} bytes fetched, {} entries taken \
                         from the installed files; package_md5 is not checked for a package \
                         not downloaded whole: the signature and every entry's signed sha256 \
                         replace it",
                        self.p.spec.package_name,
                        rec.total(),
                        self.p.spec.package_size,
                        reuse.len()
                    );
                    self.sink.progress(self.p.spec.package_size);
                    return Ok(Step::Complete);
                }
                Ok(Assembled::Stale(indices)) => {
                    tracing::warn!(
                        "{}: {} installed file(s) changed since the plan: fetching their entries",
                        self.p.spec.package_name,
                        indices.len()
                    );
                    rec.spans.extend(pending_for(&opened, &indices));
                    self.save(&rec)?;
                }
                Err(e) => return Err(e.into_download_error(path)),
            }
        }
    }

    fn save(&self, rec: &Record) -> Result<(), DownloadError> {
        let f = self.work.delta();
        f.save_json(rec).map_err(|source| DownloadError::Write {
            path: f.path().to_path_buf(),
            source,
        })
    }

    /// Fetch one span whole under the retry budget (the head's small reads).
    async fn fetch_whole(
        &self,
        part: &File,
        validator: &mut Validator,
        span: Span,
    ) -> Result<Result<(), Step>, DownloadError> {
        let mut f = self.fetcher(part, validator.clone());
        let mut budget = RetryBudget::new(0);
        let mut from = span.start;
        loop {
            let mut at = from;
            let r = f
                .fetch(from, span, &mut |o| {
                    at = o;
                    Ok(())
                })
                .await
                .map_err(part_err(&self.work.delta_part()))?;
            from = at;
            let why = match r {
                Ranged::Done => {
                    *validator = f.validator.clone();
                    return Ok(Ok(()));
                }
                Ranged::Whole(why) => return Ok(Err(Step::Whole(why))),
                Ranged::Failed(why) => why,
            };
            if self.p.shutdown.is_set() {
                return Ok(Err(Step::Interrupted));
            }
            let Some(wait) = budget.after_failure(from - span.start) else {
                return Err(self.exhausted(why));
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.p.shutdown.wait() => {}
            }
        }
    }

    fn exhausted(&self, last: AttemptFailure) -> DownloadError {
        DownloadError::RetriesExhausted {
            url: self.shown_url.clone(),
            attempts: ATTEMPTS,
            last,
        }
    }

    fn checkpoint_state(&self, rec: &Record) {
        let size = self.p.spec.package_size;
        let shown = plan::scaled(rec.done(), rec.total(), size).min(size - 1);
        self.sink.progress(shown);
        self.sink.checkpoint(shown, &rec.validator());
    }

    /// fdatasync the part file, then the record, then the state file.
    fn checkpoint(&self, rec: &Record, part: &File) -> Result<(), DownloadError> {
        part.sync_data()
            .map_err(part_err(&self.work.delta_part()))?;
        self.save(rec)?;
        self.checkpoint_state(rec);
        Ok(())
    }

    /// Fetch every pending range, checking each entry as its last byte lands.
    async fn fetch_pending(
        &self,
        rec: &mut Record,
        o: &mut Opened,
    ) -> Result<Fetched, DownloadError> {
        let size = self.p.spec.package_size;
        let mut budget = RetryBudget::new(rec.done());
        let part = o
            .part
            .try_clone()
            .map_err(part_err(&self.work.delta_part()))?;
        let mut f = self.fetcher(&part, rec.validator());
        // Entries checked by this run; after a restart the ranges fetched before it are
        // checked once they are all in.
        let mut checked: HashSet<usize> = HashSet::new();
        let mut bad: Vec<usize> = Vec::new();
        loop {
            let Some(k) = rec.spans.iter().position(|s| s.done < s.end - s.start) else {
                // Every range is in: entries found wrong are fetched once more.
                let all: Vec<Span> = rec.spans.iter().map(Pending::span).collect();
                bad.extend(verify_within(o, &all, &mut checked));
                let bad = std::mem::take(&mut bad);
                if bad.is_empty() {
                    // Durable before the package file is written, so a crash then fetches nothing.
                    self.checkpoint(rec, &o.part)?;
                    tracing::info!(
                        "{}: {} bytes fetched and checked; writing the package file",
                        self.p.spec.package_name,
                        rec.done()
                    );
                    return Ok(Fetched::Done);
                }
                let refetched: HashSet<usize> = rec.refetched.iter().copied().collect();
                if let Some(&i) = bad.iter().find(|i| refetched.contains(i)) {
                    return Ok(Fetched::Whole(format!(
                        "entry {} does not match its signed sha256 after a second fetch",
                        entry_name(&o.archive, i)
                    )));
                }
                for &i in bad.iter().take(10) {
                    let name = entry_name(&o.archive, i);
                    tracing::warn!("{name} does not match its signed sha256: fetching it again");
                }
                rec.refetched.extend(&bad);
                rec.spans.extend(pending_for(o, &bad));
                self.checkpoint(rec, &o.part)?;
                continue;
            };
            let span = rec.spans[k].span();
            let from = span.start + rec.spans[k].done;
            // A checkpoint (fdatasync, record, state) at the pace of a whole download.
            let mut pace = CheckpointPace::new(
                report_step(download_percent(
                    plan::scaled(rec.done(), rec.total(), size),
                    size,
                )),
                from,
                Instant::now(),
            );
            let mut reached = from;
            let mut ck_err = None;
            let result = {
                let rec_ref = &mut *rec;
                let part_ref = &o.part;
                let mut on_written = |at: u64| -> std::io::Result<()> {
                    reached = at;
                    rec_ref.spans[k].done = at - span.start;
                    let shown = plan::scaled(rec_ref.done(), rec_ref.total(), size).min(size - 1);
                    self.sink.progress(shown);
                    let step = report_step(download_percent(shown, size));
                    if pace.due(step, at, Instant::now()) {
                        if let Err(e) = self.checkpoint(rec_ref, part_ref) {
                            ck_err = Some(e);
                            return Err(std::io::Error::other("checkpoint failed"));
                        }
                    }
                    Ok(())
                };
                f.fetch(from, span, &mut on_written).await
            };
            if let Some(e) = ck_err {
                return Err(e);
            }
            let result = result.map_err(part_err(&self.work.delta_part()))?;
            rec.spans[k].done = reached - span.start;
            if rec.etag.is_none() && rec.last_modified.is_none() {
                rec.etag = f.validator.etag.clone();
                rec.last_modified = f.validator.last_modified.clone();
            }
            let why = match result {
                Ranged::Done => {
                    // The entries of this range are checked as soon as it is in.
                    bad.extend(verify_within(o, &[span], &mut checked));
                    continue;
                }
                Ranged::Whole(why) => return Ok(Fetched::Whole(why)),
                Ranged::Failed(why) => why,
            };
            self.checkpoint(rec, &o.part)?;
            if self.p.shutdown.is_set() {
                return Ok(Fetched::Interrupted);
            }
            let Some(wait) = budget.after_failure(rec.done()) else {
                return Err(self.exhausted(why));
            };
            tracing::warn!(
                "delta range {}-{} failed at byte {reached} ({}); retrying in {}s",
                span.start,
                span.end,
                crate::download::chain(&why),
                wait.as_secs()
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.p.shutdown.wait() => {}
            }
        }
    }
}
