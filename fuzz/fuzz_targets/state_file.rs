//! `./tmp/state.json`, this updater's and the Python updater's, through the parser start-up
//! uses, then through the start-up decision and the decisions the API takes next.
//!
//! Checks: `parse` never answers "missing"; a loaded state keeps its invariants (a known stage,
//! `1 <= package_size`, `bytes_downloaded <= package_size`, a plain `package_name`); what the
//! updater writes for it is read back as it was; whatever start-up shows from it has a progress
//! of at most 100 and a state file that reads back; `/download` and `/update` decisions on it
//! never panic, at any trust window the configuration accepts.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use tope_updater::checksum::{Algorithm, Checksum};
use tope_updater::deploy::Recovery;
use tope_updater::error;
use tope_updater::lifecycle::Stage;
use tope_updater::outcome::Outcome;
use tope_updater::startup::{self, Found, Recovered};
use tope_updater::state::{self, valid_package_name, LoadOutcome, PersistedState};

/// `trust_window_hours` values the configuration accepts: the least, the default, the largest
/// TOML integer.
const TRUST_WINDOWS: [u64; 3] = [1, 24, i64::MAX as u64];

fn outcome(stage: Stage, install_id: Option<u64>, error: Option<&str>) -> Outcome {
    Outcome {
        id: 1_764_000_000_000_000_000,
        stage,
        version: "1.2.3".into(),
        message: "Update to 1.2.3 completed".into(),
        error: error.map(str::to_string),
        progress: 100,
        at: "2026-11-25T10:00:00Z".into(),
        package_name: Some("tope-1.2.3.zip".into()),
        package_md5: Checksum::from_hex(Algorithm::Md5, "0123456789abcdef0123456789abcdef"),
        package_checksum: None,
        install_id,
        delivered: false,
    }
}

fn reads_back(st: &PersistedState) {
    let written = serde_json::to_vec_pretty(st).expect("a state serialises");
    assert_eq!(
        state::parse(&written),
        LoadOutcome::Loaded(Box::new(st.clone())),
        "{}",
        String::from_utf8_lossy(&written)
    );
}

fuzz_target!(|data: &[u8]| {
    let st = match state::parse(data) {
        LoadOutcome::Loaded(st) => st,
        LoadOutcome::Unusable(_) => return,
        LoadOutcome::Missing => panic!("parse said missing"),
    };
    assert!(st.stage().is_some(), "{st:?}");
    assert!(
        st.package_size >= 1 && st.bytes_downloaded <= st.package_size,
        "{st:?}"
    );
    assert!(valid_package_name(&st.package_name), "{st:?}");
    reads_back(&st);

    let success = outcome(Stage::Success, st.install_id, None);
    let failed = outcome(
        Stage::Failed,
        None,
        Some("DEPLOYMENT_FAILED: health check failed"),
    );
    let recovered = [
        Recovered::Done(Recovery::Nothing),
        Recovered::Done(Recovery::RolledBack {
            version: st.version.clone(),
        }),
        Recovered::Failed {
            error: error::internal("cannot restore"),
            attempt: 1,
        },
    ];
    let now = OffsetDateTime::now_utc();
    for recovered in &recovered {
        for outcome in [None, Some(&success), Some(&failed)] {
            for package_len in [None, Some(st.bytes_downloaded), Some(st.package_size)] {
                let plan = startup::decide(&Found {
                    recovered: recovered.clone(),
                    state: Some(&st),
                    outcome,
                    package_len,
                    journal: Path::new("backups/journal.json"),
                    counter: Path::new("tmp/recovery.json"),
                });
                let shown = plan.life.status();
                assert!(shown.progress <= 100, "{shown:?}");
                if let Some(kept) = PersistedState::from_lifecycle(&plan.life) {
                    reads_back(&kept);
                }
                let _ = plan.life.decide_download(&st.spec());
                for hours in TRUST_WINDOWS {
                    let _ = plan.life.decide_update(&st.version, now, hours);
                }
            }
        }
    }
});
