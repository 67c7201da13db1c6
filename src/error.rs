//! Errors as values with codes: one enum whose variants map 1:1 to the contract's codes.

use std::fmt;

/// Every code the updater can put in `error` (as `"<CODE>: <detail>"`) or in an API `msg`.
/// The served OpenAPI document lists them all (see `api::ApiDoc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A request body or field broke a rule (envelope `code` 400).
    ValidationError,
    /// Another download or an installation is running (409).
    OperationInProgress,
    /// `/update` named a version other than the downloaded package's (404).
    PackageNotFound,
    /// `/update` while nothing complete is on disk (409).
    DownloadIncomplete,
    /// `/update` while the package is still being verified (409).
    Md5NotVerified,
    /// The verified package is older than the trust window (410).
    PackageExpired,
    /// HTTP or network failure after retries, or a server that cannot serve the right bytes.
    DownloadFailed,
    /// The package's MD5 differs from the one announced (the file is deleted).
    Md5Mismatch,
    /// Not enough space for the package (the partial download is removed).
    DiskFull,
    /// `manifest.json` is missing, unreadable or breaks a rule.
    InvalidManifest,
    /// The ZIP is corrupt or unsafe (symlink, escaping path, bomb, duplicate entry).
    InvalidPackage,
    /// A process would not die; nothing was deployed and everything was rolled back.
    ProcessKillFailed,
    /// A deployment step failed; every file was restored from its backup.
    DeploymentFailed,
    /// Anything else that went wrong inside the updater (an I/O error on its own files).
    InternalError,
}

impl ErrorCode {
    /// All codes, in a fixed order (documentation, tests).
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::ValidationError,
        ErrorCode::OperationInProgress,
        ErrorCode::PackageNotFound,
        ErrorCode::DownloadIncomplete,
        ErrorCode::Md5NotVerified,
        ErrorCode::PackageExpired,
        ErrorCode::DownloadFailed,
        ErrorCode::Md5Mismatch,
        ErrorCode::DiskFull,
        ErrorCode::InvalidManifest,
        ErrorCode::InvalidPackage,
        ErrorCode::ProcessKillFailed,
        ErrorCode::DeploymentFailed,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::OperationInProgress => "OPERATION_IN_PROGRESS",
            ErrorCode::PackageNotFound => "PACKAGE_NOT_FOUND",
            ErrorCode::DownloadIncomplete => "DOWNLOAD_INCOMPLETE",
            ErrorCode::Md5NotVerified => "MD5_NOT_VERIFIED",
            ErrorCode::PackageExpired => "PACKAGE_EXPIRED",
            ErrorCode::DownloadFailed => "DOWNLOAD_FAILED",
            ErrorCode::Md5Mismatch => "MD5_MISMATCH",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::InvalidManifest => "INVALID_MANIFEST",
            ErrorCode::InvalidPackage => "INVALID_PACKAGE",
            ErrorCode::ProcessKillFailed => "PROCESS_KILL_FAILED",
            ErrorCode::DeploymentFailed => "DEPLOYMENT_FAILED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The envelope `code` an API answer carries for this error.
    pub fn envelope_code(self) -> u16 {
        match self {
            ErrorCode::ValidationError => 400,
            ErrorCode::PackageNotFound => 404,
            ErrorCode::OperationInProgress
            | ErrorCode::DownloadIncomplete
            | ErrorCode::Md5NotVerified => 409,
            ErrorCode::PackageExpired => 410,
            _ => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its contract code and a human detail. Displays as `"<CODE>: <detail>"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct OtaError {
    pub code: ErrorCode,
    pub detail: String,
}

impl OtaError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        OtaError {
            code,
            detail: detail.into(),
        }
    }

    /// Read back a persisted `"<CODE>: <detail>"`; an unknown code becomes INTERNAL_ERROR.
    pub fn parse(s: &str) -> OtaError {
        if let Some((code, detail)) = s.split_once(": ") {
            if let Some(c) = ErrorCode::ALL.iter().find(|c| c.as_str() == code) {
                return OtaError::new(*c, detail);
            }
        }
        internal(s)
    }
}

/// Shorthand constructors, one per code: `err::validation("...")`.
macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {
        $(pub fn $name(detail: impl Into<String>) -> OtaError { OtaError::new(ErrorCode::$code, detail) })*
    };
}

ctor! {
    validation => ValidationError,
    in_progress => OperationInProgress,
    not_found => PackageNotFound,
    incomplete => DownloadIncomplete,
    not_verified => Md5NotVerified,
    expired => PackageExpired,
    download_failed => DownloadFailed,
    md5_mismatch => Md5Mismatch,
    disk_full => DiskFull,
    invalid_manifest => InvalidManifest,
    invalid_package => InvalidPackage,
    kill_failed => ProcessKillFailed,
    deployment_failed => DeploymentFailed,
    internal => InternalError,
}

/// An I/O error as a contract error: `DISK_FULL` when the disk (or quota) is full, else
/// `otherwise`, with `what` saying what was being done. The one place where I/O errors get
/// their code.
pub fn from_io(otherwise: ErrorCode, what: impl fmt::Display, e: &std::io::Error) -> OtaError {
    let code = if is_disk_full(e) {
        ErrorCode::DiskFull
    } else {
        otherwise
    };
    OtaError::new(code, format!("{what}: {e}"))
}

/// True when an I/O error means the disk is full (ENOSPC or EDQUOT).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_code_colon_detail() {
        assert_eq!(md5_mismatch("abc").to_string(), "MD5_MISMATCH: abc");
    }

    #[test]
    fn parse_roundtrips() {
        let e = disk_full("no room: really");
        assert_eq!(OtaError::parse(&e.to_string()), e);
        assert_eq!(OtaError::parse("weird").code, ErrorCode::InternalError);
    }

    #[test]
    fn envelope_codes_follow_contract() {
        assert_eq!(ErrorCode::ValidationError.envelope_code(), 400);
        assert_eq!(ErrorCode::PackageNotFound.envelope_code(), 404);
        assert_eq!(ErrorCode::Md5NotVerified.envelope_code(), 409);
        assert_eq!(ErrorCode::PackageExpired.envelope_code(), 410);
        assert_eq!(ErrorCode::DiskFull.envelope_code(), 500);
    }

    #[test]
    fn io_errors_map_disk_full_first() {
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(
            from_io(ErrorCode::InternalError, "writing x", &full).code,
            ErrorCode::DiskFull
        );
        let denied = std::io::Error::from_raw_os_error(13);
        let e = from_io(ErrorCode::DeploymentFailed, "writing x", &denied);
        assert_eq!(e.code, ErrorCode::DeploymentFailed);
        assert!(e.detail.starts_with("writing x: "), "{e}");
    }

    #[test]
    fn serde_name_equals_as_str() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
