//! Paths that stay inside `allowed_roots`, whatever is on the disk (docs/API.md section 8.3).
//!
//! Two moments:
//! - **Check time** ([`resolve_dst`]): a `dst` is resolved with the symlinks of every existing
//!   directory component followed (as the kernel would), missing components appended as they
//!   are; the result must lie inside one of the roots, else the manifest is refused. What is
//!   kept is the destination's directory relative to that root, free of symlinks at that moment.
//! - **Write time** ([`Root::dir`]): every directory is reached again from an open descriptor of
//!   the root, one component at a time, each opened with `O_NOFOLLOW`. A component that has
//!   become a symbolic link since the check is read and followed only when its target stays
//!   inside the root (printers laid out by the Python updater run from `versions/<v>` behind a
//!   relative `current` link); one that leads outside is never followed, so a link swapped in
//!   after the check cannot redirect a write. The last component of a destination is never
//!   followed: it is only ever the name of a rename, link or unlink in its directory.
//!
//! The component walk is written out here rather than left to `openat2(RESOLVE_BENEATH)`:
//! that call needs Linux 5.6, which some printer kernels predate, and it refuses absolute links
//! even when they point inside the root, which the Python updater's layouts may hold.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::error::ResolveError;

/// Most symbolic links followed while resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// Times a missing directory may turn out to exist when the updater creates it (someone else
/// made it meanwhile) before the walk gives up.
const MAX_CREATE_RACES: usize = 8;

/// A test's hook: called with a missing directory's parent and name.
#[cfg(test)]
type MkdirHook = Box<dyn Fn(BorrowedFd<'_>, &OsStr)>;

#[cfg(test)]
thread_local! {
    /// Called with a missing directory's name right before the updater creates it: lets a test
    /// make it appear in between, as another process could.
    pub(super) static BEFORE_MKDIR: std::cell::RefCell<Option<MkdirHook>> =
        const { std::cell::RefCell::new(None) };
}

/// An allowed root, opened. `path` is the root as configured (normalised), `real` the same
/// directory with its own symlinks resolved (an absolute link inside the root may name either).
#[derive(Debug)]
pub struct Root {
    pub path: PathBuf,
    real: PathBuf,
    fd: OwnedFd,
}

/// A directory reached beneath a root: its descriptor and its symlink-free path relative to the
/// root (as found by this walk).
#[derive(Debug)]
pub struct Dir {
    pub fd: OwnedFd,
    pub rel: PathBuf,
}

fn escape(what: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}", what.display()),
    )
}

/// `rel` as plain names, or an error when it holds anything else (`..`, a root).
fn names(rel: &Path) -> io::Result<Vec<OsString>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n.to_os_string()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .collect()
}

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Root {
    /// Open a root directory (its own path, configured by the operator, is trusted and followed).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let real = fs::canonicalize(path)?;
        Ok(Root {
            path: path.to_path_buf(),
            real,
            fd,
        })
    }

    /// The directory `rel` beneath the root (see the module documentation). With `created`,
    /// missing directories are made (mode 0755) and their paths (below [`Root::path`]) pushed;
    /// they are not made durable here: the caller's flush barrier covers them.
    pub fn dir(&self, rel: &Path, mut created: Option<&mut Vec<PathBuf>>) -> io::Result<Dir> {
        let mut pending: Vec<OsString> = names(rel)?;
        pending.reverse();
        let mut fd = rustix::io::dup(&self.fd)?;
        let mut at = PathBuf::new();
        let mut links = 0usize;
        let mut races = 0usize;
        while let Some(name) = pending.pop() {
            match open_dir_nofollow(fd.as_fd(), &name) {
                Ok(next) => {
                    fd = next;
                    at.push(&name);
                }
                Err(rustix::io::Errno::NOENT) if created.is_some() => {
                    #[cfg(test)]
                    BEFORE_MKDIR.with(|h| {
                        if let Some(h) = h.borrow().as_ref() {
                            h(fd.as_fd(), &name)
                        }
                    });
                    match rustix::fs::mkdirat(fd.as_fd(), &name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {}
                        // Made by someone else meanwhile: not the updater's (never chmod'ed,
                        // never removed by a rollback); walked like any existing component,
                        // its links followed only while they stay beneath the root.
                        Err(rustix::io::Errno::EXIST) if races < MAX_CREATE_RACES => {
                            races += 1;
                            pending.push(name);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let next = open_dir_nofollow(fd.as_fd(), &name)?;
                    // Exactly 0755 whatever the umask (docs/API.md section 4).
                    rustix::fs::fchmod(&next, Mode::from_raw_mode(0o755))?;
                    fd = next;
                    at.push(&name);
                    if let Some(c) = created.as_deref_mut() {
                        c.push(self.path.join(&at));
                    }
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    let target = match rustix::fs::readlinkat(fd.as_fd(), &name, Vec::new()) {
                        Ok(t) => PathBuf::from(OsStr::from_bytes(t.as_bytes())),
                        Err(rustix::io::Errno::INVAL) => {
                            return Err(io::Error::new(
                                io::ErrorKind::NotADirectory,
                                format!(
                                    "{} is not a directory",
                                    self.path.join(&at).join(&name).display()
                                ),
                            ))
                        }
                        Err(e) => return Err(e.into()),
                    };
                    links += 1;
                    let link = self.path.join(&at).join(&name);
                    if links > MAX_LINKS {
                        return Err(escape(&link, "too many levels of symbolic links".into()));
                    }
                    // Where the link leads, relative to the root, then what is left to walk.
                    let mut rest: Vec<OsString> = pending.drain(..).rev().collect();
                    let mut next = self.beneath(&at, &target).ok_or_else(|| {
                        escape(
                            &link,
                            format!(
                                "symbolic link to {} leads outside {}",
                                target.display(),
                                self.path.display()
                            ),
                        )
                    })?;
                    next.append(&mut rest);
                    next.reverse();
                    pending = next;
                    fd = rustix::io::dup(&self.fd)?;
                    at = PathBuf::new();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Dir { fd, rel: at })
    }

    /// The names (relative to the root) a link found in directory `at` (relative to the root)
    /// with content `target` leads to, lexically; `None` when it leads outside the root.
    fn beneath(&self, at: &Path, target: &Path) -> Option<Vec<OsString>> {
        let mut out: Vec<OsString> = if target.is_absolute() {
            let inside = target
                .strip_prefix(&self.path)
                .or_else(|_| target.strip_prefix(&self.real))
                .ok()?;
            return normalize_within(inside);
        } else {
            names(at).ok()?
        };
        for c in target.components() {
            match c {
                Component::Normal(n) => out.push(n.to_os_string()),
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop()?;
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

/// `rel` with `.` dropped and `..` applied, never above its start; `None` if it would go above.
fn normalize_within(rel: &Path) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Where a destination lies once the symlinks of its existing directories are followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Index into the roots given to [`resolve_dst`].
    pub root: usize,
    /// The destination's directory, relative to that root.
    pub dir: PathBuf,
    /// The destination's own name (never followed).
    pub name: OsString,
}

/// Check time: resolve `dst` (absolute, normalised) against `roots` (see the module
/// documentation). The error says why, for an `INVALID_MANIFEST` detail.
pub fn resolve_dst(dst: &Path, roots: &[PathBuf]) -> Result<Resolved, ResolveError> {
    let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(ResolveError::NoParent(dst.to_path_buf()));
    };
    // The longest existing ancestor, symlinks resolved; what is missing is appended as is.
    let mut resolved = None;
    for anc in parent.ancestors() {
        match fs::canonicalize(anc) {
            Ok(real) => {
                let rest = parent.strip_prefix(anc).unwrap_or(Path::new(""));
                if let Some(first) = rest.components().next() {
                    let below = anc.join(first);
                    if fs::symlink_metadata(&below).is_ok() {
                        // It exists but cannot be resolved: a dangling link or no permission.
                        return Err(ResolveError::Dangling(below));
                    }
                }
                resolved = Some(real.join(rest));
                break;
            }
            Err(_) => continue,
        }
    }
    let resolved = resolved.ok_or_else(|| ResolveError::Unresolvable(dst.to_path_buf()))?;
    for (i, r) in roots.iter().enumerate() {
        let real_root = fs::canonicalize(r).unwrap_or_else(|_| r.clone());
        if let Ok(dir) = resolved.strip_prefix(&real_root) {
            return Ok(Resolved {
                root: i,
                dir: dir.to_path_buf(),
                name: name.to_os_string(),
            });
        }
    }
    Err(ResolveError::Outside {
        dst: dst.to_path_buf(),
        roots: roots.to_vec(),
        via: (resolved != parent).then_some(resolved),
    })
}

/// What is at `name` in `dir`, without following a link; `None` when nothing is.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<fs::Metadata>> {
    match rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => File::from(fd).metadata().map(Some),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove `name` from `dir` (a file or link); nothing there is not an error.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `<name>.tmp`: the temporary beside its destination that journals of format 2 name (docs/API.md
/// 9.6: read back only, to roll back an installation an earlier version left behind).
pub fn legacy_tmp_name(name: &OsStr) -> OsString {
    let mut t = name.to_os_string();
    t.push(".tmp");
    t
}

/// Prefix of the staging names the updater creates beside destinations (docs/API.md 9.6).
pub const STAGE_PREFIX: &str = ".tope-stage-";

/// The staging name of destination `n` (journal order) of the installation `id`:
/// `.tope-stage-<id>-<n>`, short whatever the destination's length, and the updater's own (the
/// id is random per installation; the name is created with `O_EXCL`, never reused).
pub fn stage_name(id: &str, n: usize) -> OsString {
    OsString::from(format!("{STAGE_PREFIX}{id}-{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("opt/tope");
        fs::create_dir_all(root.join("versions/v1/app")).unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        (d, root)
    }

    fn write_in(dir: &Dir, name: &str, data: &[u8]) {
        let fd = rustix::fs::openat(
            &dir.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&fd, data).unwrap();
    }

    /// docs/API.md 9.6: a directory someone else makes between the updater's look and its
    /// `mkdir` is not the updater's: not counted as created (a rollback would remove it), its
    /// mode left as it is; and one made as a link out of the root is never followed.
    #[test]
    fn docs_api_9_6_a_directory_made_meanwhile_by_someone_else_is_not_ours() {
        use std::os::unix::fs::PermissionsExt;
        let (d, root) = setup();
        let outside = d.path().join("etc");
        BEFORE_MKDIR.with(|h| {
            *h.borrow_mut() = Some(Box::new(|dir: BorrowedFd<'_>, name: &OsStr| {
                if name == "theirs" {
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).unwrap();
                }
            }))
        });
        let r = Root::open(&root).unwrap();
        let mut created = Vec::new();
        let dir = r.dir(Path::new("theirs/mine"), Some(&mut created));
        BEFORE_MKDIR.with(|h| *h.borrow_mut() = None);
        let dir = dir.unwrap();
        assert_eq!(dir.rel, Path::new("theirs/mine"));
        assert_eq!(
            created,
            vec![root.join("theirs/mine")],
            "only `mine` is the updater's"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode(&root.join("theirs")),
            0o700,
            "left as its maker made it"
        );
        assert_eq!(mode(&root.join("theirs/mine")), 0o755);

        // Made meanwhile as a link out of the root: refused, nothing written outside.
        let target = outside.clone();
        BEFORE_MKDIR.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |dir: BorrowedFd<'_>, name: &OsStr| {
                if name == "evil" {
                    rustix::fs::symlinkat(&target, dir, name).unwrap();
                }
            }))
        });
        let mut created = Vec::new();
        let escaped = r.dir(Path::new("evil/x"), Some(&mut created));
        BEFORE_MKDIR.with(|h| *h.borrow_mut() = None);
        assert!(escaped.is_err(), "a link out of the root is never followed");
        assert!(created.is_empty());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn contract_8_3_relative_link_inside_the_root_is_followed() {
        let (_d, root) = setup();
        symlink("versions/v1", root.join("current")).unwrap();
        let r = Root::open(&root).unwrap();
        let dir = r.dir(Path::new("current/app"), None).unwrap();
        assert_eq!(dir.rel, Path::new("versions/v1/app"));
        write_in(&dir, "bin", b"x");
        assert_eq!(fs::read(root.join("versions/v1/app/bin")).unwrap(), b"x");
        assert!(fs::symlink_metadata(root.join("current"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn contract_8_3_absolute_link_inside_the_root_is_followed() {
        let (_d, root) = setup();
        symlink(root.join("versions/v1"), root.join("current")).unwrap();
        let r = Root::open(&root).unwrap();
        let dir = r.dir(Path::new("current/app"), None).unwrap();
        assert_eq!(dir.rel, Path::new("versions/v1/app"));
    }

    #[test]
    fn contract_8_3_link_leading_outside_is_never_followed() {
        let (d, root) = setup();
        symlink(d.path().join("etc"), root.join("evil")).unwrap();
        symlink("../../etc", root.join("up")).unwrap();
        symlink("versions/../../../etc", root.join("sneaky")).unwrap();
        let r = Root::open(&root).unwrap();
        for via in ["evil", "up", "sneaky"] {
            let e = r.dir(Path::new(via), Some(&mut Vec::new())).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{via}: {e}");
            assert!(e.to_string().contains("outside"), "{e}");
        }
        assert_eq!(fs::read_dir(d.path().join("etc")).unwrap().count(), 0);
    }

    #[test]
    fn missing_directories_are_created_0755_and_reported() {
        let (_d, root) = setup();
        let r = Root::open(&root).unwrap();
        let mut made = Vec::new();
        let dir = r.dir(Path::new("a/b"), Some(&mut made)).unwrap();
        assert_eq!(dir.rel, Path::new("a/b"));
        assert_eq!(made, vec![root.join("a"), root.join("a/b")]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(root.join("a/b")).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        let e = r.dir(Path::new("c"), None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_file_in_the_way_is_not_a_directory() {
        let (_d, root) = setup();
        fs::write(root.join("f"), "x").unwrap();
        let r = Root::open(&root).unwrap();
        let e = r.dir(Path::new("f/x"), Some(&mut Vec::new())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
    }

    #[test]
    fn link_loops_end() {
        let (_d, root) = setup();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let r = Root::open(&root).unwrap();
        let e = r.dir(Path::new("a"), None).unwrap_err();
        assert!(e.to_string().contains("too many"), "{e}");
    }

    #[test]
    fn contract_8_3_check_time_follows_existing_directories() {
        let (d, root) = setup();
        let roots = [root.clone()];
        symlink("versions/v1", root.join("current")).unwrap();
        symlink(d.path().join("etc"), root.join("evil")).unwrap();
        let r = resolve_dst(&root.join("current/app/bin"), &roots).unwrap();
        assert_eq!(r.dir, Path::new("versions/v1/app"));
        assert_eq!(r.name, "bin");
        let r = resolve_dst(&root.join("new/dir/f"), &roots).unwrap();
        assert_eq!(r.dir, Path::new("new/dir"));
        let e = resolve_dst(&root.join("evil/passwd"), &roots).unwrap_err();
        assert!(matches!(e, ResolveError::Outside { .. }), "{e}");
        assert!(e.to_string().contains("outside"), "{e}");
        symlink(d.path().join("nowhere"), root.join("dangling")).unwrap();
        let e = resolve_dst(&root.join("dangling/x"), &roots).unwrap_err();
        assert!(e.to_string().contains("dangling"), "{e}");
        // The last component is never followed: a link there is replaced, not resolved.
        symlink(d.path().join("etc/passwd"), root.join("link")).unwrap();
        assert_eq!(
            resolve_dst(&root.join("link"), &roots).unwrap().name,
            "link"
        );
    }

    #[test]
    fn lexical_containment() {
        let (_d, root) = setup();
        let r = Root::open(&root).unwrap();
        let n = |v: Option<Vec<OsString>>| {
            v.map(|v| {
                v.iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            n(r.beneath(Path::new("a/b"), Path::new("../c"))),
            Some(vec!["a".into(), "c".into()])
        );
        assert_eq!(n(r.beneath(Path::new("a"), Path::new("../../x"))), None);
        assert_eq!(
            n(r.beneath(Path::new("a"), &root.join("v/./w"))),
            Some(vec!["v".into(), "w".into()])
        );
        assert_eq!(n(r.beneath(Path::new("a"), Path::new("/etc"))), None);
    }

    proptest::proptest! {
        /// Whatever a symbolic link inside the root points at, a directory reached beneath the
        /// root (created as needed) really is inside it, and nothing appears outside.
        #[test]
        fn contract_8_3_no_link_leads_a_walk_out_of_the_root(
            target in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("..".to_string()),
                    proptest::strategy::Just(".".to_string()),
                    proptest::strategy::Just("a".to_string()),
                    proptest::strategy::Just("c".to_string()),
                    proptest::strategy::Just("etc".to_string()),
                ],
                0..6,
            ),
            absolute in proptest::bool::ANY,
            below in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("x".to_string()),
                    proptest::strategy::Just("link".to_string()),
                ],
                0..3,
            ),
        ) {
            let (d, root) = setup();
            let outside = d.path().join("etc");
            fs::create_dir_all(root.join("a/c")).unwrap();
            // An empty link target is not allowed: `.` stands for it.
            let rel_target = if target.is_empty() { ".".to_string() } else { target.join("/") };
            let link_target = if absolute {
                d.path().join("opt").join(&rel_target)
            } else {
                PathBuf::from(&rel_target)
            };
            symlink(&link_target, root.join("a/link")).unwrap();
            let r = Root::open(&root).unwrap();
            let real_root = fs::canonicalize(&root).unwrap();
            let mut rel = PathBuf::from("a/link");
            rel.extend(&below);
            if let Ok(dir) = r.dir(&rel, Some(&mut Vec::new())) {
                let at = fs::read_link(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&dir.fd)
                ))
                .unwrap();
                proptest::prop_assert!(
                    at.starts_with(&real_root),
                    "{} -> {} led to {}",
                    rel.display(),
                    link_target.display(),
                    at.display()
                );
                proptest::prop_assert_eq!(real_root.join(&dir.rel), at);
            }
            proptest::prop_assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        }
    }
}
