//! The other files the updater reads back from `./tmp/`: the last outcome (`outcome.json`), the
//! install history (`history.jsonl`), the installed version (`installed.json`), the crash-loop
//! guard's counter (`recovery.json`), the fleet action (`fleet.json`), the installed files'
//! hashes (`installed-files.json`) and a delta download's plan (`delta.json`), each written with
//! the input and read by the functions start-up, the fleet client, a delta download and
//! `tope-updater status` use; then the start-up decision on the outcome.
//!
//! Checks: an outcome is `success` or `failed`, reads back as written, and is what start-up
//! shows (progress at most 100) when no state is left; an unusable file is set aside (never
//! read again, never blocking); the history holds only outcomes, at most one per line; an
//! installed version is `x.y.z`; the guard gives up exactly at its limit; a fleet action and
//! the installed files' record read back as written; a delta plan never shows more done than
//! its total.

#![no_main]

mod scratch;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tope_updater::delta;
use tope_updater::deploy::Recovery;
use tope_updater::fleet::store;
use tope_updater::guard::{self, Gate};
use tope_updater::lifecycle::Stage;
use tope_updater::outcome::{self, Outcome};
use tope_updater::package::is_semver;
use tope_updater::startup::{self, Found, Recovered};
use tope_updater::workdir::{
    OwnFile, HISTORY_FILE, INSTALLED_FILE, OUTCOME_FILE, RECOVERY_FILE,
};

/// Whether the reader set `path` aside as `<name>.unusable`.
fn set_aside(path: &Path) -> bool {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".unusable");
    !path.exists() && Path::new(&aside).exists()
}

fn shown_at_start(o: &Outcome) {
    let plan = startup::decide(&Found {
        recovered: Recovered::Done(Recovery::Nothing),
        state: None,
        outcome: Some(o),
        package_len: None,
        journal: Path::new("backups/journal.json"),
        counter: Path::new("tmp/recovery.json"),
    });
    let shown = plan.life.status();
    assert_eq!(shown.stage, o.stage);
    assert!(shown.progress <= 100, "{shown:?}");
    assert!(
        o.describes(&plan.life) || o.stage == Stage::Failed,
        "{o:?} shown as {shown:?}"
    );
}

fn outcome_file(dir: &scratch::Scratch, data: &[u8]) {
    let file = OwnFile::new(dir.file(OUTCOME_FILE, data));
    let path = file.path();
    match outcome::peek(&file) {
        Ok(Some(o)) => {
            assert!(matches!(o.stage, Stage::Success | Stage::Failed), "{o:?}");
            shown_at_start(&o);
            let written = serde_json::to_vec_pretty(&o).expect("an outcome serialises");
            let file = OwnFile::new(dir.file(OUTCOME_FILE, &written));
            assert_eq!(outcome::load(&file).as_ref(), Some(&o));
        }
        Ok(None) => panic!("{OUTCOME_FILE} is there"),
        Err(_) => {
            assert_eq!(outcome::load(&file), None);
            assert!(
                set_aside(path),
                "an unusable {OUTCOME_FILE} stays in the way"
            );
        }
    }
}

fn history_file(dir: &scratch::Scratch, data: &[u8]) {
    let file = OwnFile::new(dir.file(HISTORY_FILE, data));
    let history = outcome::history(&file);
    assert!(history.len() <= data.split(|b| *b == b'\n').count());
    for o in &history {
        assert!(matches!(o.stage, Stage::Success | Stage::Failed), "{o:?}");
    }
}

fn installed_file(dir: &scratch::Scratch, data: &[u8]) {
    let file = OwnFile::new(dir.file(INSTALLED_FILE, data));
    match outcome::installed(&file) {
        Some(v) => assert!(is_semver(&v), "{v}"),
        None => assert!(
            set_aside(file.path()),
            "an unusable {INSTALLED_FILE} stays in the way"
        ),
    }
}

fn recovery_file(dir: &scratch::Scratch, data: &[u8]) {
    let file = OwnFile::new(dir.file(RECOVERY_FILE, data));
    match guard::peek(&file) {
        Ok(Some(a)) => {
            match guard::gate(Some(&a)) {
                Gate::GivenUp { attempts, .. } => {
                    assert!(attempts >= guard::MAX_ATTEMPTS && attempts == a.attempts)
                }
                Gate::Try { attempt } => {
                    assert!(a.attempts < guard::MAX_ATTEMPTS && attempt == a.attempts + 1)
                }
            }
            assert_eq!(guard::load(&file).as_ref(), Some(&a));
        }
        Ok(None) => panic!("{RECOVERY_FILE} is there"),
        Err(_) => {
            assert_eq!(guard::load(&file), None);
            assert!(set_aside(file.path()), "an unusable counter stays in the way");
        }
    }
}

fn fleet_file(dir: &scratch::Scratch, data: &[u8]) {
    let file = OwnFile::new(dir.file("fleet.json", data));
    match store::load(&file) {
        Some(a) => {
            store::save(&file, &a).expect("a fleet action is written");
            assert_eq!(store::load(&file).as_ref(), Some(&a));
        }
        None => assert!(set_aside(file.path()), "an unusable fleet.json stays in the way"),
    }
}

fn installed_files_file(dir: &scratch::Scratch, data: &[u8]) {
    let file = OwnFile::new(dir.file("installed-files.json", data));
    match delta::installed::load(&file) {
        Some(r) => {
            file.save_json(&r).expect("the record is written");
            assert_eq!(delta::installed::load(&file).as_ref(), Some(&r));
        }
        None => assert!(
            set_aside(file.path()),
            "an unusable installed-files.json stays in the way"
        ),
    }
}

fn delta_file(data: &[u8]) {
    if let Ok((done, total)) = delta::progress_of_record(data) {
        assert!(done <= total, "{done} done of {total}");
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch::Scratch::new();
    outcome_file(&dir, data);
    history_file(&dir, data);
    installed_file(&dir, data);
    recovery_file(&dir, data);
    fleet_file(&dir, data);
    installed_files_file(&dir, data);
    delta_file(data);
});
