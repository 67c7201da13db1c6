//! The poll loop of fleet mode (docs/API.md 9.1): polls the controller base, sends
//! `configData`, takes an offered deployment through the updater's own download and
//! health-checked installation, and reports each step as DDI feedback.
//!
//! One task on the daemon's runtime, stopped with the daemon's shutdown token. It never blocks
//! the runtime: the updater's commands and `ready_cmd` run on blocking threads, and every
//! request is bounded (`http`). The updater's reports reach it through [`FleetSink`] (a
//! `report::Sink`), which only wakes the loop; the loop reads the updater's status and turns
//! it into feedback. The action and its final feedback live in `tmp/fleet.json` (`store`),
//! written before what they describe happens, so the final feedback is sent, and retried after
//! any restart, until the server answers it with HTTP 2xx.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::lifecycle::Stage;
use crate::report::{Report, Sink};
use crate::shutdown::Shutdown;
use crate::updater::Updater;
use crate::workdir::OwnFile;

use super::config::FleetConfig;
use super::ddi::{
    self, ActionId, CancelAction, ConfigData, ControllerBase, DeploymentBase, Feedback,
};
use super::http::DdiHttp;
use super::offer::{self, Offer};
use super::store::{self, Final, FleetAction, Phase};

/// `ready_cmd` must answer within this time (docs/API.md 9.1).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed feedback the loop tries again this soon (sooner when the updater moves).
const FEEDBACK_RETRY: Duration = Duration::from_secs(5);

/// The fleet client's ear on the updater: every report (a stage change, a 5 % step, the
/// outcome) wakes the poll loop, which reads the updater's status; it never waits.
#[derive(Default)]
pub struct FleetSink {
    notify: Notify,
}

impl Sink for FleetSink {
    fn publish(&self, _report: &Report) {
        self.notify.notify_one();
    }
}

/// Logs an error of each kind once, until that kind works again.
#[derive(Default)]
struct Once(HashMap<&'static str, String>);

impl Once {
    fn failed(&mut self, what: &'static str, text: String) {
        if self.0.get(what) != Some(&text) {
            tracing::warn!("fleet {what}: {text}");
            self.0.insert(what, text);
        }
    }

    fn worked(&mut self, what: &'static str) {
        if self.0.remove(what).is_some() {
            tracing::info!("fleet {what}: works again");
        }
    }
}

pub struct FleetClient {
    cfg: FleetConfig,
    max_package_size: u64,
    updater: Updater,
    http: DdiHttp,
    file: OwnFile,
    sink: Arc<FleetSink>,
    shutdown: Shutdown,
    /// The action in `tmp/fleet.json`.
    action: Option<FleetAction>,
    /// The last `proceeding` sent for the action: (cnt, details).
    last_proceeding: Option<(u64, String)>,
    /// `ready_cmd` was asked since the last poll.
    asked_ready: bool,
    once: Once,
}

impl FleetClient {
    /// The client of `cfg.fleet`; `None` when fleet mode is off.
    pub fn new(
        cfg: &Config,
        tls: &Arc<rustls::ClientConfig>,
        updater: Updater,
        sink: Arc<FleetSink>,
        shutdown: Shutdown,
    ) -> Result<Option<FleetClient>, crate::net::NetError> {
        let Some(fleet) = cfg.fleet.clone() else {
            return Ok(None);
        };
        let http = DdiHttp::new(&fleet, tls, cfg.allow_http)?;
        Ok(Some(FleetClient {
            cfg: fleet,
            max_package_size: cfg.max_package_size,
            updater,
            http,
            file: cfg.work().fleet(),
            sink,
            shutdown,
            action: None,
            last_proceeding: None,
            asked_ready: false,
            once: Once::default(),
        }))
    }

    /// The loop; returns when the daemon shuts down.
    pub async fn run(mut self) {
        let file = self.file.clone();
        self.action = tokio::task::spawn_blocking(move || store::load(&file))
            .await
            .ok()
            .flatten();
        tracing::info!(
            "fleet mode: polling {} as controller {} (tenant {})",
            crate::net::redact_url(&self.cfg.url),
            self.cfg.controller_id,
            self.cfg.tenant
        );
        if let Some(a) = &self.action {
            if !a.settled() {
                tracing::info!("fleet action {} resumes after the restart", a.id);
            }
        }
        let mut interval = self.cfg.poll_interval;
        let mut next_poll = Instant::now();
        let shutdown = self.shutdown.clone();
        let sink = self.sink.clone();
        loop {
            let retry = self.advance(false).await;
            let wake = match retry {
                Some(r) => next_poll.min(Instant::now() + r),
                None => next_poll,
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep_until(wake) => {}
                _ = sink.notify.notified() => {}
            }
            if Instant::now() >= next_poll {
                self.asked_ready = false;
                if let Some(sleep) = self.poll().await {
                    interval = sleep;
                }
                next_poll = Instant::now() + interval;
                self.advance(true).await;
            }
        }
    }

    // ------------------------------------------------------------------ the poll

    /// One poll: the controller base, `configData`, a cancel or a deployment. Returns the
    /// server's interval when it stated a valid one.
    async fn poll(&mut self) -> Option<Duration> {
        let url = match Url::parse(&self.cfg.controller_url()) {
            Ok(u) => u,
            Err(e) => {
                self.once.failed("poll", format!("controller URL: {e}"));
                return None;
            }
        };
        let base = match self.http.get(&url).await {
            Ok(body) => ControllerBase::parse(&body).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let base = match base {
            Ok(b) => {
                self.once.worked("poll");
                b
            }
            Err(e) => {
                self.once.failed("poll", e);
                return None;
            }
        };
        let interval = match base.poll_interval() {
            Ok(i) => i,
            Err(e) => {
                self.once.failed("poll interval", e.to_string());
                None
            }
        };
        if let Some(link) = &base.links.config_data {
            self.send_config_data(link).await;
        }
        if let Some(link) = &base.links.cancel_action {
            self.cancel(link).await;
        } else if let Some(link) = &base.links.deployment_base {
            self.deployment(link).await;
        }
        interval
    }

    async fn send_config_data(&mut self, link: &ddi::Link) {
        let url = match self.http.link(link, "configData") {
            Ok(u) => u,
            Err(e) => return self.once.failed("configData", e.to_string()),
        };
        let installed = self.updater.config().work().installed();
        let sw_version = tokio::task::spawn_blocking(move || crate::outcome::installed(&installed))
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "0.0.0".to_string());
        let body = ConfigData::merge(&self.cfg.attributes, &sw_version, env!("CARGO_PKG_VERSION"));
        match self.http.send_json(Method::PUT, &url, body.to_json()).await {
            Ok(()) => {
                self.once.worked("configData");
                tracing::info!("fleet configData sent (sw_version {sw_version})");
            }
            Err(e) => self.once.failed("configData", e.to_string()),
        }
    }

    /// An offered deployment: fetched, then started, resumed or left waiting.
    async fn deployment(&mut self, link: &ddi::Link) {
        // A new offer waits, neither fetched nor acknowledged, while a local update runs.
        let running = self.action.as_ref().is_some_and(|a| a.outcome.is_none());
        let stage = self.updater.status().stage;
        if !running && !matches!(stage, Stage::Idle | Stage::Success | Stage::Failed) {
            return self.once.failed(
                "deploymentBase",
                format!("an offered deployment waits: a local update is {stage}"),
            );
        }
        let url = match self.http.link(link, "deploymentBase") {
            Ok(u) => u,
            Err(e) => return self.once.failed("deploymentBase", e.to_string()),
        };
        let body = match self.http.get(&url).await {
            Ok(b) => b,
            Err(e) => return self.once.failed("deploymentBase", e.to_string()),
        };
        let parsed = DeploymentBase::parse(&body);
        // The id, also of an offer that does not parse: the link's last path segment.
        let id = match &parsed {
            Ok(d) => Some(d.id.clone()),
            Err(_) => offer::id_from_link(&url),
        };
        if let Some(a) = &mut self.action {
            if Some(&a.id) == id.as_ref() {
                if let Some(f) = &mut a.outcome {
                    if f.sent {
                        // The server offers a closed action again: it lost the feedback.
                        f.sent = false;
                        self.save().await;
                    }
                } else if a.hold {
                    // A later offer of an action held by `skip` installs it.
                    let hold = match &parsed {
                        Ok(d) => offer::holds(d),
                        Err(_) => true,
                    };
                    if !hold {
                        a.hold = false;
                        tracing::info!("fleet action {}: offered again, installing", a.id);
                        self.save().await;
                    }
                }
                return;
            }
            if a.outcome.is_none() {
                let other = id.map(|i| i.to_string()).unwrap_or_default();
                return self.once.failed(
                    "deploymentBase",
                    format!("deployment {other} waits: action {} is not finished", a.id),
                );
            }
        }
        self.once.worked("deploymentBase");
        let deployment = match parsed {
            Ok(d) => d,
            Err(e) => {
                // Nothing can be carried out; the server hears why when it has an id.
                let Some(id) = id else {
                    return self.once.failed("deploymentBase", e.to_string());
                };
                tracing::error!("fleet deployment {id}: {e}");
                let error = format!("INVALID_PACKAGE: {e}");
                return self
                    .start_failed(id, String::new(), String::new(), error)
                    .await;
            }
        };
        match offer::read(&deployment, &self.http, self.max_package_size) {
            Ok(o) => self.start(deployment.id, o).await,
            Err(error) => {
                tracing::error!("fleet deployment {}: {error}", deployment.id);
                self.start_failed(
                    deployment.id,
                    String::new(),
                    String::new(),
                    error.to_string(),
                )
                .await
            }
        }
    }

    /// A `cancelAction`: an action not yet installing is stopped and its files removed
    /// (`closed`/`success`); one installing runs on and the cancel is answered `rejected`.
    async fn cancel(&mut self, link: &ddi::Link) {
        let url = match self.http.link(link, "cancelAction") {
            Ok(u) => u,
            Err(e) => return self.once.failed("cancelAction", e.to_string()),
        };
        let cancel = match self.http.get(&url).await.map_err(|e| e.to_string()) {
            Ok(body) => CancelAction::parse(&body).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let cancel = match cancel {
            Ok(c) => c,
            Err(e) => return self.once.failed("cancelAction", e),
        };
        self.once.worked("cancelAction");
        let stop_id = cancel.cancel_action.stop_id.clone();
        let running = self
            .action
            .clone()
            .filter(|a| a.id == stop_id && a.outcome.is_none());
        let feedback = match running {
            None => Feedback::success(
                &cancel.id,
                vec![format!("action {stop_id} is not running here")],
            ),
            Some(a) => {
                let u = self.updater.clone();
                let why = format!(
                    "cancelled by the fleet server (cancel action {})",
                    cancel.id
                );
                let version = a.version.clone();
                let shown = why.clone();
                match tokio::task::spawn_blocking(move || u.cancel_package(&version, &shown)).await
                {
                    Ok(Ok(_)) => {
                        tracing::info!("fleet action {stop_id}: {why}; its package is removed");
                        if let Some(cur) = &mut self.action {
                            cur.outcome = Some(Final {
                                success: false,
                                error: Some(format!("DOWNLOAD_FAILED: {why}")),
                                details: Vec::new(),
                                // The server cancelled it: no deployment feedback is owed.
                                sent: true,
                            });
                        }
                        self.save().await;
                        Feedback::success(&cancel.id, vec![why])
                    }
                    Ok(Err(stage)) => {
                        tracing::info!(
                            "fleet action {stop_id}: cancel refused, the installation runs on"
                        );
                        let why = if stage == Stage::Success {
                            format!("action {stop_id} has already been installed")
                        } else {
                            format!("action {stop_id} is {stage}: it runs to its end")
                        };
                        Feedback::rejected(&cancel.id, &why)
                    }
                    Err(e) => return self.once.failed("cancelAction", e.to_string()),
                }
            }
        };
        let Ok(url) = Url::parse(&format!(
            "{}/cancelAction/{}/feedback",
            self.cfg.controller_url(),
            cancel.id
        )) else {
            return;
        };
        self.post_feedback(&url, &feedback).await;
    }

    /// POST a feedback body; `true` once the server took it (its error logged once otherwise).
    async fn post_feedback(&mut self, url: &Url, feedback: &Feedback) -> bool {
        match self
            .http
            .send_json(Method::POST, url, feedback.to_json())
            .await
        {
            Ok(()) => {
                self.once.worked("feedback");
                true
            }
            Err(e) => {
                self.once.failed("feedback", e.to_string());
                false
            }
        }
    }

    /// Record a new action that failed before anything happened.
    async fn start_failed(&mut self, id: ActionId, version: String, name: String, error: String) {
        self.action = Some(FleetAction {
            id,
            version,
            package_name: name,
            phase: Phase::Downloading,
            hold: false,
            outcome: Some(Final {
                success: false,
                error: Some(error),
                details: Vec::new(),
                sent: false,
            }),
        });
        self.last_proceeding = None;
        self.save().await;
    }

    /// Record the action, then hand its download to the updater.
    async fn start(&mut self, id: ActionId, o: Offer) {
        tracing::info!(
            "fleet action {id}: {} {} ({} bytes, {} {})",
            o.spec.package_name,
            o.spec.version,
            o.spec.package_size,
            o.spec.package_md5.algorithm.name(),
            o.spec.package_md5
        );
        self.action = Some(FleetAction {
            id,
            version: o.spec.version.clone(),
            package_name: o.spec.package_name.clone(),
            phase: Phase::Downloading,
            hold: o.hold,
            outcome: None,
        });
        self.last_proceeding = None;
        if !self.save().await {
            self.finish(
                false,
                Some("INTERNAL_ERROR: cannot record the fleet action".into()),
            )
            .await;
            return;
        }
        let u = self.updater.clone();
        let spec = o.spec;
        let res = tokio::task::spawn_blocking(move || u.request_download(spec)).await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.finish(false, Some(e.to_string())).await,
            Err(e) => {
                self.finish(false, Some(format!("INTERNAL_ERROR: {e}")))
                    .await
            }
        }
    }

    // ------------------------------------------------------------------ the action

    /// Follow the updater's status with feedback; at a poll (`at_poll`) or right after the
    /// download, ask `ready_cmd` and install. Returns when to try again after a failed
    /// feedback.
    async fn advance(&mut self, at_poll: bool) -> Option<Duration> {
        let a = self.action.clone()?;
        if let Some(f) = &a.outcome {
            if f.sent {
                return None;
            }
            return self.send_final(&a, f).await;
        }
        let st = self.updater.status();
        let ours = st.version.as_deref() == Some(a.version.as_str());
        match (st.stage, a.phase) {
            (Stage::Downloading | Stage::Verifying, Phase::Downloading) if ours => {
                let cnt = u64::from(st.progress) / 2;
                self.proceeding(&a, cnt, format!("{}: {}", st.stage, st.message))
                    .await
            }
            (Stage::ToInstall, _) if ours => {
                if a.hold {
                    let why = "downloaded; waits for a later offer (update: skip)";
                    return self.proceeding(&a, 50, why.to_string()).await;
                }
                if self.asked_ready && !at_poll {
                    return None;
                }
                self.install(&a).await
            }
            (Stage::Installing | Stage::Rebooting, Phase::Installing) if ours => {
                let cnt = 50 + u64::from(st.progress) / 2;
                self.proceeding(&a, cnt.min(99), format!("{}: {}", st.stage, st.message))
                    .await
            }
            (Stage::Success, Phase::Installing) if ours => {
                self.finish(true, None).await;
                Box::pin(self.advance(false)).await
            }
            (Stage::Failed, _) if ours => {
                let error = st
                    .error
                    .unwrap_or_else(|| "INTERNAL_ERROR: the update failed".into());
                self.finish(false, Some(error)).await;
                Box::pin(self.advance(false)).await
            }
            (Stage::Downloading | Stage::Verifying | Stage::Installing | Stage::Rebooting, _)
            | (Stage::ToInstall, _) => None,
            _ => {
                // Idle, or another version's outcome: the package is gone (a restart found
                // nothing to resume, a local command replaced it).
                let error = format!(
                    "DOWNLOAD_FAILED: the package of action {} is no longer known to the \
                     updater (stage {})",
                    a.id, st.stage
                );
                self.finish(false, Some(error)).await;
                Box::pin(self.advance(false)).await
            }
        }
    }

    /// `ready_cmd`, then the updater's installation.
    async fn install(&mut self, a: &FleetAction) -> Option<Duration> {
        self.asked_ready = true;
        if let Some(argv) = self.cfg.ready_cmd.clone() {
            let flag = self.shutdown.clone();
            let res = tokio::task::spawn_blocking(move || {
                crate::process::run_to_completion(
                    &argv,
                    &crate::process::ChildEnv::tool(),
                    READY_TIMEOUT,
                    flag.flag(),
                )
            })
            .await;
            let busy = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(crate::error::OtaError::from(e).detail),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = busy {
                if self.shutdown.is_set() {
                    return None;
                }
                tracing::info!("fleet action {}: the printer is busy ({why})", a.id);
                let details = format!("waits for the printer to be ready: {why}");
                return self.proceeding(a, 50, details).await;
            }
        }
        let mut next = a.clone();
        next.phase = Phase::Installing;
        self.action = Some(next.clone());
        if !self.save().await {
            return None;
        }
        let u = self.updater.clone();
        let version = a.version.clone();
        match tokio::task::spawn_blocking(move || u.request_update(&version)).await {
            Ok(Ok(_)) => {
                tracing::info!("fleet action {}: installing {}", a.id, a.version);
                self.proceeding(&next, 50, format!("installing {}", a.version))
                    .await
            }
            Ok(Err(e)) => {
                self.finish(false, Some(e.to_string())).await;
                None
            }
            Err(e) => {
                self.finish(false, Some(format!("INTERNAL_ERROR: {e}")))
                    .await;
                None
            }
        }
    }

    /// The action ended: its final feedback is recorded before it is sent.
    async fn finish(&mut self, success: bool, error: Option<String>) {
        let Some(a) = &mut self.action else { return };
        let message = self.updater.status().message;
        // The message often repeats the error ("Update failed: <error>"): sent once.
        let repeats = error.as_deref().is_some_and(|e| message.contains(e));
        a.outcome = Some(Final {
            success,
            error,
            details: if message.is_empty() || repeats {
                Vec::new()
            } else {
                vec![message]
            },
            sent: false,
        });
        self.save().await;
    }

    fn feedback_url(&self, id: &ActionId) -> Option<Url> {
        Url::parse(&format!(
            "{}/deploymentBase/{id}/feedback",
            self.cfg.controller_url()
        ))
        .ok()
    }

    async fn send_final(&mut self, a: &FleetAction, f: &Final) -> Option<Duration> {
        let feedback = if f.success {
            Feedback::success(&a.id, f.details.clone())
        } else {
            let error = f.error.as_deref().unwrap_or("INTERNAL_ERROR: failed");
            Feedback::failure(&a.id, error, f.details.clone())
        };
        let url = self.feedback_url(&a.id)?;
        if !self.post_feedback(&url, &feedback).await {
            return Some(FEEDBACK_RETRY);
        }
        let result = if f.success { "success" } else { "failure" };
        tracing::info!("fleet action {}: {result} reported to the server", a.id);
        if let Some(cur) = &mut self.action {
            if let Some(o) = &mut cur.outcome {
                o.sent = true;
            }
        }
        self.save().await;
        None
    }

    /// `proceeding` with `cnt` of 100, sent when it differs from the last one sent.
    async fn proceeding(&mut self, a: &FleetAction, cnt: u64, details: String) -> Option<Duration> {
        let now = (cnt, details);
        if self.last_proceeding.as_ref() == Some(&now) {
            return None;
        }
        let url = self.feedback_url(&a.id)?;
        let feedback = Feedback::proceeding(&a.id, now.0, 100, vec![now.1.clone()]);
        if self.post_feedback(&url, &feedback).await {
            self.last_proceeding = Some(now);
            None
        } else {
            Some(FEEDBACK_RETRY)
        }
    }

    /// Write `tmp/fleet.json`; `false` (logged) when it cannot be written.
    async fn save(&mut self) -> bool {
        let Some(a) = self.action.clone() else {
            return true;
        };
        let file = self.file.clone();
        match tokio::task::spawn_blocking(move || store::save(&file, &a)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!("cannot write {}: {e}", self.file.path().display());
                false
            }
            Err(e) => {
                tracing::error!("cannot write {}: {e}", self.file.path().display());
                false
            }
        }
    }
}
