//! The test kit's fake hawkBit DDI server through its test wrapper (`tests/common/ddi.rs`,
//! docs/API.md 9.1), spoken to over plain TCP as the updater will: the scripted answers, the
//! recorded requests, the waits that panic with what was received.

mod common;

use std::time::Duration;

use common::ddi::{Fault, Offer, OfferedArtifact, Resource};
use common::http::request;
use common::FakeDdi;
use tope_updater::fleet::ddi::{ControllerBase, DeploymentBase};

/// docs/API.md 9.1: a poll, the offered deployment and its artifact, as the client will
/// follow them; each request recorded and awaited through the wrapper.
#[test]
fn ddi_9_1_wrapper_serves_an_offer_and_records_the_requests() {
    let ddi = FakeDdi::start("printer-7");
    let zip = common::build_zip(&[common::Entry::file("a.txt", b"hello", 0o644)]);
    ddi.set_offer(Some(Offer::new(
        "8",
        "1.2.3",
        OfferedArtifact::served("p.zip", zip.clone()),
    )));
    let path = |rel: &str| {
        let url = ddi.controller_url(rel);
        url[ddi.url().len()..].to_string()
    };
    let poll = request(ddi.addr(), "GET", &path(""), None, b"").unwrap();
    let base = ControllerBase::parse(&poll.body).unwrap();
    let href = base.links.deployment_base.unwrap().href;
    assert_eq!(href, ddi.controller_url("deploymentBase/8?c=1"));
    // Followed as given, hawkBit's `c` query included.
    let got = request(ddi.addr(), "GET", &href[ddi.url().len()..], None, b"").unwrap();
    let deployment = DeploymentBase::parse(&got.body).unwrap();
    let url = deployment
        .the_artifact()
        .unwrap()
        .download_url(true)
        .unwrap();
    let bytes = request(ddi.addr(), "GET", url.path(), None, b"").unwrap();
    assert_eq!(bytes.body, zip);

    let artifact = ddi.wait_request("the artifact", Duration::from_secs(5), |r| {
        r.is("GET", Resource::Artifact)
    });
    assert_eq!((artifact.index, artifact.status), (2, Some(200)));
    assert_eq!(
        ddi.wait_count(Resource::Controller, 1, Duration::from_secs(5))
            .len(),
        1
    );
    assert!(ddi
        .summary()
        .contains("GET /DEFAULT/controller/v1/printer-7/deploymentBase/8"));
}

/// A wait that is not met panics naming what it waited for and listing what was received.
#[test]
fn a_wait_not_met_panics_with_the_requests_received() {
    let ddi = FakeDdi::start("printer-7");
    ddi.push_fault(Resource::Controller, Fault::Status(503));
    let poll = request(
        ddi.addr(),
        "GET",
        "/DEFAULT/controller/v1/printer-7",
        None,
        b"",
    )
    .unwrap();
    assert_eq!(poll.status, 503);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ddi.wait_request("a feedback", Duration::from_millis(200), |r| {
            r.resource == Some(Resource::DeploymentFeedback)
        })
    }))
    .unwrap_err();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("a feedback"), "{text}");
    assert!(
        text.contains("#0 GET /DEFAULT/controller/v1/printer-7 -> Some(503)"),
        "{text}"
    );
}

/// The HTTPS server of the wrapper speaks only TLS (its certificate is checked by the kit's
/// unit tests with a client trusting the CA).
#[test]
fn ddi_9_1_wrapper_over_https() {
    let certs = tope_updater::kit::Certificates::generate("ddi-kit").unwrap();
    let ddi = FakeDdi::start_https(&certs, "printer-7");
    assert!(ddi.url().starts_with("https://127.0.0.1:"));
    // A plain-HTTP request to the TLS port is no DDI request.
    assert!(request(
        ddi.addr(),
        "GET",
        "/DEFAULT/controller/v1/printer-7",
        None,
        b""
    )
    .is_err());
    assert!(ddi.requests().is_empty());
}
