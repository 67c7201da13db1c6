//! Tests of the fake DDI server (docs/API.md 9.1) with a real HTTP client (reqwest): every body
//! it sends is read with `fleet::ddi`, every hostile mode does what it is named.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use super::*;
use crate::fleet::ddi::{
    ActionId, CancelAction, ConfigData, ControllerBase, DdiError, DeploymentBase, Feedback,
    HashAlgorithm, MAX_POLL,
};

/// A blocking reqwest client: no redirects followed, a short timeout.
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

struct Got {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

impl Http {
    fn new(timeout: Duration) -> Http {
        Http::trusting(timeout, None)
    }

    /// A client trusting only the CA `ca_der` (none: no HTTPS at all).
    fn trusting(timeout: Duration, ca_der: Option<&[u8]>) -> Http {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(der) = ca_der {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
                .unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .unwrap();
        Http { rt, client }
    }

    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Vec<u8>>,
        auth: Option<&str>,
    ) -> reqwest::Result<Got> {
        self.rt.block_on(async {
            let mut req = self.client.request(method, url);
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp.bytes().await?.to_vec();
            Ok(Got {
                status,
                location,
                body,
            })
        })
    }

    fn get(&self, url: &str) -> Got {
        self.send(reqwest::Method::GET, url, None, None).unwrap()
    }

    fn post(&self, url: &str, body: Vec<u8>) -> Got {
        self.send(reqwest::Method::POST, url, Some(body), None)
            .unwrap()
    }
}

fn http() -> Http {
    Http::new(Duration::from_secs(10))
}

fn artifact_bytes() -> Vec<u8> {
    crate::kit::pseudo_random_bytes(70_000, 3)
}

fn offer(id: &str) -> Offer {
    Offer::new(
        id,
        "1.2.3",
        OfferedArtifact::served("tope 1.2.3.zip", artifact_bytes()),
    )
}

/// docs/API.md 9.1: the controller base, the deployment, the artifact and the cancel the
/// server sends are what `fleet::ddi` reads, links and hashes included.
#[test]
fn ddi_9_1_every_scripted_body_parses_with_fleet_ddi() {
    let server = DdiServer::start("DEFAULT", "printer-7").unwrap();
    let http = http();
    let poll = http.get(&server.controller_url(""));
    assert_eq!(poll.status, 200);
    let base = ControllerBase::parse(&poll.body).unwrap();
    assert_eq!(base.poll_interval().unwrap(), Some(Duration::from_secs(1)));
    assert_eq!(
        base.links.config_data.unwrap().href,
        server.controller_url("configData")
    );
    assert!(base.links.deployment_base.is_none() && base.links.cancel_action.is_none());

    let mut o = offer("8");
    o.update = Handling::Attempt;
    o.maintenance_window = Some(MaintenanceWindow::Unavailable);
    server.set_offer(Some(o));
    server.set_sleep("00:05:00");
    let base = ControllerBase::parse(&http.get(&server.controller_url("")).body).unwrap();
    assert_eq!(
        base.poll_interval().unwrap(),
        Some(Duration::from_secs(300))
    );
    let href = base
        .links
        .deployment_base
        .unwrap()
        .url("deploymentBase")
        .unwrap();
    // hawkBit's `c` query: followed as given, changed by the next offer.
    assert_eq!(href.as_str(), server.controller_url("deploymentBase/8?c=1"));
    let got = http.get(href.as_str());
    assert_eq!(got.status, 200);
    let deployment = DeploymentBase::parse(&got.body).unwrap();
    assert_eq!(deployment.id, ActionId::new("8").unwrap());
    assert_eq!(deployment.deployment.download, Handling::Forced);
    assert_eq!(deployment.deployment.update, Handling::Attempt);
    assert_eq!(
        deployment.deployment.maintenance_window,
        Some(MaintenanceWindow::Unavailable)
    );
    let artifact = deployment.the_artifact().unwrap();
    assert_eq!(artifact.filename, "tope 1.2.3.zip");
    assert_eq!(artifact.size, 70_000);
    let strongest = artifact.hashes.strongest().unwrap();
    assert_eq!(strongest.algorithm, HashAlgorithm::Sha256);
    // Served here, so only a plain link: refused without allow_http.
    assert!(artifact.download_url(false).is_err());
    let url = artifact.download_url(true).unwrap();
    let bytes = http.get(url.as_str());
    assert_eq!((bytes.status, bytes.body.len()), (200, 70_000));
    assert_eq!(bytes.body, artifact_bytes());
    let sha1 = |b: &[u8]| {
        let mut h = Hasher::new(Algorithm::Sha1);
        h.update(b);
        h.finalize().to_hex()
    };
    assert_eq!(
        artifact.hashes.sha1.as_deref(),
        Some(sha1(&bytes.body).as_str())
    );
    // Another action id, another artifact name: 404.
    assert_eq!(
        http.get(&server.controller_url("deploymentBase/9")).status,
        404
    );
    assert_eq!(
        http.get(&server.controller_url("softwaremodules/1/artifacts/other.zip"))
            .status,
        404
    );

    // A cancel replaces the deployment link, as hawkBit does.
    server.set_cancel(Some(Cancel {
        id: "11".into(),
        stop_id: "8".into(),
    }));
    server.set_config_data_requested(false);
    let base = ControllerBase::parse(&http.get(&server.controller_url("")).body).unwrap();
    assert!(base.links.deployment_base.is_none() && base.links.config_data.is_none());
    let href = base
        .links
        .cancel_action
        .unwrap()
        .url("cancelAction")
        .unwrap();
    let cancel = CancelAction::parse(&http.get(href.as_str()).body).unwrap();
    assert_eq!(cancel.id.as_str(), "11");
    assert_eq!(cancel.cancel_action.stop_id.as_str(), "8");
    assert_eq!(
        http.get(&server.controller_url("cancelAction/12")).status,
        404
    );
}

/// A linked artifact (a `kit::serve` URL) keeps its links; a served one can also be linked
/// as `download`; goosebit's sha1-only hashes are the strongest stated.
#[test]
fn ddi_9_1_linked_artifacts_and_sha1_only_hashes() {
    let server = DdiServer::start("t", "dev").unwrap();
    let http = http();
    let bytes = artifact_bytes();
    let mut a = OfferedArtifact::linked("p.zip", "https://127.0.0.1:9/p.zip", &bytes);
    a.hashes = OfferedHashes::sha1_only(&bytes);
    server.set_offer(Some(Offer::new("a-1", "2.0.0", a)));
    let d = DeploymentBase::parse(&http.get(&server.controller_url("deploymentBase/a-1")).body)
        .unwrap();
    let artifact = d.the_artifact().unwrap();
    assert_eq!(
        artifact.download_url(false).unwrap().as_str(),
        "https://127.0.0.1:9/p.zip"
    );
    assert!(artifact.links.download_http.is_none());
    let h = artifact.hashes.strongest().unwrap();
    assert_eq!(h.algorithm, HashAlgorithm::Sha1);
    assert_eq!(Some(h.hex), OfferedHashes::of(&bytes).sha1);

    let mut served = OfferedArtifact::served("s.zip", bytes.clone());
    if let ArtifactSource::Here { also_download, .. } = &mut served.source {
        *also_download = true;
    }
    server.set_offer(Some(Offer::new("2", "2.0.0", served)));
    let d =
        DeploymentBase::parse(&http.get(&server.controller_url("deploymentBase/2")).body).unwrap();
    let links = &d.the_artifact().unwrap().links;
    assert_eq!(links.download, links.download_http);
    assert!(links.download.is_some());
}

/// docs/API.md 9.1: configData and feedback bodies the updater writes are accepted and
/// recorded with method, path, query, headers, body, status; a body of another shape is 400.
#[test]
fn ddi_9_1_records_requests_and_accepts_configdata_and_feedback() {
    let server = DdiServer::start("DEFAULT", "printer-7").unwrap();
    let http = http();
    let attrs = BTreeMap::from([("hw_boardname".to_string(), "tope".to_string())]);
    let cfg = ConfigData::merge(&attrs, "1.0.0", "0.1.0").to_json();
    let put = http
        .send(
            reqwest::Method::PUT,
            &server.controller_url("configData"),
            Some(cfg.clone()),
            None,
        )
        .unwrap();
    assert_eq!(put.status, 200);
    let id = ActionId::new("8").unwrap();
    let fb = Feedback::success(&id, vec!["done".into()]).to_json();
    let url = server.controller_url("deploymentBase/8/feedback");
    assert_eq!(http.post(&url, fb.clone()).status, 200);
    assert_eq!(http.post(&url, b"{\"status\":1}".to_vec()).status, 400);
    let cancel_fb = Feedback::rejected(&id, "installing").to_json();
    let url = server.controller_url("cancelAction/11/feedback");
    assert_eq!(http.post(&url, cancel_fb).status, 200);
    let got = http.get(&format!("{}?c=42", server.controller_url("")));
    assert_eq!(got.status, 200);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 5);
    assert!(reqs[0].is("PUT", Resource::ConfigData));
    assert_eq!(reqs[0].body, cfg);
    assert_eq!(reqs[0].json().unwrap()["data"]["sw_version"], "1.0.0");
    assert_eq!(reqs[0].header("Content-Type"), Some("application/json"));
    assert_eq!(reqs[0].status, Some(200));
    assert_eq!(
        reqs[1].path,
        "/DEFAULT/controller/v1/printer-7/deploymentBase/8/feedback"
    );
    assert_eq!(
        reqs[1].json().unwrap()["status"]["result"]["finished"],
        "success"
    );
    assert_eq!((reqs[2].index, reqs[2].status), (2, Some(400)));
    assert!(reqs[3].is("POST", Resource::CancelFeedback));
    assert_eq!(reqs[4].query.as_deref(), Some("c=42"));
    assert!(reqs.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(server.requests_for(Resource::DeploymentFeedback).len(), 2);

    let found = server.wait_for(Duration::from_secs(5), |r| {
        r.iter()
            .find(|q| q.resource == Some(Resource::CancelFeedback))
            .map(|q| q.index)
    });
    assert_eq!(found, Some(3));
    // A condition never met: `None` once the timeout is over, not before.
    let t = Instant::now();
    assert!(server
        .wait_for(Duration::from_millis(300), |r| (r.len() > 5).then_some(()))
        .is_none());
    assert!(t.elapsed() >= Duration::from_millis(300));
}

/// `wait_for` wakes on a request made while it waits (no polling interval to wait out).
#[test]
fn wait_for_wakes_when_a_request_arrives() {
    let server = DdiServer::start("DEFAULT", "p").unwrap();
    let url = server.controller_url("");
    let caller = std::thread::spawn(move || http().get(&url).status);
    let seen = server.wait_for(Duration::from_secs(10), |r| r.first().map(|q| q.resource));
    assert_eq!(seen, Some(Some(Resource::Controller)));
    assert_eq!(caller.join().unwrap(), 200);
}

/// Unknown paths, another tenant or device, a wrong method: 404/405, recorded.
#[test]
fn unknown_paths_and_methods_are_refused_and_recorded() {
    let server = DdiServer::start("DEFAULT", "printer-7").unwrap();
    let http = http();
    let other = format!("{}/DEFAULT/controller/v1/printer-8", server.url());
    assert_eq!(http.get(&other).status, 404);
    assert_eq!(
        http.get(&server.controller_url("installedBase/1")).status,
        404
    );
    assert_eq!(http.get(&format!("{}/", server.url())).status, 404);
    let put = http.post(&server.controller_url(""), b"{}".to_vec());
    assert_eq!(put.status, 405);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].resource, None);
    assert_eq!(reqs[1].resource, None);
    assert_eq!(
        (reqs[3].resource, reqs[3].status),
        (Some(Resource::Controller), Some(405))
    );
}

/// A token required: 401 without it or with another, the scripted answer with it.
#[test]
fn ddi_9_1_authorization_is_checked_when_required() {
    let server = DdiServer::start("DEFAULT", "p").unwrap();
    let http = http();
    server.require_authorization(Some("TargetToken s3cret"));
    let url = server.controller_url("");
    let get = |auth| {
        http.send(reqwest::Method::GET, &url, None, auth)
            .unwrap()
            .status
    };
    assert_eq!(get(None), 401);
    assert_eq!(get(Some("TargetToken other")), 401);
    assert_eq!(get(Some("TargetToken s3cret")), 200);
    let recorded = server.requests();
    assert_eq!(
        recorded[2].header("authorization"),
        Some("TargetToken s3cret")
    );
    server.require_authorization(None);
    assert_eq!(get(None), 200);
}

/// docs/API.md 9.1 (hostile servers): a fault once, then the honest answer; malformed JSON and
/// a body over 1 MiB are what `fleet::ddi` refuses; a redirect names its target.
#[test]
fn ddi_9_1_faults_per_resource() {
    let server = DdiServer::start("DEFAULT", "p").unwrap();
    let http = http();
    let id = ActionId::new("8").unwrap();
    let fb = Feedback::proceeding(&id, 1, 3, vec![]).to_json();
    let url = server.controller_url("deploymentBase/8/feedback");
    server.push_fault(Resource::DeploymentFeedback, Fault::Status(500));
    server.push_fault(Resource::DeploymentFeedback, Fault::Status(404));
    assert_eq!(http.post(&url, fb.clone()).status, 500);
    assert_eq!(http.post(&url, fb.clone()).status, 404);
    assert_eq!(http.post(&url, fb.clone()).status, 200);
    let statuses: Vec<_> = server
        .requests_for(Resource::DeploymentFeedback)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(404), Some(200)]);

    let poll = server.controller_url("");
    server.set_fault(Resource::Controller, Some(Fault::MalformedJson));
    let got = http.get(&poll);
    assert_eq!(got.status, 200);
    assert!(matches!(
        ControllerBase::parse(&got.body),
        Err(DdiError::Json { .. })
    ));
    server.set_fault(Resource::Controller, Some(Fault::Oversized));
    let got = http.get(&poll);
    assert!(got.body.len() > MAX_BODY);
    let value: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(value["config"]["polling"]["sleep"], "00:00:01");
    assert!(matches!(
        ControllerBase::parse(&got.body),
        Err(DdiError::TooLarge { .. })
    ));
    server.set_fault(Resource::Controller, Some(Fault::Status(401)));
    assert_eq!(http.get(&poll).status, 401);
    server.set_fault(
        Resource::Controller,
        Some(Fault::Redirect("http://127.0.0.2:81/x".into())),
    );
    let got = http.get(&poll);
    assert_eq!(
        (got.status, got.location.as_deref()),
        (307, Some("http://127.0.0.2:81/x"))
    );
    server.set_fault(Resource::Controller, None);
    assert_eq!(http.get(&poll).status, 200);

    // The artifact too: malformed/oversized apply to the JSON resources, a status to any.
    server.set_offer(Some(offer("8")));
    let artifact = server.controller_url("softwaremodules/1/artifacts/tope%201.2.3.zip");
    assert_eq!(http.get(&artifact).body, artifact_bytes());
    server.push_fault(Resource::Artifact, Fault::Status(500));
    assert_eq!(http.get(&artifact).status, 500);
    assert_eq!(http.get(&artifact).status, 200);
}

/// Out-of-bounds `sleep` and wrong hashes are values of the script: `fleet::ddi` bounds the
/// one and the download's check must catch the other.
#[test]
fn ddi_9_1_out_of_bounds_sleep_and_wrong_hashes() {
    let server = DdiServer::start("DEFAULT", "p").unwrap();
    let http = http();
    let poll = server.controller_url("");
    server.set_sleep("99:00:00");
    let base = ControllerBase::parse(&http.get(&poll).body).unwrap();
    assert_eq!(base.poll_interval().unwrap(), Some(MAX_POLL));
    server.set_sleep("1:2");
    let base = ControllerBase::parse(&http.get(&poll).body).unwrap();
    assert!(base.poll_interval().is_err());

    let honest = OfferedArtifact::served("p.zip", artifact_bytes());
    let wrong = honest.clone().with_wrong_hashes();
    for (a, b) in [
        (&honest.hashes.sha1, &wrong.hashes.sha1),
        (&honest.hashes.md5, &wrong.hashes.md5),
        (&honest.hashes.sha256, &wrong.hashes.sha256),
    ] {
        let (a, b) = (a.as_deref().unwrap(), b.as_deref().unwrap());
        assert_ne!(a, b);
        assert_eq!((a.len(), &a[1..]), (b.len(), &b[1..]));
    }
    server.set_offer(Some(Offer::new("8", "1.0.0", wrong)));
    let d =
        DeploymentBase::parse(&http.get(&server.controller_url("deploymentBase/8")).body).unwrap();
    let stated = d.the_artifact().unwrap().hashes.strongest().unwrap();
    assert_ne!(Some(stated.hex), honest.hashes.sha256);
}

/// A hanging resource reads the request and never answers; dropping the server closes the
/// connection.
#[test]
fn ddi_9_1_a_hang_lasts_until_the_server_is_dropped() {
    let server = DdiServer::start("DEFAULT", "p").unwrap();
    server.set_fault(Resource::Controller, Some(Fault::Hang));
    let short = Http::new(Duration::from_millis(300));
    let err = short
        .send(reqwest::Method::GET, &server.controller_url(""), None, None)
        .err()
        .unwrap();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(server.requests()[0].status, None);

    let mut raw = std::net::TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET /DEFAULT/controller/v1/p HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    server
        .wait_for(Duration::from_secs(10), |r| (r.len() == 2).then_some(()))
        .unwrap();
    let t = Instant::now();
    drop(server);
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

const HB_CONTROLLER: &str = include_str!("../../tests/fixtures/ddi/hawkbit/controller_base.json");
const HB_CANCEL_POLL: &str =
    include_str!("../../tests/fixtures/ddi/hawkbit/controller_cancel.json");
const HB_DEPLOYMENT: &str = include_str!("../../tests/fixtures/ddi/hawkbit/deployment_base.json");
const HB_CANCEL: &str = include_str!("../../tests/fixtures/ddi/hawkbit/cancel_action.json");

/// A body's shape for comparison with hawkBit's examples: every `href` cut to what follows
/// `/controller/v1/<device>` (the host and device differ), its query dropped.
fn shape(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    match (k.as_str(), &*val) {
                        ("href", Value::String(s)) => {
                            let rest = s.split("/controller/v1/").nth(1).unwrap_or(s);
                            let rest = rest.split_once('/').map_or("", |(_, r)| r);
                            *val = Value::String(rest.split('?').next().unwrap().to_string());
                        }
                        _ => walk(val),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn body_of(http: &Http, url: &str) -> Value {
    let got = http.get(url);
    assert_eq!(got.status, 200, "{url}");
    serde_json::from_slice(&got.body).unwrap()
}

/// docs/API.md 9.1: the poll answers have the shape of hawkBit's DDI examples (less the
/// `installedBase` link, which the updater does not follow), offer and cancel alike.
#[test]
fn ddi_9_1_controller_bases_have_the_shape_of_hawkbit_examples() {
    let server = DdiServer::start("DEFAULT", "printer-7").unwrap();
    let http = http();
    server.set_sleep("12:00:00");
    server.set_offer(Some(offer("8")));
    let mut expected = shape(fixture(HB_CONTROLLER));
    expected["_links"]
        .as_object_mut()
        .unwrap()
        .remove("installedBase");
    let got = body_of(&http, &server.controller_url(""));
    assert_eq!(shape(got.clone()), expected);
    let href = |v: &Value| {
        v["_links"]["deploymentBase"]["href"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(href(&got).ends_with("/deploymentBase/8?c=1"), "{got}");
    server.set_offer(Some(offer("8")));
    let again = body_of(&http, &server.controller_url(""));
    assert!(href(&again).ends_with("/deploymentBase/8?c=2"), "{again}");

    server.set_sleep("00:05:00");
    server.set_config_data_requested(false);
    server.set_cancel(Some(Cancel {
        id: "11".into(),
        stop_id: "11".into(),
    }));
    let got = body_of(&http, &server.controller_url(""));
    assert_eq!(shape(got.clone()), shape(fixture(HB_CANCEL_POLL)));
    ControllerBase::parse(got.to_string().as_bytes()).unwrap();
}

/// docs/API.md 9.1: the deployment of hawkBit's DDI example, offered here, is the same body
/// (less chunk `metadata`, the `md5sum` links and `actionHistory`, which the updater ignores);
/// the cancel action is hawkBit's to the byte.
#[test]
fn ddi_9_1_deployment_and_cancel_bodies_are_hawkbits() {
    let server = DdiServer::start("DEFAULT", "printer-7").unwrap();
    let http = http();
    let mut expected = fixture(HB_DEPLOYMENT);
    let hb_artifact = &expected["deployment"]["chunks"][0]["artifacts"][0];
    let hashes = &hb_artifact["hashes"];
    let links = &hb_artifact["_links"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    let artifact = OfferedArtifact {
        filename: "tope-1.2.3.swu".into(),
        size: 2048,
        hashes: OfferedHashes {
            sha1: text(&hashes["sha1"]),
            md5: text(&hashes["md5"]),
            sha256: text(&hashes["sha256"]),
        },
        source: ArtifactSource::At {
            download: text(&links["download"]["href"]),
            download_http: text(&links["download-http"]["href"]),
        },
    };
    let mut o = Offer::new("8", "1.2.3", artifact);
    o.update = Handling::Attempt;
    o.maintenance_window = Some(MaintenanceWindow::Available);
    server.set_offer(Some(o));
    let got = body_of(&http, &server.controller_url("deploymentBase/8"));
    expected.as_object_mut().unwrap().remove("actionHistory");
    let chunk = &mut expected["deployment"]["chunks"][0];
    chunk.as_object_mut().unwrap().remove("metadata");
    let links = chunk["artifacts"][0]["_links"].as_object_mut().unwrap();
    links.remove("md5sum");
    links.remove("md5sum-http");
    assert_eq!(got, expected);
    DeploymentBase::parse(got.to_string().as_bytes()).unwrap();

    server.set_cancel(Some(Cancel {
        id: "11".into(),
        stop_id: "11".into(),
    }));
    let got = body_of(&http, &server.controller_url("cancelAction/11"));
    assert_eq!(got, fixture(HB_CANCEL));
    CancelAction::parse(got.to_string().as_bytes()).unwrap();
}

/// hawkBit's error body (`exceptionClass`, `errorCode`, `message`) on every refusal, and
/// configData without `mode` accepted as hawkBit does (it defaults to merge).
#[test]
fn ddi_9_1_error_bodies_and_configdata_without_mode() {
    let server = DdiServer::start("DEFAULT", "p").unwrap();
    let http = http();
    let got = http.get(&server.controller_url("deploymentBase/1"));
    let err: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(got.status, 404);
    assert!(err["exceptionClass"].is_string() && err["message"].is_string());
    assert_eq!(err["errorCode"], "kit.ddi.404");
    let put = |body: &[u8]| {
        http.send(
            reqwest::Method::PUT,
            &server.controller_url("configData"),
            Some(body.to_vec()),
            None,
        )
        .unwrap()
        .status
    };
    assert_eq!(put(br#"{"data":{"a":"b"}}"#), 200);
    assert_eq!(put(br#"{"mode":"replace","data":{}}"#), 200);
    assert_eq!(put(br#"{"mode":"sideways","data":{}}"#), 400);
    assert_eq!(put(br#"{"data":{"a":1}}"#), 400);
}

/// Over HTTPS: every link is `https`, the artifact served here is the `download` link the
/// updater takes with `allow_http = false`; a client without the CA is refused.
#[test]
fn ddi_9_1_https_server_links_https_only() {
    let certs = crate::kit::Certificates::generate("ddi").unwrap();
    let server =
        DdiServer::start_https(certs.server_config().unwrap(), "DEFAULT", "printer-7").unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let http = Http::trusting(Duration::from_secs(10), Some(&certs.ca_der));
    server.set_offer(Some(offer("8")));
    let base = ControllerBase::parse(&http.get(&server.controller_url("")).body).unwrap();
    let href = base
        .links
        .deployment_base
        .unwrap()
        .url("deploymentBase")
        .unwrap();
    assert_eq!(href.scheme(), "https");
    let d = DeploymentBase::parse(&http.get(href.as_str()).body).unwrap();
    let artifact = d.the_artifact().unwrap();
    assert!(artifact.links.download_http.is_none());
    let url = artifact.download_url(false).unwrap();
    assert_eq!(http.get(url.as_str()).body, artifact_bytes());
    let untrusting = Http::new(Duration::from_secs(10));
    assert!(untrusting
        .send(reqwest::Method::GET, &server.controller_url(""), None, None)
        .is_err());
    assert_eq!(
        server.requests().len(),
        3,
        "the refused handshake is no request"
    );
}
