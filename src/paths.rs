//! Lexical path rules shared by the configuration (`allowed_roots`) and the package checks
//! (`dst`): no I/O, no symlink resolution (that is `deploy::check` and `deploy::beneath`).

use std::path::{Component, Path, PathBuf};

/// Lexically normalise an absolute path: drop `.` components, refuse `..`.
/// Returns `None` for a relative path or one with a `..` component.
pub fn normalize_abs(p: &Path) -> Option<PathBuf> {
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(
            normalize_abs(Path::new("/opt/./tope//x")),
            Some(PathBuf::from("/opt/tope/x"))
        );
        assert_eq!(normalize_abs(Path::new("/opt/../etc")), None);
        assert_eq!(normalize_abs(Path::new("opt")), None);
    }
}
