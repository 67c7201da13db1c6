//! docs/API.md 9.1 with the real daemon against the kit's fake hawkBit DDI server, for what
//! goosebit cannot show: the token header, `update: skip`, a wrong hash, and hostile answers
//! (malformed JSON, a body over 1 MiB, HTTP 500, a redirect elsewhere, a server that hangs).

mod common;

use std::time::{Duration, Instant};

use common::daemon::stage_of;
use common::ddi::{Cancel, DdiRequest, Fault, Handling, Offer, OfferedArtifact, Resource};
use common::{
    build_package, manifest, unique_name, Daemon, DaemonOptions, Entry, FakeDdi, FakeDeviceApi,
    Workspace,
};
use serde_json::{json, Value};

/// A daemon of `ws` polling `ddi` every second; `fleet_extra` adds keys to `[fleet]`.
fn fleet_daemon(ws: &Workspace, api: &FakeDeviceApi, ddi: &FakeDdi, fleet_extra: &str) -> Daemon {
    Daemon::start(
        ws,
        api,
        DaemonOptions {
            allow_http: true,
            extra_toml: format!(
                "settle_s = 0\n[fleet]\nurl = \"{}\"\ntenant = \"{}\"\ncontroller_id = \"{}\"\n\
                 poll_interval_s = 1\n{fleet_extra}\n[fleet.attributes]\nhw_boardname = \"x1\"\n",
                ddi.url(),
                ddi.tenant(),
                ddi.controller_id()
            ),
            ..DaemonOptions::default()
        },
    )
}

/// A package deploying `app/bin` under the workspace's root.
fn package(ws: &Workspace, version: &str) -> Vec<u8> {
    let module = json!({"name": "app", "src": "app",
                        "dst": ws.root().join("app").display().to_string()});
    build_package(
        &manifest(version, vec![module]),
        &[Entry::file(
            "app/bin",
            format!("#!/bin/sh\necho {version}\n").as_bytes(),
            0o755,
        )],
    )
}

/// The closed feedback of the action (answered 2xx), as JSON.
fn closed_feedback(ddi: &FakeDdi, timeout: Duration) -> Value {
    let r = ddi.wait_request("closed feedback", timeout, |r| {
        r.is("POST", Resource::DeploymentFeedback)
            && r.status == Some(200)
            && r.json()
                .is_some_and(|j| j["status"]["execution"] == "closed")
    });
    r.json().unwrap_or_default()
}

fn details(feedback: &Value) -> String {
    feedback["status"]["details"].to_string()
}

/// docs/API.md 9.1 (`target_token`): every request to the server, the artifact download
/// included, carries `Authorization: TargetToken <t>`; the server requiring it, the action
/// installs; the token appears in no log line and no output of the daemon.
#[test]
fn api_9_1_target_token_is_sent_and_never_logged() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    let token = "tok-9f8e7d6c5b4a";
    ddi.require_authorization(Some(&format!("TargetToken {token}")));
    ddi.set_offer(Some(Offer::new(
        "11",
        "1.0.1",
        OfferedArtifact::served("p.zip", package(&ws, "1.0.1")),
    )));
    let d = fleet_daemon(&ws, &api, &ddi, &format!("target_token = \"{token}\"\n"));
    let done = closed_feedback(&ddi, Duration::from_secs(60));
    assert_eq!(done["status"]["result"]["finished"], "success", "{done}");
    let requests = ddi.requests();
    assert!(requests
        .iter()
        .any(|r| r.resource == Some(Resource::Artifact)));
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("TargetToken {token}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
        assert_eq!(
            r.status.map(|s| s < 300),
            Some(true),
            "{} {}",
            r.method,
            r.path
        );
    }
    let out = d.output();
    assert!(!out.contains(token), "the token is in the output:\n{out}");
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap();
    assert!(!log.contains(token));
    assert_eq!(stage_of(&d.progress()), "success");
}

/// docs/API.md 9.1: an artifact whose stated hash is wrong is downloaded, found wrong,
/// deleted, and the action ends with `failure` feedback naming the mismatch; nothing is
/// deployed.
#[test]
fn api_9_1_wrong_hash_ends_in_failure_feedback() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    ddi.set_offer(Some(Offer::new(
        "12",
        "1.0.2",
        OfferedArtifact::served("p.zip", package(&ws, "1.0.2")).with_wrong_hashes(),
    )));
    let d = fleet_daemon(&ws, &api, &ddi, "");
    let done = closed_feedback(&ddi, Duration::from_secs(60));
    assert_eq!(done["status"]["result"]["finished"], "failure", "{done}");
    assert!(details(&done).contains("MD5_MISMATCH: "), "{done}");
    assert!(
        details(&done).contains("sha256") || details(&done).contains("expected"),
        "{done}"
    );
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(!ws.root().join("app/bin").exists());
    assert!(
        !ws.work_dir().join("tmp/p.zip").exists(),
        "the wrong file is deleted"
    );
}

/// docs/API.md 9.1 (`update: skip`): the action is downloaded and waits (`proceeding` saying
/// so), nothing is installed; offered again with `forced` it installs.
#[test]
fn api_9_1_update_skip_downloads_and_waits_for_a_later_offer() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    let mut offer = Offer::new(
        "13",
        "1.0.3",
        OfferedArtifact::served("p.zip", package(&ws, "1.0.3")),
    );
    offer.update = Handling::Skip;
    ddi.set_offer(Some(offer.clone()));
    let d = fleet_daemon(&ws, &api, &ddi, "");
    ddi.wait_request("the skip proceeding", Duration::from_secs(60), |r| {
        r.is("POST", Resource::DeploymentFeedback)
            && String::from_utf8_lossy(&r.body).contains("update: skip")
    });
    // Several polls later it still waits.
    let n = ddi.requests_for(Resource::Controller).len();
    ddi.wait_count(Resource::Controller, n + 2, Duration::from_secs(30));
    assert_eq!(stage_of(&d.progress()), "toInstall");
    assert!(!ws.root().join("app/bin").exists());
    assert!(!ddi.requests().iter().any(|r| r
        .json()
        .is_some_and(|j| j["status"]["execution"] == "closed")));

    offer.update = Handling::Forced;
    ddi.set_offer(Some(offer));
    let done = closed_feedback(&ddi, Duration::from_secs(60));
    assert_eq!(done["status"]["result"]["finished"], "success", "{done}");
    assert!(ws.root().join("app/bin").exists());
    assert_eq!(
        ddi.requests_for(Resource::Artifact).len(),
        1,
        "downloaded once"
    );
}

/// `/progress` answers within `limit`.
fn quick_progress(d: &Daemon, limit: Duration) {
    let t = Instant::now();
    let p = d.progress();
    assert!(t.elapsed() < limit, "/progress took {:?}: {p}", t.elapsed());
}

/// docs/API.md 9.1: whatever the server answers a poll with (malformed JSON, a body over
/// 1 MiB, HTTP 500, a redirect to another host, no answer at all), the loop stays alive and
/// bounded, the local API keeps answering, each error is logged, the redirect is not
/// followed; then an offer is carried out as usual. A deploymentBase that is malformed JSON
/// ends its action with `failure` feedback (the id is the link's).
#[test]
fn api_9_1_hostile_answers_leave_the_loop_alive_and_the_api_answering() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    for f in [
        Fault::MalformedJson,
        Fault::Oversized,
        Fault::Status(500),
        Fault::Redirect("http://127.0.0.1:9/elsewhere".to_string()),
        Fault::Hang,
    ] {
        ddi.push_fault(Resource::Controller, f);
    }
    let d = fleet_daemon(&ws, &api, &ddi, "");
    // The fifth poll hangs: the API answers meanwhile.
    ddi.wait_count(Resource::Controller, 5, Duration::from_secs(60));
    for _ in 0..5 {
        quick_progress(&d, Duration::from_millis(500));
    }
    // The hanging poll is abandoned (30 s), and polls go on.
    ddi.wait_count(Resource::Controller, 7, Duration::from_secs(90));
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap();
    for needle in [
        "malformed JSON",
        "over the limit",
        "HTTP 500",
        "redirects are not followed",
    ] {
        assert!(log.contains(needle), "{needle:?} logged:\n{log}");
    }
    assert_eq!(log.matches("HTTP 500").count(), 1, "logged once:\n{log}");

    // A deployment that is not JSON: failure feedback for its action.
    ddi.push_fault(Resource::DeploymentBase, Fault::MalformedJson);
    ddi.set_offer(Some(Offer::new(
        "21",
        "1.0.4",
        OfferedArtifact::served("p.zip", package(&ws, "1.0.4")),
    )));
    let failed = closed_feedback(&ddi, Duration::from_secs(60));
    assert_eq!(failed["id"], "21", "{failed}");
    assert_eq!(failed["status"]["result"]["finished"], "failure");
    assert!(details(&failed).contains("INVALID_PACKAGE: "), "{failed}");

    // A new action after all that installs.
    ddi.set_offer(Some(Offer::new(
        "22",
        "1.0.5",
        OfferedArtifact::served("q.zip", package(&ws, "1.0.5")),
    )));
    let r: DdiRequest = ddi.wait_request("success of 22", Duration::from_secs(60), |r| {
        r.is("POST", Resource::DeploymentFeedback)
            && r.json()
                .is_some_and(|j| j["id"] == "22" && j["status"]["result"]["finished"] == "success")
    });
    assert_eq!(r.status, Some(200));
    quick_progress(&d, Duration::from_millis(500));
    assert_eq!(stage_of(&d.progress()), "success");
}

/// docs/API.md 9.1: a deployment offered while a local update runs (here a verified package
/// waiting in `toInstall`) is neither fetched nor acknowledged; once the local update ended
/// (`success`), the fleet action is carried out.
#[test]
fn api_9_1_deployment_waits_while_a_local_update_runs() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    let d = fleet_daemon(&ws, &api, &ddi, "");
    let local = ws.path().join("local.zip");
    std::fs::write(&local, package(&ws, "1.1.0")).unwrap();
    let bytes = std::fs::read(&local).unwrap();
    let url = tope_updater::download::file::file_url_of(&local);
    d.post_download(&common::download_body("1.1.0", &url, "local.zip", &bytes));
    d.wait_stage("toInstall", Duration::from_secs(30));

    ddi.set_offer(Some(Offer::new(
        "31",
        "1.2.0",
        OfferedArtifact::served("p.zip", package(&ws, "1.2.0")),
    )));
    let n = ddi.requests_for(Resource::Controller).len();
    ddi.wait_count(Resource::Controller, n + 3, Duration::from_secs(30));
    assert!(
        ddi.requests_for(Resource::DeploymentBase).is_empty()
            && ddi.requests_for(Resource::DeploymentFeedback).is_empty(),
        "not fetched, not acknowledged:\n{}",
        ddi.summary()
    );
    assert_eq!(stage_of(&d.progress()), "toInstall");

    d.post_update("1.1.0");
    assert_eq!(stage_of(&d.wait_outcome()), "success");
    let done = closed_feedback(&ddi, Duration::from_secs(60));
    assert_eq!(done["id"], "31", "{done}");
    assert_eq!(done["status"]["result"]["finished"], "success", "{done}");
    assert_eq!(
        std::fs::read_to_string(ws.root().join("app/bin")).unwrap(),
        "#!/bin/sh\necho 1.2.0\n"
    );
}

/// The cancel feedback the server took, as JSON.
fn cancel_feedback(ddi: &FakeDdi, execution: &str) -> Value {
    let r = ddi.wait_request(
        &format!("{execution} cancel feedback"),
        Duration::from_secs(60),
        |r| {
            r.is("POST", Resource::CancelFeedback)
                && r.status == Some(200)
                && r.json()
                    .is_some_and(|j| j["status"]["execution"] == execution)
        },
    );
    r.json().unwrap_or_default()
}

/// docs/API.md 9.1 (`cancelAction`): an action not yet installing (downloaded, held by
/// `update: skip`) is stopped, its file removed, and the cancel answered `closed`/`success`;
/// no deployment feedback follows and nothing is installed.
#[test]
fn api_9_1_cancel_before_install_stops_and_removes_the_package() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    let mut offer = Offer::new(
        "40",
        "1.3.0",
        OfferedArtifact::served("c.zip", package(&ws, "1.3.0")),
    );
    offer.update = Handling::Skip;
    ddi.set_offer(Some(offer));
    let d = fleet_daemon(&ws, &api, &ddi, "");
    d.wait_stage("toInstall", Duration::from_secs(60));
    assert!(ws.work_dir().join("tmp/c.zip").exists());
    ddi.set_cancel(Some(Cancel {
        id: "41".into(),
        stop_id: "40".into(),
    }));
    let fb = cancel_feedback(&ddi, "closed");
    assert_eq!(fb["id"], "41", "{fb}");
    assert_eq!(fb["status"]["result"]["finished"], "success", "{fb}");
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(
        p["data"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled by the fleet server"),
        "{p}"
    );
    assert!(
        !ws.work_dir().join("tmp/c.zip").exists(),
        "its file is removed"
    );
    assert!(!ws.root().join("app/bin").exists());
    assert!(!ddi
        .requests()
        .iter()
        .any(|r| r.is("POST", Resource::DeploymentFeedback)
            && r.json()
                .is_some_and(|j| j["status"]["execution"] == "closed")));
}

/// docs/API.md 9.1 (`cancelAction`): a cancel of an action that is installing is answered
/// `rejected`; the installation runs to its end and the action ends with `success`.
#[test]
fn api_9_1_cancel_during_install_is_rejected_and_the_install_runs_on() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    let started = ws.path().join("health-started");
    let go = ws.path().join("go");
    let module = json!({"name": "app", "src": "app",
                        "dst": ws.root().join("app").display().to_string(),
                        "health_cmd": ["sh", "-c", format!("touch {}; test -f {}", started.display(), go.display())],
                        "health_timeout_s": 60});
    let zip = build_package(
        &manifest("1.3.1", vec![module]),
        &[Entry::file("app/bin", b"#!/bin/sh\n", 0o755)],
    );
    ddi.set_offer(Some(Offer::new(
        "50",
        "1.3.1",
        OfferedArtifact::served("i.zip", zip),
    )));
    let _d = fleet_daemon(&ws, &api, &ddi, "");
    common::wait_until("the health check to run", Duration::from_secs(60), || {
        started.exists().then_some(())
    });
    ddi.set_cancel(Some(Cancel {
        id: "51".into(),
        stop_id: "50".into(),
    }));
    let fb = cancel_feedback(&ddi, "rejected");
    assert_eq!(fb["id"], "51", "{fb}");
    std::fs::write(&go, b"").unwrap();
    let done = closed_feedback(&ddi, Duration::from_secs(60));
    assert_eq!(done["id"], "50", "{done}");
    assert_eq!(done["status"]["result"]["finished"], "success", "{done}");
}

/// docs/API.md 9.1 (`cancelAction`): a download in progress (held to 200 KB/s by
/// `max_download_bytes_per_s`) is stopped at once, its partial file removed, the cancel
/// answered `closed`/`success`, and the artifact is not fetched further.
#[test]
fn api_9_1_cancel_during_download_stops_it_and_removes_the_partial_file() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let ddi = FakeDdi::start(&unique_name("printer"));
    let module = json!({"name": "app", "src": "app",
                        "dst": ws.root().join("app").display().to_string()});
    let zip = build_package(
        &manifest("1.3.2", vec![module]),
        &[Entry::file(
            "app/blob",
            &common::pseudo_random_bytes(4 << 20, 5),
            0o644,
        )],
    );
    ddi.set_offer(Some(Offer::new(
        "60",
        "1.3.2",
        OfferedArtifact::served("slow.zip", zip),
    )));
    let d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            allow_http: true,
            extra_toml: format!(
                "max_download_bytes_per_s = 200000\n[fleet]\nurl = \"{}\"\ncontroller_id = \"{}\"\n\
                 poll_interval_s = 1\n",
                ddi.url(),
                ddi.controller_id()
            ),
            ..DaemonOptions::default()
        },
    );
    d.wait_for("the download under way", Duration::from_secs(60), |p| {
        stage_of(p) == "downloading" && p["data"]["bytes_downloaded"].as_u64() > Some(100_000)
    });
    ddi.set_cancel(Some(Cancel {
        id: "61".into(),
        stop_id: "60".into(),
    }));
    let fb = cancel_feedback(&ddi, "closed");
    assert_eq!(fb["id"], "61", "{fb}");
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(
        !ws.work_dir().join("tmp/slow.zip").exists(),
        "partial file removed"
    );
    assert!(!ws.root().join("app/blob").exists());
}
