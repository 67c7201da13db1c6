//! The request bodies as typed values (docs/API.md 1, 8.3 and 9.2): each field of `/download` and
//! `/update` is parsed once, here at the API edge, into a value that can only hold what the
//! contract accepts. Inward, nothing checks them again; the whole-package hash travels as a
//! [`Checksum`], never as text.
//!
//! The messages are the contract's (`msg` is `"VALIDATION_ERROR: <message>"`, and clients
//! compare it): [`InvalidRequest`] displays exactly the detail the API answered before these
//! types existed, and the fields are checked in the same order (version, URL, name, size,
//! MD5), so a request with several faults names the same one.

use std::fmt;
use std::path::PathBuf;

use crate::checksum::{Algorithm, Checksum};
use crate::download::file::{self, FileUrlError};
use crate::error::{self, OtaError};
use crate::lifecycle::PackageSpec;

/// Why a request field is refused (the detail of a `VALIDATION_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// Not `^\d+\.\d+\.\d+$`; carries the text as given.
    #[error("version `{0}` must look like 1.2.3")]
    Version(String),
    /// A `file:` URL that names no absolute path of this printer (docs/API.md 9.2).
    #[error("package_url: {0}")]
    FileUrl(#[from] FileUrlError),
    /// `http://` without `allow_http = true`.
    #[error("package_url must be https:// (plain http:// needs allow_http = true)")]
    PlainHttp,
    /// Another scheme; carries the URL redacted ([`crate::net::redact_url`]).
    #[error("package_url `{0}` must be an https:// or file:/// URL")]
    Scheme(String),
    /// `https://` (or `http://`) that does not parse or names no host; redacted.
    #[error("package_url `{0}` is not a valid URL")]
    NotAUrl(String),
    #[error(
        "package_name must be a plain file name (no `/`, `\\`, NUL, not `.` or `..`, at most \
         255 bytes)"
    )]
    PackageName,
    /// A name of the updater's own files in `./tmp/` (docs/API.md 8.3).
    #[error(
        "package_name `{0}` is reserved: the updater uses that name in ./tmp/ for its own files"
    )]
    ReservedName(String),
    #[error("package_size must be at least 1")]
    EmptyPackage,
    #[error("package_size {size} exceeds max_package_size {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("package_md5 must be 32 hex characters")]
    Md5,
}

impl From<InvalidRequest> for OtaError {
    fn from(e: InvalidRequest) -> OtaError {
        error::validation(e.to_string())
    }
}

/// A package version, `x.y.z` (decimal digits only, docs/API.md 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    pub fn parse(text: impl Into<String>) -> Result<Version, InvalidRequest> {
        let text = text.into();
        if crate::package::is_semver(&text) {
            Ok(Version(text))
        } else {
            Err(InvalidRequest::Version(text))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.0
    }
}

/// Where the package comes from: `package_url`, trimmed, and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// `https://`, or `http://` where `allow_http = true`, with a host. `url` is the text as
    /// given (trimmed): `state.json` keeps it, and a resume asks for exactly it.
    Remote { url: String },
    /// `file:///<absolute path>` or `file://localhost/...` (docs/API.md 9.2): the syntax only;
    /// the file itself is looked at by [`PackageSource::check_file`].
    File { url: String, path: PathBuf },
}

impl PackageSource {
    pub fn parse(text: &str, allow_http: bool) -> Result<PackageSource, InvalidRequest> {
        let url = text.trim();
        if file::is_file_url(url) {
            let path = file::file_url_path(url)?;
            return Ok(PackageSource::File {
                url: url.to_string(),
                path,
            });
        }
        let lower = url.to_ascii_lowercase();
        let plain = lower.starts_with("http://");
        if !(lower.starts_with("https://") || (allow_http && plain)) {
            return Err(if plain {
                InvalidRequest::PlainHttp
            } else {
                InvalidRequest::Scheme(crate::net::redact_url(url))
            });
        }
        if !reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some()) {
            return Err(InvalidRequest::NotAUrl(crate::net::redact_url(url)));
        }
        Ok(PackageSource::Remote {
            url: url.to_string(),
        })
    }

    /// The URL as given (trimmed).
    pub fn as_str(&self) -> &str {
        match self {
            PackageSource::Remote { url } | PackageSource::File { url, .. } => url,
        }
    }

    /// docs/API.md 9.2: a `file://` package must be a regular file every user may read, now
    /// (not a directory, FIFO, device, symlink or missing file). Looked at with `lstat` and a
    /// non-blocking open, never read; call it off the API's runtime (a slow medium). Nothing
    /// to check for a remote source.
    pub fn check_file(&self) -> Result<(), file::SourceError> {
        match self {
            PackageSource::Remote { .. } => Ok(()),
            PackageSource::File { path, .. } => file::open_source(path).map(drop),
        }
    }
}

/// `package_name`: the file name in `./tmp/` (docs/API.md 1 and 8.3): a plain name of 1 to
/// 255 bytes, and none of the updater's own names there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageName(String);

impl PackageName {
    pub fn parse(text: impl Into<String>) -> Result<PackageName, InvalidRequest> {
        let text = text.into();
        if !crate::state::valid_package_name(&text) {
            return Err(InvalidRequest::PackageName);
        }
        if crate::workdir::is_own_tmp_name(&text) {
            return Err(InvalidRequest::ReservedName(text));
        }
        Ok(PackageName(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<PackageName> for String {
    fn from(n: PackageName) -> String {
        n.0
    }
}

/// `package_size`: at least 1 byte, at most config `max_package_size`.
pub fn package_size(size: u64, max_package_size: u64) -> Result<u64, InvalidRequest> {
    match size {
        0 => Err(InvalidRequest::EmptyPackage),
        s if s > max_package_size => Err(InvalidRequest::TooLarge {
            size: s,
            max: max_package_size,
        }),
        s => Ok(s),
    }
}

/// `package_md5`: 32 hex characters, either case (docs/API.md 1: normalised to lowercase,
/// which is how a [`Checksum`] displays).
pub fn package_md5(text: &str) -> Result<Checksum, InvalidRequest> {
    Checksum::from_hex(Algorithm::Md5, text).ok_or(InvalidRequest::Md5)
}

/// An accepted `/download`: every field parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub version: Version,
    pub source: PackageSource,
    pub package_name: PackageName,
    pub package_size: u64,
    pub package_md5: Checksum,
}

impl From<Download> for PackageSpec {
    fn from(d: Download) -> PackageSpec {
        PackageSpec {
            version: d.version.into(),
            package_url: d.source.as_str().to_string(),
            package_name: d.package_name.into(),
            package_size: d.package_size,
            package_md5: d.package_md5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD5: &str = "0123456789abcdef0123456789abcdef";

    fn msg(e: InvalidRequest) -> String {
        OtaError::from(e).to_string()
    }

    /// docs/API.md 1: `version` is `^\d+\.\d+\.\d+$`; the message names the text given.
    #[test]
    fn api_1_version_accepts_x_y_z_only() {
        for ok in ["1.2.3", "0.0.0", "10.200.3000"] {
            assert_eq!(Version::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["1.2", "1.2.3-rc1", "v1.2.3", "1.2.3 ", "", "1..3", "١.٢.٣"] {
            assert_eq!(
                msg(Version::parse(bad).unwrap_err()),
                format!("VALIDATION_ERROR: version `{bad}` must look like 1.2.3")
            );
        }
    }

    /// docs/API.md 1 and 9.2: https always, http only with `allow_http`, file:/// always;
    /// refusals never echo a URL's credentials (8.3).
    #[test]
    fn api_1_package_source_schemes_and_messages() {
        let remote = PackageSource::parse("  https://h/p.zip \n", false).unwrap();
        assert_eq!(
            remote,
            PackageSource::Remote {
                url: "https://h/p.zip".into()
            }
        );
        assert_eq!(remote.as_str(), "https://h/p.zip");
        assert!(PackageSource::parse("HTTPS://h/p.zip", false).is_ok());
        assert_eq!(
            PackageSource::parse("http://h/p.zip", true)
                .unwrap()
                .as_str(),
            "http://h/p.zip"
        );
        assert_eq!(
            PackageSource::parse("file:///media/usb/p%20q.zip", false).unwrap(),
            PackageSource::File {
                url: "file:///media/usb/p%20q.zip".into(),
                path: "/media/usb/p q.zip".into()
            }
        );
        let cases = [
            (
                "http://h/p.zip",
                "package_url must be https:// (plain http:// needs allow_http = true)",
            ),
            (
                "ftp://u:s3cret@h/p.zip?sig=abc",
                "package_url `ftp://h/p.zip` must be an https:// or file:/// URL",
            ),
            ("https://", "package_url `https://` is not a valid URL"),
            (
                "https://u:s3cret@?sig=abc",
                "package_url `https://` is not a valid URL",
            ),
            (
                "file://host/p.zip",
                "package_url: a file URL names a file on this printer: host `host` is not \
                 empty or localhost",
            ),
            (
                "file:///p.zip?a",
                "package_url: a file URL takes no query or fragment (escape `?` as %3F, `#` \
                 as %23)",
            ),
            (
                "file://rel",
                "package_url: a file URL must be file:///<absolute path>",
            ),
            (
                "file:///p%zz",
                "package_url: a file URL holds a `%` that is not followed by two hex digits",
            ),
            (
                "file:///p%00",
                "package_url: a file URL may not hold a NUL byte",
            ),
        ];
        for (url, detail) in cases {
            let e = PackageSource::parse(url, false).unwrap_err();
            assert_eq!(msg(e), format!("VALIDATION_ERROR: {detail}"), "{url}");
        }
    }

    /// docs/API.md 1 and 8.3: a plain file name, not one of the updater's own in `./tmp/`.
    #[test]
    fn api_8_3_package_name_plain_and_not_reserved() {
        for ok in ["p.zip", "tope 1.2.3.zip", &"x".repeat(255)] {
            assert_eq!(PackageName::parse(ok).unwrap().as_str(), ok);
        }
        let plain = "VALIDATION_ERROR: package_name must be a plain file name (no `/`, `\\`, \
                     NUL, not `.` or `..`, at most 255 bytes)";
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", &"x".repeat(256)] {
            assert_eq!(msg(PackageName::parse(bad).unwrap_err()), plain, "{bad:?}");
        }
        for own in [
            "state.json",
            "outcome.json",
            "recovery.json",
            "history.jsonl",
            "installed.json",
            "p.zip.tmp",
            "state.json.unusable",
        ] {
            assert_eq!(
                msg(PackageName::parse(own).unwrap_err()),
                format!(
                    "VALIDATION_ERROR: package_name `{own}` is reserved: the updater uses that \
                     name in ./tmp/ for its own files"
                )
            );
        }
    }

    /// docs/API.md 1: 1 <= package_size <= max_package_size.
    #[test]
    fn api_1_package_size_bounds() {
        assert_eq!(package_size(1, 100), Ok(1));
        assert_eq!(package_size(100, 100), Ok(100));
        assert_eq!(
            msg(package_size(0, 100).unwrap_err()),
            "VALIDATION_ERROR: package_size must be at least 1"
        );
        assert_eq!(
            msg(package_size(101, 100).unwrap_err()),
            "VALIDATION_ERROR: package_size 101 exceeds max_package_size 100"
        );
    }

    /// docs/API.md 1: 32 hex characters, uppercase accepted and normalised.
    #[test]
    fn api_1_package_md5_is_a_checksum() {
        let c = package_md5(&MD5.to_uppercase()).unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.to_string(), MD5);
        for bad in [
            &MD5[..31],
            &format!("{MD5}0"),
            &MD5.replace('a', "g"),
            "",
            "0123456789abcdef0123456789abcdeé",
        ] {
            assert_eq!(
                msg(package_md5(bad).unwrap_err()),
                "VALIDATION_ERROR: package_md5 must be 32 hex characters",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_download_becomes_the_lifecycles_spec() {
        let d = Download {
            version: Version::parse("1.2.3").unwrap(),
            source: PackageSource::parse(" https://h/p.zip", false).unwrap(),
            package_name: PackageName::parse("p.zip").unwrap(),
            package_size: 10,
            package_md5: package_md5(MD5).unwrap(),
        };
        let spec = PackageSpec::from(d);
        assert_eq!(spec.version, "1.2.3");
        assert_eq!(spec.package_url, "https://h/p.zip");
        assert_eq!(spec.package_name, "p.zip");
        assert_eq!(spec.package_size, 10);
        assert_eq!(spec.package_md5.to_hex(), MD5);
    }
}
