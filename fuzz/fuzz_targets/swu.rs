//! The SWU envelope (docs/API.md 9.3): [`swu::open`] and [`Envelope::verify_sha256`] on
//! arbitrary bytes as a file, the libconfig reader on them as text, and the writer's round
//! trip with metadata and a package drawn from the input.
//!
//! Checks: nothing panics; every refusal is `INVALID_PACKAGE`; an accepted envelope's image
//! lies inside the file and the window reads exactly its bytes; an envelope the writer made is
//! read back with the same metadata and its image byte for byte. Memory: bounded by the
//! reader's limits (64 KiB of sw-description, 4 KiB names), whatever the headers claim.
//!
//! [`Envelope::verify_sha256`]: tope_updater::swu::Envelope::verify_sha256

#![no_main]

mod scratch;

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use tope_updater::error::{ErrorCode, OtaError};
use tope_updater::swu::{self, libconfig, EnvelopeMeta};

fn refused(e: swu::SwuError) {
    let ota = OtaError::from(e);
    assert_eq!(ota.code, ErrorCode::InvalidPackage, "{ota}");
}

/// Metadata the writer accepts, drawn from the first bytes of the input.
fn meta_from(data: &[u8]) -> EnvelopeMeta {
    let pick = data.first().copied().unwrap_or(0);
    let word = |from: usize| {
        let b = data.get(from..from + 3).unwrap_or(b"xyz");
        swu::hex(b)
    };
    EnvelopeMeta {
        version: format!("1.{}", word(1)),
        board: (pick & 1 == 1).then(|| format!("b{}", word(4))),
        hardware_compatibility: (0..(pick >> 1) % 4).map(|i| format!("rev \"{i}\"\\{}", word(7))).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let scratch = scratch::Scratch::new();
    let path = scratch.file("input.swu", data);
    match swu::open(&path) {
        Err(e) => refused(e),
        Ok(env) => {
            assert!(env.offset + env.len <= data.len() as u64);
            match env.verify_sha256(&path) {
                Err(e) => refused(e),
                Ok(()) => {
                    let mut w = env.window(std::fs::File::open(&path).expect("reopen")).expect("window");
                    let mut inner = Vec::new();
                    w.read_to_end(&mut inner).expect("read the window");
                    let start = env.offset as usize;
                    assert_eq!(inner, &data[start..start + env.len as usize]);
                }
            }
        }
    }
    let _ = swu::is_envelope(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = libconfig::parse(text);
    }

    // The writer's round trip, on small inputs (the rest of the input is the package).
    if data.len() <= 4096 {
        let meta = meta_from(data);
        let zip = scratch.file("package.zip", data.get(10..).unwrap_or_default());
        let out = scratch.dir("out").join("e.swu");
        swu::write_envelope(&out, &zip, &meta).expect("the writer accepts this metadata");
        let env = swu::open(&out).expect("the writer's envelope reads back");
        env.verify_sha256(&out).expect("its sha256 matches");
        assert_eq!(env.version, meta.version);
        assert_eq!(env.board, meta.board);
        assert_eq!(env.hardware_compatibility, meta.hardware_compatibility);
        let bytes = std::fs::read(&out).expect("read the envelope");
        let start = env.offset as usize;
        assert_eq!(&bytes[start..start + env.len as usize], data.get(10..).unwrap_or_default());
    }
});
