//! The network side of a delta download (docs/API.md 9.5): one `Range: bytes=a-b` request per
//! span, `If-Range` once the package's validator is known, the body written at its offset in
//! the sparse part file. The same bounds as a full download (docs/API.md 8.1): the stall
//! window per attempt, the retry budget over the caller's loop, the bandwidth cap.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use reqwest::header;

use super::plan::Span;
use crate::download::response::parse_content_range;
use crate::download::{AttemptFailure, StallWindow};
use crate::lifecycle::Validator;
use crate::shutdown::Shutdown;

/// How one ranged request ended.
pub(super) enum Ranged {
    /// Every byte of the span asked for is written.
    Done,
    /// Retry later (counts against the budget).
    Failed(AttemptFailure),
    /// The server cannot serve this delta (ignores `Range`, the package changed on it, or it
    /// lies in `Content-Range`): fetch the package whole.
    Whole(String),
}

pub(super) struct Fetcher<'a> {
    pub client: reqwest::Client,
    pub url: &'a str,
    pub size: u64,
    pub validator: Validator,
    pub part: &'a File,
    pub max_bytes_per_s: u64,
    pub shutdown: &'a Shutdown,
    /// Bytes received by this run, for the bandwidth cap.
    pub received: u64,
    pub started: Instant,
}

const STALL_TICK: Duration = Duration::from_secs(1);

impl Fetcher<'_> {
    /// Fetch `[from, span.end)`, calling `written(offset)` after each chunk is on disk (not yet
    /// fsynced) with the offset reached.
    pub async fn fetch(
        &mut self,
        from: u64,
        span: Span,
        written: &mut dyn FnMut(u64) -> std::io::Result<()>,
    ) -> std::io::Result<Ranged> {
        let last = span.end - 1;
        let mut req = self
            .client
            .get(self.url)
            .header(header::RANGE, format!("bytes={from}-{last}"));
        if let Some(v) = self.validator.if_range() {
            req = req.header(header::IF_RANGE, v);
        }
        let started = Instant::now();
        let resp = tokio::select! {
            r = tokio::time::timeout(crate::download::budget::STALL_WINDOW, req.send()) => r,
            _ = self.shutdown.wait() => return Ok(Ranged::Failed(AttemptFailure::ShuttingDown)),
        };
        let mut resp = match resp {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Ok(Ranged::Failed(AttemptFailure::network(e))),
            Err(_) => {
                return Ok(Ranged::Failed(AttemptFailure::NoResponse(
                    crate::download::budget::STALL_WINDOW,
                )))
            }
        };
        let text = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match resp.status().as_u16() {
            206 => {}
            200 => {
                return Ok(Ranged::Whole(
                    "the server answered a Range request with the whole file (no Range \
                     support, or the package changed on the server)"
                        .into(),
                ))
            }
            s => return Ok(Ranged::Failed(AttemptFailure::Status(format!("HTTP {s}")))),
        }
        let cr = text(header::CONTENT_RANGE);
        let ok = cr
            .as_deref()
            .and_then(parse_content_range)
            .is_some_and(|c| c.start == from && c.end == last && c.total == Some(self.size));
        if !ok {
            return Ok(Ranged::Whole(format!(
                "asked for bytes {from}-{last} of {} and got Content-Range {:?}",
                self.size,
                cr.unwrap_or_default()
            )));
        }
        let validator = Validator {
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
        };
        if self.validator.if_range().is_none() {
            self.validator = validator;
        } else if validator.if_range().is_some()
            && validator.if_range() != self.validator.if_range()
        {
            return Ok(Ranged::Whole(
                "the package's ETag/Last-Modified changed on the server".into(),
            ));
        }
        let mut offset = from;
        let mut stall = StallWindow::new(started);
        let tick = tokio::time::sleep(STALL_TICK);
        tokio::pin!(tick);
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = &mut tick => {
                    let now = Instant::now();
                    if let Err(s) = stall.tick(now) {
                        return Ok(Ranged::Failed(AttemptFailure::Stalled {
                            received: s.received,
                            over: s.over,
                        }));
                    }
                    tick.as_mut().reset((now + STALL_TICK).into());
                    continue;
                }
                _ = self.shutdown.wait() => {
                    return Ok(Ranged::Failed(AttemptFailure::ShuttingDown));
                }
            };
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Ok(Ranged::Failed(AttemptFailure::network(e))),
            };
            let n = chunk.len() as u64;
            if offset + n > span.end {
                return Ok(Ranged::Whole(format!(
                    "the server sent more than bytes {from}-{last}"
                )));
            }
            stall.add(n);
            self.part.write_all_at(&chunk, offset)?;
            offset += n;
            self.received += n;
            written(offset)?;
            if self.max_bytes_per_s > 0 {
                let due =
                    Duration::from_secs_f64(self.received as f64 / self.max_bytes_per_s as f64);
                let spent = self.started.elapsed();
                if due > spent {
                    tokio::select! {
                        _ = tokio::time::sleep(due - spent) => {}
                        _ = self.shutdown.wait() => {}
                    }
                }
            }
        }
        if offset == span.end {
            Ok(Ranged::Done)
        } else {
            Ok(Ranged::Failed(AttemptFailure::Closed {
                at: offset,
                size: span.end,
            }))
        }
    }
}
