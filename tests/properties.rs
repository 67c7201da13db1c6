//! Property tests of the pure core: the lifecycle's transitions and path normalisation, over
//! generated inputs rather than hand-picked cases.

use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;
use time::OffsetDateTime;
use tope_updater::checksum::{Algorithm, Checksum};
use tope_updater::error::{self, ErrorCode};
use tope_updater::lifecycle::{
    DownloadDecision, Lifecycle, PackageSpec, Stage, UpdateDecision, Validator,
};
use tope_updater::paths::normalize_abs;

fn spec(n: u8, size: u64) -> PackageSpec {
    PackageSpec {
        version: format!("1.0.{n}"),
        package_url: format!("https://h/p{n}.zip"),
        package_name: format!("p{n}.zip"),
        package_size: size,
        package_md5: Checksum::from_hex(Algorithm::Md5, &format!("{:032x}", n))
            .expect("32 hex digits"),
    }
}

/// One call of a named transition (or a query) on the lifecycle.
#[derive(Debug, Clone)]
enum Op {
    BeginDownload(u8, u64),
    DownloadProgress(u64),
    Checkpointed(u64),
    RestartDownload,
    BeginVerify,
    VerifyProgress(u64),
    Verified,
    BeginInstall(u64),
    Stopping,
    Deploying(usize, usize),
    Restarting,
    Checking,
    RollingBack,
    Succeeded,
    Failed,
    FailedFileDeleted,
    Expired,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0u64..2000).prop_map(|(n, r)| Op::BeginDownload(n, r)),
        (0u64..2000).prop_map(Op::DownloadProgress),
        (0u64..2000).prop_map(Op::Checkpointed),
        Just(Op::RestartDownload),
        Just(Op::BeginVerify),
        (0u64..2000).prop_map(Op::VerifyProgress),
        Just(Op::Verified),
        (0u64..5).prop_map(Op::BeginInstall),
        Just(Op::Stopping),
        (0usize..5, 0usize..5).prop_map(|(i, n)| Op::Deploying(i, n)),
        Just(Op::Restarting),
        Just(Op::Checking),
        Just(Op::RollingBack),
        Just(Op::Succeeded),
        Just(Op::Failed),
        Just(Op::FailedFileDeleted),
        Just(Op::Expired),
    ]
}

/// Apply `op`; `Err` when the lifecycle refused it.
fn apply(l: &mut Lifecycle, op: &Op) -> Result<(), String> {
    let e = |r: Result<(), tope_updater::lifecycle::Refused>| r.map_err(|e| e.to_string());
    match op {
        Op::BeginDownload(n, r) => e(l.begin_download(spec(*n, 1000), *r, Validator::default())),
        Op::DownloadProgress(b) => {
            l.download_progress((*b).min(1000));
            Ok(())
        }
        Op::Checkpointed(b) => {
            let done = l.bytes_done();
            l.checkpointed((*b).min(done), Validator::default());
            Ok(())
        }
        Op::RestartDownload => e(l.restart_download()),
        Op::BeginVerify => e(l.begin_verify()),
        Op::VerifyProgress(b) => {
            l.verify_progress(*b);
            Ok(())
        }
        Op::Verified => e(l.verified(OffsetDateTime::now_utc())),
        Op::BeginInstall(id) => e(l.begin_install(*id)),
        Op::Stopping => e(l.stopping("m")),
        Op::Deploying(i, n) => e(l.deploying("m", *i, *n)),
        Op::Restarting => e(l.restarting("m").map(|_| ())),
        Op::Checking => e(l.checking("m").map(|_| ())),
        Op::RollingBack => e(l.rolling_back("why")),
        Op::Succeeded => e(l.succeeded()),
        Op::Failed => e(l.failed(error::download_failed("x"))),
        Op::FailedFileDeleted => e(l.failed_file_deleted(error::md5_mismatch("x"))),
        Op::Expired => e(l.expired(error::expired("x"))),
    }
}

proptest! {
    /// Whatever is called in whatever order: the stage only ever follows the contract's table,
    /// a refused transition changes nothing, and what /progress shows stays consistent.
    #[test]
    fn lifecycle_only_follows_the_transition_table(ops in prop::collection::vec(op(), 1..60)) {
        let mut l = Lifecycle::new();
        for op in &ops {
            let before = l.clone();
            let result = apply(&mut l, op);
            let (from, to) = (before.stage(), l.stage());
            match result {
                Err(why) => prop_assert_eq!(&before, &l, "{:?} was refused ({}) but changed the lifecycle", op, why),
                Ok(()) => prop_assert!(
                    from == to || from.can_go_to(to),
                    "{:?} took {} to {}, outside the table", op, from, to
                ),
            }
            let s = l.status();
            prop_assert!(s.progress <= 100);
            prop_assert_eq!(s.error.is_some(), to == Stage::Failed, "error shown iff failed: {:?}", s);
            if to == Stage::Downloading {
                prop_assert!(l.persisted_bytes() <= l.bytes_done(), "state file claims unreceived bytes");
                prop_assert!(s.progress < 100 || l.bytes_done() >= 1000, "100 % before complete");
            }
            if matches!(to, Stage::ToInstall | Stage::Rebooting | Stage::Success) {
                prop_assert_eq!(s.progress, 100);
            }
        }
    }

    /// `/download` and `/update` are decided for every stage without panicking, and a busy
    /// stage never lets another operation start.
    #[test]
    fn decisions_never_start_over_a_busy_stage(ops in prop::collection::vec(op(), 0..40), n in 0u8..3) {
        let mut l = Lifecycle::new();
        for op in &ops {
            let _ = apply(&mut l, op);
        }
        let req = spec(n, 1000);
        let stage = l.stage();
        match l.decide_download(&req) {
            Ok(DownloadDecision::Start { .. }) => prop_assert!(!stage.is_busy(), "start while {}", stage),
            Ok(DownloadDecision::Join) => prop_assert!(matches!(stage, Stage::Downloading | Stage::Verifying)),
            Ok(DownloadDecision::AlreadyVerified) => prop_assert_eq!(stage, Stage::ToInstall),
            Err(e) => prop_assert!(
                matches!(e.code, ErrorCode::OperationInProgress | ErrorCode::InternalError),
                "{}", e
            ),
        }
        let version = req.version.clone();
        match l.decide_update(&version, OffsetDateTime::now_utc(), 24) {
            Ok(UpdateDecision::Install) => prop_assert_eq!(stage, Stage::ToInstall),
            Ok(UpdateDecision::Expired(_)) => prop_assert_eq!(stage, Stage::ToInstall),
            Err(e) => prop_assert!(
                !matches!(e.code, ErrorCode::InternalError | ErrorCode::ValidationError),
                "{}", e
            ),
        }
    }

    /// Normalising an absolute path drops `.` and repeated slashes, refuses `..`, keeps it
    /// absolute, and is idempotent.
    #[test]
    fn normalize_abs_refuses_dotdot_and_is_idempotent(
        parts in prop::collection::vec(prop_oneof![
            Just("..".to_string()), Just(".".to_string()), Just(String::new()),
            "[a-z]{1,6}".prop_map(|s| s),
        ], 0..8)
    ) {
        let text = format!("/{}", parts.join("/"));
        let p = Path::new(&text);
        match normalize_abs(p) {
            None => prop_assert!(parts.iter().any(|c| c == ".."), "{} refused without ..", text),
            Some(n) => {
                prop_assert!(!parts.iter().any(|c| c == ".."), "{} accepted with ..", text);
                prop_assert!(n.is_absolute());
                prop_assert!(n.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
                prop_assert_eq!(normalize_abs(&n), Some(n.clone()));
                let names: PathBuf = parts.iter().filter(|c| !c.is_empty() && *c != ".").collect();
                prop_assert_eq!(n, Path::new("/").join(names));
            }
        }
        prop_assert_eq!(normalize_abs(Path::new(text.trim_start_matches('/'))), None, "relative refused");
    }
}
