//! A window onto a byte range of a file: `Read + Seek` over `[offset, offset + len)` only,
//! so the `zip` crate reads the package inside an envelope in place (docs/API.md 9.3).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

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

    /// A window over the whole of `file` (a package ZIP that is not in an envelope), so the
    /// ZIP reader has one kind of input (docs/API.md 9.3).
    pub fn whole(file: File) -> io::Result<Window> {
        let len = file.metadata()?.len();
        Window::new(file, 0, len)
    }

    /// Fill `buf` from position `offset` of the window, leaving the position as it is. Reading
    /// past the end of the window is `UnexpectedEof`, as for a file.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.file.read_exact_at(buf, self.start + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the window",
            )),
        }
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
        // One positioned read: the file's own offset is not used, so clones of the file
        // (the sha256 pass, the ZIP reader) never disturb each other.
        let n = self.file.read_at(&mut buf[..want], self.start + self.pos)?;
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
