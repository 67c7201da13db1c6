//! docs/API.md 9.1 against a real fleet server: goosebit, spoken to over DDI with the crate's
//! wire types (`tope_updater::fleet::ddi`), its state read back through its own API.
//!
//! `TOPE_DDI_CAPTURE=1 cargo test --test fleet_goosebit` also writes the bodies goosebit sent
//! to `tests/fixtures/ddi/goosebit/`, the fixtures of the unit tests of `fleet/ddi.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::goosebit::{printer_attributes, swu_fixture, DeviceAuth, Goosebit, GoosebitOptions};
use common::{unique_name, wait_until};
use tope_updater::fleet::ddi::{
    ActionId, ConfigData, ControllerBase, DeploymentBase, Feedback, HashAlgorithm,
};

/// Writes a body goosebit sent as a fixture when `TOPE_DDI_CAPTURE` is set (pretty-printed;
/// the unit tests parse exactly these files).
fn capture(name: &str, body: &[u8]) {
    if std::env::var_os("TOPE_DDI_CAPTURE").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ddi/goosebit");
    std::fs::create_dir_all(&dir).unwrap();
    let value: serde_json::Value = serde_json::from_slice(body).expect("goosebit sent JSON");
    let mut text = serde_json::to_string_pretty(&value).unwrap();
    text.push('\n');
    std::fs::write(dir.join(name), text).unwrap();
}

/// Polls as a device does; the answer must be 200 and parse.
fn poll(gb: &Goosebit, device: &str) -> (ControllerBase, Vec<u8>) {
    let answer = gb.http.get(&gb.controller_url(device), &[]).ok("poll");
    let base = ControllerBase::parse(&answer.body)
        .unwrap_or_else(|e| panic!("poll answer does not parse ({e}): {}", answer.text()));
    (base, answer.body)
}

/// Polls, follows `configData` with the printer's attributes and `sw_version`.
fn register(gb: &Goosebit, device: &str, board: &str, revision: &str, sw_version: &str) {
    let (base, _) = poll(gb, device);
    let link = base
        .links
        .config_data
        .expect("a new device is asked for its configData");
    let url = link.url("configData").expect("configData link is a URL");
    let body = ConfigData::merge(&printer_attributes(board, revision), sw_version, "0.1.0");
    gb.http
        .send_json("PUT", url.as_str(), &[], body.to_json())
        .ok("configData");
}

fn sha1_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha1sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// docs/API.md 9.1: the first poll registers the device in the fleet server's registry and
/// asks for `configData`; the `sleep` it states parses (goosebit asks a new device back in
/// 10 s); a `configData` merge with the attributes and `sw_version` shows in the device view,
/// and from then on the poll states the server's `poll_time` and no longer asks for it.
#[test]
fn ddi_9_1_poll_registers_device_and_config_data_shows_in_registry() {
    let Some(gb) = Goosebit::start() else { return };
    let device = unique_name("dev");
    assert!(gb.device(&device).is_none(), "unknown before its poll");

    let (base, body) = poll(&gb, &device);
    capture("controller_register.json", &body);
    assert_eq!(base.poll_interval().unwrap(), Some(Duration::from_secs(10)));
    assert!(base.links.deployment_base.is_none());
    let config_link = base.links.config_data.clone().expect("configData link");
    assert_eq!(
        config_link.url("configData").unwrap().as_str(),
        format!("{}/configData", gb.controller_url(&device))
    );
    let seen = gb.device(&device).expect("in the registry after one poll");
    assert_eq!(seen.last_state, "Unknown");

    register(&gb, &device, "tope-x1", "rev2", "1.0.0");
    let view = gb.device(&device).expect("still in the registry");
    assert_eq!(view.last_state, "Registered", "{:?}", view.raw);
    assert_eq!(view.sw_version.as_deref(), Some("1.0.0"));
    assert_eq!(view.hw_model.as_deref(), Some("tope-x1"));
    assert_eq!(view.hw_revision.as_deref(), Some("rev2"));
    assert!(
        view.last_seen.is_some(),
        "last contact recorded: {:?}",
        view.raw
    );

    let (base, body) = poll(&gb, &device);
    capture("controller_idle.json", &body);
    assert_eq!(base.poll_interval().unwrap(), Some(Duration::from_secs(5)));
    assert!(base.links.config_data.is_none() && base.links.deployment_base.is_none());
}

/// Registers a device, uploads a SWU made for its board, assigns it, and returns the parsed
/// deployment, the SWU's bytes and the action id.
fn offered_deployment(
    gb: &Goosebit,
    device: &str,
    version: &str,
    capture_as: Option<&str>,
) -> (DeploymentBase, Vec<u8>) {
    register(gb, device, "tope-x1", "rev2", "1.0.0");
    let image = tope_updater::kit::pseudo_random_bytes(70_000, 7);
    let swu = swu_fixture(
        gb.dir(),
        &format!("tope-{version}.swu"),
        version,
        Some(("tope-x1", &["rev2"])),
        &format!("tope-{version}.zip"),
        &image,
    );
    let swu_bytes = std::fs::read(&swu).unwrap();
    let software = gb.upload_software(&swu);
    gb.assign(device, software);

    let (base, body) = poll(gb, device);
    if let Some(name) = capture_as {
        capture(&format!("{name}_poll.json"), &body);
    }
    let link = base
        .links
        .deployment_base
        .expect("the poll links deploymentBase once a software is assigned");
    let url = link.url("deploymentBase").unwrap();
    let answer = gb.http.get(url.as_str(), &[]).ok("deploymentBase");
    if let Some(name) = capture_as {
        capture(&format!("{name}.json"), &answer.body);
    }
    let deployment = DeploymentBase::parse(&answer.body)
        .unwrap_or_else(|e| panic!("deploymentBase does not parse ({e}): {}", answer.text()));
    assert_eq!(deployment.id.as_str(), software.to_string());
    (deployment, swu_bytes)
}

/// docs/API.md 9.1: an assigned software is offered through `deploymentBase`; its answer
/// parses with the artifact's size and strongest hash equal to the uploaded file's (goosebit
/// states only `sha1`), its download link gives the same bytes, and `proceeding` then
/// `closed`/`success` feedback makes goosebit show the device finished on the new `sw_version`.
#[test]
fn ddi_9_1_deployment_downloads_and_success_feedback_finishes_device() {
    let Some(gb) = Goosebit::start() else { return };
    let device = unique_name("dev");
    let (deployment, swu) = offered_deployment(&gb, &device, "1.2.3", Some("deployment_base"));

    let artifact = deployment.the_artifact().expect("one chunk, one artifact");
    assert_eq!(artifact.filename, "tope-1.2.3.swu");
    assert_eq!(artifact.size, swu.len() as u64);
    let hash = artifact.hashes.strongest().unwrap();
    assert_eq!(hash.algorithm, HashAlgorithm::Sha1);
    assert_eq!(hash.hex, sha1_hex(&swu));
    assert!(
        artifact.download_url(false).is_err(),
        "goosebit links plain http: refused without allow_http"
    );
    let url = artifact.download_url(true).unwrap();
    let downloaded = gb.http.get(url.as_str(), &[]).ok("artifact download");
    assert!(downloaded.body == swu, "downloaded artifact differs");

    let action = deployment.id.clone();
    let feedback_url = format!(
        "{}/deploymentBase/{action}/feedback",
        gb.controller_url(&device)
    );
    let proceeding = Feedback::proceeding(&action, 1, 3, vec!["downloading".into()]);
    gb.http
        .send_json("POST", &feedback_url, &[], proceeding.to_json())
        .ok("proceeding feedback");
    let view = gb.device(&device).unwrap();
    assert_eq!(view.last_state, "Running", "{:?}", view.raw);

    let done = Feedback::success(&action, vec!["installed 1.2.3".into()]);
    gb.http
        .send_json("POST", &feedback_url, &[], done.to_json())
        .ok("closed feedback");
    let view = gb.device(&device).unwrap();
    assert_eq!(view.last_state, "Finished", "{:?}", view.raw);
    assert_eq!(view.sw_version.as_deref(), Some("1.2.3"));
    assert_eq!(view.progress, Some(100));
    let log = view.log.unwrap_or_default();
    assert!(
        log.contains("downloading") && log.contains("installed 1.2.3"),
        "{log}"
    );

    let (base, _) = poll(&gb, &device);
    assert!(
        base.links.deployment_base.is_none(),
        "nothing more to offer once the device runs the assigned version"
    );
}

/// docs/API.md 9.1: `closed`/`failure` feedback whose `details` hold the outcome's
/// `"<CODE>: <detail>"` shows as `Error` in goosebit with the details in its log, the version
/// unchanged; goosebit then offers nothing more to that device.
#[test]
fn ddi_9_1_failure_feedback_shows_error_with_details() {
    let Some(gb) = Goosebit::start() else { return };
    let device = unique_name("dev");
    let (deployment, _) = offered_deployment(&gb, &device, "2.0.0", None);
    let action: ActionId = deployment.id.clone();
    let feedback_url = format!(
        "{}/deploymentBase/{action}/feedback",
        gb.controller_url(&device)
    );
    let error = "DEPLOYMENT_FAILED: health check of device-api failed: exited with 3";
    let failed = Feedback::failure(&action, error, vec!["rolled back".into()]);
    gb.http
        .send_json("POST", &feedback_url, &[], failed.to_json())
        .ok("failure feedback");

    let view = gb.device(&device).unwrap();
    assert_eq!(view.last_state, "Error", "{:?}", view.raw);
    assert_eq!(view.sw_version.as_deref(), Some("1.0.0"));
    let log = view.log.unwrap_or_default();
    assert!(log.contains(error) && log.contains("rolled back"), "{log}");
    let (base, _) = poll(&gb, &device);
    assert!(base.links.deployment_base.is_none());
}

/// docs/API.md 9.1 (`target_token`): with goosebit's device auth on, a device whose token is
/// set polls with `Authorization: TargetToken <t>`; without it, or with another, it is refused.
#[test]
fn ddi_9_1_target_token_authenticates_the_device() {
    let options = GoosebitOptions {
        device_auth: DeviceAuth::Lax,
        ..GoosebitOptions::default()
    };
    let Some(gb) = Goosebit::start_with(options) else {
        return;
    };
    let device = unique_name("dev");
    poll(&gb, &device);
    gb.set_device_token(&device, "s3cr3t-token");
    let url = gb.controller_url(&device);
    let status_with = |header: Option<&str>| {
        let headers: Vec<(&str, &str)> = header.map(|h| ("Authorization", h)).into_iter().collect();
        gb.http.get(&url, &headers).status
    };
    wait_until("the token to be in force", Duration::from_secs(5), || {
        (status_with(None) == 401).then_some(())
    });
    assert_eq!(status_with(Some("TargetToken wrong")), 401);
    assert_eq!(status_with(Some("TargetToken s3cr3t-token")), 200);
}

// -------------------------------------------------------------------------------------------
// The daemon itself as goosebit's device (docs/API.md 9.1): the `[fleet]` table, the poll
// loop, the deployment through the updater's own download and installation, the feedback.

use common::daemon::stage_of;
use common::{build_package, manifest, Daemon, DaemonOptions, Entry, FakeDeviceApi, Workspace};
use serde_json::{json, Value};

/// goosebit asking registered devices back every second, so the tests move fast.
fn fast_goosebit(device_auth: DeviceAuth) -> Option<Goosebit> {
    Goosebit::start_with(GoosebitOptions {
        device_auth,
        poll_time: "00:00:01".to_string(),
    })
}

/// A daemon of `ws` that is `device` of `gb` (board tope-x1 rev2); `fleet_extra` adds keys to
/// the `[fleet]` table.
fn fleet_daemon(
    ws: &Workspace,
    api: &FakeDeviceApi,
    gb: &Goosebit,
    device: &str,
    fleet_extra: &str,
) -> Daemon {
    Daemon::start(
        ws,
        api,
        DaemonOptions {
            allow_http: true,
            extra_toml: format!(
                "settle_s = 0\n[fleet]\nurl = \"{}\"\ncontroller_id = \"{device}\"\n\
                 poll_interval_s = 1\n{fleet_extra}\n[fleet.attributes]\n\
                 hw_boardname = \"tope-x1\"\nhw_revision = \"rev2\"\n",
                gb.ddi_url()
            ),
            ..DaemonOptions::default()
        },
    )
}

/// A package deploying `app/bin` under the workspace's root, with extra module fields, wrapped
/// in a SWU envelope for board tope-x1 rev2 and uploaded to goosebit; its software id.
fn upload_package(gb: &Goosebit, ws: &Workspace, version: &str, module_extra: Value) -> i64 {
    let mut module = json!({"name": "app", "src": "app",
                            "dst": ws.root().join("app").display().to_string()});
    if let (Some(m), Some(e)) = (module.as_object_mut(), module_extra.as_object()) {
        m.extend(e.clone());
    }
    let body = format!("#!/bin/sh\necho {version}\n");
    let package = build_package(
        &manifest(version, vec![module]),
        &[Entry::file("app/bin", body.as_bytes(), 0o755)],
    );
    let swu = swu_fixture(
        gb.dir(),
        &format!("tope-{version}.swu"),
        version,
        Some(("tope-x1", &["rev2"])),
        &format!("tope-{version}.zip"),
        &package,
    );
    gb.upload_software(&swu)
}

/// Waits until goosebit shows the device registered with the printer's attributes.
fn wait_registered(gb: &Goosebit, device: &str) -> common::goosebit::DeviceView {
    wait_until(
        "the device registered in goosebit",
        Duration::from_secs(60),
        || {
            gb.device(device)
                .filter(|v| v.last_state == "Registered" && v.hw_model.is_some())
        },
    )
}

/// Waits until goosebit shows the device in `state` (`Finished`, `Error`).
fn wait_state(
    gb: &Goosebit,
    d: &Daemon,
    device: &str,
    state: &str,
) -> common::goosebit::DeviceView {
    wait_view(gb, d, device, state, |_| true)
}

/// `Finished` on `version`: goosebit saves the state and the version of a success feedback one
/// after the other, so a view between the two shows `Finished` on the old version.
fn wait_finished_on(
    gb: &Goosebit,
    d: &Daemon,
    device: &str,
    version: &str,
) -> common::goosebit::DeviceView {
    wait_view(gb, d, device, "Finished", |v| {
        v.sw_version.as_deref() == Some(version)
    })
}

fn wait_view(
    gb: &Goosebit,
    d: &Daemon,
    device: &str,
    state: &str,
    also: impl Fn(&common::goosebit::DeviceView) -> bool,
) -> common::goosebit::DeviceView {
    common::wait_until_or_none(Duration::from_secs(120), || {
        gb.device(device)
            .filter(|v| v.last_state == state && also(v))
    })
    .unwrap_or_else(|| {
        panic!(
            "goosebit never showed {device} {state}: {:?}\n{}",
            gb.device(device).map(|v| v.raw),
            d.output()
        )
    })
}

/// docs/API.md 9.1: with a `[fleet]` table the daemon polls goosebit, registers with its
/// attributes and `sw_version` "0.0.0" (nothing installed yet) and its `updater_version`; an
/// assigned envelope (goosebit states only `sha1`) is downloaded and installed through the
/// updater's own path, `/progress` shows it, and goosebit shows the device `Finished` on the
/// new `sw_version` with the `proceeding` details in its log.
#[test]
fn api_9_1_daemon_registers_and_installs_an_assigned_envelope() {
    let Some(gb) = fast_goosebit(DeviceAuth::Off) else {
        return;
    };
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let device = unique_name("printer");
    let d = fleet_daemon(&ws, &api, &gb, &device, "");
    let view = wait_registered(&gb, &device);
    assert_eq!(view.hw_model.as_deref(), Some("tope-x1"), "{:?}", view.raw);
    assert_eq!(view.hw_revision.as_deref(), Some("rev2"));
    assert_eq!(view.sw_version.as_deref(), Some("0.0.0"));

    let software = upload_package(&gb, &ws, "1.2.3", json!({}));
    gb.assign(&device, software);
    let view = wait_finished_on(&gb, &d, &device, "1.2.3");
    let log = view.log.unwrap_or_default();
    assert!(log.contains("installing 1.2.3"), "{log}");
    assert_eq!(
        std::fs::read_to_string(ws.root().join("app/bin")).unwrap(),
        "#!/bin/sh\necho 1.2.3\n"
    );
    let p = d.progress();
    assert_eq!(stage_of(&p), "success", "{p}");
    assert_eq!(p["data"]["version"], "1.2.3", "{p}");
    // device-api heard of the fleet action like of any update (docs/API.md 2).
    let stages: Vec<String> = api
        .bodies()
        .iter()
        .map(|r| r["stage"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        stages.contains(&"installing".to_string())
            && stages.last().map(String::as_str) == Some("success"),
        "{stages:?}"
    );
    let fleet: Value =
        serde_json::from_slice(&std::fs::read(ws.work_dir().join("tmp/fleet.json")).unwrap())
            .unwrap();
    assert_eq!(fleet["outcome"]["sent"], true, "{fleet}");
}

/// docs/API.md 9.1 with 8.4: a package whose health check fails is rolled back and goosebit
/// shows the device in `Error` with the outcome's `DEPLOYMENT_FAILED: ...` in its log; the
/// version stays.
#[test]
fn api_9_1_failing_package_ends_in_error_with_deployment_failed() {
    let Some(gb) = fast_goosebit(DeviceAuth::Off) else {
        return;
    };
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let device = unique_name("printer");
    let d = fleet_daemon(&ws, &api, &gb, &device, "");
    wait_registered(&gb, &device);
    let software = upload_package(
        &gb,
        &ws,
        "2.0.0",
        json!({"health_cmd": ["false"], "health_timeout_s": 1}),
    );
    gb.assign(&device, software);
    let view = wait_state(&gb, &d, &device, "Error");
    let log = view.log.unwrap_or_default();
    assert!(log.contains("DEPLOYMENT_FAILED: "), "{log}");
    assert_eq!(view.sw_version.as_deref(), Some("0.0.0"), "{:?}", view.raw);
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    assert!(!ws.root().join("app/bin").exists(), "rolled back");
}

/// docs/API.md 9.1 with 8.5: the daemon is SIGKILLed while a fleet installation runs (its
/// health check waits); the action id survives in `tmp/fleet.json`, the restart rolls the
/// installation back, and the action still ends with `failure` feedback carrying the outcome
/// `/progress` shows, exactly once marked sent.
#[test]
fn api_9_1_sigkill_during_a_fleet_install_still_ends_with_the_right_feedback() {
    let Some(gb) = fast_goosebit(DeviceAuth::Off) else {
        return;
    };
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let device = unique_name("printer");
    let mut d = fleet_daemon(&ws, &api, &gb, &device, "");
    wait_registered(&gb, &device);
    let started = ws.path().join("health-started");
    let health = format!("touch {}; exit 1", started.display());
    let software = upload_package(
        &gb,
        &ws,
        "3.0.0",
        json!({"health_cmd": ["sh", "-c", health], "health_timeout_s": 120}),
    );
    gb.assign(&device, software);
    wait_until("the health check to run", Duration::from_secs(90), || {
        started.exists().then_some(())
    });
    let fleet_file = ws.work_dir().join("tmp/fleet.json");
    let before: Value = serde_json::from_slice(&std::fs::read(&fleet_file).unwrap()).unwrap();
    assert_eq!(before["phase"], "installing", "{before}");
    assert_eq!(before["id"], software.to_string(), "{before}");
    assert_eq!(gb.device(&device).unwrap().last_state, "Running");
    d.sigkill();

    d.restart();
    let view = wait_state(&gb, &d, &device, "Error");
    let p = d.progress();
    assert_eq!(stage_of(&p), "failed", "{p}");
    let error = p["data"]["error"].as_str().unwrap_or_default().to_string();
    assert!(!error.is_empty(), "{p}");
    let log = view.log.unwrap_or_default();
    assert!(
        log.contains(&error),
        "goosebit has the outcome {error:?}: {log}"
    );
    assert_eq!(view.sw_version.as_deref(), Some("0.0.0"));
    assert!(!ws.root().join("app/bin").exists(), "rolled back");
    let after: Value = serde_json::from_slice(&std::fs::read(&fleet_file).unwrap()).unwrap();
    assert_eq!(after["outcome"]["sent"], true, "{after}");
    assert_eq!(after["outcome"]["success"], false, "{after}");
}

/// docs/API.md 9.1 (`ready_cmd`): while the printer says it is busy (non-zero exit) the
/// downloaded action waits, nothing is stopped or deployed, goosebit's log says it waits for
/// the printer, and readiness is asked again at each poll; once `ready_cmd` exits 0 the
/// installation runs and goosebit shows the device `Finished`.
#[test]
fn api_9_1_ready_cmd_busy_then_ready() {
    let Some(gb) = fast_goosebit(DeviceAuth::Off) else {
        return;
    };
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let device = unique_name("printer");
    let ready = ws.path().join("printer-idle");
    let asked = ws.path().join("asked");
    let ready_cmd = format!(
        "ready_cmd = [\"sh\", \"-c\", \"echo x >> {}; test -f {}\"]\n",
        asked.display(),
        ready.display()
    );
    let d = fleet_daemon(&ws, &api, &gb, &device, &ready_cmd);
    wait_registered(&gb, &device);
    let software = upload_package(&gb, &ws, "1.4.0", json!({}));
    gb.assign(&device, software);
    let count = || {
        std::fs::read_to_string(&asked)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_until(
        "ready_cmd asked at two polls",
        Duration::from_secs(60),
        || (count() >= 2).then_some(()),
    );
    let p = d.progress();
    assert_eq!(stage_of(&p), "toInstall", "downloaded, not installed: {p}");
    assert!(!ws.root().join("app/bin").exists(), "nothing deployed");
    let view = gb.device(&device).unwrap();
    assert_eq!(view.last_state, "Running", "{:?}", view.raw);
    let log = view.log.unwrap_or_default();
    assert!(log.contains("waits for the printer to be ready"), "{log}");

    std::fs::write(&ready, b"").unwrap();
    wait_finished_on(&gb, &d, &device, "1.4.0");
    assert!(ws.root().join("app/bin").exists());
}
