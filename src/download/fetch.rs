//! The receive side: the attempts, one HTTP request each, under the retry budget; the body
//! streamed to the write thread with only a few integer operations per chunk (position,
//! progress, stall counter, checkpoint due?).

use std::time::{Duration, Instant};

use reqwest::header;

use super::budget::{RetryBudget, StallWindow, ATTEMPTS, STALL_TICK, STALL_WINDOW};
use super::disk::{write_err, Checkpointer, WriteMsg, Writer};
use super::response::{interpret, Position, ResponseHead, Verdict};
use super::{AttemptFailure, DownloadError, DownloadParams, DownloadSink};
use crate::lifecycle::{download_percent, report_step, Validator};
use crate::net::redact_url;

/// Between the 5 % steps, a background checkpoint once this long has passed and at least
/// `CHECKPOINT_MIN_BYTES` arrived since the last one.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
const CHECKPOINT_MIN_BYTES: u64 = 1 << 20;

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
    last_ckpt_bytes: u64,
    last_ckpt_at: Instant,
    last_step: u8,
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
        last_ckpt_bytes: keep,
        last_ckpt_at: Instant::now(),
        last_step: report_step(download_percent(keep, size)),
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
        self.w
            .barrier()
            .and_then(|()| self.ck.sync_now(self.offset, &self.validator))
            .map_err(|e| self.write_err(e))?;
        self.last_ckpt_bytes = self.offset;
        self.last_ckpt_at = Instant::now();
        Ok(())
    }

    /// The same, on the helper thread while the stream goes on.
    fn checkpoint_in_background(&mut self) -> Result<(), DownloadError> {
        self.w
            .send(WriteMsg::Checkpoint(self.validator.clone()))
            .map_err(|e| self.write_err(e))?;
        self.last_ckpt_bytes = self.offset;
        self.last_ckpt_at = Instant::now();
        Ok(())
    }

    /// Drop what is on disk and start from byte 0.
    fn restart_from_zero(&mut self) -> Result<(), DownloadError> {
        self.w
            .send(WriteMsg::Reset)
            .map_err(|e| self.write_err(e))?;
        self.offset = 0;
        self.last_step = 0;
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
        self.stream(&mut resp, started).await
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
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = &mut tick => {
                    let now = Instant::now();
                    if let Err(s) = stall.tick(now) {
                        return Ok(Attempt::Failed(AttemptFailure::Stalled {
                            received: s.received,
                            over: s.over,
                        }));
                    }
                    tick.as_mut().reset((now + STALL_TICK).into());
                    continue;
                }
                _ = self.p.shutdown.wait() => {
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
            self.w
                .send(WriteMsg::Data(chunk))
                .map_err(|e| self.write_err(e))?;
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
                let spent = body_started.elapsed();
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
            Ok(Attempt::Failed(AttemptFailure::Closed {
                at: self.offset,
                size,
            }))
        }
    }
}
