//! Signed packages of many files, as the delta download tests and benchmark need them
//! (docs/API.md 8.6, 9.5): one module `app` whose `src` is the directory `app/`, the signed
//! `sha256` map of every file, `manifest.sig` by a key generated for the test.

use std::collections::BTreeMap;

use serde_json::json;
use tope_updater::checksum::{hex, Algorithm, Hasher};
use tope_updater::package::SigningKey;

use super::package::{build_zip, Entry};

/// A key of the test and its public half as `trusted_keys` takes it.
pub fn test_key() -> (SigningKey, String) {
    let (key, _) = SigningKey::generate().expect("generate a signing key");
    let public = key.public_key().to_base64();
    (key, public)
}

/// The files of a version: `app/f<i>` for `i` in `0..count`, `size` bytes each, noise seeded by
/// `i` and by `version_of[i]` (change one file: give it another version number).
pub fn files(
    count: usize,
    size: usize,
    version_of: impl Fn(usize) -> u64,
) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let seed = (i as u64) << 20 | version_of(i);
            (
                format!("app/f{i:04}"),
                tope_updater::kit::pseudo_random_bytes(size, seed),
            )
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(data);
    hex(&h.finalize().digest)
}

/// The manifest of `files` deployed to `dst` (the module's directory), with the `sha256` map.
pub fn signed_manifest(version: &str, dst: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let map: BTreeMap<&str, String> = files
        .iter()
        .map(|(n, d)| (n.as_str(), sha256_hex(d)))
        .collect();
    let m = json!({
        "version": version,
        "modules": [{"name": "app", "src": "app", "dst": dst}],
        "sha256": map,
    });
    serde_json::to_vec_pretty(&m).expect("manifest")
}

/// The package: `manifest.json`, `manifest.sig` (when `key` is given), then the files, where
/// `served` may replace a file's bytes after the manifest was signed (a tampered entry).
pub fn package(manifest: &[u8], key: Option<&SigningKey>, served: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![Entry::file("manifest.json", manifest, 0o644)];
    if let Some(k) = key {
        entries.push(Entry::file(
            "manifest.sig",
            k.sign_manifest(manifest).as_bytes(),
            0o644,
        ));
    }
    for (n, d) in served {
        entries.push(Entry::file(n, d, 0o644));
    }
    build_zip(&entries)
}

/// A signed package of `files`.
pub fn signed_package(
    version: &str,
    dst: &str,
    key: &SigningKey,
    files: &[(String, Vec<u8>)],
) -> Vec<u8> {
    package(&signed_manifest(version, dst, files), Some(key), files)
}
