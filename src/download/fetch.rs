//! The receive side: the attempts, one HTTP request each, under the retry budget; the body
//! streamed to the write side. Per chunk of the HTTP stack (a TLS record on a slow link) only
//! a copy into the gather buffer and a few integer operations; the write side, progress and
//! checkpoints are served once per gathered buffer ([`GATHER`] bytes, or what arrived within
//! [`GATHER_MAX_AGE`]), by the write thread on a fast link and by this thread on a slow one
//! ([`WRITE_HERE_BELOW`]), so a download costs no more CPU than `curl` + `md5sum` at any link
//! speed (docs/API.md 9.7).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::header;

use super::budget::{RetryBudget, StallWindow, ATTEMPTS, STALL_TICK, STALL_WINDOW};
use super::disk::{write_err, Checkpointer, WriteMsg, Writer, GATHER};
use super::pace::CheckpointPace;
use super::response::{interpret, Position, ResponseHead, Verdict};
use super::{AttemptFailure, DownloadError, DownloadParams, DownloadSink};
use crate::lifecycle::{download_percent, report_step, Validator};
use crate::net::redact_url;

/// Gathered bytes go to the write side at the latest this long after the first of them
/// arrived (checked when a chunk arrives and at every stall tick), so on a slow link progress
/// and checkpoints move as before and nothing waits in memory for long.
const GATHER_MAX_AGE: Duration = Duration::from_millis(100);

/// On a link slower than this (bytes per second, measured over each [`RATE_WINDOW`]), the
/// receiving thread hashes and writes each gathered buffer itself when the write thread is
/// idle: waking another thread for half a millisecond of work costs more than the work
/// (docs/API.md 9.7), and at this rate the work takes at most a few percent of the thread's
/// time. On a faster link (and in the first window) the write thread does it while the next
/// buffer arrives.
const WRITE_HERE_BELOW: u64 = 16 << 20;
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The rate cap (`max_download_bytes_per_s`) sleeps only once the stream is this far ahead of
/// the rate: one timer per 20 ms at most instead of one per chunk. The cap is computed over
/// the whole attempt, so the average rate stays exact.
const RATE_CAP_SLACK: Duration = Duration::from_millis(20);

/// How `run` ended (the digest comes from the write thread).
pub(super) enum Finished {
    Complete,
    Interrupted(u64),
}

/// How one attempt ended.
enum Attempt {
    Done,
    Failed(AttemptFailure),
}

pub(super) struct Job<'a> {
    p: DownloadParams<'a>,
    sink: &'a dyn DownloadSink,
    ck: &'a Checkpointer<'a>,
    w: Writer<'a>,
    /// The package URL without credentials, for logs and errors.
    shown_url: String,
    offset: u64,
    validator: Validator,
    /// When the next background checkpoint is due.
    pace: CheckpointPace,
    /// Received bytes not yet handed to the write side (counted in `offset`).
    gathered: Vec<u8>,
    /// When the first byte of `gathered` arrived.
    gathered_since: Instant,
    /// The start of the current rate window, and `offset` then.
    rate_mark: (Instant, u64),
    /// The last window measured a link slower than [`WRITE_HERE_BELOW`].
    slow_link: bool,
}

pub(super) async fn run<'a>(
    p: DownloadParams<'a>,
    sink: &'a dyn DownloadSink,
    ck: &'a Checkpointer<'a>,
    w: Writer<'a>,
    keep: u64,
) -> Result<Finished, DownloadError> {
    let size = p.spec.package_size;
    let client = crate::net::download_client(&p.tls, p.allow_http)?;
    let validator = p.validator.clone();
    let mut job = Job {
        shown_url: redact_url(&p.spec.package_url),
        p,
        sink,
        ck,
        w,
        offset: keep,
        validator,
        pace: CheckpointPace::new(
            report_step(download_percent(keep, size)),
            keep,
            Instant::now(),
        ),
        gathered: Vec::new(),
        gathered_since: Instant::now(),
        rate_mark: (Instant::now(), keep),
        slow_link: false,
    };
    job.sink.progress(keep);
    tracing::info!(
        "downloading {} from {} (byte {keep} of {size})",
        job.p.spec.package_name,
        job.shown_url
    );

    let mut budget = RetryBudget::new(keep);
    loop {
        if job.p.shutdown.is_set() {
            job.checkpoint()?;
            return Ok(Finished::Interrupted(job.offset));
        }
        let result = if job.offset == size {
            Attempt::Done
        } else {
            job.attempt(&client).await?
        };
        let why = match result {
            Attempt::Done => break,
            Attempt::Failed(why) => why,
        };
        // The position reached becomes durable before it counts for the budget.
        job.checkpoint()?;
        if job.p.shutdown.is_set() {
            return Ok(Finished::Interrupted(job.offset));
        }
        let Some(wait) = budget.after_failure(job.offset) else {
            tracing::warn!(
                "download attempt {ATTEMPTS} without progress failed at byte {} ({}): giving up",
                job.offset,
                super::error::chain(&why)
            );
            return Err(DownloadError::RetriesExhausted {
                url: job.shown_url.clone(),
                attempts: ATTEMPTS,
                last: why,
            });
        };
        tracing::warn!(
            "download attempt {} of {ATTEMPTS} without progress failed at byte {} ({}); \
             retrying in {}s",
            budget.failures(),
            job.offset,
            super::error::chain(&why),
            wait.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = job.p.shutdown.wait() => {}
        }
    }
    job.checkpoint()?;
    Ok(Finished::Complete)
}

impl Job<'_> {
    fn write_err(&self, e: std::io::Error) -> DownloadError {
        write_err(self.p.path, e)
    }

    /// fdatasync, then let the updater persist the byte count; done when this returns.
    fn checkpoint(&mut self) -> Result<(), DownloadError> {
        // Every byte counted in `offset` reaches the write thread before the barrier.
        self.hand_over()?;
        self.w
            .barrier()
            .and_then(|()| self.ck.sync_now(self.offset, &self.validator))
            .map_err(|e| self.write_err(e))?;
        self.pace.made(self.step(), self.offset, Instant::now());
        Ok(())
    }

    /// The 5 % step of the position.
    fn step(&self) -> u8 {
        report_step(download_percent(self.offset, self.p.spec.package_size))
    }

    /// The same, on the helper thread while the stream goes on (asked for by the write thread
    /// after what is queued, or at once when nothing is).
    fn checkpoint_in_background(&mut self) -> Result<(), DownloadError> {
        self.w
            .apply_or_send(WriteMsg::Checkpoint(self.validator.clone()))
            .map_err(|e| self.write_err(e))
    }

    /// Add a received chunk to the gather buffer; each buffer filled goes to the write side.
    /// A chunk as large as a buffer (the HTTP stack hands over up to a few hundred KiB at
    /// full speed) goes as it is, without a copy, after what was gathered before it.
    fn gather(&mut self, chunk: Bytes) -> Result<(), DownloadError> {
        if chunk.len() >= GATHER {
            self.send_gathered()?;
            self.w
                .send(WriteMsg::Data(chunk))
                .map_err(|e| self.write_err(e))?;
            return self.handed_over();
        }
        let mut chunk = &chunk[..];
        while !chunk.is_empty() {
            if self.gathered.capacity() == 0 {
                self.gathered = self.w.take_buffer().map_err(|e| self.write_err(e))?;
            }
            if self.gathered.is_empty() {
                self.gathered_since = Instant::now();
            }
            let room = GATHER.saturating_sub(self.gathered.len()).max(1);
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            self.gathered.extend_from_slice(now);
            chunk = rest;
            if self.gathered.len() >= GATHER {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Hand the gathered bytes to the write thread, then report progress and request a
    /// background checkpoint when one is due.
    fn hand_over(&mut self) -> Result<(), DownloadError> {
        if self.send_gathered()? {
            self.handed_over()?;
        }
        Ok(())
    }

    /// Hand the gathered bytes over; whether there were any. On a slow link
    /// ([`WRITE_HERE_BELOW`]) this thread hashes and writes them itself when the write thread
    /// is idle.
    fn send_gathered(&mut self) -> Result<bool, DownloadError> {
        if self.gathered.is_empty() {
            return Ok(false);
        }
        let now = Instant::now();
        let window = now.saturating_duration_since(self.rate_mark.0);
        if window >= RATE_WINDOW {
            let bytes = self.offset.saturating_sub(self.rate_mark.1);
            self.slow_link = (bytes as f64) < WRITE_HERE_BELOW as f64 * window.as_secs_f64();
            self.rate_mark = (now, self.offset);
        }
        let m = WriteMsg::Gathered(std::mem::take(&mut self.gathered));
        let sent = if self.slow_link {
            self.w.apply_or_send(m)
        } else {
            self.w.send(m)
        };
        sent.map_err(|e| self.write_err(e))?;
        Ok(true)
    }

    /// Bytes went to the write thread: progress, and a background checkpoint when one is due.
    fn handed_over(&mut self) -> Result<(), DownloadError> {
        self.sink.progress(self.offset);
        if self.pace.due(self.step(), self.offset, Instant::now()) {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// Hand the gathered bytes over if the first of them arrived [`GATHER_MAX_AGE`] ago.
    fn hand_over_if_old(&mut self, now: Instant) -> Result<(), DownloadError> {
        if !self.gathered.is_empty()
            && now.saturating_duration_since(self.gathered_since) >= GATHER_MAX_AGE
        {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Drop what is on disk and start from byte 0.
    fn restart_from_zero(&mut self) -> Result<(), DownloadError> {
        // Bytes gathered from the old file are dropped with it.
        self.gathered.clear();
        self.w
            .send(WriteMsg::Reset)
            .map_err(|e| self.write_err(e))?;
        self.offset = 0;
        self.rate_mark = (Instant::now(), 0);
        self.sink.progress(0);
        // The durable count drops to 0 with the file, before any new byte can be claimed.
        self.checkpoint()
    }

    async fn attempt(&mut self, client: &reqwest::Client) -> Result<Attempt, DownloadError> {
        let at = Position {
            offset: self.offset,
            size: self.p.spec.package_size,
        };
        let started = Instant::now();
        let mut req = client.get(&self.p.spec.package_url);
        if let Some(auth) = &self.p.authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        if at.ranged() {
            req = req.header(header::RANGE, format!("bytes={}-", at.offset));
            if let Some(v) = self.validator.if_range() {
                req = req.header(header::IF_RANGE, v);
            }
        }
        // No body byte before the response head: the stall rule bounds the wait for it.
        let resp = tokio::select! {
            r = tokio::time::timeout(STALL_WINDOW, req.send()) => r,
            _ = self.p.shutdown.wait() => return Ok(Attempt::Failed(AttemptFailure::ShuttingDown)),
        };
        let mut resp = match resp {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Ok(Attempt::Failed(AttemptFailure::network(e))),
            Err(_) => return Ok(Attempt::Failed(AttemptFailure::NoResponse(STALL_WINDOW))),
        };
        let header_str = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let head = ResponseHead {
            status: resp.status().as_u16(),
            content_range: header_str(header::CONTENT_RANGE),
            content_length: resp.content_length(),
            validator: Validator {
                etag: header_str(header::ETAG),
                last_modified: header_str(header::LAST_MODIFIED),
            },
        };
        match interpret(&head, at) {
            Verdict::Append => {}
            Verdict::WholeFile {
                drop_partial,
                validator,
            } => {
                if drop_partial {
                    tracing::info!(
                        "server sent the whole file instead of bytes {}- (changed or no Range \
                         support): starting over",
                        at.offset
                    );
                    self.restart_from_zero()?;
                }
                self.validator = validator;
            }
            Verdict::Complete => return Ok(Attempt::Done),
            Verdict::StartOver(why) => {
                tracing::warn!("{why}: starting over from byte 0");
                self.restart_from_zero()?;
                return Ok(Attempt::Failed(AttemptFailure::BadRange(why)));
            }
            Verdict::Retry(why) => return Ok(Attempt::Failed(AttemptFailure::Status(why))),
            Verdict::Fail(reason) => {
                return Err(DownloadError::WrongFile {
                    url: self.shown_url.clone(),
                    reason,
                })
            }
        }
        let ended = self.stream(&mut resp, started).await?;
        // Whatever the attempt's end, the bytes received so far go to disk.
        self.hand_over()?;
        Ok(ended)
    }

    /// Stream the body to the write thread until it ends, stalls or breaks.
    async fn stream(
        &mut self,
        resp: &mut reqwest::Response,
        started: Instant,
    ) -> Result<Attempt, DownloadError> {
        let size = self.p.spec.package_size;
        let start_offset = self.offset;
        let body_started = Instant::now();
        let mut stall = StallWindow::new(started);
        let tick = tokio::time::sleep(STALL_TICK);
        tokio::pin!(tick);
        // One subscription for the whole stream, not one per chunk.
        let shutdown = self.p.shutdown;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = &mut tick => {
                    let now = Instant::now();
                    self.hand_over_if_old(now)?;
                    if let Err(s) = stall.tick(now) {
                        return Ok(Attempt::Failed(AttemptFailure::Stalled {
                            received: s.received,
                            over: s.over,
                        }));
                    }
                    tick.as_mut().reset((now + STALL_TICK).into());
                    continue;
                }
                _ = &mut stop => {
                    return Ok(Attempt::Failed(AttemptFailure::ShuttingDown));
                }
            };
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Ok(Attempt::Failed(AttemptFailure::network(e))),
            };
            let n = chunk.len() as u64;
            if self.offset + n > size {
                return Err(DownloadError::TooLong {
                    url: self.shown_url.clone(),
                    size,
                });
            }
            stall.add(n);
            // `offset` counts the gathered bytes: the position of the stream, of the rate cap
            // and of a retry; `hand_over` happens before anything makes it durable.
            self.offset += n;
            self.gather(chunk)?;
            let now = Instant::now();
            self.hand_over_if_old(now)?;
            if self.p.max_bytes_per_s > 0 {
                let due = Duration::from_secs_f64(
                    (self.offset - start_offset) as f64 / self.p.max_bytes_per_s as f64,
                );
                let spent = now.saturating_duration_since(body_started);
                if due >= spent + RATE_CAP_SLACK {
                    // What is gathered goes to disk before the pause, not after it.
                    self.hand_over()?;
                    tokio::select! {
                        _ = tokio::time::sleep(due - spent) => {}
                        // `stop` is done: it must not be polled again.
                        _ = &mut stop => {
                            return Ok(Attempt::Failed(AttemptFailure::ShuttingDown));
                        }
                    }
                }
            }
        }
        if self.offset == size {
            Ok(Attempt::Done)
        } else {
            Ok(Attempt::Failed(AttemptFailure::Closed {
                at: self.offset,
                size,
            }))
        }
    }
}
