//! The kit's fake device-api (`tope_updater::kit::device_api`) for the tests: records every
//! `POST /api/v1.0/ota/report` in arrival order, can be taken down and brought back on the
//! same port, start down, answer with another status than 200 or answer late.

use std::time::Duration;

use serde_json::Value;
use tope_updater::kit;

pub use tope_updater::kit::device_api::Report;

pub struct FakeDeviceApi {
    pub port: u16,
    api: kit::FakeDeviceApi,
}

impl FakeDeviceApi {
    pub fn start() -> FakeDeviceApi {
        FakeDeviceApi::from(kit::FakeDeviceApi::start().expect("start the fake device-api"))
    }

    /// A device-api that is down from the start (its port chosen, nothing listening): `up()`
    /// brings it up on that port.
    pub fn start_down() -> FakeDeviceApi {
        FakeDeviceApi::from(kit::FakeDeviceApi::start_down().expect("a port for the device-api"))
    }

    fn from(api: kit::FakeDeviceApi) -> FakeDeviceApi {
        FakeDeviceApi {
            port: api.port(),
            api,
        }
    }

    /// Answer every report with HTTP `status` from now on (200 again with `set_status(200)`).
    pub fn set_status(&self, status: u16) {
        self.api.set_status(status);
    }

    /// The value for the daemon's `device_api_url`.
    pub fn url(&self) -> String {
        self.api.url()
    }

    /// Closes the port: the daemon's callbacks are refused until `up()`.
    pub fn down(&mut self) {
        self.api.down();
    }

    pub fn up(&mut self) {
        self.api
            .up()
            .unwrap_or_else(|e| panic!("fake device-api back on port {}: {e}", self.port));
    }

    /// Reports received so far (a report counts when its request arrived, answered or not).
    pub fn reports(&self) -> Vec<Report> {
        self.api.reports()
    }

    /// Holds every answer back for `d` (a hanging device-api).
    pub fn set_delay(&self, d: Duration) {
        self.api.set_delay(d);
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.api.bodies()
    }

    /// Waits until a recorded report satisfies `cond`; returns it.
    pub fn wait_for_report(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        self.api.wait_for_report(timeout, cond).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for a device-api report: {what}; got {:#?}",
                self.bodies()
            )
        })
    }
}
