//! `tope-updater demo`: one complete over-the-air update, end to end, on this machine.
//!
//! No root is needed and nothing is installed: everything happens under `./demo-sandbox`
//! (wiped at start). The demo
//!
//! 1. generates a CA and a server certificate for `127.0.0.1`/`localhost`;
//! 2. builds a package ZIP (version 1.1.0, about 8 MB) with two modules: `printer-daemon`
//!    (an executable script that is stopped and restarted) and `web-ui` (a directory);
//! 3. serves it over HTTPS (Content-Length, ETag, single `Range`/`If-Range`), throttled so
//!    the progress is visible;
//! 4. runs a fake device-api that prints every callback it receives;
//! 5. installs version 1.0.0 of the modules under `<sandbox>/root/opt/tope` and starts the
//!    old `printerd`;
//! 6. starts the real daemon (this same binary, `serve --config ...`) as a child process and
//!    drives it through its HTTP API: `/download`, `/progress` until `toInstall`, `/update`,
//!    `/progress` until `success` or `failed`;
//! 7. shows where the files landed, then stops everything it started.
//!
//! The package server, the fake device-api, the certificates and the ZIP come from
//! [`crate::kit`], the same kit the integration tests use. Here: the flow (`mod.rs`), the
//! printer in the sandbox (`printer`); the client of the daemon's API
//! ([`crate::apiclient`]) and the terminal output ([`crate::console`]) are shared with
//! `install`.

mod printer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::apiclient::{api_client, get_progress, post, Progress};
use crate::console::Console;
use crate::kit::{self, range, DaemonConfig, FakeDeviceApi, Part, Request, Server};
use crate::tools::ToolError;
use printer::{
    build_package, install_old_version, list_tree, printerd_pids, start_old_printerd,
    wait_for_printerd, Package,
};

/// Version installed before the update.
const OLD_VERSION: &str = "1.0.0";
/// Version of the package the demo serves.
const NEW_VERSION: &str = "1.1.0";
const PACKAGE_NAME: &str = "tope-1.1.0.zip";
/// Size of the pseudo-random web-ui asset that makes the package about 8 MB.
const ASSET_BYTES: usize = 8 * 1024 * 1024;
/// Throttle of the package server, so the progress bar is visible for a few seconds.
const SERVE_BYTES_PER_S: u64 = 4 * 1024 * 1024;
/// How often `/progress` is polled.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Upper bound for the download, and again for the installation.
const STAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of the daemon log shown after a failure.
const LOG_TAIL_LINES: usize = 40;

/// How long the daemon may take to exit after SIGTERM.
const SIGTERM_WAIT: Duration = Duration::from_secs(20);
/// How long the daemon may take to answer `/progress` after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

type DemoResult<T> = Result<T, ToolError>;

/// Attach what the demo was doing to an error (kept as the source).
trait Context<T> {
    fn ctx(self, what: impl std::fmt::Display) -> DemoResult<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> DemoResult<T> {
        self.map_err(|e| ToolError::Step {
            what: what.to_string(),
            source: Box::new(e),
        })
    }
}

/// Run the demo; exit status 0 only when the update succeeded.
pub fn run() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let console = Arc::new(Console::new());
        let mut demo = Demo::new(console.clone());
        let outcome = tokio::select! {
            r = demo.run() => r,
            _ = tokio::signal::ctrl_c() => Err(ToolError::Interrupted),
        };
        console.end_bar();
        let stopped = demo.shutdown().await;
        match outcome.and(stopped) {
            Ok(()) => {
                console.line("demo: SUCCESS - the update was downloaded, verified and installed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                console.line(&format!("demo: FAILED - {e}"));
                demo.print_log_tail();
                ExitCode::FAILURE
            }
        }
    })
}

/// Everything the demo starts, so that it can all be stopped again.
struct Demo {
    console: Arc<Console>,
    sandbox: PathBuf,
    daemon: Option<Child>,
    daemon_log: PathBuf,
    /// Absolute path the `printerd` script is deployed to.
    printerd_path: PathBuf,
    package_server: Option<Server>,
    device_api: Option<FakeDeviceApi>,
    /// The task that reaps printerd 1.0.0 (started by the demo itself).
    old_printerd: Option<tokio::task::JoinHandle<()>>,
}

impl Demo {
    fn new(console: Arc<Console>) -> Demo {
        Demo {
            console,
            sandbox: PathBuf::new(),
            daemon: None,
            daemon_log: PathBuf::new(),
            printerd_path: PathBuf::new(),
            package_server: None,
            device_api: None,
            old_printerd: None,
        }
    }

    async fn run(&mut self) -> DemoResult<()> {
        let con = self.console.clone();

        // 1. The sandbox.
        let cwd = std::env::current_dir().ctx("cannot read the current directory")?;
        self.sandbox = cwd.join("demo-sandbox");
        let sandbox = self.sandbox.clone();
        if sandbox.exists() {
            std::fs::remove_dir_all(&sandbox).ctx(format!("cannot wipe {}", sandbox.display()))?;
        }
        let root = sandbox.join("root/opt/tope");
        let work = sandbox.join("work");
        for d in [&root, &work] {
            std::fs::create_dir_all(d).ctx(format!("cannot create {}", d.display()))?;
        }
        self.daemon_log = sandbox.join("daemon.log");
        self.printerd_path = root.join("printerd/printerd");
        let web_ui = root.join("web-ui");
        con.line(&format!("demo: sandbox {}", sandbox.display()));

        // 2. Certificates.
        let tls = kit::Certificates::generate("demo").ctx("cannot generate the certificates")?;
        let ca_file = sandbox.join("ca.pem");
        std::fs::write(&ca_file, &tls.ca_pem).ctx("cannot write the CA certificate")?;

        // 3. The package.
        let package = build_package(&sandbox, &self.printerd_path, &web_ui)?;
        std::fs::write(sandbox.join(PACKAGE_NAME), &package.bytes)
            .ctx("cannot write the package copy")?;
        con.line(&format!(
            "demo: package {PACKAGE_NAME} version {NEW_VERSION}: {} bytes, md5 {}",
            package.bytes.len(),
            package.md5
        ));

        // 4. HTTPS package server and fake device-api.
        let package = Arc::new(package);
        let server_tls = tls.server_config().ctx("TLS server configuration")?;
        let server = Server::https(server_tls, package_responder(package.clone(), con.clone()))
            .ctx("cannot start the package server")?;
        let package_url = server.url(PACKAGE_NAME);
        self.package_server = Some(server);
        con.line(&format!(
            "demo: package server {package_url} (throttled to {} MB/s)",
            SERVE_BYTES_PER_S / (1024 * 1024)
        ));

        let printer = con.clone();
        let api = FakeDeviceApi::start_observed(Some(Box::new(move |v: &Value| {
            printer.line(&report_line(v));
        })))
        .ctx("cannot start the fake device-api")?;
        let api_url = api.url();
        self.device_api = Some(api);
        con.line(&format!("demo: fake device-api {api_url}"));

        // 5. Version 1.0.0 installed and running.
        install_old_version(&sandbox, &self.printerd_path, &web_ui)?;
        let (old_pid, reaper) = start_old_printerd(&self.printerd_path)?;
        self.old_printerd = Some(reaper);
        con.line(&format!(
            "demo: installed version {OLD_VERSION} under {}; printerd {OLD_VERSION} running as pid {old_pid}",
            root.display()
        ));

        // 6. The daemon, configured and started by the kit the integration tests use.
        let listen = kit::free_port().ctx("cannot find a free port")?;
        let config_path = sandbox.join("config.toml");
        let mut config = DaemonConfig::new(listen, &work, &api_url, vec![root.clone()]);
        config.ca_file = Some(ca_file);
        config.ota_gui_path = sandbox.join("no-ota-gui");
        config.stop_timeout_s = 3;
        config.log_level = Some("debug".into());
        let text = config.to_toml("")?;
        std::fs::write(
            &config_path,
            format!("# Written by `tope-updater demo`.\n{text}"),
        )
        .ctx("cannot write the daemon config")?;
        let exe = std::env::current_exe().ctx("cannot find this program's path")?;
        let log = std::fs::File::create(&self.daemon_log).ctx("cannot create daemon.log")?;
        let log2 = log.try_clone().ctx("cannot duplicate daemon.log")?;
        let child =
            kit::daemon::serve_command(&mut Command::new(&exe), &config_path, &sandbox, log, log2)
                .spawn()
                .ctx(format!("cannot start {}", exe.display()))?;
        con.line(&format!(
            "demo: daemon started (pid {}): {} serve --config {}",
            child.id(),
            exe.display(),
            config_path.display()
        ));
        con.line(&format!("demo: daemon log {}", self.daemon_log.display()));
        self.wait_until_up(child, listen).await?;

        let client = api_client()?;
        let base = format!("http://{listen}/api/v1.0");
        con.line(&format!("demo: daemon answers on {base}"));

        // 7. Download.
        let body = json!({
            "version": NEW_VERSION,
            "package_url": package_url,
            "package_name": PACKAGE_NAME,
            "package_size": package.bytes.len(),
            "package_md5": package.md5,
        });
        let answer = post(&client, &format!("{base}/download"), &body).await?;
        con.line(&format!("demo: POST /download -> {answer}"));
        expect_code_200(&answer, "/download")?;
        let p = self.watch(listen, &["toInstall"]).await?;
        if p.stage != "toInstall" {
            return Err(describe_failure("download", p));
        }

        // 8. Installation.
        let answer = post(
            &client,
            &format!("{base}/update"),
            &json!({ "version": NEW_VERSION }),
        )
        .await?;
        con.line(&format!("demo: POST /update -> {answer}"));
        expect_code_200(&answer, "/update")?;
        let p = self.watch(listen, &["success"]).await?;
        if p.stage != "success" {
            return Err(describe_failure("installation", p));
        }
        // Let the last callbacks (sent within 500 ms) print before the summary.
        tokio::time::sleep(Duration::from_millis(700)).await;

        // 9. Where everything landed.
        con.line("demo: deployed files:");
        let mut files = Vec::new();
        list_tree(&root, &mut files);
        for (mode, size, path) in files {
            con.line(&format!("  {mode:04o} {size:>9}  {}", path.display()));
        }
        let new_pid = wait_for_printerd(&self.printerd_path, old_pid).await;
        match new_pid {
            Some(pid) => con.line(&format!(
                "demo: printerd {NEW_VERSION} running as pid {pid} (was pid {old_pid})"
            )),
            None => {
                return Err(ToolError::NotRestarted {
                    version: NEW_VERSION,
                })
            }
        }
        let printerd_log =
            std::fs::read_to_string(sandbox.join("printerd.log")).unwrap_or_default();
        con.line("demo: printerd.log:");
        for l in printerd_log.lines() {
            con.line(&format!("  {l}"));
        }
        let callbacks = self.device_api.as_ref().map_or(0, FakeDeviceApi::count);
        con.line(&format!("demo: device-api received {callbacks} callbacks"));
        con.line(&format!("demo: daemon log {}", self.daemon_log.display()));
        con.line(&format!(
            "demo: updater log {}",
            work.join("logs/updater.log").display()
        ));
        Ok(())
    }

    /// Wait (on the blocking pool, the kit's wait) until the daemon answers `/progress`, or
    /// fail if it exits first; the daemon is kept to be stopped either way.
    async fn wait_until_up(&mut self, mut child: Child, listen: SocketAddr) -> DemoResult<()> {
        let waited = tokio::task::spawn_blocking(move || {
            let ready = kit::daemon::wait_ready(listen, &mut child, READY_TIMEOUT);
            (child, ready)
        })
        .await
        .ctx("waiting for the daemon")?;
        let (child, ready) = waited;
        self.daemon = Some(child);
        ready.map(|_| ()).map_err(ToolError::from)
    }

    /// Show a live progress line until the stage is one of `until` or `failed`.
    async fn watch(&mut self, listen: SocketAddr, until: &[&str]) -> DemoResult<Progress> {
        let deadline = Instant::now() + STAGE_TIMEOUT;
        let mut errors = 0;
        loop {
            if let Some(child) = self.daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.console.end_bar();
                    return Err(ToolError::DaemonExited(status));
                }
            }
            match get_progress(listen).await {
                Ok(p) => {
                    errors = 0;
                    self.console.bar(&p);
                    if p.stage == "failed" || until.contains(&p.stage.as_str()) {
                        self.console.end_bar();
                        return Ok(p);
                    }
                }
                Err(e) => {
                    errors += 1;
                    if errors >= 25 {
                        self.console.end_bar();
                        return Err(ToolError::Step {
                            what: "/progress stopped answering".into(),
                            source: Box::new(e),
                        });
                    }
                }
            }
            if Instant::now() > deadline {
                self.console.end_bar();
                return Err(ToolError::StageTimeout {
                    until: until.join("/"),
                    within: STAGE_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// SIGTERM the daemon and wait for it, stop every `printerd` of the sandbox, stop the
    /// servers. An error only when the daemon would not exit on SIGTERM.
    async fn shutdown(&mut self) -> DemoResult<()> {
        let mut result = Ok(());
        if let Some(mut child) = self.daemon.take() {
            if let Ok(None) = child.try_wait() {
                let pid = i32::try_from(child.id())
                    .ok()
                    .and_then(rustix::process::Pid::from_raw);
                if let Some(pid) = pid {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                let deadline = Instant::now() + SIGTERM_WAIT;
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            self.console
                                .line(&format!("demo: daemon stopped by SIGTERM ({status})"));
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(None) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            result = Err(ToolError::NoExitOnSigterm {
                                within: SIGTERM_WAIT,
                            });
                            break;
                        }
                        Err(e) => {
                            self.console.line(&format!("demo: daemon wait failed: {e}"));
                            break;
                        }
                    }
                }
            }
        }
        if !self.printerd_path.as_os_str().is_empty() {
            for pid in printerd_pids(&self.printerd_path) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
                    self.console
                        .line(&format!("demo: stopped printerd pid {pid}"));
                }
            }
        }
        if let Some(reaper) = self.old_printerd.take() {
            // Our own child: reap it (after a failure it may still have been running).
            let _ = tokio::time::timeout(Duration::from_secs(3), reaper).await;
        }
        self.package_server = None;
        self.device_api = None;
        result
    }

    fn print_log_tail(&self) {
        if self.daemon_log.as_os_str().is_empty() {
            return;
        }
        let text = std::fs::read_to_string(&self.daemon_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        self.console.line(&format!(
            "demo: last {} lines of {}:",
            lines.len() - from,
            self.daemon_log.display()
        ));
        for l in &lines[from..] {
            self.console.line(&format!("  {l}"));
        }
    }
}

fn describe_failure(what: &'static str, p: Progress) -> ToolError {
    ToolError::Ended {
        what,
        stage: p.stage,
        message: p.message,
        error: p.error,
    }
}

fn expect_code_200(answer: &Value, endpoint: &'static str) -> DemoResult<()> {
    if answer.get("code").and_then(Value::as_i64) == Some(200) {
        Ok(())
    } else {
        Err(ToolError::EndpointRefused {
            endpoint,
            answer: answer.clone(),
        })
    }
}
/// The package at `/<PACKAGE_NAME>` (Range, If-Range, HEAD), throttled; 404 elsewhere. Every
/// request is shown.
fn package_responder(package: Arc<Package>, console: Arc<Console>) -> Box<kit::Responder> {
    Box::new(move |req: &Request| {
        let wanted = req.target() == format!("/{PACKAGE_NAME}");
        let (head, body) = if wanted || !matches!(req.method(), "GET" | "HEAD") {
            range::honest(package.bytes.len() as u64, &package.etag, req)
        } else {
            (range::status_only("404 Not Found"), 0..0)
        };
        let status = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .unwrap_or("")
            .to_string();
        console.line(&format!(
            "[package-server] {} {}{} -> {status}",
            req.method(),
            req.target(),
            req.header("range")
                .map(|r| format!(" (Range: {r})"))
                .unwrap_or_default()
        ));
        vec![
            Part::Bytes(head),
            Part::Throttled {
                data: range::slice(&package.bytes, body).to_vec(),
                bytes_per_s: SERVE_BYTES_PER_S,
            },
        ]
    })
}

/// How a report to the fake device-api is shown.
fn report_line(v: &Value) -> String {
    if !v.is_object() {
        return format!("[device-api] unreadable report ({v})");
    }
    format!(
        "[device-api] stage={} progress={} error={}",
        v.get("stage").and_then(Value::as_str).unwrap_or("?"),
        v.get("progress").map(Value::to_string).unwrap_or_default(),
        v.get("error").map(Value::to_string).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_shown_with_stage_progress_and_error() {
        let v = json!({"stage": "failed", "progress": 0, "error": "MD5_MISMATCH: x"});
        assert_eq!(
            report_line(&v),
            "[device-api] stage=failed progress=0 error=\"MD5_MISMATCH: x\""
        );
        assert!(report_line(&json!("garbage")).contains("unreadable report"));
    }

    /// The demo's package server over HTTPS, trusted through the generated CA as the daemon
    /// trusts it: the whole package, a resumed range, a stale If-Range and another path.
    #[tokio::test(flavor = "current_thread")]
    async fn package_server_answers_over_https_with_ranges_and_404() {
        let package = Arc::new(Package {
            bytes: kit::pseudo_random_bytes(300_000, 3),
            md5: String::new(),
            etag: "\"abc\"".into(),
        });
        let tls = kit::Certificates::generate("unit").unwrap();
        let server = Server::https(
            tls.server_config().unwrap(),
            package_responder(package.clone(), Arc::new(Console::quiet())),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::CertificateDer::from(tls.ca_der.clone());
        roots.add(der).unwrap();
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(client_tls)
            .no_proxy()
            .build()
            .unwrap();
        let url = server.url(PACKAGE_NAME);
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");

        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["etag"], "\"abc\"");
        assert_eq!(r.bytes().await.unwrap(), package.bytes);

        let r = client
            .get(&url)
            .header("range", "bytes=299000-")
            .header("if-range", "\"abc\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], "bytes 299000-299999/300000");
        assert_eq!(r.bytes().await.unwrap(), package.bytes[299_000..]);

        let r = client
            .get(&url)
            .header("range", "bytes=5-")
            .header("if-range", "\"old\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 300_000);

        let r = client.get(server.url("other.zip")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(server.requests().len(), 4);
    }
}
