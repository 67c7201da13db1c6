//! Unit tests of the DDI wire types (docs/API.md 9.1). `goosebit/` fixtures are bodies goosebit
//! 0.2.12 really sent (captured by `tests/fleet_goosebit.rs` with `TOPE_DDI_CAPTURE=1`);
//! `hawkbit/` fixtures follow the examples of hawkBit's DDI API documentation (the fields
//! goosebit leaves out: `maintenanceWindow`, `download-http`, `sha256`/`md5`, `cancelAction`).

use super::*;

const GB_REGISTER: &str =
    include_str!("../../tests/fixtures/ddi/goosebit/controller_register.json");
const GB_IDLE: &str = include_str!("../../tests/fixtures/ddi/goosebit/controller_idle.json");
const GB_POLL_DEPLOY: &str =
    include_str!("../../tests/fixtures/ddi/goosebit/deployment_base_poll.json");
const GB_DEPLOYMENT: &str = include_str!("../../tests/fixtures/ddi/goosebit/deployment_base.json");
const HB_CONTROLLER: &str = include_str!("../../tests/fixtures/ddi/hawkbit/controller_base.json");
const HB_CANCEL_POLL: &str =
    include_str!("../../tests/fixtures/ddi/hawkbit/controller_cancel.json");
const HB_DEPLOYMENT: &str = include_str!("../../tests/fixtures/ddi/hawkbit/deployment_base.json");
const HB_CANCEL: &str = include_str!("../../tests/fixtures/ddi/hawkbit/cancel_action.json");

fn json_with(base: &str, pointer: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    *v.pointer_mut(pointer).unwrap() = value;
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn ddi_9_1_controller_base_of_goosebit_parses_with_links_and_sleep() {
    let reg = ControllerBase::parse(GB_REGISTER.as_bytes()).unwrap();
    assert_eq!(reg.poll_interval().unwrap(), Some(Duration::from_secs(10)));
    let cfg = reg
        .links
        .config_data
        .as_ref()
        .unwrap()
        .url("configData")
        .unwrap();
    assert!(cfg.path().ends_with("/configData"), "{cfg}");
    assert!(reg.links.deployment_base.is_none() && reg.links.cancel_action.is_none());

    let idle = ControllerBase::parse(GB_IDLE.as_bytes()).unwrap();
    assert_eq!(idle.poll_interval().unwrap(), Some(Duration::from_secs(5)));
    assert_eq!(idle.links, ControllerLinks::default());

    let offer = ControllerBase::parse(GB_POLL_DEPLOY.as_bytes()).unwrap();
    let href = offer
        .links
        .deployment_base
        .unwrap()
        .url("deploymentBase")
        .unwrap();
    assert!(href.path().contains("/deploymentBase/"), "{href}");
}

#[test]
fn ddi_9_1_controller_base_of_hawkbit_ignores_unknown_links_and_reads_cancel() {
    let base = ControllerBase::parse(HB_CONTROLLER.as_bytes()).unwrap();
    assert_eq!(
        base.poll_interval().unwrap(),
        Some(Duration::from_secs(12 * 3600))
    );
    assert!(base.links.deployment_base.is_some() && base.links.config_data.is_some());
    let cancel = ControllerBase::parse(HB_CANCEL_POLL.as_bytes()).unwrap();
    let url = cancel
        .links
        .cancel_action
        .unwrap()
        .url("cancelAction")
        .unwrap();
    assert!(url.path().ends_with("/cancelAction/11"));
    // No `config` at all: the configured interval stays in force.
    let bare = ControllerBase::parse(br#"{"_links":{},"extra":[1,2]}"#).unwrap();
    assert_eq!(bare.poll_interval().unwrap(), None);
}

#[test]
fn ddi_9_1_poll_interval_is_bounded_to_1_s_and_24_h() {
    assert_eq!(parse_sleep("00:00:00").unwrap(), MIN_POLL);
    assert_eq!(parse_sleep("00:00:01").unwrap(), Duration::from_secs(1));
    assert_eq!(parse_sleep("00:05:30").unwrap(), Duration::from_secs(330));
    assert_eq!(parse_sleep("24:00:00").unwrap(), MAX_POLL);
    assert_eq!(
        parse_sleep("23:59:59").unwrap(),
        Duration::from_secs(86_399)
    );
    assert_eq!(parse_sleep("48:00:00").unwrap(), MAX_POLL);
    assert_eq!(parse_sleep("999999999:59:59").unwrap(), MAX_POLL);
    assert_eq!(parse_sleep("1:00:00").unwrap(), Duration::from_secs(3600));
}

#[test]
fn ddi_9_1_poll_interval_that_is_not_hh_mm_ss_is_an_error() {
    for bad in [
        "",
        "60",
        "00:05",
        "00:00:00:01",
        "00:60:00",
        "00:00:60",
        "-1:00:00",
        "+1:00:00",
        "00:0a:00",
        "00: 5:00",
        "0:5:00",
        "1000000000:00:00",
        "١:00:00",
    ] {
        let err = parse_sleep(bad).unwrap_err();
        assert!(
            err.to_string().contains("config.polling.sleep"),
            "{bad:?}: {err}"
        );
    }
    let body = json_with(GB_IDLE, "/config/polling/sleep", "soon".into());
    let base = ControllerBase::parse(&body).unwrap();
    assert!(base.poll_interval().is_err());
}

#[test]
fn ddi_9_1_deployment_base_of_goosebit_gives_the_artifact() {
    let d = DeploymentBase::parse(GB_DEPLOYMENT.as_bytes()).unwrap();
    assert_eq!(d.id.as_str(), "1");
    assert_eq!(d.deployment.download, Handling::Forced);
    assert_eq!(d.deployment.update, Handling::Forced);
    assert_eq!(d.deployment.maintenance_window, None);
    let a = d.the_artifact().unwrap();
    assert_eq!(a.filename, "tope-1.2.3.swu");
    assert_eq!(a.size, 70_656);
    let h = a.hashes.strongest().unwrap();
    assert_eq!(h.algorithm, HashAlgorithm::Sha1);
    assert_eq!(h.hex, "677fe55560e8beb40683d0189b32690f0090a194");
    // goosebit links plain http only.
    assert!(a.download_url(false).is_err());
    assert_eq!(a.download_url(true).unwrap().scheme(), "http");
}

#[test]
fn ddi_9_1_deployment_base_of_hawkbit_reads_window_links_and_strongest_hash() {
    let d = DeploymentBase::parse(HB_DEPLOYMENT.as_bytes()).unwrap();
    assert_eq!(d.id.as_str(), "8");
    assert_eq!(d.deployment.download, Handling::Forced);
    assert_eq!(d.deployment.update, Handling::Attempt);
    assert_eq!(
        d.deployment.maintenance_window,
        Some(MaintenanceWindow::Available)
    );
    let a = d.the_artifact().unwrap();
    assert_eq!(a.size, 2048);
    let h = a.hashes.strongest().unwrap();
    assert_eq!(h.algorithm, HashAlgorithm::Sha256);
    assert_eq!(
        h.hex,
        "a7f8e1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e"
    );
    // https first, whatever allow_http says.
    assert_eq!(a.download_url(false).unwrap().scheme(), "https");
    assert_eq!(a.download_url(true).unwrap().scheme(), "https");

    for (handling, want) in [
        ("skip", Handling::Skip),
        ("attempt", Handling::Attempt),
        ("forced", Handling::Forced),
    ] {
        let body = json_with(HB_DEPLOYMENT, "/deployment/update", handling.into());
        assert_eq!(
            DeploymentBase::parse(&body).unwrap().deployment.update,
            want
        );
    }
    let body = json_with(
        HB_DEPLOYMENT,
        "/deployment/maintenanceWindow",
        "unavailable".into(),
    );
    assert_eq!(
        DeploymentBase::parse(&body)
            .unwrap()
            .deployment
            .maintenance_window,
        Some(MaintenanceWindow::Unavailable)
    );
    let body = json_with(HB_DEPLOYMENT, "/deployment/update", "later".into());
    assert!(matches!(
        DeploymentBase::parse(&body),
        Err(DdiError::Json { .. })
    ));
}

#[test]
fn ddi_9_1_strongest_hash_is_sha256_then_sha1_then_md5() {
    let sha256 = "ab".repeat(32);
    let sha1 = "cd".repeat(20);
    let md5 = "EF".repeat(16);
    let h = |s256: Option<&str>, s1: Option<&str>, m: Option<&str>| Hashes {
        sha256: s256.map(str::to_string),
        sha1: s1.map(str::to_string),
        md5: m.map(str::to_string),
    };
    let pick = |hs: Hashes| hs.strongest().map(|x| (x.algorithm, x.hex));
    assert_eq!(
        pick(h(Some(&sha256), Some(&sha1), Some(&md5))).unwrap(),
        (HashAlgorithm::Sha256, sha256.clone())
    );
    assert_eq!(
        pick(h(None, Some(&sha1), Some(&md5))).unwrap(),
        (HashAlgorithm::Sha1, sha1.clone())
    );
    assert_eq!(
        pick(h(None, None, Some(&md5))).unwrap(),
        (HashAlgorithm::Md5, md5.to_ascii_lowercase())
    );
    assert!(pick(h(None, None, None)).is_err());
    // A malformed strong hash is an error, never a fall back to a weaker one.
    assert!(pick(h(Some("abc"), Some(&sha1), None)).is_err());
    assert!(pick(h(Some(&"zz".repeat(32)), Some(&sha1), None)).is_err());
    assert!(
        pick(h(None, Some(&sha256), None)).is_err(),
        "sha1 of sha256 length"
    );
}

#[test]
fn ddi_9_1_deployment_must_be_one_chunk_with_one_plain_artifact() {
    let two_chunks = {
        let mut v: serde_json::Value = serde_json::from_str(HB_DEPLOYMENT).unwrap();
        let chunk = v["deployment"]["chunks"][0].clone();
        v["deployment"]["chunks"]
            .as_array_mut()
            .unwrap()
            .push(chunk);
        serde_json::to_vec(&v).unwrap()
    };
    let err = DeploymentBase::parse(&two_chunks)
        .unwrap()
        .the_artifact()
        .unwrap_err();
    assert!(err.to_string().contains("2 chunks"), "{err}");
    let no_artifact = json_with(
        HB_DEPLOYMENT,
        "/deployment/chunks/0/artifacts",
        serde_json::json!([]),
    );
    assert!(DeploymentBase::parse(&no_artifact)
        .unwrap()
        .the_artifact()
        .is_err());
    let no_chunk = json_with(HB_DEPLOYMENT, "/deployment/chunks", serde_json::json!([]));
    assert!(DeploymentBase::parse(&no_chunk)
        .unwrap()
        .the_artifact()
        .is_err());

    for bad in [
        "../etc/passwd",
        "a/b.swu",
        "a\\b.swu",
        "..",
        ".",
        "",
        "x\u{0}.swu",
    ] {
        let body = json_with(
            HB_DEPLOYMENT,
            "/deployment/chunks/0/artifacts/0/filename",
            bad.into(),
        );
        let err = DeploymentBase::parse(&body)
            .unwrap()
            .the_artifact()
            .unwrap_err();
        assert!(
            err.to_string().contains("artifact filename"),
            "{bad:?}: {err}"
        );
    }
    let long = "a".repeat(256);
    let body = json_with(
        HB_DEPLOYMENT,
        "/deployment/chunks/0/artifacts/0/filename",
        long.into(),
    );
    assert!(DeploymentBase::parse(&body)
        .unwrap()
        .the_artifact()
        .is_err());
    let body = json_with(
        HB_DEPLOYMENT,
        "/deployment/chunks/0/artifacts/0/size",
        0.into(),
    );
    assert!(DeploymentBase::parse(&body)
        .unwrap()
        .the_artifact()
        .is_err());
    let body = json_with(
        HB_DEPLOYMENT,
        "/deployment/chunks/0/artifacts/0/size",
        (-1).into(),
    );
    assert!(DeploymentBase::parse(&body).is_err(), "negative size");
}

#[test]
fn ddi_9_1_links_must_be_http_urls() {
    for bad in [
        "file:///etc/passwd",
        "ftp://host/x",
        "not a url",
        "/relative/path",
        "http://",
    ] {
        let body = json_with(
            HB_DEPLOYMENT,
            "/deployment/chunks/0/artifacts/0/_links/download/href",
            bad.into(),
        );
        let d = DeploymentBase::parse(&body).unwrap();
        assert!(
            d.the_artifact().unwrap().download_url(true).is_err(),
            "{bad:?}"
        );
    }
    let only_http = json_with(
        HB_DEPLOYMENT,
        "/deployment/chunks/0/artifacts/0/_links",
        serde_json::json!({"download-http": {"href": "http://h/x.swu"}}),
    );
    let d = DeploymentBase::parse(&only_http).unwrap();
    let a = d.the_artifact().unwrap();
    let err = a.download_url(false).unwrap_err();
    assert!(err.to_string().contains("allow_http"), "{err}");
    assert_eq!(a.download_url(true).unwrap().as_str(), "http://h/x.swu");
    let none = json_with(
        HB_DEPLOYMENT,
        "/deployment/chunks/0/artifacts/0/_links",
        serde_json::json!({}),
    );
    let d = DeploymentBase::parse(&none).unwrap();
    assert!(d.the_artifact().unwrap().download_url(true).is_err());
}

#[test]
fn ddi_9_1_action_ids_are_strings_or_numbers_safe_in_a_url() {
    let numeric = json_with(HB_DEPLOYMENT, "/id", 42.into());
    assert_eq!(DeploymentBase::parse(&numeric).unwrap().id.as_str(), "42");
    let plugin = json_with(HB_DEPLOYMENT, "/id", "-1".into());
    assert_eq!(DeploymentBase::parse(&plugin).unwrap().id.as_str(), "-1");
    for bad in ["", "../x", "a/b", "8?x=1", "..", "a b", &"9".repeat(65)] {
        let body = json_with(HB_DEPLOYMENT, "/id", bad.into());
        assert!(DeploymentBase::parse(&body).is_err(), "{bad:?}");
    }
}

#[test]
fn ddi_9_1_null_missing_or_oversized_bodies_are_errors() {
    assert_eq!(DeploymentBase::parse(b"null"), Err(DdiError::NoDeployment));
    assert!(matches!(
        DeploymentBase::parse(b"{\"id\":\"1\"}"),
        Err(DdiError::Json { .. })
    ));
    assert!(matches!(
        ControllerBase::parse(b"<html>"),
        Err(DdiError::Json { .. })
    ));
    let mut big = br#"{"_links":{},"pad":""#.to_vec();
    big.resize(MAX_BODY + 1, b'x');
    assert!(matches!(
        ControllerBase::parse(&big),
        Err(DdiError::TooLarge { .. })
    ));
}

#[test]
fn ddi_9_1_cancel_action_reads_the_stop_id() {
    let c = CancelAction::parse(HB_CANCEL.as_bytes()).unwrap();
    assert_eq!(c.id.as_str(), "11");
    assert_eq!(c.cancel_action.stop_id.as_str(), "11");
    assert!(CancelAction::parse(br#"{"id":"11","cancelAction":{}}"#).is_err());
}

#[test]
fn ddi_9_1_feedback_bodies_are_hawkbit_shaped() {
    let id = ActionId::new("8").unwrap();
    let v = |f: &Feedback| serde_json::from_slice::<serde_json::Value>(&f.to_json()).unwrap();
    assert_eq!(
        v(&Feedback::proceeding(&id, 2, 5, vec!["downloading".into()])),
        serde_json::json!({"id": "8", "status": {"execution": "proceeding",
            "result": {"finished": "none", "progress": {"cnt": 2, "of": 5}},
            "details": ["downloading"]}})
    );
    assert_eq!(
        v(&Feedback::success(&id, vec![])),
        serde_json::json!({"id": "8", "status": {"execution": "closed",
            "result": {"finished": "success"}}})
    );
    assert_eq!(
        v(&Feedback::failure(
            &id,
            "MD5_MISMATCH: x",
            vec!["more".into()]
        )),
        serde_json::json!({"id": "8", "status": {"execution": "closed",
            "result": {"finished": "failure"}, "details": ["MD5_MISMATCH: x", "more"]}})
    );
    assert_eq!(
        v(&Feedback::rejected(&id, "installing")),
        serde_json::json!({"id": "8", "status": {"execution": "rejected",
            "result": {"finished": "none"}, "details": ["installing"]}})
    );
    // Every execution state hawkBit knows, spelled as it spells them.
    for (e, s) in [
        (Execution::Closed, "closed"),
        (Execution::Proceeding, "proceeding"),
        (Execution::Canceled, "canceled"),
        (Execution::Scheduled, "scheduled"),
        (Execution::Rejected, "rejected"),
        (Execution::Resumed, "resumed"),
        (Execution::Downloaded, "downloaded"),
        (Execution::Download, "download"),
    ] {
        assert_eq!(serde_json::to_value(e).unwrap(), serde_json::json!(s));
    }
    let back: Feedback = serde_json::from_slice(&Feedback::success(&id, vec![]).to_json()).unwrap();
    assert_eq!(back, Feedback::success(&id, vec![]));
}

#[test]
fn ddi_9_1_config_data_merges_attributes_with_versions() {
    let attrs = BTreeMap::from([
        ("hw_boardname".to_string(), "tope-x1".to_string()),
        ("hw_revision".to_string(), "2".to_string()),
        ("sw_version".to_string(), "spoofed".to_string()),
    ]);
    let body: serde_json::Value =
        serde_json::from_slice(&ConfigData::merge(&attrs, "0.0.0", "0.1.0").to_json()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"mode": "merge", "data": {"hw_boardname": "tope-x1",
            "hw_revision": "2", "sw_version": "0.0.0", "updater_version": "0.1.0"}})
    );
}
