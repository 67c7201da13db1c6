//! Integrity as data: which algorithm, which digest (as RAUC's `RaucChecksum`), instead of a
//! hash type spelled out in every signature. The download verifies the announced MD5 with it,
//! the package verifies each signed entry's SHA-256 with it; a fleet server's artifact may state
//! only its SHA-1 (goosebit does).
//!
//! On disk (`tmp/state.json`, `tmp/outcome.json`, `tmp/history.jsonl`) the announced MD5 is
//! the lowercase hex string `package_md5` it always was: [`md5_hex`] and [`md5_hex_opt`] are
//! the serde forms of that field (either case is read, lowercase is written).

use std::fmt;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A digest algorithm the updater knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// What `/download` announces (`package_md5`): integrity of the transfer only.
    Md5,
    /// What a fleet server may state as an artifact's only hash (goosebit states only sha1).
    Sha1,
    /// What a signed manifest's `sha256` map names for each deployed entry.
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
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

    /// `"<algorithm>:<hex>"`, e.g. `"sha1:a9993e36..."`.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.algorithm.name(), self.to_hex())
    }

    /// Parse [`Checksum::tagged`]'s form; `None` for anything else.
    pub fn from_tagged(text: &str) -> Option<Checksum> {
        let (name, hex) = text.split_once(':')?;
        let algorithm = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256]
            .into_iter()
            .find(|a| a.name() == name)?;
        Checksum::from_hex(algorithm, hex)
    }

    /// How the state and outcome files keep it: an MD5 in `package_md5` (the format it always
    /// had), any other algorithm tagged in `package_checksum` with `package_md5` left out.
    pub fn split_md5(&self) -> (Option<Checksum>, Option<Checksum>) {
        if self.algorithm == Algorithm::Md5 {
            (Some(self.clone()), None)
        } else {
            (None, Some(self.clone()))
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// `#[serde(with = "md5_hex")]`: a [`Checksum`] of [`Algorithm::Md5`] as its hex string.
pub mod md5_hex {
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::{Algorithm, Checksum};

    pub fn serialize<S: Serializer>(c: &Checksum, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&c.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        let text = String::deserialize(d)?;
        Checksum::from_hex(Algorithm::Md5, &text).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Str(&text), &"32 hex characters")
        })
    }
}

/// `#[serde(default, with = "md5_hex_opt")]`: an optional [`md5_hex`].
pub mod md5_hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Checksum;

    pub fn serialize<S: Serializer>(c: &Option<Checksum>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => super::md5_hex::serialize(c, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Checksum>, D::Error> {
        #[derive(Deserialize)]
        struct Hex(#[serde(with = "super::md5_hex")] Checksum);
        Ok(Option::<Hex>::deserialize(d)?.map(|h| h.0))
    }
}

/// `#[serde(default, with = "tagged_opt")]`: an optional [`Checksum`] of any algorithm as
/// `"<algorithm>:<hex>"` (`"sha1:a999..."`): how `state.json` and `outcome.json` keep the hash
/// of a fleet artifact that is not an MD5 (docs/API.md 5 and 9.1).
pub mod tagged_opt {
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::Checksum;

    pub fn serialize<S: Serializer>(c: &Option<Checksum>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_str(&c.tagged()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Checksum>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => Checksum::from_tagged(&text).map(Some).ok_or_else(|| {
                de::Error::invalid_value(de::Unexpected::Str(&text), &"<algorithm>:<hex>")
            }),
        }
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
    Sha1(Sha1),
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
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Md5(_) => Algorithm::Md5,
            Hasher::Sha1(_) => Algorithm::Sha1,
            Hasher::Sha256(_) => Algorithm::Sha256,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> Checksum {
        let algorithm = self.algorithm();
        let digest = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
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

    /// SHA-1 test vectors of FIPS 180-2 / RFC 3174 (goosebit states an artifact's sha1).
    #[test]
    fn sha1_known_digests() {
        let digest = |parts: &[&[u8]]| {
            let mut h = Hasher::new(Algorithm::Sha1);
            for p in parts {
                h.update(p);
            }
            let c = h.finalize();
            assert_eq!(c.algorithm, Algorithm::Sha1);
            assert_eq!(c.digest.len(), Algorithm::Sha1.digest_len());
            c.to_hex()
        };
        assert_eq!(digest(&[]), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            digest(&[b"abc"]),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            digest(&[
                b"abcdbcdecdefdefgefghfghighij",
                b"hijkijkljklmklmnlmnomnopnopq"
            ]),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(
            digest(&[&million_a]),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
        assert_eq!(Algorithm::Sha1.name(), "sha1");
        assert_eq!(Hasher::new(Algorithm::Sha1).algorithm(), Algorithm::Sha1);
        assert_eq!(
            format!("{:?}", Hasher::new(Algorithm::Sha1)),
            "Hasher(sha1)"
        );
    }

    #[test]
    fn sha1_hex_is_forty_characters() {
        let c = Checksum::from_hex(Algorithm::Sha1, "A9993E364706816ABA3E25717850C26C9CD0D89D")
            .unwrap();
        assert_eq!(c.to_string(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert!(
            Checksum::from_hex(Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89")
                .is_none()
        );
        assert!(Checksum::from_hex(Algorithm::Sha1, "5eb63bbbe01eeed093cb22bb8f5acdc3").is_none());
        assert!(Checksum::from_hex(
            Algorithm::Sha256,
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        )
        .is_none());
    }

    /// docs/API.md 5 and 9.1: a fleet artifact's SHA-1 is kept as `sha1:<hex>`.
    #[test]
    fn tagged_form_round_trips_and_is_strict() {
        let c = Checksum::from_hex(Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d")
            .unwrap();
        assert_eq!(c.tagged(), "sha1:a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(Checksum::from_tagged(&c.tagged()), Some(c.clone()));
        assert_eq!(c.split_md5(), (None, Some(c.clone())));
        assert!(Checksum::from_tagged("sha1:a9993e").is_none());
        assert!(Checksum::from_tagged("crc:00").is_none());
        assert!(Checksum::from_tagged("a9993e364706816aba3e25717850c26c9cd0d89d").is_none());
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Fields {
        #[serde(with = "md5_hex")]
        md5: Checksum,
        #[serde(default, with = "md5_hex_opt")]
        maybe: Option<Checksum>,
    }

    /// docs/API.md 5: `package_md5` stays a lowercase hex string on disk; either case is read.
    #[test]
    fn md5_fields_are_hex_strings_on_disk() {
        let c = Checksum::from_hex(Algorithm::Md5, "5eb63bbbe01eeed093cb22bb8f5acdc3").unwrap();
        let f = Fields {
            md5: c.clone(),
            maybe: Some(c.clone()),
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"md5":"5eb63bbbe01eeed093cb22bb8f5acdc3","maybe":"5eb63bbbe01eeed093cb22bb8f5acdc3"}"#
        );
        let read: Fields =
            serde_json::from_str(r#"{"md5":"5EB63BBBE01EEED093CB22BB8F5ACDC3","maybe":null}"#)
                .unwrap();
        assert_eq!(
            read,
            Fields {
                md5: c,
                maybe: None
            }
        );
        let absent: Fields =
            serde_json::from_str(r#"{"md5":"5eb63bbbe01eeed093cb22bb8f5acdc3"}"#).unwrap();
        assert_eq!(absent.maybe, None);
        for bad in [
            r#"{"md5":"5eb63bbbe01eeed093cb22bb8f5acdc"}"#,
            r#"{"md5":"x"}"#,
            r#"{"md5":7}"#,
            r#"{"md5":"5eb63bbbe01eeed093cb22bb8f5acdc3","maybe":"zz"}"#,
        ] {
            assert!(serde_json::from_str::<Fields>(bad).is_err(), "{bad}");
        }
    }
}
