//! Who a process runs as and with what environment: the `Uid:`, `Gid:` and `Groups:` lines of
//! `/proc/<pid>/status` and the entries of `/proc/<pid>/environ`, read as bytes, so that a
//! process stopped for an installation can be started again exactly as it ran (docs/API.md
//! 9.6).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;

use super::procfs::{liveness, vanished, Liveness, ProcId, Procfs, RealProcfs, MAX_PROC_READ};

/// The credentials and environment of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Real user id (first field of `Uid:`).
    pub uid: u32,
    /// Real group id (first field of `Gid:`).
    pub gid: u32,
    /// Supplementary groups (`Groups:`), in the kernel's order.
    pub groups: Vec<u32>,
    /// `NAME=value` entries of `/proc/<pid>/environ` (any bytes).
    pub env: Vec<OsString>,
    /// False when the environment is longer than the updater reads (1 MiB): `env` is cut.
    pub env_complete: bool,
}

/// The rest of the line of `/proc/<pid>/status` that starts with `key`. The file is read as
/// bytes: its `Name:` line is a process's `comm`, which may be any bytes (not only UTF-8).
fn field<'a>(status: &'a [u8], key: &[u8]) -> Option<&'a str> {
    status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
}

/// Parse the lines of `/proc/<pid>/status` this module needs: the first (real) ids of `Uid:`
/// and `Gid:`, and every id of `Groups:`.
pub(crate) fn parse_status(status: &[u8]) -> Option<(u32, u32, Vec<u32>)> {
    let first = |key: &[u8]| {
        field(status, key)?
            .split_ascii_whitespace()
            .next()?
            .parse::<u32>()
            .ok()
    };
    let uid = first(b"Uid:")?;
    let gid = first(b"Gid:")?;
    let groups = field(status, b"Groups:")?
        .split_ascii_whitespace()
        .map(str::parse::<u32>)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some((uid, gid, groups))
}

/// `/proc/<pid>/environ` as its entries (NUL-terminated).
pub(crate) fn split_environ(environ: &[u8]) -> Vec<OsString> {
    environ
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| OsString::from_vec(e.to_vec()))
        .collect()
}

/// Read the identity of process `id`. `Ok(None)` when it is gone (its pid answers `ENOENT`,
/// `ESRCH`, or belongs to another process by now); an error when `/proc` cannot be read.
pub fn identity(id: &ProcId) -> io::Result<Option<Identity>> {
    let read = |file: &str| -> io::Result<Option<Vec<u8>>> {
        match RealProcfs
            .open(id.pid, file)
            .and_then(|f| RealProcfs.reread(&f))
        {
            Ok(data) => Ok(Some(data)),
            Err(e) if vanished(&e) => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read /proc/{}/{file}: {e}", id.pid),
            )),
        }
    };
    let (Some(status), Some(environ)) = (read("status")?, read("environ")?) else {
        return Ok(None);
    };
    // Checked after the reads, so what was read belongs to this very process.
    match liveness(id) {
        Liveness::Alive => {}
        Liveness::Gone => return Ok(None),
        Liveness::Unknown(e) => return Err(e),
    }
    let (uid, gid, groups) = parse_status(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable Uid/Gid/Groups in /proc/{}/status", id.pid),
        )
    })?;
    Ok(Some(Identity {
        uid,
        gid,
        groups,
        env_complete: environ.len() < MAX_PROC_READ,
        env: split_environ(&environ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_api_9_6_status_and_environ_are_parsed_exactly() {
        let status = b"Name:\tx\nUid:\t65534\t65534\t65534\t65534\nGid:\t100\t100\t100\t100\n\
                       FDSize:\t64\nGroups:\t4 20 27 \nNSpid:\t9\n";
        assert_eq!(parse_status(status), Some((65534, 100, vec![4, 20, 27])));
        let none = b"Name:\t\xff\xfe\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        assert_eq!(parse_status(none), Some((0, 0, vec![])));
        assert_eq!(parse_status(b"Uid:\tx\n"), None);
        let env = split_environ(b"A=1\0PRINTER_PORT=\xff/dev\0\0");
        assert_eq!(env.len(), 2);
        assert_eq!(
            env[1],
            OsString::from_vec(b"PRINTER_PORT=\xff/dev".to_vec())
        );
    }

    #[test]
    fn docs_api_9_6_identity_of_a_running_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .env_clear()
            .env("PRINTER_PORT", "/dev/ttyS9")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
        let id = ProcId {
            pid,
            start_time: super::super::procfs::parse_stat(&stat).unwrap().start_time,
        };
        let who = identity(&id).unwrap().unwrap();
        assert_eq!(who.uid, rustix::process::getuid().as_raw());
        assert_eq!(who.env, vec![OsString::from("PRINTER_PORT=/dev/ttyS9")]);
        assert!(who.env_complete);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(identity(&id).unwrap(), None);
    }
}
