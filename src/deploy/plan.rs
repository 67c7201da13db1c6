//! The plan of an installation, computed without touching anything: which module starts when,
//! which processes are stopped, and the destinations grouped by directory (one directory is
//! opened, flushed and journalled once, not once per file). Pure: table-tested.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{self, OtaError};
use crate::package::{Module, PlannedFile};

use super::beneath::Resolved;
use super::journal::{DirTargets, JModule, Journal, Phase, FORMAT};

/// Module indices in start order: `restart_order` ascending, modules without one after those
/// with one, ties in manifest order. Stopping uses the reverse.
pub fn start_order<M: Ordered>(modules: &[M]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..modules.len()).collect();
    idx.sort_by_key(|&i| {
        let o = modules[i].restart_order();
        (o.is_none(), o.unwrap_or(0), i)
    });
    idx
}

/// What [`start_order`] needs of a module (the manifest's and the journal's).
pub trait Ordered {
    fn restart_order(&self) -> Option<i64>;
}

impl Ordered for Module {
    fn restart_order(&self) -> Option<i64> {
        self.restart_order
    }
}

impl Ordered for JModule {
    fn restart_order(&self) -> Option<i64> {
        self.restart_order
    }
}

/// Whether the installation stops the module's processes (and so starts them again).
pub fn stops(m: &JModule) -> bool {
    m.service.is_some() || m.process_name.is_some()
}

/// The files of one module that go into one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub module: usize,
    /// Index into the roots.
    pub root: usize,
    pub rel: PathBuf,
    /// Indices into the package's files, with their destination names.
    pub files: Vec<(usize, OsString)>,
}

/// Group the package's files (already resolved, one [`Resolved`] per file) by module, then by
/// directory in the order first met. Refuses two files that resolve to the same destination
/// (through a symlink, say) and a destination that is also the directory of another:
/// `INVALID_MANIFEST`. A destination named like another's `<name>.tmp` is an ordinary file:
/// staging names are the updater's own (docs/API.md 9.6) and never collide with a destination.
pub fn group(
    files: &[PlannedFile],
    resolved: &[Resolved],
    roots: &[PathBuf],
) -> Result<Vec<Group>, OtaError> {
    let mut owner: HashMap<(usize, PathBuf), usize> = HashMap::new();
    for (i, r) in resolved.iter().enumerate() {
        if let Some(other) = owner.insert((r.root, r.dir.join(&r.name)), i) {
            return Err(error::invalid_manifest(format!(
                "{} and {} are the same file on this device",
                files[other].dst.display(),
                files[i].dst.display()
            )));
        }
    }
    let dirs: HashSet<(usize, &Path)> = resolved
        .iter()
        .flat_map(|r| r.dir.ancestors().map(move |a| (r.root, a)))
        .collect();
    for r in resolved {
        let as_path = r.dir.join(&r.name);
        if dirs.contains(&(r.root, as_path.as_path())) {
            return Err(error::invalid_manifest(format!(
                "{} is a file of the package and a directory of another of its files",
                roots[r.root].join(&as_path).display()
            )));
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut index: BTreeMap<(usize, usize, &Path), usize> = BTreeMap::new();
    for (i, (f, r)) in files.iter().zip(resolved).enumerate() {
        let key = (f.module, r.root, r.dir.as_path());
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                module: f.module,
                root: r.root,
                rel: r.dir.clone(),
                files: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g].files.push((i, r.name.clone()));
    }
    groups.sort_by_key(|g| g.module);
    Ok(groups)
}

/// The journal of a new installation (phase `staging`), from its plan; `stage_id` names its
/// staging files ([`Journal::staging_name`]).
pub fn journal(
    version: &str,
    stage_id: String,
    modules: &[Module],
    groups: &[Group],
    roots: &[PathBuf],
) -> Journal {
    Journal {
        format: FORMAT,
        stage_id: Some(stage_id),
        foreign: Default::default(),
        version: version.to_string(),
        phase: Phase::Staging,
        modules: modules
            .iter()
            .map(|m| JModule {
                name: m.name.clone(),
                process_name: m.process_name.clone(),
                service: m.service.clone(),
                start_cmd: m.start_cmd.clone(),
                restart_order: m.restart_order,
            })
            .collect(),
        dirs: groups
            .iter()
            .map(|g| DirTargets {
                root: roots[g.root].clone(),
                rel: g.rel.clone(),
                files: g
                    .files
                    .iter()
                    .map(|(_, n)| n.to_string_lossy().into_owned())
                    .collect(),
                new: Default::default(),
            })
            .collect(),
        created: Vec::new(),
        stopped: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn module(o: Option<i64>) -> Module {
        serde_json::from_value(serde_json::json!({
            "name": "m", "src": "s", "dst": "/opt/tope/x", "restart_order": o
        }))
        .unwrap()
    }

    #[test]
    fn start_order_puts_unordered_last() {
        let mods = vec![
            module(None),
            module(Some(5)),
            module(Some(-1)),
            module(None),
            module(Some(5)),
        ];
        assert_eq!(start_order(&mods), vec![2, 1, 4, 0, 3]);
    }

    fn pf(module: usize, dst: &str) -> PlannedFile {
        PlannedFile {
            module,
            entry: 0,
            dst: dst.into(),
            mode: 0o644,
            size: 1,
        }
    }

    fn res(root: usize, dir: &str, name: &str) -> Resolved {
        Resolved {
            root,
            dir: dir.into(),
            name: name.into(),
        }
    }

    #[test]
    fn groups_by_module_then_directory() {
        let roots = [PathBuf::from("/opt/tope")];
        let files = [
            pf(1, "/opt/tope/b/x"),
            pf(0, "/opt/tope/a/x"),
            pf(0, "/opt/tope/a/y"),
            pf(0, "/opt/tope/c/z"),
        ];
        let r = [
            res(0, "b", "x"),
            res(0, "a", "x"),
            res(0, "a", "y"),
            res(0, "c", "z"),
        ];
        let g = group(&files, &r, &roots).unwrap();
        let shape: Vec<(usize, &str, Vec<usize>)> = g
            .iter()
            .map(|g| {
                (
                    g.module,
                    g.rel.to_str().unwrap(),
                    g.files.iter().map(|f| f.0).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![(0, "a", vec![1, 2]), (0, "c", vec![3]), (1, "b", vec![0])]
        );
    }

    #[test]
    fn conflicts_found_after_resolution_are_invalid_manifests() {
        let roots = [PathBuf::from("/opt/tope")];
        let table: [(&[Resolved], &str); 2] = [
            // /opt/tope/current/x and /opt/tope/versions/v1/x behind `current -> versions/v1`.
            (
                &[res(0, "versions/v1", "x"), res(0, "versions/v1", "x")],
                "same file",
            ),
            (&[res(0, "a", "b"), res(0, "a/b", "c")], "directory"),
        ];
        for (r, why) in table {
            let files: Vec<PlannedFile> = (0..r.len()).map(|i| pf(i, "/opt/tope/q")).collect();
            let e = group(&files, r, &roots).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
            assert!(e.detail.contains(why), "{why}: {e}");
        }
        // docs/API.md 9.6: `b` and `b.tmp` are two ordinary destinations (staging names are the
        // updater's own).
        assert!(group(
            &[pf(0, "/opt/tope/a/b"), pf(0, "/opt/tope/a/b.tmp")],
            &[res(0, "a", "b"), res(0, "a", "b.tmp")],
            &roots
        )
        .is_ok());
        // The same names under two roots do not conflict.
        let roots2 = [PathBuf::from("/opt/a"), PathBuf::from("/opt/b")];
        assert!(group(
            &[pf(0, "/opt/a/x"), pf(0, "/opt/b/x")],
            &[res(0, "", "x"), res(1, "", "x")],
            &roots2
        )
        .is_ok());
    }

    #[test]
    fn journal_keeps_modules_and_directories() {
        let m: Module = serde_json::from_value(serde_json::json!({
            "name": "app", "src": "s", "dst": "/opt/tope/app/bin", "process_name": "app",
            "restart_order": 1, "start_cmd": ["/opt/tope/app/bin"]
        }))
        .unwrap();
        let roots = [PathBuf::from("/opt/tope")];
        let g = group(
            &[pf(0, "/opt/tope/app/bin")],
            &[res(0, "app", "bin")],
            &roots,
        )
        .unwrap();
        let j = journal("1.2.3", "ab".into(), &[m], &g, &roots);
        assert_eq!(j.phase, Phase::Staging);
        assert_eq!(j.modules[0].process_name.as_deref(), Some("app"));
        assert_eq!(j.dirs[0].root, PathBuf::from("/opt/tope"));
        assert_eq!(j.dirs[0].files, ["bin"]);
        assert!(stops(&j.modules[0]));
    }
}
