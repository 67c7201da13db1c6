//! HTTP clients: TLS trust (bundled roots + the system store + config `ca_file`), timeouts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a client cannot be built. The `ca_file` ones name the file (config key `ca_file`).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("ca_file {}: no such file", .0.display())]
    CaFileMissing(PathBuf),
    /// Not a regular file of at most [`MAX_CA_FILE_BYTES`], or unreadable (fsutil's words).
    #[error("ca_file {}: {why}", path.display())]
    CaFileRefused { path: PathBuf, why: String },
    #[error("ca_file {}: {pem}", path.display())]
    CaFilePem {
        path: PathBuf,
        pem: rustls::pki_types::pem::Error,
    },
    /// A certificate rustls does not take as a trust anchor.
    #[error("ca_file {}: {tls}", path.display())]
    CaFileCertificate { path: PathBuf, tls: rustls::Error },
    #[error("ca_file {}: no PEM certificate found", .0.display())]
    CaFileEmpty(PathBuf),
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Build the rustls configuration every client of the updater uses.
///
/// Trust anchors: the bundled Mozilla roots (printer images often have no CA store), whatever
/// the system store holds, and the PEM certificates of `ca_file` (e.g. a private S3/MinIO CA).
/// Fails only when `ca_file` is given and unusable: a silently ignored CA would make every
/// download fail later with a confusing TLS error.
/// Largest `ca_file` read: a whole system CA bundle is about 200 KiB.
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, NetError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("trusting {added} certificates of the system store");
    if let Some(path) = ca_file {
        // A file a person points the updater at: a regular file of bounded size, so a FIFO or
        // a device under the name fails at once instead of hanging or filling memory.
        let pem = match crate::fsutil::read_operator_file(path, MAX_CA_FILE_BYTES) {
            crate::fsutil::ReadBack::Data(b) => b,
            crate::fsutil::ReadBack::Missing => {
                return Err(NetError::CaFileMissing(path.to_path_buf()))
            }
            crate::fsutil::ReadBack::Refused(why) => {
                return Err(NetError::CaFileRefused {
                    path: path.to_path_buf(),
                    why,
                })
            }
        };
        let iter = CertificateDer::pem_slice_iter(&pem);
        let mut n = 0;
        for cert in iter {
            let cert = cert.map_err(|pem| NetError::CaFilePem {
                path: path.to_path_buf(),
                pem,
            })?;
            roots.add(cert).map_err(|tls| NetError::CaFileCertificate {
                path: path.to_path_buf(),
                tls,
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(NetError::CaFileEmpty(path.to_path_buf()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(NetError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The package download client. No decompression (it would break Range offsets), bounded
/// connect and read stalls (not a total timeout: a large package may take long), redirects only
/// to https unless plain http is allowed.
pub fn download_client(
    tls: &rustls::ClientConfig,
    allow_http: bool,
) -> Result<reqwest::Client, NetError> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if attempt.url().scheme() == "https"
            || (allow_http && attempt.url().scheme() == "http")
        {
            attempt.follow()
        } else {
            attempt.error("redirect to a non-https URL refused")
        }
    });
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(30))
        .redirect(policy)
        .http1_only()
        .user_agent(concat!("tope-updater/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(NetError::Client)
}

/// A URL as logs, errors and reports show it: without user info, query string and fragment
/// (presigned URLs carry their credentials there: `user:pass@host`, `?X-Amz-Signature=...`).
/// `state.json` keeps the full URL, which a resume needs. A text that is not a URL loses the
/// same parts, found by their separators.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = reqwest::Url::parse(url) {
        if u.has_host() {
            u.set_query(None);
            u.set_fragment(None);
            if u.set_username("").is_ok() && u.set_password(None).is_ok() {
                return u.into();
            }
        }
    }
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The device-api callback client: loopback, so never through a proxy.
pub fn callback_client(tls: &rustls::ClientConfig) -> Result<reqwest::Client, NetError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .http1_only()
        .build()
        .map_err(NetError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_8_3_redacted_urls_keep_no_credentials() {
        let cases = [
            (
                "https://bucket.s3.example.com/pkg/tope-1.2.3.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=deadbeef",
                "https://bucket.s3.example.com/pkg/tope-1.2.3.zip",
            ),
            (
                "https://user:secret@updates.example.com:8443/p.zip",
                "https://updates.example.com:8443/p.zip",
            ),
            (
                "http://token@127.0.0.1:9/a/b.zip?sig=1#frag",
                "http://127.0.0.1:9/a/b.zip",
            ),
            (
                "https://updates.example.com/p.zip",
                "https://updates.example.com/p.zip",
            ),
            // Not URLs: the same parts go all the same.
            ("https://us er:pw@ho st/p.zip?sig=1", "https://ho st/p.zip"),
            ("user:pw@host/p.zip?x=1", "host/p.zip"),
            ("", ""),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn contract_7_ca_file_must_hold_a_certificate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "not a pem").unwrap();
        let e = tls_config(Some(&p)).unwrap_err();
        assert!(matches!(e, NetError::CaFileEmpty(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!("ca_file {}: no PEM certificate found", p.display())
        );
        let missing = d.path().join("missing.pem");
        let e = tls_config(Some(&missing)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("ca_file {}: no such file", missing.display())
        );
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = tls_config(Some(&p)).unwrap_err();
        assert!(matches!(e, NetError::CaFilePem { .. }), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&p, ca.cert.pem()).unwrap();
        assert!(tls_config(Some(&p)).is_ok());
        assert!(tls_config(None).is_ok());
    }

    /// docs/API.md 9.6: a `ca_file` that is a FIFO or a device is refused at once (a FIFO
    /// blocked the daemon's start, `/dev/zero` was read until memory ran out).
    #[test]
    fn contract_9_6_ca_file_is_read_bounded() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("ca.fifo");
        crate::fsutil::make_fifo(&fifo);
        for p in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
            let e = tls_config(Some(p)).unwrap_err();
            assert!(matches!(e, NetError::CaFileRefused { .. }), "{e}");
            assert!(
                e.to_string().contains("not a regular file"),
                "{}: {e}",
                p.display()
            );
        }
    }
}
