//! `tope-updater verify FILE [--key PUBKEY]... [--config PATH]`: the daemon's own checks on a
//! package, down to every byte of every file to deploy; a SWU envelope (docs/API.md 9.3) is
//! checked as the daemon checks it, and the summary names its board and hardware revisions.

use std::path::{Path, PathBuf};

use super::error::ToolError;
use crate::package::{Package, PackagePolicy, PublicKey, Signatures};

/// Check the package at `file`. The keys are `keys` (base64, as `keygen` prints them) plus,
/// with `config`, its `trusted_keys`; a signature is required when `--key` is given or the
/// config requires one. `allowed_roots` applies only with `config`. Every file a module
/// deploys is read (CRC32, size, SHA-256 when the manifest names it). Returns a summary.
pub fn run(file: &Path, keys: &[String], config: Option<&Path>) -> Result<String, ToolError> {
    let cfg = super::load_config(config)?;
    let mut trusted: Vec<PublicKey> = cfg
        .as_ref()
        .map(|c| c.trusted_keys.clone())
        .unwrap_or_default();
    for k in keys {
        let key = PublicKey::from_base64(k).ok_or_else(|| {
            ToolError::Usage(format!(
                "--key `{k}` is not the base64 of a 32-byte Ed25519 public key"
            ))
        })?;
        trusted.push(key);
    }
    let roots: Option<Vec<PathBuf>> = cfg.as_ref().map(|c| c.allowed_roots.clone());
    let policy = PackagePolicy {
        allowed_roots: roots.as_deref(),
        signatures: Signatures {
            trusted_keys: &trusted,
            require_signature: !keys.is_empty()
                || cfg.as_ref().is_some_and(|c| c.require_signature),
        },
    };
    let mut pkg = Package::open(file, None, &policy)?;
    let mut bytes = 0;
    for f in pkg.files.clone() {
        bytes += pkg.extract_to(&f, &mut std::io::sink())?;
    }
    let signature = match (&pkg.signed_by, trusted.is_empty()) {
        (Some(k), _) => format!("signed by {k}"),
        (None, true) => "signature not checked (no key given)".to_string(),
        (None, false) => "not signed".to_string(),
    };
    // docs/API.md 9.3: an envelope says so, with what a fleet server matches it by.
    let envelope = match &pkg.envelope {
        None => String::new(),
        Some(env) => format!(
            "; SWU envelope holding {} (sha256 {}), board {}, hardware compatibility {}",
            env.filename,
            env.sha256_hex(),
            env.board.as_deref().unwrap_or("any"),
            if env.hardware_compatibility.is_empty() {
                "any".to_string()
            } else {
                env.hardware_compatibility.join(", ")
            }
        ),
    };
    Ok(format!(
        "{}: version {}, {} module(s), {} file(s), {bytes} bytes; {signature}{envelope}",
        file.display(),
        pkg.manifest.version,
        pkg.manifest.modules.len(),
        pkg.files.len(),
    ))
}
