//! Unit tests of the orchestrator: its sinks and the fleet's cancel.

use super::*;
use crate::checksum::Algorithm;
use crate::lifecycle::Stage;
use crate::sync::lock;

/// A consumer of reports besides device-api's: what a fleet server's feedback plugs into.
#[derive(Default)]
struct Recorder(Mutex<Vec<Report>>);

impl Sink for Recorder {
    fn publish(&self, report: &Report) {
        lock(&self.0).push(report.clone());
    }
}

/// docs/API.md 9.1 (`cancelAction`): a cancel that reaches an action after its
/// installation succeeded, before the fleet client heard of the outcome, is refused: the
/// `success` stays, and with it the deployment's `closed`/`success` feedback.
#[test]
fn a_late_cancel_of_an_installed_version_is_refused_and_success_stays() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults().unwrap();
    cfg.work_dir = d.path().join("work");
    for dir in cfg.work().dirs() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let done = Outcome {
        id: 1,
        stage: Stage::Success,
        version: "1.3.1".into(),
        message: "Update completed".into(),
        error: None,
        progress: 100,
        at: "2026-12-07T22:00:00Z".into(),
        package_name: Some("p.zip".into()),
        package_md5: None,
        package_checksum: None,
        install_id: Some(7),
        delivered: true,
    };
    crate::outcome::save(&cfg.work().outcome(), &done).unwrap();
    let tls = crate::net::tls_config(None).unwrap();
    let u = Updater::new(cfg, tls, Arc::new(Reporter::new()), Shutdown::new());
    u.recover();
    assert_eq!(u.status().stage, Stage::Success);
    assert_eq!(
        u.cancel_package("1.3.1", "cancelled by the fleet server"),
        Err(Stage::Success)
    );
    assert_eq!(u.status().stage, Stage::Success);
}

/// Every report device-api's queue gets reaches every other sink too, in order: a whole
/// download of a package from a file, 0 % to `toInstall`.
#[test]
fn every_sink_hears_every_report_in_order() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = Config::defaults().unwrap();
    cfg.work_dir = d.path().join("work");
    for dir in cfg.work().dirs() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let data = vec![7u8; 300_000];
    let source = d.path().join("p.zip");
    std::fs::write(&source, &data).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut md5 = Hasher::new(Algorithm::Md5);
    md5.update(&data);
    let spec = PackageSpec {
        version: "1.2.3".into(),
        package_url: crate::download::file::file_url_of(&source),
        package_name: "p.zip".into(),
        package_size: data.len() as u64,
        package_md5: md5.finalize(),
    };
    let tls = crate::net::tls_config(None).unwrap();
    let reporter = Arc::new(Reporter::new());
    let recorder = Arc::new(Recorder::default());
    let u = Updater::with_sinks(
        cfg,
        tls,
        reporter.clone(),
        vec![recorder.clone()],
        Shutdown::new(),
    );
    assert_eq!(u.request_download(spec), Ok("downloading"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while u.status().stage != crate::lifecycle::Stage::ToInstall {
        assert!(std::time::Instant::now() < deadline, "{:?}", u.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    u.join_job();
    let heard = lock(&recorder.0).clone();
    let stages: Vec<&str> = heard.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages.first(), Some(&"downloading"), "{stages:?}");
    assert_eq!(stages.last(), Some(&"toInstall"), "{stages:?}");
    assert!(stages.contains(&"verifying"), "{stages:?}");
    // The stage change and the 0 % step are two reports of the same value.
    let mut steps: Vec<u8> = heard
        .iter()
        .filter(|r| r.stage == "downloading")
        .map(|r| r.progress)
        .collect();
    steps.dedup();
    let expected: Vec<u8> = (0..=100).step_by(5).collect();
    assert_eq!(steps, expected, "every 5 % step, in order");
    // device-api's queue drops a report equal to the one before it.
    let mut same = heard.clone();
    same.dedup();
    assert_eq!(
        reporter.queued(),
        same,
        "device-api's queue got the same reports"
    );
}
