//! Integrity as data: which algorithm, which digest (as RAUC's `RaucChecksum`), instead of a
//! hash type spelled out in every signature. The download verifies the announced MD5 with it,
//! the package verifies each signed entry's SHA-256 with it.

use std::fmt;

use md5::Md5;
use sha2::{Digest, Sha256};

/// A digest algorithm the updater knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// What `/download` announces (`package_md5`): integrity of the transfer only.
    Md5,
    /// What a signed manifest's `sha256` map names for each deployed entry.
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
        }
    }
}

/// An expected or computed digest. Displays as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checksum {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
}

impl Checksum {
    /// Parse hex (either case) of the algorithm's length; `None` for anything else.
    pub fn from_hex(algorithm: Algorithm, text: &str) -> Option<Checksum> {
        let text = text.as_bytes();
        if text.len() != algorithm.digest_len() * 2 {
            return None;
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let digest = text
            .chunks_exact(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect::<Option<Vec<u8>>>()?;
        Some(Checksum { algorithm, digest })
    }

    /// Lowercase hex of the digest.
    pub fn to_hex(&self) -> String {
        hex(&self.digest)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lowercase hex of bytes (digest 0.11 no longer formats with `{:x}`). The one hex helper of
/// the crate.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A running hash of one of the [`Algorithm`]s.
#[derive(Clone)]
pub enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm().name())
    }
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Md5(_) => Algorithm::Md5,
            Hasher::Sha256(_) => Algorithm::Sha256,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> Checksum {
        let algorithm = self.algorithm();
        let digest = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        };
        Checksum { algorithm, digest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let mut h = Hasher::new(Algorithm::Md5);
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finalize().to_hex(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"abc");
        assert_eq!(
            h.finalize().to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_parsing_is_strict_and_case_blind() {
        let c = Checksum::from_hex(Algorithm::Md5, "5EB63BBBE01EEED093CB22BB8F5ACDC3").unwrap();
        assert_eq!(c.to_hex(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert!(Checksum::from_hex(Algorithm::Md5, "5eb63bbbe01eeed093cb22bb8f5acdc").is_none());
        assert!(Checksum::from_hex(Algorithm::Md5, "5eb63bbbe01eeed093cb22bb8f5acdcg").is_none());
        assert!(
            Checksum::from_hex(Algorithm::Sha256, "5eb63bbbe01eeed093cb22bb8f5acdc3").is_none()
        );
        assert!(Checksum::from_hex(Algorithm::Md5, "+eb63bbbe01eeed093cb22bb8f5acdc3").is_none());
    }
}
