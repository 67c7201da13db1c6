//! A window onto a byte range of a file: `Read + Seek` over `[offset, offset + len)` only,
//! so the `zip` crate reads the package inside an envelope in place (docs/API.md 9.3).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

/// `Read + Seek` over `[start, start + len)` of a file; position 0 is `start`. Reads stop at
/// the end of the range; seeking past it is allowed (reads there return nothing).
#[derive(Debug)]
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    /// A window at its position 0. Fails when the range does not fit in `u64`.
    pub fn new(mut file: File, start: u64, len: u64) -> io::Result<Window> {
        if start.checked_add(len).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "window past 2^64",
            ));
        }
        file.seek(SeekFrom::Start(start))?;
        Ok(Window {
            file,
            start,
            len,
            pos: 0,
        })
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The position within the window.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            // Past the end is allowed (as for a file); the sum stays below 2^64 because
            // reads never go past `len`.
            Some(t) if t <= u64::MAX - self.start => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the window",
            )),
        }
    }
}
