//! Streaming, resumable download with the MD5 computed on the way (CONTRACT.md sections 1, 3, 6).
//!
//! Runs on the job thread with a runtime of its own, so the API's runtime never waits on disk
//! or hashing. Three threads share the work so that none waits for another's slow part: the
//! job thread receives (TLS, HTTP), a write thread hashes and writes each chunk (a queue of two
//! chunks between them), a checkpoint thread fsyncs and persists the byte count.
//!
//! Resume rules (the server is not trusted):
//! - a partial file is resumed with `Range: bytes=N-` and `If-Range: <ETag or Last-Modified>`;
//!   without a validator there is no resume (it could splice two different files);
//! - `206` must start exactly at N and announce the package size; `200` means the server sends
//!   the whole file (validator changed, or no Range support): start over at 0;
//!   `416` with `bytes */size` and N == size means the file is complete;
//! - the body may never run past `package_size`; a short body is resumed by the next attempt.
//!
//! Retries: 1 s, 2 s, 4 s; an attempt that made progress resets the count (flaky links).
//!
//! Durability: `bytes_downloaded` is persisted only after `fdatasync` of the file, at every
//! 5 % step and at least every 2 s, so a resume after a power cut never trusts unwritten bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use reqwest::header;
use reqwest::StatusCode;

use crate::error::{self, OtaError};
use crate::lifecycle::{download_percent, report_step, PackageSpec, Validator};
use crate::shutdown::Shutdown;

/// Waits between attempts; after the last one the download fails.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
const CHECKPOINT_MIN_BYTES: u64 = 1 << 20;
/// Read size when hashing an existing file.
const HASH_BUF: usize = 64 * 1024;

/// What the download tells the updater while it runs.
pub trait DownloadSink: Sync {
    /// Bytes on disk so far (called for every chunk: keep it cheap).
    fn progress(&self, bytes: u64);
    /// `bytes` are durable on disk: persist them (and the validator) in the state file.
    fn checkpoint(&self, bytes: u64, validator: &Validator);
}

pub struct DownloadParams<'a> {
    pub spec: &'a PackageSpec,
    pub path: &'a Path,
    /// Bytes of a partial file of this same package to keep (0 = start over).
    pub resume_from: u64,
    pub validator: Validator,
    pub max_bytes_per_s: u64,
    pub tls: Arc<rustls::ClientConfig>,
    pub allow_http: bool,
    pub shutdown: &'a Shutdown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// All bytes are on disk and fsynced; `md5` is their lowercase hex digest.
    Complete { md5: String },
    /// SIGTERM: stopped after the current chunk, bytes checkpointed.
    Interrupted { bytes: u64 },
}

/// Lowercase hex of a digest (digest 0.11 no longer formats with `{:x}`).
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Hash the first `len` bytes of a file, calling `on_progress` with the count hashed.
pub fn hash_prefix(
    file: &mut File,
    len: u64,
    shutdown: Option<&Shutdown>,
    on_progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<Md5>> {
    file.seek(SeekFrom::Start(0))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut done = 0u64;
    let mut last_tick = 0u64;
    while done < len {
        if shutdown.is_some_and(Shutdown::is_set) {
            return Ok(None);
        }
        let want = ((len - done) as usize).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file ends at {done} of {len} bytes"),
            ));
        }
        h.update(&buf[..n]);
        done += n as u64;
        if done - last_tick >= 4 << 20 || done == len {
            on_progress(done);
            last_tick = done;
        }
    }
    Ok(Some(h))
}

/// MD5 of a whole file; `None` when interrupted by shutdown.
pub fn md5_file(
    path: &Path,
    shutdown: Option<&Shutdown>,
    on_progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    Ok(hash_prefix(&mut f, len, shutdown, on_progress)?.map(|h| hex(&h.finalize())))
}

fn file_err(path: &Path, e: std::io::Error) -> OtaError {
    if error::is_disk_full(&e) {
        error::disk_full(format!("no space left while writing {}", path.display()))
    } else {
        error::internal(format!("cannot write {}: {e}", path.display()))
    }
}

/// Download the package. Blocking; call it on the job thread.
pub fn download(
    p: DownloadParams<'_>,
    sink: &dyn DownloadSink,
) -> Result<DownloadOutcome, OtaError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| error::internal(format!("download runtime: {e}")))?;
    let Some((file, hasher, keep)) = prepare_file(&p)? else {
        return Ok(DownloadOutcome::Interrupted {
            bytes: p.resume_from,
        });
    };
    let synced = file.try_clone().map_err(|e| file_err(p.path, e))?;
    let ck = Checkpointer::new(synced, sink);
    let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
    let failed = AtomicBool::new(false);
    let path = p.path;
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn_scoped(scope, || ck.run())
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("write".into())
                    .spawn_scoped(scope, || write_loop(file, hasher, keep, rx, &ck, &failed))
            });
        let writer = match spawned {
            Ok(w) => w,
            Err(e) => {
                ck.stop();
                return Err(error::internal(format!(
                    "cannot start the download threads: {e}"
                )));
            }
        };
        let result = rt.block_on(run(
            p,
            sink,
            &ck,
            Writer {
                tx,
                failed: &failed,
            },
            keep,
        ));
        // `run` has dropped its sender: the writer drains the queue and hands the hash back.
        let joined = writer.join();
        ck.stop();
        match (result, joined) {
            (Ok(Finished::Complete), Ok((hasher, None))) => Ok(DownloadOutcome::Complete {
                md5: hex(&hasher.finalize()),
            }),
            (Ok(Finished::Complete), Ok((_, Some(e)))) => Err(file_err(path, e)),
            (Ok(Finished::Interrupted(bytes)), _) => Ok(DownloadOutcome::Interrupted { bytes }),
            (Err(e), _) => Err(e),
            (Ok(_), Err(_)) => Err(error::internal("the download's write thread crashed")),
        }
    })
}

/// How `run` ended (the digest comes from the write thread).
enum Finished {
    Complete,
    Interrupted(u64),
}

/// Chunks waiting for the write thread: double buffering is enough for the overlap, and a
/// chunk can be a few hundred KiB (the HTTP stack's read buffer), so a longer queue only costs
/// memory (8 chunks measured +2 MiB of peak RSS, no speed). When it is full, reading waits.
const WRITE_QUEUE: usize = 2;

/// What the stream hands to the write thread, in order.
enum WriteMsg {
    Data(axum::body::Bytes),
    /// Truncate to 0 and start a new hash (the server sent the whole file).
    Reset,
    /// Ask for a background checkpoint of everything written so far.
    Checkpoint(Validator),
    /// Answer once everything before it is written (with the first write error, if any).
    Barrier(std::sync::mpsc::SyncSender<std::io::Result<()>>),
}

/// The stream's end of the write thread.
struct Writer<'a> {
    tx: std::sync::mpsc::SyncSender<WriteMsg>,
    failed: &'a AtomicBool,
}

impl Writer<'_> {
    fn send(&self, m: WriteMsg) -> std::io::Result<()> {
        self.tx
            .send(m)
            .map_err(|_| std::io::Error::other("the write thread has stopped"))?;
        if self.failed.load(Ordering::Acquire) {
            self.barrier()?;
        }
        Ok(())
    }

    /// Wait until every chunk sent so far is written; the first write error, if any.
    fn barrier(&self) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(WriteMsg::Barrier(tx))
            .map_err(|_| std::io::Error::other("the write thread has stopped"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the write thread has stopped"))?
    }
}

/// The write thread: MD5 and the file, so hashing one chunk overlaps receiving the next.
/// After a write error it keeps draining the queue and reports the error at every barrier.
fn write_loop(
    mut file: File,
    mut hasher: Md5,
    mut written: u64,
    rx: std::sync::mpsc::Receiver<WriteMsg>,
    ck: &Checkpointer<'_>,
    failed: &AtomicBool,
) -> (Md5, Option<std::io::Error>) {
    let mut error: Option<std::io::Error> = None;
    let fail = |error: &mut Option<std::io::Error>, e: std::io::Error| {
        failed.store(true, Ordering::Release);
        error.get_or_insert(e);
    };
    while let Ok(m) = rx.recv() {
        match m {
            WriteMsg::Data(_) if error.is_some() => {}
            WriteMsg::Data(chunk) => match file.write_all(&chunk) {
                Ok(()) => {
                    hasher.update(&chunk);
                    written += chunk.len() as u64;
                }
                Err(e) => fail(&mut error, e),
            },
            WriteMsg::Reset => {
                // No checkpoint of the old bytes may land after the truncation.
                let r = ck
                    .wait_idle()
                    .and_then(|()| file.set_len(0))
                    .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()));
                match r {
                    Ok(()) => {
                        hasher = Md5::new();
                        written = 0;
                    }
                    Err(e) => fail(&mut error, e),
                }
            }
            WriteMsg::Checkpoint(v) => {
                if error.is_none() {
                    if let Err(e) = ck.request(written, &v) {
                        fail(&mut error, e);
                    }
                }
            }
            WriteMsg::Barrier(reply) => {
                let answer = match &error {
                    // A copy that keeps the OS error number (ENOSPC means DISK_FULL).
                    Some(e) => Err(match e.raw_os_error() {
                        Some(code) => std::io::Error::from_raw_os_error(code),
                        None => std::io::Error::new(e.kind(), e.to_string()),
                    }),
                    None => Ok(()),
                };
                let _ = reply.send(answer);
            }
        }
    }
    (hasher, error)
}

/// Open the download file and keep only the prefix the state file vouches for, hashed.
/// `None` when SIGTERM came while hashing the prefix.
fn prepare_file(p: &DownloadParams<'_>) -> Result<Option<(File, Md5, u64)>, OtaError> {
    let size = p.spec.package_size;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p.path)
        .map_err(|e| file_err(p.path, e))?;
    let on_disk = file.metadata().map_err(|e| file_err(p.path, e))?.len();
    // Keep only what the state file vouches for, and only with a validator to check it against.
    let mut keep = p.resume_from.min(on_disk).min(size);
    if keep > 0 && keep < size && p.validator.if_range().is_none() {
        tracing::info!("no ETag/Last-Modified known for the partial file: downloading from 0");
        keep = 0;
    }
    file.set_len(keep).map_err(|e| file_err(p.path, e))?;
    let hasher = if keep > 0 {
        tracing::info!(
            "resuming {} from byte {keep} of {size}",
            p.spec.package_name
        );
        match hash_prefix(&mut file, keep, Some(p.shutdown), &mut |_| {})
            .map_err(|e| error::internal(format!("cannot read {}: {e}", p.path.display())))?
        {
            Some(h) => h,
            None => return Ok(None),
        }
    } else {
        Md5::new()
    };
    file.seek(SeekFrom::Start(keep))
        .map_err(|e| file_err(p.path, e))?;
    Ok(Some((file, hasher, keep)))
}

/// Durable checkpoints off the download's hot path. `fdatasync` of the file and the state
/// write (through the sink) run on a helper thread while the stream goes on; a newer request
/// replaces one not yet started. A checkpoint only ever claims bytes written before its
/// `fdatasync` began, so the state file never vouches for unwritten data. `sync_now` is the
/// synchronous form (end of download, before a retry, on SIGTERM): it first waits for the
/// helper, so checkpoints reach the state file in order.
struct Checkpointer<'a> {
    file: File,
    sink: &'a dyn DownloadSink,
    state: Mutex<CkState>,
    cv: Condvar,
}

#[derive(Default)]
struct CkState {
    pending: Option<(u64, Validator)>,
    busy: bool,
    stop: bool,
    error: Option<std::io::Error>,
}

impl<'a> Checkpointer<'a> {
    fn new(file: File, sink: &'a dyn DownloadSink) -> Checkpointer<'a> {
        Checkpointer {
            file,
            sink,
            state: Mutex::new(CkState::default()),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask for a checkpoint of `bytes` (all written already); returns at once.
    fn request(&self, bytes: u64, validator: &Validator) -> std::io::Result<()> {
        let mut st = self.lock();
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        st.pending = Some((bytes, validator.clone()));
        self.cv.notify_all();
        Ok(())
    }

    /// Wait until no checkpoint is pending or running.
    fn wait_idle(&self) -> std::io::Result<()> {
        let mut st = self.lock();
        while st.pending.is_some() || st.busy {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A checkpoint of `bytes`, done when this returns.
    fn sync_now(&self, bytes: u64, validator: &Validator) -> std::io::Result<()> {
        self.wait_idle()?;
        self.file.sync_data()?;
        self.sink.checkpoint(bytes, validator);
        Ok(())
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// The helper thread.
    fn run(&self) {
        let mut st = self.lock();
        loop {
            if let Some((bytes, validator)) = st.pending.take() {
                st.busy = true;
                drop(st);
                let r = self.file.sync_data();
                if r.is_ok() {
                    self.sink.checkpoint(bytes, &validator);
                }
                st = self.lock();
                st.busy = false;
                if let Err(e) = r {
                    st.error = Some(e);
                }
                self.cv.notify_all();
            } else if st.stop {
                return;
            } else {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// One attempt's result.
enum Attempt {
    Done,
    /// Retry (the error, and whether this attempt added bytes).
    Retry(String, bool),
}

struct Job<'a> {
    p: DownloadParams<'a>,
    sink: &'a dyn DownloadSink,
    ck: &'a Checkpointer<'a>,
    w: Writer<'a>,
    offset: u64,
    validator: Validator,
    last_ckpt_bytes: u64,
    last_ckpt_at: Instant,
    last_step: u8,
}

async fn run<'a>(
    p: DownloadParams<'a>,
    sink: &'a dyn DownloadSink,
    ck: &'a Checkpointer<'a>,
    w: Writer<'a>,
    keep: u64,
) -> Result<Finished, OtaError> {
    let size = p.spec.package_size;
    let client = crate::net::download_client(&p.tls, p.allow_http).map_err(error::internal)?;
    let validator = p.validator.clone();
    let mut job = Job {
        p,
        sink,
        ck,
        w,
        offset: keep,
        validator,
        last_ckpt_bytes: keep,
        last_ckpt_at: Instant::now(),
        last_step: report_step(download_percent(keep, size)),
    };
    job.sink.progress(keep);

    let mut failures = 0usize;
    loop {
        if job.p.shutdown.is_set() {
            job.checkpoint()?;
            return Ok(Finished::Interrupted(job.offset));
        }
        let result = if job.offset == size {
            Ok(Attempt::Done)
        } else {
            job.attempt(&client).await
        };
        match result? {
            Attempt::Done => break,
            Attempt::Retry(why, progressed) => {
                if job.p.shutdown.is_set() {
                    job.checkpoint()?;
                    return Ok(Finished::Interrupted(job.offset));
                }
                if progressed {
                    failures = 0;
                }
                let Some(wait) = BACKOFF.get(failures).copied() else {
                    job.checkpoint()?;
                    return Err(error::download_failed(format!(
                        "{} after {} attempts: {why}",
                        job.p.spec.package_url,
                        BACKOFF.len() + 1
                    )));
                };
                failures += 1;
                tracing::warn!(
                    "download attempt failed at byte {} ({why}); retrying in {}s",
                    job.offset,
                    wait.as_secs()
                );
                job.checkpoint()?;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = job.p.shutdown.wait() => {}
                }
            }
        }
    }
    job.checkpoint()?;
    Ok(Finished::Complete)
}

impl Job<'_> {
    /// fdatasync, then let the updater persist the byte count; done when this returns.
    fn checkpoint(&mut self) -> Result<(), OtaError> {
        self.w
            .barrier()
            .and_then(|()| self.ck.sync_now(self.offset, &self.validator))
            .map_err(|e| file_err(self.p.path, e))?;
        self.last_ckpt_bytes = self.offset;
        self.last_ckpt_at = Instant::now();
        Ok(())
    }

    /// The same, on the helper thread while the stream goes on.
    fn checkpoint_in_background(&mut self) -> Result<(), OtaError> {
        self.w
            .send(WriteMsg::Checkpoint(self.validator.clone()))
            .map_err(|e| file_err(self.p.path, e))?;
        self.last_ckpt_bytes = self.offset;
        self.last_ckpt_at = Instant::now();
        Ok(())
    }

    /// Drop what is on disk and start from byte 0.
    fn restart_from_zero(&mut self) -> Result<(), OtaError> {
        self.w
            .send(WriteMsg::Reset)
            .map_err(|e| file_err(self.p.path, e))?;
        self.offset = 0;
        self.last_step = 0;
        self.sink.progress(0);
        // The durable count drops to 0 with the file, before any new byte can be claimed.
        self.checkpoint()
    }

    async fn attempt(&mut self, client: &reqwest::Client) -> Result<Attempt, OtaError> {
        let size = self.p.spec.package_size;
        let mut req = client.get(&self.p.spec.package_url);
        let ranged = self.offset > 0;
        if ranged {
            req = req.header(header::RANGE, format!("bytes={}-", self.offset));
            if let Some(v) = self.validator.if_range() {
                req = req.header(header::IF_RANGE, v);
            }
        }
        let resp = tokio::select! {
            r = req.send() => r,
            _ = self.p.shutdown.wait() => return Ok(Attempt::Retry("shutting down".into(), false)),
        };
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(describe(&e), false)),
        };
        let status = resp.status();
        let header_str = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let validator = Validator {
            etag: header_str(header::ETAG),
            last_modified: header_str(header::LAST_MODIFIED),
        };
        match status {
            StatusCode::PARTIAL_CONTENT if ranged => {
                let cr = header_str(header::CONTENT_RANGE).unwrap_or_default();
                match parse_content_range(&cr) {
                    Some((start, _end, Some(total))) if start == self.offset && total == size => {}
                    Some((_, _, Some(total))) if total != size => {
                        return Err(error::download_failed(format!(
                            "server says the file has {total} bytes, expected {size}"
                        )));
                    }
                    _ => {
                        tracing::warn!(
                            "server answered Range bytes={}- with Content-Range `{cr}`: starting over",
                            self.offset
                        );
                        self.restart_from_zero()?;
                        return Ok(Attempt::Retry(format!("bad Content-Range `{cr}`"), false));
                    }
                }
            }
            StatusCode::OK => {
                if let Some(len) = resp.content_length() {
                    if len != size {
                        return Err(error::download_failed(format!(
                            "server sends {len} bytes, expected package_size {size}"
                        )));
                    }
                }
                if ranged {
                    tracing::info!(
                        "server sent the whole file instead of a range (changed or no Range support): starting over"
                    );
                    self.restart_from_zero()?;
                }
                self.validator = validator;
            }
            StatusCode::RANGE_NOT_SATISFIABLE if ranged => {
                let cr = header_str(header::CONTENT_RANGE).unwrap_or_default();
                let total = cr
                    .strip_prefix("bytes */")
                    .and_then(|t| t.trim().parse::<u64>().ok());
                if total == Some(size) && self.offset == size {
                    return Ok(Attempt::Done);
                }
                self.restart_from_zero()?;
                return Ok(Attempt::Retry(
                    format!("416 with Content-Range `{cr}`"),
                    false,
                ));
            }
            s => {
                return Ok(Attempt::Retry(format!("HTTP {s}"), false));
            }
        }

        let start_offset = self.offset;
        let started = Instant::now();
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = self.p.shutdown.wait() => return Ok(Attempt::Retry("shutting down".into(), self.offset > start_offset)),
            };
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Ok(Attempt::Retry(describe(&e), self.offset > start_offset)),
            };
            if self.offset + chunk.len() as u64 > size {
                return Err(error::download_failed(format!(
                    "server sent more than package_size {size} bytes"
                )));
            }
            let n = chunk.len() as u64;
            self.w
                .send(WriteMsg::Data(chunk))
                .map_err(|e| file_err(self.p.path, e))?;
            self.offset += n;
            self.sink.progress(self.offset);
            let step = report_step(download_percent(self.offset, size));
            if step != self.last_step
                || (self.offset.saturating_sub(self.last_ckpt_bytes) >= CHECKPOINT_MIN_BYTES
                    && self.last_ckpt_at.elapsed() >= CHECKPOINT_EVERY)
            {
                self.last_step = step;
                self.checkpoint_in_background()?;
            }
            if self.p.max_bytes_per_s > 0 {
                let due = Duration::from_secs_f64(
                    (self.offset - start_offset) as f64 / self.p.max_bytes_per_s as f64,
                );
                let spent = started.elapsed();
                if due > spent {
                    tokio::select! {
                        _ = tokio::time::sleep(due - spent) => {}
                        _ = self.p.shutdown.wait() => {}
                    }
                }
            }
        }
        if self.offset == size {
            Ok(Attempt::Done)
        } else {
            Ok(Attempt::Retry(
                format!("connection closed at byte {} of {size}", self.offset),
                self.offset > start_offset,
            ))
        }
    }
}

/// A network error with its causes (reqwest's top-level message alone says little).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// `bytes a-b/total` (total may be `*`).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            Some((100, 999, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        assert_eq!(parse_content_range("bytes 9-1/10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }

    #[test]
    fn md5_of_file_streams() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let mut seen = 0;
        let got = md5_file(&p, None, &mut |n| seen = n).unwrap().unwrap();
        assert_eq!(got, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(seen, 11);
    }
}
