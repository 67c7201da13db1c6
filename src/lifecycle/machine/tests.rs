//! The transitions of [`Lifecycle`], one by one and through a whole update.
use super::*;
use crate::checksum::{Algorithm, Checksum};
use crate::error::ErrorCode;
use crate::lifecycle::{iso8601, DownloadDecision, UpdateDecision};

fn spec(v: &str, url: &str) -> PackageSpec {
    PackageSpec {
        version: v.into(),
        package_url: url.into(),
        package_name: "p.zip".into(),
        package_size: 1000,
        package_md5: Checksum::from_hex(Algorithm::Md5, "0123456789abcdef0123456789abcdef")
            .unwrap(),
    }
}

fn pkg() -> PackageSpec {
    spec("1.2.3", "https://a/p.zip")
}

/// A lifecycle in `stage`, reached through the transitions (500 bytes of a partial where
/// the stage has one).
fn at(stage: Stage) -> Lifecycle {
    let mut l = Lifecycle::new();
    let now = OffsetDateTime::now_utc();
    match stage {
        Stage::Idle => {}
        Stage::Downloading => {
            l.begin_download(pkg(), 500, Validator::default()).unwrap();
        }
        Stage::Verifying => l = Lifecycle::restored_verify(pkg(), Validator::default()),
        Stage::ToInstall => {
            l = Lifecycle::restored_to_install(pkg(), Validator::default(), now);
        }
        Stage::Installing | Stage::Rebooting | Stage::Success => {
            l = Lifecycle::restored_to_install(pkg(), Validator::default(), now);
            l.begin_install(7).unwrap();
            if stage != Stage::Installing {
                l.restarting("m").unwrap();
            }
            if stage == Stage::Success {
                l.succeeded().unwrap();
            }
        }
        Stage::Failed => {
            l.begin_download(pkg(), 500, Validator::default()).unwrap();
            l.checkpointed(500, Validator::default());
            l.failed(error::download_failed("x")).unwrap();
        }
    }
    assert_eq!(l.stage(), stage);
    l
}

const ALL: [Stage; 8] = [
    Stage::Idle,
    Stage::Downloading,
    Stage::Verifying,
    Stage::ToInstall,
    Stage::Installing,
    Stage::Rebooting,
    Stage::Success,
    Stage::Failed,
];

/// Every named transition, from every stage: allowed exactly where the table says, and a
/// refused one changes nothing.
#[test]
fn named_transitions_accept_only_their_source_stages() {
    use Stage::*;
    type T = fn(&mut Lifecycle) -> Result<(), Refused>;
    let table: [(&str, T, &[Stage], Stage); 13] = [
        (
            "begin_download",
            |l| l.begin_download(pkg(), 0, Validator::default()),
            &[Idle, Success, Failed, ToInstall],
            Downloading,
        ),
        (
            "restart_download",
            |l| l.restart_download(),
            &[Downloading],
            Downloading,
        ),
        (
            "begin_verify",
            |l| l.begin_verify(),
            &[Downloading],
            Verifying,
        ),
        (
            "verified",
            |l| l.verified(OffsetDateTime::now_utc()),
            &[Verifying],
            ToInstall,
        ),
        (
            "begin_install",
            |l| l.begin_install(7),
            &[ToInstall],
            Installing,
        ),
        ("stopping", |l| l.stopping("m"), &[Installing], Installing),
        (
            "deploying",
            |l| l.deploying("m", 1, 2),
            &[Installing],
            Installing,
        ),
        (
            "restarting",
            |l| l.restarting("m").map(|_| ()),
            &[Installing, Rebooting],
            Rebooting,
        ),
        (
            "checking",
            |l| l.checking("m").map(|_| ()),
            &[Installing, Rebooting],
            Rebooting,
        ),
        (
            "succeeded",
            |l| l.succeeded(),
            &[Installing, Rebooting],
            Success,
        ),
        (
            "failed",
            |l| l.failed(error::internal("x")),
            &[Downloading, Verifying, ToInstall, Installing, Rebooting],
            Failed,
        ),
        (
            "failed_file_deleted",
            |l| l.failed_file_deleted(error::md5_mismatch("x")),
            &[Downloading, Verifying, ToInstall, Installing, Rebooting],
            Failed,
        ),
        (
            "expired",
            |l| l.expired(error::expired("x")),
            &[ToInstall],
            Failed,
        ),
    ];
    for (name, t, from, to) in table {
        for s in ALL {
            let mut l = at(s);
            let before = l.clone();
            match t(&mut l) {
                Ok(()) => {
                    assert!(from.contains(&s), "{name} allowed from {s}");
                    assert_eq!(l.stage(), to, "{name} from {s}");
                    assert!(
                        s == to || s.can_go_to(to),
                        "{name}: {s} -> {to} is outside Stage::can_go_to"
                    );
                }
                Err(e) => {
                    assert!(!from.contains(&s), "{name} refused from {s}: {e}");
                    assert_eq!(
                        e,
                        Refused::Stage {
                            transition: name,
                            stage: s
                        }
                    );
                    assert_eq!(OtaError::from(e).code, ErrorCode::InternalError);
                    assert_eq!(l, before, "{name} refused from {s} changed the state");
                }
            }
        }
    }
}

#[test]
fn a_whole_update_through_the_transitions() {
    let mut l = Lifecycle::new();
    l.begin_download(pkg(), 0, Validator::default()).unwrap();
    l.download_progress(472);
    let s = l.status();
    assert_eq!((s.stage, s.progress), (Stage::Downloading, 47));
    l.begin_verify().unwrap();
    assert_eq!(l.status().progress, 100);
    l.verified(OffsetDateTime::now_utc()).unwrap();
    assert_eq!(
        l.status().message,
        "Package 1.2.3 verified, ready to install"
    );
    l.begin_install(7).unwrap();
    assert_eq!(l.status().message, "Checking package integrity");
    l.stopping("printer").unwrap();
    l.deploying("device-api", 2, 3).unwrap();
    let s = l.status();
    assert_eq!(s.progress, 33);
    assert_eq!(s.message, "Deploying module device-api (2/3)");
    assert!(
        l.restarting("device-api").unwrap(),
        "installing -> rebooting"
    );
    assert!(!l.restarting("printer").unwrap(), "already rebooting");
    assert!(!l.checking("device-api").unwrap());
    let s = l.status();
    assert_eq!(
        (s.stage, s.progress, s.message.as_str()),
        (Stage::Rebooting, 100, "Checking module device-api")
    );
    l.succeeded().unwrap();
    let s = l.status();
    assert_eq!(s.stage, Stage::Success);
    assert_eq!(s.message, "Update to 1.2.3 completed");
    assert_eq!(s.version.as_deref(), Some("1.2.3"));
    assert_eq!(s.error, None);
}

#[test]
fn checking_enters_rebooting_at_progress_100() {
    let mut l = at(Stage::Installing);
    l.deploying("a", 1, 2).unwrap();
    assert!(l.checking("a").unwrap());
    let s = l.status();
    assert_eq!(s.stage, Stage::Rebooting);
    assert_eq!(s.progress, 100);
    assert_eq!(s.message, "Checking module a");
}

#[test]
fn contract_1_download_decisions() {
    let same = pkg();
    let other = spec("1.2.4", "https://a/q.zip");
    assert_eq!(
        at(Stage::Downloading).decide_download(&same),
        Ok(DownloadDecision::Join)
    );
    assert_eq!(
        at(Stage::Downloading)
            .decide_download(&other)
            .unwrap_err()
            .code,
        ErrorCode::OperationInProgress
    );
    for s in [Stage::Installing, Stage::Rebooting] {
        assert_eq!(
            at(s).decide_download(&same).unwrap_err().code,
            ErrorCode::OperationInProgress
        );
    }
    assert_eq!(
        at(Stage::ToInstall).decide_download(&same),
        Ok(DownloadDecision::AlreadyVerified)
    );
    assert_eq!(
        at(Stage::ToInstall).decide_download(&other),
        Ok(DownloadDecision::Start { resume_from: 0 })
    );
    // A failed download of the same package resumes from its byte position.
    assert_eq!(
        at(Stage::Failed).decide_download(&same),
        Ok(DownloadDecision::Start { resume_from: 500 })
    );
    assert_eq!(
        at(Stage::Success).decide_download(&other),
        Ok(DownloadDecision::Start { resume_from: 0 })
    );
    assert_eq!(
        Lifecycle::new().decide_download(&same),
        Ok(DownloadDecision::Start { resume_from: 0 })
    );
}

#[test]
fn contract_1_update_decisions() {
    let now = OffsetDateTime::now_utc();
    let code = |s: Stage, v: &str| at(s).decide_update(v, now, 24).unwrap_err().code;
    assert_eq!(code(Stage::Verifying, "1.2.3"), ErrorCode::Md5NotVerified);
    assert_eq!(
        code(Stage::Downloading, "1.2.3"),
        ErrorCode::DownloadIncomplete
    );
    assert_eq!(code(Stage::Idle, "1.2.3"), ErrorCode::DownloadIncomplete);
    assert_eq!(
        code(Stage::Installing, "1.2.3"),
        ErrorCode::OperationInProgress
    );
    assert_eq!(code(Stage::ToInstall, "9.9.9"), ErrorCode::PackageNotFound);
    let l = Lifecycle::restored_to_install(
        pkg(),
        Validator::default(),
        now - time::Duration::hours(23),
    );
    assert_eq!(
        l.decide_update("1.2.3", now, 24),
        Ok(UpdateDecision::Install)
    );
}

#[test]
fn contract_1_update_after_trust_window_is_expired_with_exact_message() {
    let now = OffsetDateTime::now_utc();
    let verified = now - time::Duration::hours(25);
    let mut l = Lifecycle::restored_to_install(pkg(), Validator::default(), verified);
    match l.decide_update("1.2.3", now, 24).unwrap() {
        UpdateDecision::Expired(e) => {
            assert_eq!(e.code, ErrorCode::PackageExpired);
            assert_eq!(
                e.to_string(),
                format!(
                    "PACKAGE_EXPIRED: Package verified at {} has exceeded 24-hour trust window, please re-download",
                    iso8601(verified)
                )
            );
            l.expired(e).unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.stage(), Stage::Failed);
    assert!(l.package().is_none(), "the package is forgotten");
    assert_eq!(l.status().version.as_deref(), Some("1.2.3"));
}

#[test]
fn contract_1_any_configured_trust_window_is_a_window_not_a_panic() {
    let now = OffsetDateTime::now_utc();
    let verified = now - time::Duration::hours(25);
    let l = Lifecycle::restored_to_install(pkg(), Validator::default(), verified);
    // From the least hours that overflowed `Duration::hours` up to the largest TOML integer
    // and beyond: all of them cover 25 hours.
    for hours in [i64::MAX as u64 / 3600 + 1, i64::MAX as u64, u64::MAX] {
        assert_eq!(
            l.decide_update("1.2.3", now, hours),
            Ok(UpdateDecision::Install),
            "{hours} hours"
        );
    }
    assert!(matches!(
        l.decide_update("1.2.3", now, 24),
        Ok(UpdateDecision::Expired(_))
    ));
}

#[test]
fn contract_6_state_file_never_claims_more_than_is_durable() {
    let mut l = at(Stage::Downloading);
    l.download_progress(700);
    l.checkpointed(600, Validator::default());
    assert_eq!(l.persisted_bytes(), 600);
    assert_eq!(
        l.status().bytes_downloaded,
        700,
        "/progress shows what was received"
    );
    l.download_progress(0); // started over: nothing of the old file counts
    assert_eq!(l.persisted_bytes(), 0);
    l.download_progress(700);
    l.checkpointed(
        600,
        Validator {
            etag: Some("\"old\"".into()),
            last_modified: None,
        },
    );
    l.restart_download().unwrap();
    assert_eq!((l.persisted_bytes(), l.bytes_done()), (0, 0));
    assert_eq!(
        l.validator(),
        &Validator::default(),
        "the old file's validator is dropped"
    );
    l.checkpointed(600, Validator::default());
    l.download_progress(700);
    l.failed(error::download_failed("x")).unwrap();
    assert_eq!(l.persisted_bytes(), 600);
    let mut l = at(Stage::Verifying);
    l.verify_progress(1000);
    assert_eq!(l.persisted_bytes(), 1000);
}

#[test]
fn failed_keeps_progress_and_error_only_shown_when_failed() {
    let mut l = at(Stage::Downloading);
    l.failed(error::download_failed("boom")).unwrap();
    let s = l.status();
    assert_eq!(s.stage, Stage::Failed);
    assert_eq!(s.progress, 50);
    assert_eq!(s.error.as_deref(), Some("DOWNLOAD_FAILED: boom"));
    l.begin_download(pkg(), 500, Validator::default()).unwrap();
    assert_eq!(l.status().error, None);
    assert_eq!(l.error(), None);
}

#[test]
fn restored_outcomes_show_their_version() {
    let s = Lifecycle::restored_success("2.0.0").status();
    assert_eq!(
        (s.stage, s.progress, s.version.as_deref()),
        (Stage::Success, 100, Some("2.0.0"))
    );
    assert_eq!(s.message, "Update to 2.0.0 completed");
    let l = Lifecycle::restored_failed(error::deployment_failed("x"), None, Some("2.0.0"), 40);
    let s = l.status();
    assert_eq!(
        (s.stage, s.progress, s.version.as_deref()),
        (Stage::Failed, 40, Some("2.0.0"))
    );
    assert_eq!(s.error.as_deref(), Some("DEPLOYMENT_FAILED: x"));
}

#[test]
fn a_blocked_lifecycle_refuses_download_and_update() {
    let err = error::internal("recovery given up");
    let mut l = Lifecycle::restored_blocked(err.clone());
    assert_eq!(l.stage(), Stage::Failed);
    assert_eq!(l.decide_download(&pkg()), Err(err.clone()));
    assert_eq!(
        l.decide_update("1.2.3", OffsetDateTime::now_utc(), 24),
        Err(err.clone())
    );
    assert_eq!(
        l.begin_download(pkg(), 0, Validator::default()),
        Err(Refused::Blocked(err))
    );
    assert_eq!(l.stage(), Stage::Failed);
}
