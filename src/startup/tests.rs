//! Table tests of [`decide`]: one row per situation found on disk.

use std::path::Path;

use time::OffsetDateTime;

use super::*;
use crate::error::ErrorCode;

const MD5: &str = "0123456789abcdef0123456789abcdef";

fn md5() -> crate::checksum::Checksum {
    crate::checksum::Checksum::from_hex(crate::checksum::Algorithm::Md5, MD5).unwrap()
}

fn state(stage: &str, bytes: u64, verified: bool, err: Option<&str>) -> PersistedState {
    PersistedState {
        version: "1.2.3".into(),
        package_url: "https://a/p.zip".into(),
        package_name: "p.zip".into(),
        package_size: 1000,
        package_md5: Some(md5()),
        package_checksum: None,
        bytes_downloaded: bytes,
        last_update: "2026-11-25T10:00:00Z".into(),
        stage: stage.into(),
        verified_at: verified.then(|| "2026-11-25T10:00:00Z".into()),
        etag: Some("\"e\"".into()),
        last_modified: None,
        error: err.map(str::to_string),
        install_id: None,
    }
}

fn installing_as(stage: &str, install_id: u64) -> PersistedState {
    PersistedState {
        install_id: Some(install_id),
        ..state(stage, 1000, true, None)
    }
}

fn outcome_of(l: &Lifecycle, delivered: bool) -> Outcome {
    let mut o = Outcome::of(l, OffsetDateTime::now_utc()).unwrap();
    o.delivered = delivered;
    o
}

fn success(version: &str, install_id: Option<u64>) -> Outcome {
    let mut o = outcome_of(&Lifecycle::restored_success(version), true);
    o.package_md5 = Some(md5());
    o.install_id = install_id;
    o
}

fn failed_outcome(version: &str, err: &str) -> Outcome {
    let l = Lifecycle::restored_failed(OtaError::parse(err), None, Some(version), 37);
    outcome_of(&l, false)
}

/// What a row expects.
struct Want {
    stage: Stage,
    /// A prefix of the error shown.
    error: Option<&'static str>,
    version: Option<&'static str>,
    next: &'static str,
    outcome: OutcomeStep,
    guard: &'static str,
    touch_tmp: bool,
    keep: Option<&'static str>,
    blocked: bool,
}

fn want(stage: Stage) -> Want {
    Want {
        stage,
        error: None,
        version: Some("1.2.3"),
        next: "nothing",
        outcome: OutcomeStep::None,
        guard: "reset",
        touch_tmp: true,
        keep: Some("p.zip"),
        blocked: false,
    }
}

fn check(row: &str, f: Found, w: Want) {
    let p = decide(&f);
    let s = p.life.status();
    assert_eq!(s.stage, w.stage, "{row}: {s:?}");
    match w.error {
        Some(prefix) => assert!(
            s.error.as_deref().unwrap_or("").starts_with(prefix),
            "{row}: error {:?} does not start with {prefix}",
            s.error
        ),
        None => assert_eq!(s.error, None, "{row}"),
    }
    assert_eq!(s.version.as_deref(), w.version, "{row}: version");
    let next = match &p.next {
        Next::Nothing => "nothing".to_string(),
        Next::Download(spec, from, v) => {
            assert_eq!(spec.package_name, "p.zip", "{row}");
            assert_eq!(v.etag.as_deref(), Some("\"e\""), "{row}: validator kept");
            format!("download@{from}")
        }
        Next::Verify(_) => "verify".to_string(),
    };
    assert_eq!(next, w.next, "{row}: next");
    assert_eq!(p.outcome, w.outcome, "{row}: outcome step");
    let guard = match &p.guard {
        GuardStep::Reset => "reset",
        GuardStep::Failed(_) => "failed",
        GuardStep::Untouched => "untouched",
    };
    assert_eq!(guard, w.guard, "{row}: guard");
    assert_eq!(p.touch_tmp, w.touch_tmp, "{row}: touch_tmp");
    assert_eq!(p.keep_package.as_deref(), w.keep, "{row}: kept package");
    assert_eq!(p.life.is_blocked(), w.blocked, "{row}: blocked");
    assert_eq!(p.report, w.stage != Stage::Idle, "{row}: report");
}

fn found<'a>(
    recovered: Recovered,
    state: Option<&'a PersistedState>,
    outcome: Option<&'a Outcome>,
    package_len: Option<u64>,
) -> Found<'a> {
    Found {
        recovered,
        state,
        outcome,
        package_len,
        journal: Path::new("/w/backups/journal.json"),
        counter: Path::new("/w/tmp/recovery.json"),
    }
}

fn nothing() -> Recovered {
    Recovered::Done(Recovery::Nothing)
}

#[test]
fn startup_decision_from_the_state_file() {
    let downloading = state("downloading", 400, false, None);
    check(
        "downloading resumes at its byte",
        found(nothing(), Some(&downloading), None, Some(600)),
        Want {
            next: "download@400",
            ..want(Stage::Downloading)
        },
    );
    let verifying = state("verifying", 1000, false, None);
    check(
        "verifying a complete file hashes it",
        found(nothing(), Some(&verifying), None, Some(1000)),
        Want {
            next: "verify",
            ..want(Stage::Verifying)
        },
    );
    check(
        "verifying a short file downloads the rest",
        found(nothing(), Some(&verifying), None, Some(10)),
        Want {
            next: "download@1000",
            ..want(Stage::Downloading)
        },
    );
    let to_install = state("toInstall", 1000, true, None);
    check(
        "toInstall with its package waits",
        found(nothing(), Some(&to_install), None, Some(1000)),
        want(Stage::ToInstall),
    );
    check(
        "toInstall whose package is gone is idle, and the file is not kept",
        found(nothing(), Some(&to_install), None, None),
        Want {
            version: None,
            keep: None,
            ..want(Stage::Idle)
        },
    );
    let unverified = state("toInstall", 1000, false, None);
    check(
        "toInstall without verified_at is verified again",
        found(nothing(), Some(&unverified), None, Some(1000)),
        Want {
            next: "verify",
            ..want(Stage::Verifying)
        },
    );
    let idle = state("idle", 0, false, None);
    check(
        "an idle state file and nothing else: idle",
        found(nothing(), Some(&idle), None, None),
        Want {
            version: None,
            keep: None,
            ..want(Stage::Idle)
        },
    );
    check(
        "nothing at all: idle",
        found(nothing(), None, None, None),
        Want {
            version: None,
            keep: None,
            ..want(Stage::Idle)
        },
    );
}

#[test]
fn contract_8_5_startup_shows_the_outcome_until_the_next_download() {
    let ok = success("1.2.3", Some(1));
    check(
        "success: state.json deleted, outcome kept",
        found(nothing(), None, Some(&ok), None),
        Want {
            outcome: OutcomeStep::Keep,
            keep: None,
            ..want(Stage::Success)
        },
    );
    let bad = failed_outcome("2.0.0", "PACKAGE_EXPIRED: too old");
    check(
        "expired: state.json deleted, the failed outcome shown with its version",
        found(nothing(), None, Some(&bad), None),
        Want {
            error: Some("PACKAGE_EXPIRED: too old"),
            version: Some("2.0.0"),
            outcome: OutcomeStep::Keep,
            keep: None,
            ..want(Stage::Failed)
        },
    );
    let st = state("failed", 300, false, Some("DOWNLOAD_FAILED: cut"));
    let same = failed_outcome("1.2.3", "DOWNLOAD_FAILED: cut");
    check(
        "failed state and the same outcome: kept, the partial too",
        found(nothing(), Some(&st), Some(&same), Some(300)),
        Want {
            error: Some("DOWNLOAD_FAILED: cut"),
            outcome: OutcomeStep::Keep,
            ..want(Stage::Failed)
        },
    );
    let p = decide(&found(nothing(), Some(&st), Some(&same), Some(300)));
    assert_eq!(p.life.progress(), 37, "the outcome's progress is shown");
    check(
        "failed state and an older outcome: recorded anew",
        found(nothing(), Some(&st), Some(&ok), Some(300)),
        Want {
            error: Some("DOWNLOAD_FAILED: cut"),
            outcome: OutcomeStep::Record,
            ..want(Stage::Failed)
        },
    );
    check(
        "failed state of the Python updater, no error, no outcome",
        found(
            nothing(),
            Some(&state("failed", 0, false, None)),
            None,
            None,
        ),
        Want {
            error: Some("INTERNAL_ERROR: "),
            outcome: OutcomeStep::Record,
            ..want(Stage::Failed)
        },
    );
    let dl = state("downloading", 10, false, None);
    check(
        "a newer download supersedes the outcome",
        found(nothing(), Some(&dl), Some(&ok), Some(10)),
        Want {
            next: "download@10",
            ..want(Stage::Downloading)
        },
    );
}

#[test]
fn contract_6_startup_after_an_interrupted_installation() {
    let installing = state("installing", 1000, true, None);
    check(
        "journal rolled back",
        found(
            Recovered::Done(Recovery::RolledBack {
                version: "1.2.3".into(),
            }),
            Some(&installing),
            None,
            Some(1000),
        ),
        Want {
            error: Some("DEPLOYMENT_FAILED: installation of 1.2.3 was interrupted"),
            outcome: OutcomeStep::Record,
            ..want(Stage::Failed)
        },
    );
    check(
        "journal rolled back, no state file: the journal's version",
        found(
            Recovered::Done(Recovery::RolledBack {
                version: "3.0.0".into(),
            }),
            None,
            None,
            None,
        ),
        Want {
            error: Some("DEPLOYMENT_FAILED: "),
            version: Some("3.0.0"),
            outcome: OutcomeStep::Record,
            keep: None,
            ..want(Stage::Failed)
        },
    );
    let completed = Recovered::Done(Recovery::Completed {
        version: "1.2.3".into(),
    });
    check(
        "journal committed, outcome not yet written: recorded, package removed",
        found(completed.clone(), Some(&installing), None, Some(1000)),
        Want {
            outcome: OutcomeStep::Record,
            keep: None,
            ..want(Stage::Success)
        },
    );
    let ok = success("1.2.3", Some(1));
    check(
        "journal committed, its success already recorded: kept",
        found(completed, Some(&installing), Some(&ok), Some(1000)),
        Want {
            outcome: OutcomeStep::Keep,
            keep: None,
            ..want(Stage::Success)
        },
    );
    check(
        "installing, no journal: nothing was changed",
        found(nothing(), Some(&installing), None, Some(1000)),
        Want {
            error: Some("DEPLOYMENT_FAILED: installation was interrupted"),
            outcome: OutcomeStep::Record,
            ..want(Stage::Failed)
        },
    );
    let done = success("1.2.3", Some(42));
    check(
        "rebooting, no journal, the success of this installation recorded: success",
        found(
            nothing(),
            Some(&installing_as("rebooting", 42)),
            Some(&done),
            Some(1000),
        ),
        Want {
            outcome: OutcomeStep::Keep,
            keep: None,
            ..want(Stage::Success)
        },
    );
    check(
        "installing, no journal, the success of an earlier installation of the same package",
        found(
            nothing(),
            Some(&installing_as("installing", 43)),
            Some(&done),
            Some(1000),
        ),
        Want {
            error: Some("DEPLOYMENT_FAILED: installation was interrupted"),
            outcome: OutcomeStep::Record,
            ..want(Stage::Failed)
        },
    );
    check(
        "installing of the Python updater (no id), a success without id: failed",
        found(
            nothing(),
            Some(&installing),
            Some(&success("1.2.3", None)),
            Some(1000),
        ),
        Want {
            error: Some("DEPLOYMENT_FAILED: "),
            outcome: OutcomeStep::Record,
            ..want(Stage::Failed)
        },
    );
}

#[test]
fn crash_loop_guard_startup_decisions() {
    let installing = state("installing", 1000, true, None);
    let failure = error::deployment_failed("rollback incomplete");
    check(
        "recovery failed, attempt 1: its error, counted, retried next start",
        found(
            Recovered::Failed {
                error: failure.clone(),
                attempt: 1,
            },
            Some(&installing),
            None,
            Some(1000),
        ),
        Want {
            error: Some("DEPLOYMENT_FAILED: rollback incomplete"),
            outcome: OutcomeStep::Record,
            guard: "failed",
            ..want(Stage::Failed)
        },
    );
    check(
        "recovery failed, attempt 3: given up now",
        found(
            Recovered::Failed {
                error: failure,
                attempt: guard::MAX_ATTEMPTS,
            },
            Some(&installing),
            None,
            Some(1000),
        ),
        Want {
            error: Some("INTERNAL_ERROR: start-up recovery"),
            version: None,
            guard: "failed",
            touch_tmp: false,
            keep: None,
            blocked: true,
            ..want(Stage::Failed)
        },
    );
    let ok = success("1.2.3", Some(1));
    check(
        "given up before: not tried, nothing touched, updates refused",
        found(
            Recovered::NotTried {
                attempts: 3,
                last_error: None,
            },
            Some(&installing),
            Some(&ok),
            Some(1000),
        ),
        Want {
            error: Some("INTERNAL_ERROR: start-up recovery"),
            version: None,
            guard: "untouched",
            touch_tmp: false,
            keep: None,
            blocked: true,
            ..want(Stage::Failed)
        },
    );
    let p = decide(&found(
        Recovered::NotTried {
            attempts: 3,
            last_error: Some("DEPLOYMENT_FAILED: x".into()),
        },
        None,
        None,
        None,
    ));
    let e = p.life.error().unwrap();
    assert_eq!(e.code, ErrorCode::InternalError);
    assert!(e.detail.contains("/w/tmp/recovery.json"), "{e}");
    assert!(e.detail.contains("DEPLOYMENT_FAILED: x"), "{e}");
}

#[test]
fn contract_8_5_strays_are_everything_no_state_refers_to() {
    let names: Vec<String> = [
        "state.json",
        "outcome.json",
        "recovery.json",
        "history.jsonl",
        "state.json.tmp",
        "outcome.json.tmp",
        "foo.tmp",
        "old-1.0.0.zip",
        "p.zip",
        "state.json.unusable",
        "subdir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        strays(&names, Some("p.zip")),
        [
            "state.json.tmp",
            "outcome.json.tmp",
            "foo.tmp",
            "old-1.0.0.zip",
            "subdir"
        ]
    );
    assert!(strays(&names, None).contains(&"p.zip"));
}
