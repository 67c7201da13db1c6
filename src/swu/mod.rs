//! The SWU envelope (docs/API.md 9.3): a cpio archive (`newc` or `crc`) whose first member is
//! `sw-description` (libconfig syntax) naming exactly one image of type `tope-package`, which
//! is the package's ZIP, stored as a member of its own.
//!
//! - [`write_envelope`] wraps a ZIP (streamed, never held in memory) and writes the envelope
//!   atomically.
//! - [`open`] reads the headers and `sw-description` (bounded) and gives the inner ZIP's byte
//!   range; [`Envelope::verify_sha256`] checks that range against `sw-description` in constant
//!   memory; [`Envelope::window`] lets the `zip` crate read the package in place.
//! - [`is_envelope`] tells an envelope from a ZIP by its first bytes, not its name.
//!
//! Every refusal is a [`SwuError`], which becomes `INVALID_PACKAGE` as an [`OtaError`].
//!
//! [`OtaError`]: crate::error::OtaError

mod cpio;
mod description;
mod error;
pub mod libconfig;
mod window;
mod write;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

pub use cpio::Format;
pub use description::IMAGE_TYPE;
pub use error::SwuError;
pub use window::Window;
pub use write::{check_meta, write_envelope, write_envelope_for};

/// Largest `sw-description` read.
pub const MAX_DESCRIPTION: u64 = 64 * 1024;
/// Most members read (the trailer included): an envelope has a handful.
pub const MAX_MEMBERS: usize = 1024;

/// What the writer puts in `sw-description` besides the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeMeta {
    /// `software.version`.
    pub version: String,
    /// With a board, the image and its `hardware-compatibility` stand in `software.<board>`.
    pub board: Option<String>,
    /// `hardware-compatibility` (left out when empty).
    pub hardware_compatibility: Vec<String>,
}

/// An envelope read by [`open`]: its `sw-description` and where the inner ZIP lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub format: Format,
    pub version: String,
    pub board: Option<String>,
    pub hardware_compatibility: Vec<String>,
    /// The image's member name (`<name>.zip`).
    pub filename: String,
    /// The image's sha256 as `sw-description` states it.
    pub sha256: [u8; 32],
    /// Where the inner ZIP's bytes start in the envelope file.
    pub offset: u64,
    /// The inner ZIP's length.
    pub len: u64,
    /// The `crc` format's checksum of the image member (`None` for `newc`).
    crc: Option<u32>,
}

/// Whether `first` (the first bytes of a file, at least 6) starts a cpio `newc` or `crc`
/// archive, as an envelope does (a package ZIP starts with `PK\x03\x04`).
pub fn is_envelope(first: &[u8]) -> bool {
    first.starts_with(cpio::MAGIC_NEWC) || first.starts_with(cpio::MAGIC_CRC)
}

fn read_err(what: &Path) -> impl FnOnce(std::io::Error) -> SwuError + '_ {
    move |source| SwuError::Read {
        what: what.display().to_string(),
        source,
    }
}

/// Read an envelope's headers and `sw-description`; see the module documentation for the
/// rules. Reads at most a few KiB besides `sw-description`, whatever the file claims.
pub fn open(path: &Path) -> Result<Envelope, SwuError> {
    let mut f = File::open(path).map_err(read_err(path))?;
    let file_len = f.metadata().map_err(read_err(path))?.len();
    read(&mut f, file_len)
}

/// [`open`] on an already open reader of `file_len` bytes.
pub fn read<R: Read + Seek>(r: &mut R, file_len: u64) -> Result<Envelope, SwuError> {
    let first = cpio::read_member(r, 0, file_len)?;
    if first.name != "sw-description" {
        return Err(SwuError::DescriptionNotFirst { found: first.name });
    }
    if !first.is_regular() {
        return Err(SwuError::NotRegular {
            name: first.name,
            mode: first.mode,
        });
    }
    if first.data_len > MAX_DESCRIPTION {
        return Err(SwuError::DescriptionTooLarge {
            len: first.data_len,
            limit: MAX_DESCRIPTION,
        });
    }
    let mut text = vec![0u8; first.data_len as usize];
    r.seek(SeekFrom::Start(first.data_offset))
        .and_then(|_| r.read_exact(&mut text))
        .map_err(|source| SwuError::Read {
            what: "sw-description".into(),
            source,
        })?;
    if first.format == Format::Crc {
        let sum = cpio::byte_sum(0, &text);
        if sum != first.check {
            return Err(SwuError::ChecksumMismatch {
                name: first.name,
                expected: first.check,
                actual: sum,
            });
        }
    }
    let text = String::from_utf8(text).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        SwuError::Syntax {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            msg: "not UTF-8 text".into(),
        }
    })?;
    let d = description::parse(&text)?;

    let mut image: Option<cpio::Member> = None;
    let mut at = first.next;
    for count in 1.. {
        if count >= MAX_MEMBERS {
            return Err(SwuError::TooManyMembers { limit: MAX_MEMBERS });
        }
        let m = cpio::read_member(r, at, file_len).map_err(|e| match e {
            SwuError::Truncated { .. } if at >= file_len => SwuError::NoTrailer,
            e => e,
        })?;
        if m.format != first.format {
            return Err(SwuError::BadMagic { offset: at });
        }
        if m.name == cpio::TRAILER {
            break;
        }
        if m.name == d.filename {
            if image.is_some() {
                return Err(SwuError::DuplicateMember { filename: m.name });
            }
            if !m.is_regular() {
                return Err(SwuError::NotRegular {
                    name: m.name,
                    mode: m.mode,
                });
            }
            at = m.next;
            image = Some(m);
        } else {
            at = m.next;
        }
    }
    let Some(m) = image else {
        return Err(SwuError::MemberMissing {
            filename: d.filename,
        });
    };
    Ok(Envelope {
        format: first.format,
        version: d.version,
        board: d.board,
        hardware_compatibility: d.hardware_compatibility,
        filename: d.filename,
        sha256: d.sha256,
        offset: m.data_offset,
        len: m.data_len,
        crc: (m.format == Format::Crc).then_some(m.check),
    })
}

/// Lower-case hexadecimal of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Envelope {
    /// The image's sha256 as `sw-description` states it, in hexadecimal.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// Stream the inner ZIP's bytes of `file` (the envelope [`open`] read) and check them
    /// against `sw-description`'s sha256 (and the `crc` format's checksum). Constant memory.
    pub fn verify_sha256(&self, file: &Path) -> Result<(), SwuError> {
        let f = File::open(file).map_err(read_err(file))?;
        self.verify_sha256_of(f, file)
    }

    /// [`Envelope::verify_sha256`] on the envelope already open as `f` (named `file` in
    /// errors), so the bytes checked are those of the file the caller goes on reading.
    pub fn verify_sha256_of(&self, f: File, file: &Path) -> Result<(), SwuError> {
        let mut w = self.window(f).map_err(read_err(file))?;
        let mut hasher = Sha256::new();
        let mut sum = 0u32;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = w.read(&mut buf).map_err(read_err(file))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sum = cpio::byte_sum(sum, &buf[..n]);
        }
        if w.position() != self.len {
            return Err(SwuError::MemberPastEnd {
                name: self.filename.clone(),
                end: self.offset + self.len,
                file_len: self.offset + w.position(),
            });
        }
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != self.sha256 {
            return Err(SwuError::Sha256Mismatch {
                filename: self.filename.clone(),
                expected: self.sha256_hex(),
                actual: hex(&actual),
            });
        }
        match self.crc {
            Some(expected) if expected != sum => Err(SwuError::ChecksumMismatch {
                name: self.filename.clone(),
                expected,
                actual: sum,
            }),
            _ => Ok(()),
        }
    }

    /// The inner ZIP of `file` (the envelope) as a reader of its own, for `zip::ZipArchive`.
    pub fn window(&self, file: File) -> std::io::Result<Window> {
        Window::new(file, self.offset, self.len)
    }
}
