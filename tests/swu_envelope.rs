//! The SWU envelope's writer and reader (docs/API.md 9.3), on real files: every refusal rule
//! of the reader on an archive built byte by byte here (independently of the writer), the
//! writer's round trip, its board form and its atomic replacement, and the inner package read
//! in place through `swu::Window` by the `zip` crate.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use common::cpio::{member, meta};
use common::package::{build_package, manifest};
use serde_json::json;
use sha2::{Digest, Sha256};
use tope_updater::error::{ErrorCode, OtaError};
use tope_updater::swu::{self, EnvelopeMeta, Format, SwuError};

fn sha_hex(data: &[u8]) -> String {
    swu::hex(&Sha256::digest(data))
}

fn package_bytes() -> Vec<u8> {
    let m = manifest(
        "1.2.3",
        vec![json!({"name": "app", "src": "app", "dst": "/opt/tope/app"})],
    );
    build_package(
        &m,
        &[common::package::Entry::file(
            "app/bin",
            b"#!/bin/sh\necho hi\n",
            0o755,
        )],
    )
}

fn archive(magic: &str, members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend(member(magic, name, data, 0o100644));
    }
    out.extend(member(magic, "TRAILER!!!", b"", 0));
    out
}

fn description(images: &str) -> String {
    format!("software = {{ version = \"1.2.3\"; images: ( {images} ); }};\n")
}

fn image(filename: &str, kind: &str, sha: &str) -> String {
    format!("{{ filename = \"{filename}\"; type = \"{kind}\"; sha256 = \"{sha}\"; }}")
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, data).unwrap();
        p
    }

    /// Open `bytes` as an envelope and, when it opens, verify its image.
    fn open(&self, bytes: &[u8]) -> Result<swu::Envelope, SwuError> {
        let p = self.file("e.swu", bytes);
        let env = swu::open(&p)?;
        env.verify_sha256(&p)?;
        Ok(env)
    }
}

/// A refusal: its Display names `what`, and as an OtaError it is INVALID_PACKAGE.
fn refused(r: Result<swu::Envelope, SwuError>, what: &str) {
    let e = match r {
        Ok(env) => panic!("accepted, expected a refusal naming {what:?}: {env:?}"),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert!(shown.contains(what), "{shown:?} does not name {what:?}");
    let ota: OtaError = e.into();
    assert_eq!(ota.code, ErrorCode::InvalidPackage, "{ota}");
    assert!(ota.to_string().starts_with("INVALID_PACKAGE: "), "{ota}");
    assert!(ota.detail.contains(what), "{ota}");
}

#[test]
fn hand_built_envelopes_of_both_formats_are_read_docs_api_9_3() {
    let c = Case::new();
    let zip = package_bytes();
    for (magic, format) in [("070701", Format::Newc), ("070702", Format::Crc)] {
        let d = description(&image("p.zip", "tope-package", &sha_hex(&zip)));
        let bytes = archive(
            magic,
            &[
                ("sw-description", d.as_bytes()),
                ("sw-description.sig", b"x"),
                ("p.zip", &zip),
            ],
        );
        assert!(swu::is_envelope(&bytes[..6]));
        let env = c.open(&bytes).unwrap();
        assert_eq!(env.format, format);
        assert_eq!(env.version, "1.2.3");
        assert_eq!(env.filename, "p.zip");
        assert_eq!(env.board, None);
        let start = env.offset as usize;
        assert_eq!(&bytes[start..start + env.len as usize], &zip[..]);
    }
    assert!(!swu::is_envelope(&zip[..6]), "a ZIP is not an envelope");
    assert!(!swu::is_envelope(b"0707"), "too short to tell");
}

#[test]
fn every_refusal_names_what_is_wrong_docs_api_9_3() {
    let c = Case::new();
    let zip = package_bytes();
    let sha = sha_hex(&zip);
    let good = description(&image("p.zip", "tope-package", &sha));
    let env = |d: &str| {
        archive(
            "070701",
            &[("sw-description", d.as_bytes()), ("p.zip", &zip)],
        )
    };

    // cpio framing.
    let mut bad_magic = env(&good);
    bad_magic[..6].copy_from_slice(b"070707");
    refused(c.open(&bad_magic), "bad magic");
    refused(c.open(b"PK\x03\x04 not an envelope"), "cut short");
    let long_name = "n".repeat(5000);
    let bytes = archive("070701", &[(long_name.as_str(), b"x")]);
    refused(c.open(&bytes), "limit 4096");
    let big = format!("{good}{}", "#".repeat(64 * 1024));
    refused(c.open(&env(&big)), "sw-description is 65");
    let whole = env(&good);
    refused(
        c.open(&whole[..whole.len() - 200]),
        "past the end of the file",
    );
    let no_trailer = &whole[..whole.len() - member("070701", "TRAILER!!!", b"", 0).len()];
    refused(c.open(no_trailer), "TRAILER!!!");
    let mut bad_field = env(&good);
    bad_field[6 + 8 * 6] = b'z';
    refused(c.open(&bad_field), "c_filesize");
    let many: Vec<(String, Vec<u8>)> = (0..1100).map(|i| (format!("m{i}"), vec![])).collect();
    let mut members: Vec<(&str, &[u8])> = vec![("sw-description", good.as_bytes())];
    members.extend(many.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    members.push(("p.zip", &zip));
    refused(
        c.open(&archive("070701", &members)),
        "more than 1024 members",
    );
    let mut mixed = member("070701", "sw-description", good.as_bytes(), 0o100644);
    mixed.extend(member("070702", "p.zip", &zip, 0o100644));
    refused(c.open(&mixed), "bad magic");

    // Members.
    let bytes = archive(
        "070701",
        &[("p.zip", &zip), ("sw-description", good.as_bytes())],
    );
    refused(
        c.open(&bytes),
        "the first member is \"p.zip\", not sw-description",
    );
    let bytes = archive("070701", &[("sw-description", good.as_bytes())]);
    refused(
        c.open(&bytes),
        "image \"p.zip\" named in sw-description is missing",
    );
    let bytes = archive(
        "070701",
        &[
            ("sw-description", good.as_bytes()),
            ("p.zip", &zip),
            ("p.zip", &zip),
        ],
    );
    refused(c.open(&bytes), "more than once");
    let mut dir_member = member("070701", "sw-description", good.as_bytes(), 0o100644);
    dir_member.extend(member("070701", "p.zip", b"", 0o040755));
    dir_member.extend(member("070701", "TRAILER!!!", b"", 0));
    refused(c.open(&dir_member), "not a regular file");
    let mut crc = archive(
        "070702",
        &[("sw-description", good.as_bytes()), ("p.zip", &zip)],
    );
    let at = crc.len() - 200;
    crc[at] ^= 0xff;
    // The sha256 is checked first; a change it cannot see is left to the checksum.
    refused(c.open(&crc), "sha256 mismatch");
    let mut crc_desc = archive(
        "070702",
        &[("sw-description", good.as_bytes()), ("p.zip", &zip)],
    );
    let at = crc_desc.iter().position(|b| *b == b'{').unwrap();
    crc_desc[at + 1] = b'\t';
    refused(c.open(&crc_desc), "crc checksum mismatch");

    // sw-description's content.
    refused(
        c.open(&env(&description(""))),
        "no image of type \"tope-package\"",
    );
    let two = format!(
        "{}, {}",
        image("p.zip", "tope-package", &sha),
        image("q.zip", "tope-package", &sha)
    );
    refused(c.open(&env(&description(&two))), "lists 2 images");
    refused(
        c.open(&env(&description(&image("p.zip", "raw", &sha)))),
        "has type \"raw\"",
    );
    let mixed_types = format!(
        "{}, {}",
        image("p.zip", "tope-package", &sha),
        image("r.img", "ubivol", &sha)
    );
    refused(
        c.open(&env(&description(&mixed_types))),
        "has type \"ubivol\"",
    );
    let wrong = sha_hex(b"something else");
    refused(
        c.open(&env(&description(&image("p.zip", "tope-package", &wrong)))),
        "sha256 mismatch",
    );
    refused(
        c.open(&env(&description(&image("p.zip", "tope-package", "abc")))),
        "not 64 hexadecimal digits",
    );
    refused(
        c.open(&env(&description(&image("../p.zip", "tope-package", &sha)))),
        "not a plain member name",
    );
    let syntax =
        "software = {\n  version = \"1\";\n  images: ( { filename = \"p.zip\"; type = ; } );\n};\n";
    refused(c.open(&env(syntax)), "sw-description line 3");
    refused(
        c.open(&env("software = { images: (); };")),
        "software.version is missing",
    );
    refused(c.open(&env("version = \"1\";")), "no software group");
    let scripts = "software = { version = \"1\"; scripts: ( { filename = \"s.sh\"; } ); };";
    refused(c.open(&env(scripts)), "software.scripts");
    let encrypted = format!(
        "software = {{ version = \"1\"; images: ( {{ filename = \"p.zip\"; type = \"tope-package\"; sha256 = \"{sha}\"; encrypted = true; }} ); }};"
    );
    refused(c.open(&env(&encrypted)), "encrypted");
    let not_utf8 = archive(
        "070701",
        &[("sw-description", b"software = {};\n\xff"), ("p.zip", &zip)],
    );
    refused(c.open(&not_utf8), "line 2: not UTF-8");
}

#[test]
fn writer_round_trip_and_zip_read_in_place_docs_api_9_3() {
    let c = Case::new();
    let zip_bytes = package_bytes();
    let zip = c.file("pkg.zip", &zip_bytes);
    let out = c.path("printer-1.2.3.swu");
    swu::write_envelope(&out, &zip, &meta(None, &["1.0", "rev \"B\""])).unwrap();

    let bytes = fs::read(&out).unwrap();
    assert!(swu::is_envelope(&bytes), "starts with a cpio magic");
    assert_eq!(
        bytes.len() % 512,
        0,
        "padded to 512-byte blocks as GNU cpio does"
    );
    let env = swu::open(&out).unwrap();
    env.verify_sha256(&out).unwrap();
    assert_eq!(env.format, Format::Crc);
    assert_eq!(env.version, "1.2.3");
    assert_eq!(env.board, None);
    assert_eq!(env.hardware_compatibility, ["1.0", "rev \"B\""]);
    assert_eq!(env.filename, "printer-1.2.3.zip");
    assert_eq!(env.sha256_hex(), sha_hex(&zip_bytes));
    assert_eq!(env.len, zip_bytes.len() as u64);
    let start = env.offset as usize;
    assert_eq!(&bytes[start..start + zip_bytes.len()], &zip_bytes[..]);

    // The zip crate reads the inner package in place.
    let window = env.window(fs::File::open(&out).unwrap()).unwrap();
    let mut archive = zip::ZipArchive::new(window).unwrap();
    let mut text = String::new();
    archive
        .by_name("manifest.json")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("\"1.2.3\""), "{text}");
    let mut bin = Vec::new();
    archive
        .by_name("app/bin")
        .unwrap()
        .read_to_end(&mut bin)
        .unwrap();
    assert_eq!(bin, b"#!/bin/sh\necho hi\n");
}

#[test]
fn writer_board_form_docs_api_9_3() {
    let c = Case::new();
    let zip = c.file("pkg.zip", &package_bytes());
    let out = c.path("b.swu");
    swu::write_envelope(&out, &zip, &meta(Some("tope-mk4"), &["2.0"])).unwrap();
    let env = swu::open(&out).unwrap();
    env.verify_sha256(&out).unwrap();
    assert_eq!(env.board.as_deref(), Some("tope-mk4"));
    assert_eq!(env.hardware_compatibility, ["2.0"]);
    // The hardware compatibility stands in the board's section, not beside it.
    let bytes = fs::read(&out).unwrap();
    let text = String::from_utf8_lossy(&bytes[..1024]);
    let section = text.find("tope-mk4 = {").expect("board section");
    assert!(
        text.find("hardware-compatibility").unwrap() > section,
        "{text}"
    );
    assert!(text.find("images").unwrap() > section, "{text}");
}

#[test]
fn writer_replaces_atomically_and_refuses_bad_meta_docs_api_9_3() {
    let c = Case::new();
    let zip = c.file("pkg.zip", &package_bytes());
    let out = c.file("out.swu", b"the old envelope");
    let users_tmp = c.file("out.swu.tmp", b"a user's file");
    let listing = || {
        let mut v: Vec<String> = fs::read_dir(c.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    for (m, what) in [
        (meta(Some("1board"), &[]), "board \"1board\""),
        (meta(Some("images"), &[]), "board \"images\""),
        (
            EnvelopeMeta {
                version: "1\n2".into(),
                ..meta(None, &[])
            },
            "version",
        ),
        (meta(None, &[""]), "hardware compatibility"),
    ] {
        let e = swu::write_envelope(&out, &zip, &m).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    let e = swu::write_envelope(&out, &c.path("missing.zip"), &meta(None, &[])).unwrap_err();
    assert!(matches!(e, SwuError::Read { .. }), "{e}");
    let e = swu::write_envelope(&c.path("no/such/dir/x.swu"), &zip, &meta(None, &[])).unwrap_err();
    assert_eq!(OtaError::from(e).code, ErrorCode::InternalError);
    assert_eq!(listing(), before, "nothing left behind by a failed write");
    assert_eq!(fs::read(&out).unwrap(), b"the old envelope");

    swu::write_envelope(&out, &zip, &meta(None, &[])).unwrap();
    assert_eq!(listing(), before, "no temporary left after a write");
    assert!(swu::open(&out).is_ok());
    assert_eq!(fs::read(&users_tmp).unwrap(), b"a user's file");
}

#[test]
fn window_reads_and_seeks_only_its_range_docs_api_9_3() {
    let c = Case::new();
    let p = c.file("w", b"0123456789");
    let mut w = swu::Window::new(fs::File::open(&p).unwrap(), 2, 5).unwrap();
    let mut s = String::new();
    w.read_to_string(&mut s).unwrap();
    assert_eq!(s, "23456");
    assert_eq!(w.seek(SeekFrom::End(-2)).unwrap(), 3);
    let mut b = [0u8; 8];
    assert_eq!(w.read(&mut b).unwrap(), 2);
    assert_eq!(&b[..2], b"56");
    assert_eq!(w.seek(SeekFrom::Current(10)).unwrap(), 15);
    assert_eq!(w.read(&mut b).unwrap(), 0, "nothing past the range");
    assert!(w.seek(SeekFrom::Current(-100)).is_err());
    assert_eq!(w.seek(SeekFrom::Start(0)).unwrap(), 0);
    assert_eq!(w.read(&mut b[..1]).unwrap(), 1);
    assert_eq!(b[0], b'2');
}
