//! The ZIP reader: a package file through [`Package::open`] (end records, central directory
//! caps, every entry rule, `manifest.json`, `manifest.sig` and the `sha256` map, the plan of
//! files) and every planned file streamed through [`Package::extract_to`] (size, CRC32,
//! SHA-256), as the daemon, `pack` and `verify` read packages.
//!
//! Checks: every refusal is `INVALID_PACKAGE` or `INVALID_MANIFEST`; every planned file lies
//! strictly inside the allowed root; an extraction writes exactly the declared size or fails
//! with `INVALID_PACKAGE`; `require_signature` accepts exactly the packages a trusted key signed.
//! Memory: scripts/fuzz.sh runs this target under an explicit `-rss_limit_mb` and
//! `-malloc_limit_mb`; the reader must stay flat whatever the archive claims.

#![no_main]

mod scratch;

use std::io::{self, Write};
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tope_updater::error::ErrorCode;
use tope_updater::package::{Package, PackageError, PackagePolicy, PublicKey, Signatures};

/// The public half of `fuzz/seeds/package-key.pem`, which signed the signed seed packages.
const SEED_KEY: &str = "jamawG8hWHeodL8xXl2SuNZJ2SDE+2/2VqBfa7m1OUE=";

/// Counts what an extraction writes, keeping none of it.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn refused(e: &PackageError) {
    assert!(
        matches!(
            e.code(),
            ErrorCode::InvalidPackage | ErrorCode::InvalidManifest
        ),
        "{e}"
    );
}

fuzz_target!(|data: &[u8]| {
    let scratch = scratch::Scratch::new();
    let path = scratch.file("package.zip", data);
    let root = PathBuf::from("/opt/tope");
    let roots = [root.clone()];
    let keys = [PublicKey::from_base64(SEED_KEY).expect("the seed key")];
    let policy = |require_signature| PackagePolicy {
        allowed_roots: Some(&roots),
        signatures: Signatures {
            trusted_keys: &keys,
            require_signature,
        },
    };
    let mut pkg = match Package::open(&path, None, &policy(false)) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    match Package::open(&path, None, &policy(true)) {
        Ok(p) => assert_eq!(p.signed_by, pkg.signed_by),
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::InvalidPackage, "{e}");
            assert!(pkg.signed_by.is_none(), "a signed package refused: {e}");
        }
    }
    assert!(!pkg.files.is_empty(), "a package that deploys nothing");
    for f in pkg.files.clone() {
        assert!(
            f.dst.starts_with(&root) && f.dst != root,
            "{} planned outside the root",
            f.dst.display()
        );
        assert!(f.module < pkg.manifest.modules.len());
        let mut out = Count(0);
        match pkg.extract_to(&f, &mut out) {
            Ok(n) => {
                assert_eq!(n, f.size, "{}", f.dst.display());
                assert_eq!(out.0, n, "{}", f.dst.display());
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::InvalidPackage, "{e}");
                assert!(out.0 <= f.size, "{} bytes written for {f:?}", out.0);
            }
        }
    }
});
