//! What can be wrong with a SWU envelope (docs/API.md 9.3). Every variant becomes
//! `INVALID_PACKAGE` with its Display as the detail, except the updater's own I/O.

use crate::error::{ErrorCode, OtaError};

/// A SWU envelope that cannot be read, written or trusted. The Display names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SwuError {
    /// Reading the envelope or the package failed (the file itself, not its content).
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing the envelope failed.
    #[error("cannot write {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a cpio archive: bad magic at offset {offset} (expected 070701 or 070702)")]
    BadMagic { offset: u64 },
    #[error("cpio header at offset {offset}: field {field} is not 8 hexadecimal digits")]
    BadHeader { offset: u64, field: &'static str },
    #[error("cpio header at offset {offset} is cut short by the end of the file")]
    Truncated { offset: u64 },
    #[error("cpio member name at offset {offset} is {len} bytes (limit {limit}, at least 2)")]
    BadNameSize { offset: u64, len: u64, limit: u64 },
    #[error("cpio member name at offset {offset} is not a NUL-terminated UTF-8 name")]
    BadName { offset: u64 },
    #[error(
        "cpio member {name:?} ends at byte {end}, past the end of the file ({file_len} bytes)"
    )]
    MemberPastEnd {
        name: String,
        end: u64,
        file_len: u64,
    },
    #[error("cpio member {name:?} is not a regular file (mode {mode:o})")]
    NotRegular { name: String, mode: u32 },
    #[error(
        "cpio member {name:?}: crc checksum mismatch (header {expected:08x}, data {actual:08x})"
    )]
    ChecksumMismatch {
        name: String,
        expected: u32,
        actual: u32,
    },
    #[error("the archive has more than {limit} members")]
    TooManyMembers { limit: usize },
    #[error("the archive ends without its TRAILER!!! member")]
    NoTrailer,
    #[error("the first member is {found:?}, not sw-description")]
    DescriptionNotFirst { found: String },
    #[error("sw-description is {len} bytes (limit {limit})")]
    DescriptionTooLarge { len: u64, limit: u64 },
    #[error("sw-description line {line}: {msg}")]
    Syntax { line: u32, msg: String },
    #[error("sw-description: {0}")]
    Description(String),
    #[error("sw-description lists no image of type \"tope-package\"")]
    NoImage,
    #[error(
        "sw-description lists {count} images; exactly one of type \"tope-package\" is allowed"
    )]
    MoreThanOneImage { count: usize },
    #[error(
        "sw-description image {filename:?} has type {kind:?}; only \"tope-package\" is installed"
    )]
    ForeignImage { filename: String, kind: String },
    #[error("sw-description lists {what}, which the updater does not run")]
    Unsupported { what: String },
    #[error("image {filename:?} named in sw-description is missing from the archive")]
    MemberMissing { filename: String },
    #[error("image {filename:?} appears more than once in the archive")]
    DuplicateMember { filename: String },
    #[error("image {filename:?}: sha256 mismatch (sw-description {expected}, file {actual})")]
    Sha256Mismatch {
        filename: String,
        expected: String,
        actual: String,
    },
    #[error("package {what} is {len} bytes, over the 4 GiB a cpio member can hold")]
    TooLarge { what: String, len: u64 },
    #[error("package {what} changed while the envelope was written")]
    Changed { what: String },
    #[error("invalid envelope metadata: {0}")]
    Meta(String),
}

impl SwuError {
    pub(crate) fn desc(msg: impl Into<String>) -> SwuError {
        SwuError::Description(msg.into())
    }

    /// The contract detail: `SWU envelope: <what>` for what is wrong with an envelope, the
    /// I/O error as it is for reading or writing one.
    pub fn detail(&self) -> String {
        match self {
            SwuError::Write { .. } | SwuError::Read { .. } => self.to_string(),
            _ => format!("SWU envelope: {self}"),
        }
    }

    /// The failure code: an unreadable or broken envelope is `INVALID_PACKAGE` (docs/API.md
    /// 9.3); failing to write one is the updater's own I/O (`INTERNAL_ERROR`).
    pub fn code(&self) -> ErrorCode {
        match self {
            SwuError::Write { .. } => ErrorCode::InternalError,
            _ => ErrorCode::InvalidPackage,
        }
    }
}

impl From<SwuError> for OtaError {
    fn from(e: SwuError) -> OtaError {
        OtaError::new(e.code(), e.detail())
    }
}
