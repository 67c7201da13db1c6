//! `manifest.json`: the parser (unknown keys, both `post_cmds` forms) and every rule that needs
//! no ZIP (CONTRACT.md sections 4, 8.4, 8.8), with and without `allowed_roots`.
//!
//! Checks: every refusal is `INVALID_MANIFEST`; the roots and the expected version only ever
//! refuse more; an accepted manifest keeps every `dst` strictly inside the roots; a manifest
//! written out again (as `pack` does) reads back the same; the version order is consistent.

#![no_main]

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tope_updater::paths::normalize_abs;
use tope_updater::error::{ErrorCode, OtaError};
use tope_updater::package::{
    check_downgrade, compare_versions, is_semver, parse_manifest, validate_manifest, Manifest,
    PackageError,
};

fn refused_as_invalid_manifest(r: &Result<(), PackageError>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::InvalidManifest, "{e}");
            true
        }
    }
}

fn versions(m: &Manifest) {
    let v = m.version.as_str();
    if !is_semver(v) {
        assert_eq!(compare_versions(v, "1.0.0"), None);
        return;
    }
    assert_eq!(compare_versions(v, v), Some(Ordering::Equal));
    for other in ["0.0.0", "1.2.3", "10.0.0", "1.2.10"] {
        let there = compare_versions(v, other).expect("two x.y.z versions");
        let back = compare_versions(other, v).expect("two x.y.z versions");
        assert_eq!(there, back.reverse(), "{v} vs {other}");
        // Only an older package is a downgrade, and only when downgrades are refused.
        let refused = check_downgrade(Some(other), v, false).is_err();
        assert_eq!(refused, there == Ordering::Less, "{v} over {other}");
        assert!(check_downgrade(Some(other), v, true).is_ok());
    }
    assert!(check_downgrade(None, v, false).is_ok());
}

fuzz_target!(|data: &[u8]| {
    let m = match parse_manifest(data) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::InvalidManifest, "{e}");
            return;
        }
    };
    // What `pack` writes (the manifest serialised again) is read back as it was.
    let written = serde_json::to_vec_pretty(&m).expect("a manifest serialises");
    assert_eq!(parse_manifest(&written).map_err(OtaError::from), Ok(m.clone()));

    let roots = [PathBuf::from("/opt/tope")];
    let free = validate_manifest(&m, None, None);
    let rooted = validate_manifest(&m, None, Some(&roots));
    let asked = validate_manifest(&m, Some(&m.version), Some(&roots));
    let other = validate_manifest(&m, Some("1.2.3"), Some(&roots));
    let free_refused = refused_as_invalid_manifest(&free);
    let rooted_refused = refused_as_invalid_manifest(&rooted);
    assert!(
        !free_refused || rooted_refused,
        "the roots let through {m:?}"
    );
    assert_eq!(refused_as_invalid_manifest(&asked), rooted_refused);
    if !refused_as_invalid_manifest(&other) {
        assert_eq!(m.version, "1.2.3");
    }
    if !rooted_refused {
        assert!(!m.modules.is_empty());
        for md in &m.modules {
            let dst = normalize_abs(&md.dst).expect("an accepted dst is absolute without ..");
            assert!(
                dst.starts_with(&roots[0]) && dst != roots[0],
                "dst {} accepted outside the root",
                md.dst.display()
            );
            assert!(!md.src.starts_with('/') && !md.src.split('/').any(|c| c == ".."));
            assert!(dst != Path::new("/"));
        }
    }
    versions(&m);
});
