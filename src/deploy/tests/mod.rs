//! The installation against real files: staging, the swap, rollback and recovery, paths beneath
//! the roots. Processes and health checks: `processes`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::apply::{Roots, FILES_DIR};
use super::journal::{self, Journal, Phase};
use super::*;
use crate::error::ErrorCode;
use crate::package::tests::{build_zip, manifest_json, E};

mod driver;
mod legacy;
mod processes;

struct Fx {
    d: tempfile::TempDir,
    root: PathBuf,
    backups: PathBuf,
    zip: PathBuf,
    cancel: AtomicBool,
    settle: Duration,
}

impl Fx {
    fn new() -> Fx {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let backups = d.path().join("work/backups");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&backups).unwrap();
        Fx {
            zip: d.path().join("p.zip"),
            root,
            backups,
            cancel: AtomicBool::new(false),
            settle: Duration::ZERO,
            d,
        }
    }

    /// Install with the events recorded as `Debug` text; `cancel_on`: set the cancel flag (as
    /// SIGTERM does) at the first event whose text starts with it.
    fn install_at(
        &self,
        stop: Duration,
        events: &mut Vec<String>,
        cancel_on: Option<&str>,
        mut also: impl FnMut(&InstallEvent),
    ) -> Result<InstallOutcome, OtaError> {
        let roots = [self.root.clone()];
        let opts = self.options(&roots, stop);
        let r = install(&self.zip, "1.2.3", &opts, &mut |e| {
            let text = format!("{e:?}");
            if cancel_on.is_some_and(|c| text.starts_with(c)) {
                self.cancel.store(true, Ordering::SeqCst);
            }
            also(&e);
            events.push(text);
        });
        // As the updater does once the outcome is recorded.
        if matches!(r, Ok(InstallOutcome::Done)) {
            assert!(
                self.backups.join(JOURNAL_NAME).exists(),
                "the committed journal stays until the caller has recorded the outcome"
            );
            finish(&self.backups);
        }
        r
    }

    /// The options of an installation into `roots` with this fixture's backups and flags.
    fn options<'a>(&'a self, roots: &'a [PathBuf], stop: Duration) -> InstallOptions<'a> {
        InstallOptions {
            listen: ([127, 0, 0, 1], 9).into(),
            allowed_roots: roots,
            signatures: Default::default(),
            backups_dir: &self.backups,
            stop_timeout: stop,
            settle: self.settle,
            cancel: &self.cancel,
        }
    }

    fn install(
        &self,
        stop: Duration,
        events: &mut Vec<String>,
        cancel_on: Option<&str>,
    ) -> Result<InstallOutcome, OtaError> {
        self.install_at(stop, events, cancel_on, |_| {})
    }

    fn put(&self, rel: &str, content: &str, mode: u32) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.root.join(rel)).ok()
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    fn clean(&self) -> bool {
        !self.backups.join(JOURNAL_NAME).exists() && !self.backups.join(FILES_DIR).exists()
    }

    fn module(&self, name: &str, src: &str, dst: &str, extra: &str) -> String {
        format!(
            r#"{{"name": "{name}", "src": "{src}", "dst": "{}/{dst}"{extra}}}"#,
            self.root.display()
        )
    }

    fn journal(&self) -> Journal {
        journal::parse(&fs::read(self.backups.join(JOURNAL_NAME)).unwrap()).unwrap()
    }

    /// The content of destination `n`'s staging file in `dir`, named as the journal says.
    fn staged(&self, dir: &str, n: usize, name: &str) -> Option<String> {
        let staged = self.journal().staging_name(n, name);
        fs::read_to_string(self.root.join(dir).join(staged)).ok()
    }

    /// Rewrite the journal as a version writing format 2 would have (no staging id, staging
    /// files named `<name>.tmp`), renaming the staging files that exist accordingly.
    fn as_format_2(&self) {
        let j = self.journal();
        let mut n = 0;
        for d in &j.dirs {
            for name in &d.files {
                let dir = d.root.join(&d.rel);
                let _ = fs::rename(
                    dir.join(j.staging_name(n, name)),
                    dir.join(format!("{name}.tmp")),
                );
                n += 1;
            }
        }
        let mut v: serde_json::Value = serde_json::to_value(&j).unwrap();
        v["format"] = 2.into();
        v.as_object_mut().unwrap().remove("stage_id");
        fs::write(self.backups.join(JOURNAL_NAME), v.to_string()).unwrap();
        assert_eq!(self.journal().staging_name(0, "bin"), "bin.tmp");
    }

    /// One module `svc` deploying `bin/x` to `svc/x`, with `extra` manifest fields.
    fn one_module(&self, extra: &str) {
        let m = manifest_json("1.2.3", &self.module("svc", "bin/x", "svc/x", extra));
        build_zip(
            &self.zip,
            &[
                E::File("manifest.json", m.as_bytes(), 0o644),
                E::File("bin/x", b"new-x", 0o755),
            ],
        );
    }
}

/// No staging file (`.tope-stage-*`, or `<name>.tmp` of format 2) left anywhere below `dir`.
fn no_tmp_files(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().flatten().all(|e| {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        !name.ends_with(".tmp")
            && !name.starts_with(beneath::STAGE_PREFIX)
            && (!p.is_dir() || no_tmp_files(&p))
    })
}

/// Two modules: `app` (one executable file over an old one) and `web` (a directory with a new
/// subdirectory), `web_extra` appended to web's manifest entry.
fn two_module_package(f: &Fx, web_extra: &str) {
    f.put("app/bin", "old-bin", 0o644);
    f.put("web/index.html", "old-index", 0o644);
    f.put("web/keep.txt", "untouched", 0o640);
    let m = manifest_json(
        "1.2.3",
        &[
            f.module("app", "m/app/bin", "app/bin", ""),
            f.module("web", "m/web", "web", web_extra),
        ]
        .join(","),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("m/app/bin", b"new-bin", 0o755),
            E::Dir("m/web/"),
            E::File("m/web/js/new/app.js", b"js", 0o600),
            E::File("m/web/index.html", b"new-index", 0o644),
        ],
    );
}

fn assert_old(f: &Fx) {
    assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
    assert_eq!(f.mode("app/bin"), 0o644);
    assert_eq!(f.read("web/index.html").as_deref(), Some("old-index"));
    assert_eq!(f.read("web/keep.txt").as_deref(), Some("untouched"));
    assert!(!f.root.join("web/js").exists());
    assert!(no_tmp_files(&f.root));
}

#[test]
fn install_deploys_modes_dirs_and_cleans_backups() {
    let f = Fx::new();
    two_module_package(&f, "");
    let mut ev = Vec::new();
    let r = f.install(Duration::from_secs(1), &mut ev, None).unwrap();
    assert_eq!(r, InstallOutcome::Done);
    assert_eq!(f.read("app/bin").as_deref(), Some("new-bin"));
    assert_eq!(f.mode("app/bin"), 0o755);
    assert_eq!(f.read("web/index.html").as_deref(), Some("new-index"));
    assert_eq!(f.read("web/js/new/app.js").as_deref(), Some("js"));
    assert_eq!(f.mode("web/js/new/app.js"), 0o600);
    assert_eq!(f.mode("web/js"), 0o755);
    assert_eq!(f.mode("web/js/new"), 0o755);
    assert_eq!(f.read("web/keep.txt").as_deref(), Some("untouched"));
    assert!(f.clean());
    assert!(no_tmp_files(&f.root));
    assert_eq!(
        ev,
        vec![
            r#"Deploying { module: "app", index: 1, total: 2 }"#,
            r#"Deploying { module: "web", index: 2, total: 2 }"#,
        ]
    );
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::Nothing
    );
}

#[test]
fn failing_post_cmd_rolls_everything_back() {
    let f = Fx::new();
    two_module_package(&f, r#", "post_cmds": [["true"], ["false"]]"#);
    let mut ev = Vec::new();
    let e = f
        .install(Duration::from_secs(1), &mut ev, None)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(e.detail.contains("module web"), "{e}");
    assert!(e.detail.contains("`false`"), "{e}");
    assert!(e.detail.ends_with("rolled back"), "{e}");
    assert_old(&f);
    assert!(f.root.join("web").is_dir());
    assert!(f.clean());
    assert!(ev.last().unwrap().starts_with("RollingBack"), "{ev:?}");
}

#[test]
fn invalid_package_changes_nothing() {
    let f = Fx::new();
    two_module_package(&f, "");
    let roots = [f.root.clone()];
    let opts = f.options(&roots, Duration::from_secs(1));
    let e = install(&f.zip, "9.9.9", &opts, &mut |_| {}).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidManifest);
    assert_old(&f);
    assert!(f.clean());
}

#[test]
fn directory_in_the_way_is_refused_before_anything() {
    let f = Fx::new();
    two_module_package(&f, "");
    fs::create_dir_all(f.root.join("web/js/new/app.js")).unwrap();
    let e = f
        .install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed);
    assert!(e.detail.contains("nothing was changed"), "{e}");
    assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
    assert!(f.clean());
    assert!(no_tmp_files(&f.root));
}

#[test]
fn destination_inside_backups_is_refused() {
    let f = Fx::new();
    let roots = [f.d.path().to_path_buf()];
    let m = manifest_json(
        "1.2.3",
        &format!(
            r#"{{"name": "x", "src": "a", "dst": "{}"}}"#,
            f.backups.join(JOURNAL_NAME).display()
        ),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("a", b"a", 0o644),
        ],
    );
    let opts = f.options(&roots, Duration::from_secs(1));
    let e = install(&f.zip, "1.2.3", &opts, &mut |_| {}).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
    assert!(e.detail.contains("backups"), "{e}");
}

#[test]
fn contract_8_3_directory_symlink_leading_outside_is_refused() {
    let f = Fx::new();
    let outside = f.d.path().join("etc");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), "root:x:0:0").unwrap();
    symlink(&outside, f.root.join("evil")).unwrap();
    let m = manifest_json("1.2.3", &f.module("x", "a", "evil/passwd", ""));
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("a", b"pwned", 0o644),
        ],
    );
    let e = f
        .install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidManifest, "{e}");
    assert!(e.detail.contains("outside"), "{e}");
    assert_eq!(
        fs::read_to_string(outside.join("passwd")).unwrap(),
        "root:x:0:0"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert!(f.clean());
}

#[test]
fn contract_8_3_symlink_swapped_in_after_the_check_is_not_followed() {
    let f = Fx::new();
    let outside = f.d.path().join("etc");
    fs::create_dir_all(&outside).unwrap();
    f.put("a/b/keep", "k", 0o644);
    two_module_package(&f, "");
    // While the first module is staged, `web` becomes a link out of the root.
    let (root, out) = (f.root.clone(), outside.clone());
    let r = f.install_at(Duration::from_secs(1), &mut Vec::new(), None, |e| {
        if matches!(e, InstallEvent::Deploying { index: 2, .. }) {
            fs::rename(root.join("web"), root.join("web-moved")).unwrap();
            symlink(&out, root.join("web")).unwrap();
        }
    });
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(e.detail.contains("outside"), "{e}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside the root"
    );
    assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
    assert!(f.clean());
}

#[test]
fn contract_8_8_update_through_an_in_root_current_link() {
    let f = Fx::new();
    f.put("versions/1.0.0/app/bin", "old-bin", 0o755);
    symlink("versions/1.0.0", f.root.join("current")).unwrap();
    let m = manifest_json(
        "1.2.3",
        &f.module(
            "app",
            "bin",
            "current/app/bin",
            r#", "post_cmds": [["false"]]"#,
        ),
    );
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("bin", b"new-bin", 0o755),
        ],
    );
    // A failing post command: rolled back through the link.
    let e = f
        .install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert_eq!(f.read("versions/1.0.0/app/bin").as_deref(), Some("old-bin"));
    // Then a good one lands in the version directory and leaves the link as it is.
    let m = manifest_json("1.2.3", &f.module("app", "bin", "current/app/bin", ""));
    build_zip(
        &f.zip,
        &[
            E::File("manifest.json", m.as_bytes(), 0o644),
            E::File("bin", b"new-bin", 0o755),
        ],
    );
    f.install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap();
    assert_eq!(f.read("versions/1.0.0/app/bin").as_deref(), Some("new-bin"));
    assert_eq!(
        fs::read_link(f.root.join("current")).unwrap(),
        Path::new("versions/1.0.0")
    );
    assert!(no_tmp_files(&f.root));
}

#[test]
fn contract_8_3_a_dst_that_is_a_symlink_is_replaced_not_followed() {
    let f = Fx::new();
    let outside = f.d.path().join("secret");
    fs::write(&outside, "secret").unwrap();
    fs::create_dir_all(f.root.join("svc")).unwrap();
    symlink(&outside, f.root.join("svc/x")).unwrap();
    f.one_module("");
    f.install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap();
    assert!(!fs::symlink_metadata(f.root.join("svc/x"))
        .unwrap()
        .is_symlink());
    assert_eq!(f.read("svc/x").as_deref(), Some("new-x"));
    assert_eq!(fs::read_to_string(&outside).unwrap(), "secret");
}

#[test]
fn interrupted_staging_is_cleaned_by_recover() {
    let f = Fx::new();
    two_module_package(&f, "");
    let r = f
        .install(
            Duration::from_secs(1),
            &mut Vec::new(),
            Some(r#"Deploying { module: "web""#),
        )
        .unwrap();
    assert_eq!(r, InstallOutcome::Interrupted);
    assert_eq!(f.journal().phase, Phase::Staging);
    assert_eq!(f.staged("app", 0, "bin").as_deref(), Some("new-bin"));
    assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack {
            version: "1.2.3".into()
        }
    );
    assert_old(&f);
    assert!(f.clean());
}

#[test]
fn interrupted_after_the_swap_is_rolled_back_by_recover_twice() {
    let f = Fx::new();
    two_module_package(&f, r#", "start_cmd": ["true"]"#);
    let r = f
        .install(Duration::from_secs(1), &mut Vec::new(), Some("Restarting"))
        .unwrap();
    assert_eq!(r, InstallOutcome::Interrupted);
    let j = f.journal();
    assert_eq!(j.phase, Phase::Swapping);
    assert_eq!(f.read("web/js/new/app.js").as_deref(), Some("js"));
    assert_eq!(f.read("app/bin").as_deref(), Some("new-bin"));
    // A power cut during the first rollback: the files are restored twice.
    assert!(rollback::restore_files(&j, &mut Roots::default(), &f.backups).is_empty());
    assert!(rollback::restore_files(&j, &mut Roots::default(), &f.backups).is_empty());
    assert_old(&f);
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack {
            version: "1.2.3".into()
        }
    );
    assert_old(&f);
    assert!(f.clean());
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::Nothing
    );
}

/// docs/API.md 9.6: a journal of format 2 (an earlier version's, `<name>.tmp` staging names)
/// is still recovered as before: interrupted while staging, and after the swap.
#[test]
fn contract_9_6_journal_of_format_2_is_recovered_as_before() {
    let f = Fx::new();
    two_module_package(&f, "");
    f.install(
        Duration::from_secs(1),
        &mut Vec::new(),
        Some(r#"Deploying { module: "web""#),
    )
    .unwrap();
    f.as_format_2();
    assert_eq!(f.read("app/bin.tmp").as_deref(), Some("new-bin"));
    assert!(matches!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack { .. }
    ));
    assert_old(&f);
    assert!(f.clean());

    let f = Fx::new();
    two_module_package(&f, r#", "start_cmd": ["true"]"#);
    f.install(Duration::from_secs(1), &mut Vec::new(), Some("Restarting"))
        .unwrap();
    assert_eq!(f.journal().phase, Phase::Swapping);
    assert_eq!(f.read("app/bin").as_deref(), Some("new-bin"));
    f.as_format_2();
    assert!(matches!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack { .. }
    ));
    assert_old(&f);
    assert!(f.clean());
}

/// docs/API.md 9.6: a file appearing at a staging name after the names were checked free (a
/// race only someone imitating the updater could win) is not the updater's: the installation
/// fails, is rolled back, and that file stays as it is.
#[test]
fn contract_9_6_a_staging_name_taken_meanwhile_is_left_alone() {
    let f = Fx::new();
    two_module_package(&f, "");
    let mut planted = None;
    let e = f
        .install_at(Duration::from_secs(1), &mut Vec::new(), None, |e| {
            if matches!(e, InstallEvent::Deploying { index: 1, .. }) {
                let p = f.root.join("app").join(f.journal().staging_name(0, "bin"));
                fs::write(&p, "someone else's").unwrap();
                planted = Some(p);
            }
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeploymentFailed, "{e}");
    assert!(e.detail.contains("not the updater's"), "{e}");
    let planted = planted.unwrap();
    assert_eq!(fs::read_to_string(&planted).unwrap(), "someone else's");
    fs::remove_file(&planted).unwrap();
    assert_old(&f);
    assert!(f.clean());
}

/// docs/API.md 9.6: an earlier version's journal left behind by the wedge it caused (its
/// `<name>.tmp` was someone else's directory) is recovered now, before and after the swap, and
/// the directory stays.
#[test]
fn contract_9_6_journal_of_format_2_with_a_directory_at_name_tmp_is_recovered() {
    let f = Fx::new();
    two_module_package(&f, "");
    f.install(
        Duration::from_secs(1),
        &mut Vec::new(),
        Some(r#"Deploying { module: "web""#),
    )
    .unwrap();
    f.as_format_2();
    fs::remove_file(f.root.join("app/bin.tmp")).unwrap();
    f.put("app/bin.tmp/keep", "not the updater's", 0o644);
    assert!(matches!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack { .. }
    ));
    assert_eq!(
        f.read("app/bin.tmp/keep").as_deref(),
        Some("not the updater's")
    );
    assert!(f.clean());

    let f = Fx::new();
    two_module_package(&f, r#", "start_cmd": ["true"]"#);
    f.install(Duration::from_secs(1), &mut Vec::new(), Some("Restarting"))
        .unwrap();
    f.as_format_2();
    f.put("app/bin.tmp/keep", "not the updater's", 0o644);
    assert!(matches!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::RolledBack { .. }
    ));
    assert_eq!(f.read("app/bin").as_deref(), Some("old-bin"));
    assert_eq!(
        f.read("app/bin.tmp/keep").as_deref(),
        Some("not the updater's")
    );
    assert!(f.clean());
}

#[test]
fn missing_backup_keeps_the_journal() {
    let f = Fx::new();
    two_module_package(&f, r#", "start_cmd": ["true"]"#);
    f.install(Duration::from_secs(1), &mut Vec::new(), Some("Restarting"))
        .unwrap();
    fs::remove_dir_all(f.backups.join(FILES_DIR)).unwrap();
    let e = recover(&f.backups, &[], Duration::from_secs(1)).unwrap_err();
    assert!(e.detail.contains("app/bin"), "{e}");
    assert!(f.backups.join(JOURNAL_NAME).exists());
}

#[test]
fn committed_journal_completes_cleanup() {
    let f = Fx::new();
    two_module_package(&f, "");
    let roots = [f.root.clone()];
    let opts = f.options(&roots, Duration::from_secs(1));
    // Installed, but the caller has not called finish() (power cut before the outcome).
    assert_eq!(
        install(&f.zip, "1.2.3", &opts, &mut |_| {}).unwrap(),
        InstallOutcome::Done
    );
    assert_eq!(f.journal().phase, Phase::Committed);
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::Completed {
            version: "1.2.3".into()
        }
    );
    assert_eq!(f.read("app/bin").as_deref(), Some("new-bin"));
    assert!(f.clean());
}

#[test]
fn unusable_journal_is_set_aside_and_reported() {
    let f = Fx::new();
    fs::write(
        f.backups.join(JOURNAL_NAME),
        "{\"format\": 2, \"version\": \"1.2",
    )
    .unwrap();
    let e = recover(&f.backups, &[], Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InternalError, "{e}");
    assert!(!f.backups.join(JOURNAL_NAME).exists());
    assert!(f.backups.join("journal.json.unusable").exists());
    assert_eq!(
        recover(&f.backups, &[], Duration::from_secs(1)).unwrap(),
        Recovery::Nothing
    );
}

#[test]
fn flushes_are_per_directory_not_per_file() {
    // The whole install's flush discipline is audited with strace in tests/fsync_audit.rs;
    // here: many files in few directories leave no temporary and land whole.
    let f = Fx::new();
    let names: Vec<String> = (0..200).map(|i| format!("m/w/d{}/f{i}", i % 4)).collect();
    let mut entries = vec![];
    let m = manifest_json("1.2.3", &f.module("w", "m/w", "w", ""));
    entries.push(E::File("manifest.json", m.as_bytes(), 0o644));
    let data: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("content {i}").into_bytes())
        .collect();
    for (n, d) in names.iter().zip(&data) {
        entries.push(E::File(n, d, 0o644));
    }
    build_zip(&f.zip, &entries);
    f.install(Duration::from_secs(1), &mut Vec::new(), None)
        .unwrap();
    for i in 0..200 {
        assert_eq!(
            f.read(&format!("w/d{}/f{i}", i % 4)),
            Some(format!("content {i}"))
        );
    }
    assert!(no_tmp_files(&f.root));
}
