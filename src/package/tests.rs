//! Tests of the ZIP reader's rules and of planning, on ZIPs built here. The helpers are
//! shared with the deployment tests.

use super::archive::deploy_mode;
use super::*;
use crate::error::ErrorCode;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

/// One entry of a test ZIP.
pub(crate) enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub(crate) fn build_zip(path: &Path, entries: &[E]) {
    let mut w = zip::ZipWriter::new(File::create(path).unwrap());
    for e in entries {
        match e {
            E::File(n, data, mode) => {
                let o = SimpleFileOptions::default()
                    .compression_method(CompressionMethod::Deflated)
                    .unix_permissions(*mode);
                w.start_file(*n, o).unwrap();
                w.write_all(data).unwrap();
            }
            E::Dir(n) => w.add_directory(*n, SimpleFileOptions::default()).unwrap(),
            E::Symlink(n, t) => w.add_symlink(*n, *t, SimpleFileOptions::default()).unwrap(),
        }
    }
    w.finish().unwrap();
}

pub(crate) fn manifest_json(version: &str, modules: &str) -> String {
    format!(r#"{{"version": "{version}", "modules": [{modules}]}}"#)
}

struct Fx {
    _d: tempfile::TempDir,
    zip: PathBuf,
    root: PathBuf,
}

fn fx() -> Fx {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    Fx {
        zip: d.path().join("p.zip"),
        root,
        _d: d,
    }
}

fn module(root: &Path, name: &str, src: &str, dst: &str) -> String {
    format!(
        r#"{{"name": "{name}", "src": "{src}", "dst": "{}/{dst}"}}"#,
        root.display()
    )
}

fn open(f: &Fx) -> Result<Package, OtaError> {
    open_package(
        &f.zip,
        "1.2.3",
        &PackagePolicy::roots(std::slice::from_ref(&f.root)),
    )
}

fn err(f: &Fx) -> OtaError {
    open(f).unwrap_err()
}

/// Replace every occurrence of `from` by `to` (same length) in the file's bytes.
fn patch(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(path).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= b.len() {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
        i += 1;
    }
    assert!(hits > 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn file_and_directory_src_are_planned_with_modes() {
    let f = fx();
    let m = manifest_json(
        "1.2.3",
        &[
            module(&f.root, "api", "mods/api/api-bin", "api/api-bin"),
            module(&f.root, "web", "mods/web/", "web"),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::Dir("mods/"),
            E::File("mods/api/api-bin", b"#!/bin/sh\n", 0o755),
            E::Dir("mods/web/"),
            E::Dir("mods/web/static/"),
            E::File("mods/web/index.html", b"<html>", 0o644),
            E::File("mods/web/static/app.js", b"js", 0o600),
        ],
    );
    let mut p = open(&f).unwrap();
    assert_eq!(p.manifest.modules.len(), 2);
    let got: Vec<(usize, PathBuf, u32, u64)> = p
        .files
        .iter()
        .map(|x| (x.module, x.dst.clone(), x.mode, x.size))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, f.root.join("api/api-bin"), 0o755, 10),
            (1, f.root.join("web/index.html"), 0o644, 6),
            (1, f.root.join("web/static/app.js"), 0o600, 2),
        ]
    );
    let pf = p.files[1].clone();
    let mut out = Vec::new();
    assert_eq!(p.extract_to(&pf, &mut out).unwrap(), 6);
    assert_eq!(out, b"<html>");
}

#[test]
fn unsafe_entries_are_invalid_package() {
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("symlink", vec![E::Symlink("mods/a", "/etc/passwd")]),
        ("absolute", vec![E::File("Xetc/evil", b"x", 0o644)]),
        ("dotdot", vec![E::File("XX/evil", b"x", 0o644)]),
        ("inner dotdot", vec![E::File("a/XX/b", b"x", 0o644)]),
        ("backslash", vec![E::File("aXb", b"x", 0o644)]),
        (
            "duplicate",
            vec![E::File("dup1", b"x", 0o644), E::File("dup2", b"y", 0o644)],
        ),
        (
            "same canonical",
            vec![E::File("a//b", b"x", 0o644), E::File("a/b", b"y", 0o644)],
        ),
        (
            "file and dir",
            vec![E::File("a", b"x", 0o644), E::File("a/b", b"y", 0o644)],
        ),
    ];
    for (what, mut entries) in cases {
        let f = fx();
        let m = manifest_json("1.2.3", &module(&f.root, "a", "manifest.json", "m"));
        entries.push(E::File("manifest.json", m.as_bytes(), 0o644));
        build_zip(&f.zip, &entries);
        match what {
            "absolute" => patch(&f.zip, b"Xetc/evil", b"/etc/evil"),
            "dotdot" => patch(&f.zip, b"XX/evil", b"../evil"),
            "inner dotdot" => patch(&f.zip, b"a/XX/b", b"a/../b"),
            "backslash" => patch(&f.zip, b"aXb", b"a\\b"),
            "duplicate" => patch(&f.zip, b"dup2", b"dup1"),
            _ => {}
        }
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidPackage, "{what}: {e}");
    }
}

#[test]
fn overlapping_entries_are_invalid_package() {
    let f = fx();
    let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
    let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
    w.start_file("manifest.json", SimpleFileOptions::default())
        .unwrap();
    w.write_all(m.as_bytes()).unwrap();
    w.start_file("x", SimpleFileOptions::default()).unwrap();
    w.write_all(b"data").unwrap();
    w.shallow_copy_file("x", "y").unwrap();
    w.finish().unwrap();
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(e.detail.contains("overlap"), "{e}");
}

#[test]
fn not_a_zip_or_missing_is_invalid_package() {
    let f = fx();
    std::fs::write(&f.zip, b"this is not a zip").unwrap();
    assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
    std::fs::remove_file(&f.zip).unwrap();
    assert_eq!(err(&f).code, ErrorCode::InvalidPackage);
}

#[test]
fn zip_bomb_ratio_is_refused() {
    let f = fx();
    let m = manifest_json("1.2.3", &module(&f.root, "a", "big", "big"));
    let zeros = vec![0u8; 8 * 1024 * 1024];
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("big", &zeros, 0o644),
        ],
    );
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
    assert!(e.detail.contains("ratio"), "{e}");
}

#[test]
fn manifest_problems_are_invalid_manifest() {
    let f = fx();
    build_zip(&f.zip, &[E::File("x", b"x", 0o644)]);
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidManifest);
    assert!(e.detail.contains("not found"), "{e}");

    // Not at the root.
    let m = manifest_json("1.2.3", &module(&f.root, "a", "x", "x"));
    build_zip(
        &f.zip,
        &[
            E::File("sub/manifest.json", m.as_bytes(), 0o644),
            E::File("x", b"x", 0o644),
        ],
    );
    assert_eq!(err(&f).code, ErrorCode::InvalidManifest);

    // Incompressible, so that the zip-bomb rule does not fire first.
    let mut x: u32 = 1;
    let big: Vec<u8> = (0..=MAX_MANIFEST_BYTES)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    build_zip(&f.zip, &[E::File("manifest.json", &big, 0o644)]);
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidManifest);
    assert!(e.detail.contains("more than"), "{e}");

    let cases = [
        (
            manifest_json("1.2.4", &module(&f.root, "a", "x", "x")),
            "differs",
        ),
        (
            manifest_json("1.2.3", &module(&f.root, "a", "nope", "x")),
            "src nope not found",
        ),
        (
            manifest_json("1.2.3", &module(&f.root, "a", "../x", "x")),
            "src",
        ),
        (
            manifest_json("1.2.3", &module(&f.root, "a", "x", "../x")),
            "dst",
        ),
        (
            manifest_json(
                "1.2.3",
                r#"{"name": "a", "src": "x", "dst": "/etc/passwd"}"#,
            ),
            "outside",
        ),
        (
            manifest_json(
                "1.2.3",
                &module(&f.root, "a", "x", "x").replace("\"dst\"", "\"dts\""),
            ),
            "dts",
        ),
        (
            manifest_json(
                "1.2.3",
                &[
                    module(&f.root, "a", "x", "x"),
                    module(&f.root, "a", "x", "y"),
                ]
                .join(","),
            ),
            "module a: name",
        ),
    ];
    for (m, needle) in cases {
        build_zip(
            &f.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("x", b"x", 0o644),
            ],
        );
        let e = err(&f);
        assert_eq!(e.code, ErrorCode::InvalidManifest, "{m}: {e}");
        assert!(e.detail.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn planned_destinations_may_not_collide() {
    let f = fx();
    let m = manifest_json(
        "1.2.3",
        &[
            module(&f.root, "a", "d", "t"),
            module(&f.root, "b", "x", "t/y"),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("d/y", b"1", 0o644),
            E::File("x", b"2", 0o644),
        ],
    );
    let e = err(&f);
    assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
    assert!(e.detail.contains("both write"), "{e}");
}

#[test]
fn corrupted_data_fails_crc_on_extract() {
    let f = fx();
    let m = manifest_json("1.2.3", &module(&f.root, "a", "data", "data"));
    let payload = b"PAYLOAD-PAYLOAD-PAYLOAD-PAYLOAD!".repeat(4);
    {
        let mut w = zip::ZipWriter::new(File::create(&f.zip).unwrap());
        w.start_file("manifest.json", SimpleFileOptions::default())
            .unwrap();
        w.write_all(m.as_bytes()).unwrap();
        let o = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        w.start_file("data", o).unwrap();
        w.write_all(&payload).unwrap();
        w.finish().unwrap();
    }
    patch(&f.zip, b"PAYLOAD!", b"PAYLOAD?");
    let mut p = open(&f).unwrap();
    let pf = p.files[0].clone();
    let mut out = Vec::new();
    let e = p.extract_to(&pf, &mut out).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}");
}

#[test]
fn space_is_checked_per_filesystem() {
    let f = fx();
    let pf = |size| PlannedFile {
        module: 0,
        entry: 0,
        dst: f.root.join("new/dir/file"),
        mode: 0o644,
        size,
    };
    check_space(&[pf(10)]).unwrap();
    let e = check_space(&[pf(u64::MAX / 4), pf(u64::MAX / 4)]).unwrap_err();
    assert_eq!(e.code, ErrorCode::DiskFull, "{e}");
    assert_eq!(existing_ancestor(&f.root.join("new/dir/file")), f.root);
}

#[test]
fn modes_drop_special_bits() {
    assert_eq!(deploy_mode(Some(0o104755)), 0o755);
    assert_eq!(deploy_mode(Some(0o100000)), DEFAULT_MODE);
    assert_eq!(deploy_mode(None), DEFAULT_MODE);
    assert!(is_semver("0.10.200"));
    assert!(!is_semver("1.2.3.4"));
    assert_eq!(canonical_rel("./a//b/"), Some("a/b".into()));
    assert_eq!(canonical_rel("a/../b"), None);
}
