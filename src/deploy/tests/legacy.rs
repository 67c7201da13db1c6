//! docs/API.md 9.4: the journal of release 0.1.0 read strictly, checked before anything is
//! touched, and rolled back as 0.1.0 would have.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::super::journal::{self, Found};
use super::super::legacy::{self, LegacyError, LegacyPhase};
use super::super::{recover, Recovery};
use crate::error::ErrorCode;

struct Fx {
    _d: tempfile::TempDir,
    root: PathBuf,
    backups: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("opt");
        let backups = d.path().join("work/backups");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(backups.join("files")).unwrap();
        Fx {
            root,
            backups,
            _d: d,
        }
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }

    /// A journal as 0.1.0 wrote it (`to_vec_pretty` of its `Journal`): `app/bin` replaced,
    /// `app/new/x.txt` new in a new directory.
    fn journal(&self, phase: &str) -> serde_json::Value {
        let r = |p: &str| self.root.join(p).display().to_string();
        let b = |n: &str| self.backups.join("files").join(n).display().to_string();
        json!({
            "version": "1.2.3",
            "phase": phase,
            "modules": [{"name": "app", "src": "m/app", "dst": r("app"),
                "process_name": null, "restart_order": null, "service": null,
                "start_cmd": null, "post_cmds": []}],
            "targets": [
                {"dst": r("app/bin"), "backup": b("0"), "existed": true},
                {"dst": r("app/new/x.txt"), "backup": b("1"), "existed": false}
            ],
            "created_dirs": [r("app/new")]
        })
    }

    fn write_journal(&self, j: &serde_json::Value) {
        fs::write(
            journal::path(&self.backups),
            serde_json::to_vec_pretty(j).unwrap(),
        )
        .unwrap();
    }

    /// What 0.1.0 left when it stopped in `deploying` after both files were written.
    fn deployed(&self) {
        fs::create_dir_all(self.root.join("app/new")).unwrap();
        fs::write(self.root.join("app/bin"), "old-bin").unwrap();
        fs::hard_link(self.root.join("app/bin"), self.backups.join("files/0")).unwrap();
        fs::remove_file(self.root.join("app/bin")).unwrap();
        fs::write(self.root.join("app/bin"), "new-bin").unwrap();
        fs::write(self.root.join("app/new/x.txt"), "new").unwrap();
        fs::write(self.root.join("app/bin.tmp"), "half").unwrap();
    }

    fn recover(&self) -> Result<Recovery, crate::error::OtaError> {
        recover(&self.backups, &self.roots(), Duration::from_secs(1))
    }
}

/// docs/API.md 9.4: a 0.1.0 journal is read with exactly its fields; anything else is not one.
#[test]
fn docs_api_9_4_the_0_1_0_journal_is_parsed_strictly() {
    let f = Fx::new();
    let good = f.journal("deploying");
    let j = legacy::parse(&serde_json::to_vec_pretty(&good).unwrap()).unwrap();
    assert_eq!(j.phase, LegacyPhase::Deploying);
    assert_eq!(j.targets.len(), 2);
    let text = serde_json::to_string(&good).unwrap();
    let bad = [
        text.replacen("\"created_dirs\"", "\"format\":1,\"created_dirs\"", 1),
        text.replacen("\"created_dirs\"", "\"extra\":1,\"created_dirs\"", 1),
        text.replacen("\"existed\":true", "\"existed\":true,\"mode\":1", 1),
        text.replacen("\"post_cmds\":[]", "\"post_cmds\":[],\"health_cmd\":[]", 1),
        text.replacen("\"created_dirs\":[", "\"created\":[", 1),
        text.replacen("\"deploying\"", "\"swapping\"", 1),
        text.replacen(
            "\"version\":\"1.2.3\"",
            "\"version\":\"1.2.3\",\"version\":\"1.2.3\"",
            1,
        ),
    ];
    for (i, b) in bad.iter().enumerate() {
        assert_ne!(b, &text, "case {i} changed nothing");
        assert!(
            legacy::parse(b.as_bytes()).is_err(),
            "case {i} accepted: {b}"
        );
    }
    // The journal reader tells it from the current formats; the summary reader of start-up
    // and `status` agrees on its version and phase.
    f.write_journal(&good);
    assert!(matches!(journal::read(&f.backups), Found::Legacy(_)));
    let s = crate::workdir::JournalSummary::parse(&serde_json::to_vec(&good).unwrap()).unwrap();
    assert_eq!(s.version.as_deref(), Some("1.2.3"));
    assert_eq!(s.phase.as_deref(), Some("deploying"));
}

/// docs/API.md 9.4 and 8.3: every backup `files/<name>` beneath this work dir's `backups/`,
/// every destination and created directory strictly inside `allowed_roots`, or nothing is used.
#[test]
fn docs_api_9_4_paths_outside_are_refused_by_the_check() {
    let f = Fx::new();
    let ok = legacy::parse(&serde_json::to_vec(&f.journal("deploying")).unwrap()).unwrap();
    let c = ok.check(&f.backups, &f.roots()).unwrap();
    assert_eq!(c.targets[0].rel, Path::new("app"));
    assert_eq!(c.targets[0].backup, "0");
    assert_eq!(c.created[0].rel, Path::new("app/new"));
    let b = f.backups.display().to_string();
    let r = f.root.display().to_string();
    let cases: Vec<(&str, String)> = vec![
        ("backup", "/etc/passwd".into()),
        ("backup", format!("{b}/files/../../x")),
        ("backup", format!("{b}/other/0")),
        ("backup", format!("{b}/files/a/0")),
        ("backup", format!("{b}/journal.json")),
        ("backup", "files/0".into()),
        ("dst", "/etc/passwd".into()),
        ("dst", format!("{r}/../etc/passwd")),
        ("dst", r.clone()),
        ("dst", format!("{r}x/app")),
        ("created", "/etc/cron.d".into()),
        ("created", r.clone()),
        ("module", "/usr/bin".into()),
    ];
    for (field, value) in cases {
        let mut j = ok.clone();
        match field {
            "backup" => j.targets[0].backup = value.clone().into(),
            "dst" => j.targets[1].dst = value.clone().into(),
            "created" => j.created_dirs[0] = value.clone().into(),
            _ => j.modules[0].dst = value.clone().into(),
        }
        let e = j.check(&f.backups, &f.roots()).unwrap_err();
        match (field, &e) {
            ("backup", LegacyError::BackupOutside { .. }) => {}
            (_, LegacyError::Outside { .. }) if field != "backup" => {}
            _ => panic!("{field} = {value}: {e}"),
        }
        assert!(e.to_string().contains(&value), "{e}");
    }
}

/// docs/API.md 9.4: a 0.1.0 installation interrupted in `deploying` is rolled back: the old
/// file back, the new one and its directory gone, 0.1.0's `<name>.tmp` removed, the backups and
/// the journal removed; a file of someone else's in `backups/files` stays.
#[test]
fn docs_api_9_4_deploying_is_rolled_back() {
    let f = Fx::new();
    f.deployed();
    fs::write(f.backups.join("files/python.bak"), "theirs").unwrap();
    f.write_journal(&f.journal("deploying"));
    assert_eq!(
        f.recover().unwrap(),
        Recovery::RolledBack {
            version: "1.2.3".into()
        }
    );
    assert_eq!(
        fs::read_to_string(f.root.join("app/bin")).unwrap(),
        "old-bin"
    );
    assert!(!f.root.join("app/new").exists());
    assert!(!f.root.join("app/bin.tmp").exists());
    assert!(!journal::path(&f.backups).exists());
    assert!(!f.backups.join("files/0").exists());
    assert_eq!(
        fs::read_to_string(f.backups.join("files/python.bak")).unwrap(),
        "theirs"
    );
    assert_eq!(f.recover().unwrap(), Recovery::Nothing);
}

/// docs/API.md 9.4: a missing backup keeps the journal (the next start retries), and a
/// `backups/files` that is a symbolic link is never walked.
#[test]
fn docs_api_9_4_a_backup_that_cannot_be_reached_keeps_the_journal() {
    let f = Fx::new();
    f.deployed();
    f.write_journal(&f.journal("deploying"));
    let elsewhere = f.backups.parent().unwrap().join("elsewhere");
    fs::rename(f.backups.join("files"), &elsewhere).unwrap();
    symlink(&elsewhere, f.backups.join("files")).unwrap();
    let e = f.recover().unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(e.detail.contains("app/bin"), "{e}");
    assert_eq!(
        fs::read_to_string(f.root.join("app/bin")).unwrap(),
        "new-bin"
    );
    assert!(journal::path(&f.backups).exists());
    // Put right, the next start finishes it.
    fs::remove_file(f.backups.join("files")).unwrap();
    fs::rename(&elsewhere, f.backups.join("files")).unwrap();
    assert!(matches!(f.recover(), Ok(Recovery::RolledBack { .. })));
    assert_eq!(
        fs::read_to_string(f.root.join("app/bin")).unwrap(),
        "old-bin"
    );
}

/// docs/API.md 9.4: a journal naming a destination outside `allowed_roots` is set aside with
/// the reason and nothing is touched; `INTERNAL_ERROR`.
#[test]
fn docs_api_9_4_a_journal_outside_the_roots_is_set_aside_untouched() {
    let f = Fx::new();
    f.deployed();
    let mut j = f.journal("deploying");
    j["targets"][1]["dst"] = json!("/etc/tope-legacy-test");
    f.write_journal(&j);
    let e = f.recover().unwrap_err();
    assert_eq!(e.code, ErrorCode::InternalError, "{e}");
    assert!(e.detail.contains("/etc/tope-legacy-test"), "{e}");
    assert!(e.detail.contains("journal.json.unusable"), "{e}");
    assert_eq!(
        fs::read_to_string(f.root.join("app/bin")).unwrap(),
        "new-bin"
    );
    assert!(f.backups.join("files/0").exists());
    assert!(!journal::path(&f.backups).exists());
    assert!(f.backups.join("journal.json.unusable").exists());
}

/// docs/API.md 9.4: `committed` only finishes the cleanup; `prepared` touches no file.
#[test]
fn docs_api_9_4_committed_is_finished_and_prepared_touches_no_file() {
    let f = Fx::new();
    f.deployed();
    f.write_journal(&f.journal("committed"));
    assert_eq!(
        f.recover().unwrap(),
        Recovery::Completed {
            version: "1.2.3".into()
        }
    );
    assert_eq!(
        fs::read_to_string(f.root.join("app/bin")).unwrap(),
        "new-bin"
    );
    assert!(!f.backups.join("files").exists());
    assert!(!journal::path(&f.backups).exists());

    let f = Fx::new();
    fs::create_dir_all(f.root.join("app")).unwrap();
    fs::write(f.root.join("app/bin"), "old-bin").unwrap();
    f.write_journal(&f.journal("prepared"));
    assert!(matches!(f.recover(), Ok(Recovery::RolledBack { .. })));
    assert_eq!(
        fs::read_to_string(f.root.join("app/bin")).unwrap(),
        "old-bin"
    );
    assert!(!journal::path(&f.backups).exists());
}

/// The `journal` fuzz target's check on its seeds (`fuzz/corpus/journal/`, the 0.1.0 fixtures'
/// journals among them): a file is a journal of at most one format, and the summary reader of
/// start-up and `status` agrees with the parser that accepts it on the version and the phase.
#[test]
fn docs_api_9_4_the_fuzz_seeds_hold_the_journal_targets_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/journal");
    let mut legacy_seeds = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let summary = crate::workdir::JournalSummary::parse(&data);
        let (version, phase) = match (journal::parse(&data), legacy::parse(&data)) {
            (Ok(_), Ok(_)) => panic!("{}: both parsers accept it", path.display()),
            (Ok(j), Err(_)) => (j.version, serde_json::to_value(j.phase).unwrap()),
            (Err(_), Ok(j)) => {
                legacy_seeds += 1;
                (j.version, serde_json::to_value(j.phase).unwrap())
            }
            (Err(_), Err(_)) => continue,
        };
        let s = summary.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            s.version.as_deref(),
            Some(version.as_str()),
            "{}",
            path.display()
        );
        assert_eq!(s.phase.as_deref(), phase.as_str(), "{}", path.display());
    }
    assert!(legacy_seeds >= 3, "the 0.1.0 fixtures' journals are seeds");
}
