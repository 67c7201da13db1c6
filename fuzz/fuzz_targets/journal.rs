//! The install journal (`./backups/journal.json`) through the parser start-up recovery uses,
//! and through the summary reader of start-up and `status`, from a file.
//!
//! Checks: a journal the parser accepts is written back (as the installation writes it) into
//! bytes that parse to the same journal, within the 1 MiB read-back limit; the summary reader
//! never fails on a file the parser accepts and agrees with it on the version and the phase.
//! The same agreement holds for a journal of release 0.1.0 (no `format` field), which start-up
//! reads with its own strict parser (docs/API.md 9.4); the two parsers never both accept a file.

#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use tope_updater::deploy::{encode_journal, parse_journal, parse_legacy_journal};
use tope_updater::error::ErrorCode;
use tope_updater::fsutil::MAX_READ_BACK;
use tope_updater::workdir::{self, WorkDir};

fuzz_target!(|data: &[u8]| {
    let scratch = scratch::Scratch::new();
    let backups = scratch.dir("backups");
    std::fs::write(backups.join(workdir::JOURNAL_FILE), data).expect("writing the journal");
    let work = WorkDir::new(backups.parent().expect("a scratch directory"));
    let summary = workdir::peek_journal(&work);
    let legacy = parse_legacy_journal(data);
    let Ok(j) = parse_journal(data) else {
        if let Ok(old) = legacy {
            let summary = summary
                .expect("the summary reader reads a 0.1.0 journal the parser accepts")
                .expect("the file is there");
            assert_eq!(summary.version.as_deref(), Some(old.version.as_str()));
            let phase = serde_json::to_value(old.phase).expect("a phase serialises");
            assert_eq!(summary.phase.as_deref(), phase.as_str());
        }
        return;
    };
    assert!(legacy.is_err(), "both parsers accept one file");
    let summary = summary
        .expect("the summary reader reads a journal the parser accepts")
        .expect("the file is there");
    assert_eq!(summary.version.as_deref(), Some(j.version.as_str()));
    let phase = serde_json::to_value(j.phase).expect("a phase serialises");
    assert_eq!(summary.phase.as_deref(), phase.as_str());
    let _ = j.target_count();
    match encode_journal(&j) {
        Ok(bytes) => {
            assert!(bytes.len() as u64 <= MAX_READ_BACK);
            match parse_journal(&bytes) {
                Ok(back) => assert_eq!(back, j),
                Err(e) => panic!("the journal as written is refused: {e}"),
            }
        }
        Err(e) => assert_eq!(e.code, ErrorCode::InvalidPackage, "{e}"),
    }
});
