//! Signed packages (docs/API.md section 8.6): Ed25519 keys (ring), the check of `manifest.sig`
//! against the trusted keys, and the signed `sha256` map of the entries to deploy.
//!
//! The rules, by configuration:
//! - no trusted keys: `manifest.sig` is never read; a `sha256` map, when present, is still
//!   checked for the entries it names (a mismatch means the package is not what its author
//!   built), but it need not name every deployed entry;
//! - trusted keys, `require_signature = false`: an unsigned package is treated as above; a
//!   present `manifest.sig` must be verified by one of the keys;
//! - `require_signature = true`: `manifest.sig` must be present and verified.
//!
//! A verified signature makes the map mandatory: every deployed entry must be named in it.
//! Every problem with the signature or the map is `INVALID_PACKAGE`.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

use super::archive::{canonical_rel, EntryInfo};
use super::error::{KeyError, PackageError};
use super::manifest::Manifest;
use super::PlannedFile;
use crate::checksum::{Algorithm, Checksum};

/// Name of the signature at the root of the package.
pub const SIGNATURE_NAME: &str = "manifest.sig";
/// Largest accepted `manifest.sig` (the base64 of 64 bytes is 88 characters).
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// The PEM label of the private key file `keygen` writes (PKCS#8).
pub const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";

/// An Ed25519 public key, as `trusted_keys` and `verify --key` take it: the base64 of its 32
/// raw bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parse the base64 (standard alphabet, padded) of 32 bytes; whitespace around ignored.
    pub fn from_base64(text: &str) -> Option<PublicKey> {
        let bytes = BASE64.decode(text.trim()).ok()?;
        Some(PublicKey(bytes.try_into().ok()?))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A private key of the package author's tools (`keygen`, `pack --key`).
pub struct SigningKey(Ed25519KeyPair);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key())
    }
}

impl SigningKey {
    /// A new random key and its PKCS#8 PEM text (the file `keygen` writes).
    pub fn generate() -> Result<(SigningKey, String), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let pem_text = pem::encode(&pem::Pem::new(PRIVATE_KEY_LABEL, doc.as_ref()));
        let key = SigningKey::from_pem(pem_text.as_bytes())?;
        Ok((key, pem_text))
    }

    /// Read a PKCS#8 PEM Ed25519 private key: as `keygen` writes it, or as
    /// `openssl genpkey -algorithm ed25519` does (without the public key inside).
    pub fn from_pem(text: &[u8]) -> Result<SigningKey, KeyError> {
        let p = pem::parse(text).map_err(|source| KeyError::NotPem { source })?;
        if p.tag() != PRIVATE_KEY_LABEL {
            return Err(KeyError::NotPrivateKey {
                tag: p.tag().to_string(),
            });
        }
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(p.contents())
            .map(SigningKey)
            .map_err(|rejected| KeyError::NotEd25519 { rejected })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    /// `manifest.sig` for `manifest`: the base64 of the signature, and a newline.
    pub fn sign_manifest(&self, manifest: &[u8]) -> String {
        format!("{}\n", BASE64.encode(self.0.sign(manifest).as_ref()))
    }
}

/// Check `manifest.sig` (its bytes, when the package holds one) against the trusted keys;
/// returns the key that verified it, `None` when the package counts as unsigned.
pub fn check_signature(
    sig: Option<&[u8]>,
    manifest: &[u8],
    trusted_keys: &[PublicKey],
    require_signature: bool,
) -> Result<Option<PublicKey>, PackageError> {
    if trusted_keys.is_empty() && !require_signature {
        return Ok(None);
    }
    let Some(sig) = sig else {
        if require_signature {
            return Err(PackageError::Unsigned);
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(sig).unwrap_or("");
    let raw = BASE64.decode(text.trim()).unwrap_or_default();
    if raw.len() != 64 {
        return Err(PackageError::SignatureMalformed);
    }
    match trusted_keys.iter().find(|k| k.verifies(manifest, &raw)) {
        Some(k) => Ok(Some(k.clone())),
        None => Err(PackageError::Untrusted {
            keys: trusted_keys.len(),
        }),
    }
}

/// The expected SHA-256 of each entry to deploy, by entry index, with the entry's name.
pub type EntryHashes = HashMap<usize, (String, Checksum)>;

/// Read the manifest's `sha256` map against the package's entries. With `signed` (a verified
/// signature), every planned file must be in it.
pub fn entry_hashes(
    manifest: &Manifest,
    entries: &HashMap<String, EntryInfo>,
    files: &[PlannedFile],
    signed: bool,
) -> Result<EntryHashes, PackageError> {
    let mut out = EntryHashes::new();
    for (name, hex) in manifest.sha256.iter().flatten() {
        let name_ = || name.clone();
        let entry = canonical_rel(name).and_then(|c| entries.get(&c).map(|e| (c, e)));
        let Some((canon, entry)) = entry.filter(|(_, e)| !e.is_dir) else {
            return Err(PackageError::HashOfNoFile { name: name_() });
        };
        let sum = Checksum::from_hex(Algorithm::Sha256, hex).filter(|c| c.to_hex() == *hex);
        let Some(sum) = sum else {
            return Err(PackageError::HashMalformed { name: name_() });
        };
        if out.insert(entry.index, (canon, sum)).is_some() {
            return Err(PackageError::HashTwice { name: name_() });
        }
    }
    if signed {
        for f in files {
            if !out.contains_key(&f.entry) {
                let name = entries
                    .iter()
                    .find(|(_, e)| e.index == f.entry)
                    .map_or("?", |(n, _)| n.as_str());
                return Err(PackageError::HashMissing {
                    entry: name.to_string(),
                    dst: f.dst.clone(),
                    module: manifest.modules[f.module].name.clone(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorCode, OtaError};

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    #[test]
    fn keys_round_trip_through_base64_and_pem() {
        let (k, pem_text) = SigningKey::generate().unwrap();
        assert!(
            pem_text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{pem_text}"
        );
        let again = SigningKey::from_pem(pem_text.as_bytes()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        let b64 = k.public_key().to_base64();
        assert_eq!(b64.len(), 44);
        assert_eq!(
            PublicKey::from_base64(&format!(" {b64}\n")),
            Some(k.public_key())
        );
        assert_eq!(PublicKey::from_base64("AAAA"), None);
        assert_eq!(PublicKey::from_base64("not base64!"), None);
        assert!(SigningKey::from_pem(b"junk").is_err());
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(SigningKey::from_pem(cert.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("CERTIFICATE"));
    }

    /// An OpenSSL-style PKCS#8 v1 key (seed only) is read too: the RFC 8410 prefix and a seed.
    #[test]
    fn pkcs8_v1_keys_are_accepted() {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[7u8; 32]);
        let text = pem::encode(&pem::Pem::new(PRIVATE_KEY_LABEL, der));
        let k = SigningKey::from_pem(text.as_bytes()).unwrap();
        let sig = k.sign_manifest(b"m");
        check_signature(Some(sig.as_bytes()), b"m", &[k.public_key()], true).unwrap();
    }

    #[test]
    fn contract_8_6_signature_rules() {
        let k = key();
        let other = key();
        let m = b"{\"version\": \"1.0.0\"}";
        let sig = k.sign_manifest(m);
        let keys = [k.public_key()];
        let both = [other.public_key(), k.public_key()];
        // Verified by the key, by any one of several, with whitespace around.
        assert_eq!(
            check_signature(Some(sig.as_bytes()), m, &keys, true).unwrap(),
            Some(k.public_key())
        );
        assert!(check_signature(Some(sig.as_bytes()), m, &both, false)
            .unwrap()
            .is_some());
        let spaced = format!("\n  {}  \r\n", sig.trim());
        assert!(check_signature(Some(spaced.as_bytes()), m, &keys, true).is_ok());

        let refused = |sig: Option<&[u8]>, msg: &[u8], keys: &[PublicKey], req: bool| {
            let e = OtaError::from(check_signature(sig, msg, keys, req).unwrap_err());
            assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
            e.detail
        };
        // Required but missing; wrong key; changed manifest; not a signature.
        assert!(refused(None, m, &keys, true).contains("not signed"));
        let wrong = [other.public_key()];
        assert!(refused(Some(sig.as_bytes()), m, &wrong, true).contains("not verified"));
        assert!(refused(Some(sig.as_bytes()), m, &wrong, false).contains("not verified"));
        assert!(refused(Some(sig.as_bytes()), b"{}", &keys, true).contains("not verified"));
        assert!(refused(Some(b"AAAA"), m, &keys, false).contains("64-byte"));
        assert!(refused(Some(b"\xff\xfe"), m, &keys, false).contains("64-byte"));

        // Not required: unsigned is fine; with no keys, the signature is not even read.
        assert_eq!(check_signature(None, m, &keys, false).unwrap(), None);
        assert_eq!(check_signature(Some(b"junk"), m, &[], false).unwrap(), None);
    }
}
