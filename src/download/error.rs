//! The download's errors as values with their sources, and the one place where they get
//! their contract code (`From<DownloadError> for OtaError`).
//!
//! Every text here that names the package URL names it through [`crate::net::redact_url`]
//! (presigned URLs carry credentials in their query string or user info), and network errors
//! are stored without the URL reqwest puts in their message.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{self, ErrorCode, OtaError};

/// Why one attempt ended before the file was complete.
#[derive(Debug, thiserror::Error)]
pub enum AttemptFailure {
    #[error("network error")]
    Network(#[source] reqwest::Error),
    #[error("the server answered {0}")]
    Status(String),
    #[error("the server cannot serve the range: {0}")]
    BadRange(String),
    #[error("connection closed at byte {at} of {size}")]
    Closed { at: u64, size: u64 },
    #[error("stalled: {received} bytes received in {}s", over.as_secs())]
    Stalled { received: u64, over: Duration },
    #[error("no response within {}s", .0.as_secs())]
    NoResponse(Duration),
    #[error("shutting down")]
    ShuttingDown,
}

impl AttemptFailure {
    /// A network error, without the URL reqwest keeps in it (it would print the credentials of
    /// a presigned URL).
    pub fn network(e: reqwest::Error) -> AttemptFailure {
        AttemptFailure::Network(e.without_url())
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The retry budget is spent (docs/API.md 8.1). `url` is redacted.
    #[error("{url}: gave up after {attempts} attempts without progress")]
    RetriesExhausted {
        url: String,
        attempts: usize,
        #[source]
        last: AttemptFailure,
    },
    /// The server says the file is not the announced package. `url` is redacted.
    #[error("{url}: {reason}")]
    WrongFile { url: String, reason: String },
    /// The server sent more bytes than the package has. `url` is redacted.
    #[error("{url}: server sent more than package_size {size} bytes")]
    TooLong { url: String, size: u64 },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `file://` source failed: gone, shorter or longer than `package_size`, a read error
    /// (a stick pulled mid-copy). Never retried, and the partial copy is not kept.
    #[error("{url}: {reason}")]
    SourceLost {
        url: String,
        reason: super::file::SourceError,
    },
    /// The download's own runtime or threads could not be made (`what`: `runtime`,
    /// `threads`).
    #[error("cannot set up the download: {what}: {io}")]
    Setup {
        what: &'static str,
        io: std::io::Error,
    },
    #[error("cannot set up the download")]
    Client(#[from] crate::net::NetError),
    #[error("the download's write thread crashed")]
    WriterCrashed,
}

impl DownloadError {
    /// Whether the partial file is worth keeping for a later resume: after a network failure
    /// yes; after anything else (a full disk, a file source that failed: docs/API.md 9.2)
    /// nothing half-copied is kept.
    pub fn keeps_partial(&self) -> bool {
        matches!(
            self,
            DownloadError::RetriesExhausted { .. }
                | DownloadError::WrongFile { .. }
                | DownloadError::TooLong { .. }
        )
    }
}

/// The error's message followed by those of its sources: `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

impl From<DownloadError> for OtaError {
    fn from(e: DownloadError) -> OtaError {
        match &e {
            DownloadError::RetriesExhausted { .. }
            | DownloadError::WrongFile { .. }
            | DownloadError::TooLong { .. }
            | DownloadError::SourceLost { .. } => error::download_failed(chain(&e)),
            // ENOSPC / EDQUOT while writing the package: DISK_FULL (the partial is removed).
            DownloadError::Write { path, source } => error::from_io(
                ErrorCode::InternalError,
                format!("cannot write {}", path.display()),
                source,
            ),
            DownloadError::Read { .. }
            | DownloadError::Setup { .. }
            | DownloadError::Client(_)
            | DownloadError::WriterCrashed => error::internal(chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_3_codes_of_download_errors() {
        let exhausted = DownloadError::RetriesExhausted {
            url: "https://h/p.zip".into(),
            attempts: 4,
            last: AttemptFailure::Stalled {
                received: 12,
                over: Duration::from_secs(60),
            },
        };
        let e = OtaError::from(exhausted);
        assert_eq!(e.code, ErrorCode::DownloadFailed);
        assert_eq!(
            e.detail,
            "https://h/p.zip: gave up after 4 attempts without progress: stalled: 12 bytes \
             received in 60s"
        );
        let wrong = DownloadError::WrongFile {
            url: "https://h/p.zip".into(),
            reason: "server sends 5 bytes, expected package_size 6".into(),
        };
        assert_eq!(OtaError::from(wrong).code, ErrorCode::DownloadFailed);
        let full = DownloadError::Write {
            path: "/w/tmp/p.zip".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let e = OtaError::from(full);
        assert_eq!(e.code, ErrorCode::DiskFull);
        assert!(e.detail.starts_with("cannot write /w/tmp/p.zip: "), "{e}");
        let denied = DownloadError::Write {
            path: "/w/tmp/p.zip".into(),
            source: std::io::Error::from_raw_os_error(13),
        };
        assert_eq!(OtaError::from(denied).code, ErrorCode::InternalError);
        let read = DownloadError::Read {
            path: "/w/tmp/p.zip".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        assert_eq!(OtaError::from(read).code, ErrorCode::InternalError);
        assert_eq!(
            OtaError::from(DownloadError::WriterCrashed).code,
            ErrorCode::InternalError
        );
        let setup = OtaError::from(DownloadError::Setup {
            what: "threads",
            io: std::io::Error::from_raw_os_error(11),
        });
        assert_eq!(setup.code, ErrorCode::InternalError);
        assert!(
            setup
                .detail
                .starts_with("cannot set up the download: threads: "),
            "{setup}"
        );
        let client = DownloadError::from(crate::net::NetError::CaFileMissing("/ca.pem".into()));
        assert_eq!(
            OtaError::from(client).detail,
            "cannot set up the download: ca_file /ca.pem: no such file"
        );
    }
}
