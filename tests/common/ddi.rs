//! The kit's fake hawkBit DDI server (`tope_updater::kit::ddi_server`, docs/API.md 9.1) for the
//! fleet tests: what goosebit cannot show (target tokens, a cancel, hostile answers per
//! resource, wrong hashes, a plain ZIP artifact). Every setter of the kit's server is reached
//! through `Deref`; the waits here panic with what was received instead of returning `None`.
//!
//! ```ignore
//! let ddi = FakeDdi::start("printer-7");
//! ddi.set_offer(Some(Offer::new("8", "1.2.3", OfferedArtifact::served("p.zip", zip))));
//! ddi.push_fault(Resource::DeploymentFeedback, Fault::Status(500)); // then 200
//! // [fleet] url = ddi.url(), tenant = ddi.tenant(), controller_id = ddi.controller_id()
//! let fb = ddi.wait_request("closed feedback", Duration::from_secs(60), |r| {
//!     r.is("POST", Resource::DeploymentFeedback) && r.status == Some(200)
//! });
//! ```

use std::ops::Deref;
use std::time::Duration;

use tope_updater::kit::ddi_server::DdiServer;
use tope_updater::kit::Certificates;

pub use tope_updater::fleet::ddi::{Handling, MaintenanceWindow};
pub use tope_updater::kit::ddi_server::{
    ArtifactSource, Cancel, DdiRequest, Fault, Offer, OfferedArtifact, OfferedHashes, Resource,
};

/// The tenant of [`FakeDdi::start`] (hawkBit's default tenant).
pub const TENANT: &str = "DEFAULT";

/// A running fake DDI server; dropping it stops it (hanging requests included).
pub struct FakeDdi {
    server: DdiServer,
}

impl Deref for FakeDdi {
    type Target = DdiServer;

    fn deref(&self) -> &DdiServer {
        &self.server
    }
}

impl FakeDdi {
    /// Tenant [`TENANT`], device `controller_id`, `sleep` `00:00:01`, configData requested,
    /// nothing offered.
    pub fn start(controller_id: &str) -> FakeDdi {
        FakeDdi::start_for(TENANT, controller_id)
    }

    pub fn start_for(tenant: &str, controller_id: &str) -> FakeDdi {
        FakeDdi {
            server: DdiServer::start(tenant, controller_id)
                .unwrap_or_else(|e| panic!("start the fake DDI server: {e}")),
        }
    }

    /// The same over HTTPS with a certificate of `certs` (the updater's `ca_file` is
    /// `certs.ca_pem`): every link `https`, an artifact served here linked as `download`.
    pub fn start_https(certs: &Certificates, controller_id: &str) -> FakeDdi {
        let tls = certs
            .server_config()
            .unwrap_or_else(|e| panic!("TLS configuration of the fake DDI server: {e}"));
        FakeDdi {
            server: DdiServer::start_https(tls, TENANT, controller_id)
                .unwrap_or_else(|e| panic!("start the fake DDI server over HTTPS: {e}")),
        }
    }

    /// Waits until `check` of the requests so far returns `Some`; panics after `timeout`
    /// naming `what` and listing every request received.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&[DdiRequest]) -> Option<T>,
    ) -> T {
        self.server.wait_for(timeout, check).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for the DDI server to receive {what}; \
                 received:\n{}",
                self.summary()
            )
        })
    }

    /// Waits for a request satisfying `pred` and returns the first one.
    pub fn wait_request(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&DdiRequest) -> bool,
    ) -> DdiRequest {
        self.wait_until(what, timeout, |reqs| reqs.iter().find(|r| pred(r)).cloned())
    }

    /// Waits until `n` requests for `resource` have been received; returns them.
    pub fn wait_count(&self, resource: Resource, n: usize, timeout: Duration) -> Vec<DdiRequest> {
        self.wait_until(&format!("{n} requests for {resource:?}"), timeout, |reqs| {
            let of: Vec<DdiRequest> = reqs
                .iter()
                .filter(|r| r.resource == Some(resource))
                .cloned()
                .collect();
            (of.len() >= n).then_some(of)
        })
    }

    /// One line per request received: index, method, path, status, body (cut at 200 bytes).
    pub fn summary(&self) -> String {
        self.server
            .requests()
            .iter()
            .map(|r| {
                let body = String::from_utf8_lossy(&r.body);
                let body: String = body.chars().take(200).collect();
                format!(
                    "  #{} {} {}{} -> {:?} {body}",
                    r.index,
                    r.method,
                    r.path,
                    r.query
                        .as_deref()
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default(),
                    r.status
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
