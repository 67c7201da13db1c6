//! docs/API.md 9.4: this release recovers what a 0.1.0 updater left half-done. The work dirs
//! in `tests/fixtures/v0.1.0/` were left by the real 0.1.0 binary, killed (SIGKILL) in each
//! phase of its journal (`scripts/make-v0.1.0-fixtures.sh`); each test copies one under a
//! workspace (`@ROOT@` its path, `@APP@` a process name of its own) and starts the real daemon
//! of this release on it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::stage_of;
use common::procs::{pids_named, signal, wait_for_named, KillOnDrop};
use common::*;
use rustix::process::Signal;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0.1.0");

/// A printer as 0.1.0 left it: the fixture of one phase copied into a workspace.
struct Printer {
    ws: Workspace,
    app: String,
    _kill: KillOnDrop,
}

impl Printer {
    fn from_fixture(phase: &str) -> Printer {
        let ws = Workspace::new();
        let app = unique_name("leg");
        let p = Printer {
            _kill: KillOnDrop::names(&[&app]),
            ws,
            app,
        };
        for (rel, data) in p.tree(&Path::new(FIXTURES).join(phase)) {
            write_file(&p.ws.path().join(&rel), &data.0, data.1);
        }
        p
    }

    /// The files below `dir` of the fixtures, placeholders replaced: path → (bytes, mode).
    fn tree(&self, dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        let root = self.ws.path().display().to_string();
        files_below(dir)
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(dir).unwrap().to_str().unwrap();
                let rel = PathBuf::from(rel.replace("@APP@", &self.app));
                let text = std::fs::read(&f).unwrap();
                let data = String::from_utf8(text)
                    .expect("fixtures are text")
                    .replace("@ROOT@", &root)
                    .replace("@APP@", &self.app)
                    .into_bytes();
                (rel, (data, mode_of(&f)))
            })
            .collect()
    }

    fn opt(&self) -> PathBuf {
        self.ws.path().join("opt")
    }

    /// The printer's files now: path below `opt/` → (bytes, mode).
    fn files(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        files_below(&self.opt())
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(self.opt()).unwrap().to_path_buf();
                (rel, (std::fs::read(&f).unwrap(), mode_of(&f)))
            })
            .collect()
    }

    /// What the fixtures say the printer held before the installation (version 1.0.0), or
    /// what 0.1.0 left (`<phase>/opt`).
    fn expected(&self, below: &str) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        self.tree(&Path::new(FIXTURES).join(below))
    }

    fn journal(&self) -> PathBuf {
        self.ws.work_dir().join("backups/journal.json")
    }

    fn edit_journal(&self, edit: impl FnOnce(&mut Value)) {
        let mut j: Value = serde_json::from_slice(&std::fs::read(self.journal()).unwrap()).unwrap();
        edit(&mut j);
        std::fs::write(self.journal(), serde_json::to_vec_pretty(&j).unwrap()).unwrap();
    }

    fn start(&self, api: &FakeDeviceApi) -> Daemon {
        let opts = DaemonOptions {
            extra_toml: format!("allowed_roots = [\"{}\"]\n", self.opt().display()),
            ..Default::default()
        };
        Daemon::start(&self.ws, api, opts)
    }

    fn backups_gone(&self) -> bool {
        !self.journal().exists() && !self.ws.work_dir().join("backups/files").exists()
    }
}

/// The first `/progress` after the start says `failed` with the rollback in its detail, and
/// device-api receives it.
fn assert_rolled_back(d: &Daemon, api: &FakeDeviceApi) {
    let p = d.first_progress.clone().expect("a first /progress");
    assert_eq!(stage_of(&p), "failed", "{p}");
    let err = p["data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.starts_with("DEPLOYMENT_FAILED: "), "{p}");
    assert!(err.contains("1.0.1") && err.contains("rolled back"), "{p}");
    api.wait_for_report("the failed outcome", Duration::from_secs(10), |b| {
        b["stage"] == "failed" && b["error"].as_str() == Some(err.as_str())
    });
}

/// The module's process is running again (started by its `start_cmd`, as 0.1.0 would), then
/// killed by pid.
fn assert_started_again(p: &Printer) {
    let pids = wait_for_named(&p.app, Duration::from_secs(10));
    for pid in pids {
        let cmd = common::procs::cmdline_of(pid).join(" ");
        assert!(cmd.contains(&p.opt().display().to_string()), "{cmd}");
        signal(pid, Signal::KILL);
    }
}

/// docs/API.md 9.4: 0.1.0 killed in `deploying` (every file of 1.0.1 in place, a post command
/// running): the old files come back byte for byte with their modes, the new file and its new
/// directory go, the backups and the journal go, `failed` with the rollback is shown and
/// reported, and the module's process is started again.
#[test]
fn docs_api_9_4_a_0_1_0_install_killed_in_deploying_is_rolled_back() {
    let p = Printer::from_fixture("deploying");
    assert_ne!(
        p.files(),
        p.expected("old"),
        "the fixture is half-installed"
    );
    let api = FakeDeviceApi::start();
    let d = p.start(&api);
    assert_rolled_back(&d, &api);
    assert_eq!(p.files(), p.expected("old"));
    assert!(!p.opt().join("app/lib").exists());
    assert!(p.backups_gone());
    assert_started_again(&p);
}

/// docs/API.md 9.4: 0.1.0 killed in `prepared` (stopping the processes, no file changed): no
/// file changes, the journal goes, `failed` with the rollback, the process is started again.
#[test]
fn docs_api_9_4_a_0_1_0_install_killed_in_prepared_is_rolled_back() {
    let p = Printer::from_fixture("prepared");
    assert!(pids_named(&p.app).is_empty());
    let api = FakeDeviceApi::start();
    let d = p.start(&api);
    assert_rolled_back(&d, &api);
    assert_eq!(p.files(), p.expected("old"));
    assert!(p.backups_gone());
    assert_started_again(&p);
}

/// docs/API.md 9.4: 0.1.0 killed after its commit (in its cleanup): the installation stands,
/// `success` is shown and reported, the backups and the journal go, nothing is started.
#[test]
fn docs_api_9_4_a_committed_0_1_0_install_is_finished() {
    let p = Printer::from_fixture("committed");
    let left = p.expected("committed/opt");
    let api = FakeDeviceApi::start();
    let d = p.start(&api);
    let first = d.first_progress.clone().expect("a first /progress");
    assert_eq!(stage_of(&first), "success", "{first}");
    assert_eq!(first["data"]["version"], "1.0.1", "{first}");
    api.wait_for_report("the success", Duration::from_secs(10), |b| {
        b["stage"] == "success"
    });
    assert_eq!(p.files(), left);
    assert!(p.backups_gone());
    assert!(pids_named(&p.app).is_empty());
}

/// An edit of a fixture's journal, for the printer it was copied to.
type JournalEdit = fn(&Printer, &mut Value);

/// docs/API.md 9.4 and 8.3: a 0.1.0 journal naming a destination outside `allowed_roots`, or
/// a backup that escapes `backups/`, is set aside with the reason; nothing is touched (the
/// printer's files as 0.1.0 left them, the backups kept, nothing started); `INTERNAL_ERROR`.
#[test]
fn docs_api_9_4_a_0_1_0_journal_naming_paths_outside_is_set_aside_untouched() {
    let edits: [(&str, JournalEdit); 3] = [
        ("destination", |p, j| {
            j["targets"][3]["dst"] =
                p.ws.path()
                    .join("elsewhere/index.html")
                    .display()
                    .to_string()
                    .into();
        }),
        ("created directory", |p, j| {
            j["created_dirs"][0] = p.ws.path().join("elsewhere").display().to_string().into();
        }),
        ("backup", |p, j| {
            j["targets"][0]["backup"] =
                p.ws.work_dir()
                    .join("backups/files/../../../elsewhere/index.html")
                    .display()
                    .to_string()
                    .into();
        }),
    ];
    for (what, edit) in edits {
        let p = Printer::from_fixture("deploying");
        let outside = p.ws.path().join("elsewhere/index.html");
        write_file(&outside, b"not the updater's", 0o644);
        p.edit_journal(|j| edit(&p, j));
        let left = p.files();
        let backups = files_below(&p.ws.work_dir().join("backups/files"));
        let api = FakeDeviceApi::start();
        let d = p.start(&api);
        let first = d.first_progress.clone().expect("a first /progress");
        assert_eq!(stage_of(&first), "failed", "{what}: {first}");
        let err = first["data"]["error"].as_str().unwrap_or_default();
        assert!(err.starts_with("INTERNAL_ERROR: "), "{what}: {first}");
        assert!(err.contains("elsewhere"), "{what}: {first}");
        assert!(err.contains("journal.json.unusable"), "{what}: {first}");
        assert_eq!(p.files(), left, "{what}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"not the updater's");
        assert_eq!(
            files_below(&p.ws.work_dir().join("backups/files")),
            backups,
            "{what}"
        );
        assert!(!p.journal().exists());
        assert!(p
            .ws
            .work_dir()
            .join("backups/journal.json.unusable")
            .exists());
        assert!(pids_named(&p.app).is_empty(), "{what}: nothing started");
        drop(d);
    }
}
