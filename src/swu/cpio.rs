//! The cpio `newc` (magic `070701`) and `crc` (`070702`) formats, as far as a SWU envelope
//! needs them: a 110-byte ASCII header, the NUL-terminated name padded to 4 bytes, the data
//! padded to 4 bytes, and a `TRAILER!!!` member at the end (cpio(5), "New ASCII Format").
//! Reads are bounded: a name is at most [`MAX_NAME`] bytes and a member never reaches past
//! the end of the file; nothing of a member's data is read here.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::SwuError;

pub const MAGIC_NEWC: &[u8; 6] = b"070701";
pub const MAGIC_CRC: &[u8; 6] = b"070702";
pub const HEADER_LEN: u64 = 110;
/// The longest member name read (with its NUL).
pub const MAX_NAME: u64 = 4096;
pub const TRAILER: &str = "TRAILER!!!";
/// Regular file type bits of `mode`.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;

/// The two cpio formats SWUpdate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `070701`: no checksum.
    Newc,
    /// `070702`: the header's `check` is the sum of the data bytes (mod 2^32).
    Crc,
}

/// One member's header, with where its data lies in the file.
#[derive(Debug, Clone)]
pub struct Member {
    pub format: Format,
    pub name: String,
    pub mode: u32,
    pub check: u32,
    pub data_offset: u64,
    pub data_len: u64,
    /// Where the next header starts.
    pub next: u64,
}

impl Member {
    pub fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

pub fn align4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

fn read_err(source: io::Error) -> SwuError {
    SwuError::Read {
        what: "the envelope".into(),
        source,
    }
}

/// Read `buf.len()` bytes at `offset`; `Ok(false)` when the file ends first.
fn read_exact_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<bool, SwuError> {
    r.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(read_err(e)),
    }
}

const FIELDS: [&str; 13] = [
    "c_ino",
    "c_mode",
    "c_uid",
    "c_gid",
    "c_nlink",
    "c_mtime",
    "c_filesize",
    "c_devmajor",
    "c_devminor",
    "c_rdevmajor",
    "c_rdevminor",
    "c_namesize",
    "c_check",
];

fn hex_field(h: &[u8], i: usize, offset: u64) -> Result<u32, SwuError> {
    let bad = SwuError::BadHeader {
        offset,
        field: FIELDS[i],
    };
    let s = &h[6 + 8 * i..6 + 8 * (i + 1)];
    if !s.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad);
    }
    let s = std::str::from_utf8(s).map_err(|_| SwuError::BadHeader {
        offset,
        field: FIELDS[i],
    })?;
    u32::from_str_radix(s, 16).map_err(|_| bad)
}

/// Read the member header at `offset` of a file of `file_len` bytes.
pub fn read_member<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    file_len: u64,
) -> Result<Member, SwuError> {
    let mut h = [0u8; HEADER_LEN as usize];
    if !read_exact_at(r, offset, &mut h)? {
        return Err(SwuError::Truncated { offset });
    }
    let format = match &h[..6] {
        m if m == MAGIC_NEWC => Format::Newc,
        m if m == MAGIC_CRC => Format::Crc,
        _ => return Err(SwuError::BadMagic { offset }),
    };
    let mode = hex_field(&h, 1, offset)?;
    let filesize = u64::from(hex_field(&h, 6, offset)?);
    let namesize = u64::from(hex_field(&h, 11, offset)?);
    let check = hex_field(&h, 12, offset)?;
    for i in [0, 2, 3, 4, 5, 7, 8, 9, 10] {
        hex_field(&h, i, offset)?;
    }
    if !(2..=MAX_NAME).contains(&namesize) {
        return Err(SwuError::BadNameSize {
            offset,
            len: namesize,
            limit: MAX_NAME,
        });
    }
    let mut name = vec![0u8; namesize as usize];
    if !read_exact_at(r, offset + HEADER_LEN, &mut name)? {
        return Err(SwuError::Truncated { offset });
    }
    if name.pop() != Some(0) || name.contains(&0) {
        return Err(SwuError::BadName { offset });
    }
    let name = String::from_utf8(name).map_err(|_| SwuError::BadName { offset })?;
    let data_offset = align4(offset + HEADER_LEN + namesize);
    let end = data_offset + filesize;
    if end > file_len {
        return Err(SwuError::MemberPastEnd {
            name,
            end,
            file_len,
        });
    }
    Ok(Member {
        format,
        name,
        mode,
        check,
        data_offset,
        data_len: filesize,
        next: align4(end),
    })
}

/// The `crc` format's checksum: the sum of the data bytes, mod 2^32.
pub fn byte_sum(sum: u32, data: &[u8]) -> u32 {
    data.iter().fold(sum, |s, b| s.wrapping_add(u32::from(*b)))
}

/// Write one `crc`-format header (with its name and the padding up to the data).
/// The archive's length so far must be a multiple of 4. Returns the bytes written.
pub fn write_header<W: Write>(
    w: &mut W,
    ino: u32,
    name: &str,
    mode: u32,
    size: u32,
    check: u32,
) -> io::Result<u64> {
    let nlink = u32::from(mode != 0);
    let namesize = name.len() as u64 + 1;
    let header = format!(
        "070702{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{check:08x}",
        0, 0, 0, 0, 0, 0, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(b"\0")?;
    let len = HEADER_LEN + namesize;
    let pad = align4(len) - len;
    w.write_all(&[0u8; 4][..pad as usize])?;
    Ok(len + pad)
}

/// Regular file mode of the members written (`-rw-r--r--`).
pub const FILE_MODE: u32 = S_IFREG | 0o644;
