//! Streaming, resumable download, hashed on the way (docs/API.md sections 1, 3, 6 and 8.1).
//!
//! The downloader takes its hasher as a parameter and hands back the [`Checksum`] of what it
//! wrote; whether that is the announced one is the caller's policy (the updater compares it
//! with `package_md5`).
//!
//! Runs on the job thread with a runtime of its own, so the API's runtime never waits on disk
//! or hashing. Three threads share the work so that none waits for another's slow part: the
//! job thread receives (TLS, HTTP: [`fetch`]) and gathers the body into 256 KiB buffers, a
//! write thread writes and hashes each buffer (a queue of two between them, the buffers reused
//! from a pool of four), a checkpoint thread fsyncs and persists the byte count ([`disk`]).
//! So the CPU a download costs is about that of `curl` + `md5sum` at any link speed
//! (docs/API.md 9.7).
//!
//! - What a response means (resume, start over, complete, retry, fail) is decided from its head
//!   alone by [`response::interpret`]; a partial file is resumed with `Range: bytes=N-` and
//!   `If-Range: <ETag or Last-Modified>`, and without a validator there is no resume (it could
//!   splice two different files).
//! - Bounds ([`budget`]): 4 attempts (the first, then retries after 1 s, 2 s, 4 s); only an
//!   attempt that raised the best durable position by at least 1 MiB resets the count, so a
//!   server that keeps cutting, ignores `Range` or lies in `Content-Range` fails in seconds.
//!   An attempt that receives under 64 KiB in any 60 s window is abandoned as stalled (and
//!   reqwest's read timeout stays).
//! - Durability: `bytes_downloaded` is persisted only after `fdatasync` of the file, at every
//!   5 % step and at least every 2 s, so a resume after a power cut never trusts unwritten
//!   bytes.
//! - A `file://` package (docs/API.md 9.2) goes through the same write thread, checkpoints
//!   and hash, read from the file by [`file`] instead of [`fetch`].
//! - Errors are [`DownloadError`] values with their sources; `From<DownloadError> for OtaError`
//!   gives them their contract code. URLs in them are redacted ([`crate::net::redact_url`]).

pub mod budget;
mod disk;
mod error;
mod fetch;
pub mod file;
pub(crate) mod pace;
pub mod response;

use std::path::Path;
use std::sync::Arc;

pub use budget::{RetryBudget, StallWindow, BACKOFF};
pub use disk::{hash_file, hash_prefix};
pub use error::{chain, AttemptFailure, DownloadError};

use crate::checksum::{Checksum, Hasher};
use crate::lifecycle::{PackageSpec, Validator};
use crate::shutdown::Shutdown;

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
    /// A fresh hasher of the algorithm to compute over the whole file.
    pub hasher: Hasher,
    pub max_bytes_per_s: u64,
    pub tls: Arc<rustls::ClientConfig>,
    pub allow_http: bool,
    pub shutdown: &'a Shutdown,
    /// The `Authorization` header for a fleet server's own artifact link (docs/API.md 9.1);
    /// `None` for any other URL. Redirects to another host do not carry it.
    pub authorization: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// All bytes are on disk and fsynced; `checksum` is theirs, by the hasher given.
    /// `unvalidated_prefix`: bytes kept from before were resumed without a validator (no ETag or
    /// Last-Modified known), so the file may splice two versions: if `checksum` is not the one
    /// expected, the caller must download the file whole rather than call it corrupt.
    Complete {
        checksum: Checksum,
        unvalidated_prefix: bool,
    },
    /// SIGTERM: stopped after the current chunk, bytes checkpointed.
    Interrupted { bytes: u64 },
}

/// The runtime a download job (whole or delta) runs its transfers on, on its own thread.
pub(crate) fn job_runtime() -> Result<tokio::runtime::Runtime, DownloadError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|io| DownloadError::Setup {
            what: "runtime",
            io,
        })
}

/// Download the package. Blocking; call it on the job thread.
pub fn download(
    p: DownloadParams<'_>,
    sink: &dyn DownloadSink,
) -> Result<DownloadOutcome, DownloadError> {
    // docs/API.md 9.2: a `file://` package is copied, not fetched.
    let source = if file::is_file_url(&p.spec.package_url) {
        Some(
            file::file_url_path(&p.spec.package_url).map_err(|e| DownloadError::SourceLost {
                url: p.spec.package_url.clone(),
                reason: e.into(),
            })?,
        )
    } else {
        None
    };
    let rt = job_runtime()?;
    let Some((file, hasher, keep)) = disk::prepare_file(&p, p.hasher.clone())? else {
        return Ok(DownloadOutcome::Interrupted {
            bytes: p.resume_from,
        });
    };
    let unvalidated_prefix = keep > 0 && p.validator.if_range().is_none();
    let synced = file.try_clone().map_err(|e| disk::write_err(p.path, e))?;
    let ck = disk::Checkpointer::new(synced, sink);
    let side = disk::WriteSide::new(file, hasher, keep, &ck);
    let (w, queue) = disk::write_channels(&side);
    let path = p.path;
    let (result, joined) = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn_scoped(scope, || ck.run())
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("write".into())
                    .spawn_scoped(scope, || disk::write_loop(queue, &side))
            });
        let writer = match spawned {
            Ok(w) => w,
            Err(e) => {
                ck.stop();
                let setup = DownloadError::Setup {
                    what: "threads",
                    io: e,
                };
                return (Err(setup), Ok(()));
            }
        };
        let result = match &source {
            Some(src) => {
                let r = file::run(&p, src, sink, &ck, &w, keep);
                drop(w);
                r
            }
            None => rt.block_on(fetch::run(p, sink, &ck, w, keep)),
        };
        // `run` has dropped its sender: the writer drains the queue and ends.
        let joined = writer.join();
        ck.stop();
        (result, joined)
    });
    let (hasher, error) = side.finish();
    match (result, joined) {
        (Ok(fetch::Finished::Complete), Ok(())) => match error {
            None => Ok(DownloadOutcome::Complete {
                checksum: hasher.finalize(),
                unvalidated_prefix,
            }),
            Some(e) => Err(disk::write_err(path, e)),
        },
        (Ok(fetch::Finished::Interrupted(bytes)), _) => Ok(DownloadOutcome::Interrupted { bytes }),
        (Err(e), _) => Err(e),
        (Ok(_), Err(_)) => Err(DownloadError::WriterCrashed),
    }
}

/// The lowest steady rate (bytes per second) that never trips the stall rule: a speed cap
/// below it makes every attempt stall.
pub fn min_steady_rate() -> u64 {
    budget::STALL_MIN_BYTES.div_ceil(budget::STALL_WINDOW.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_steady_rate_passes_the_stall_rule_and_one_less_does_not() {
        let window = budget::STALL_WINDOW.as_secs();
        assert!(min_steady_rate() * window >= budget::STALL_MIN_BYTES);
        assert!((min_steady_rate() - 1) * window < budget::STALL_MIN_BYTES);
    }
}
