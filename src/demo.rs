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

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use md5::Digest;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// The demo reports errors as human sentences; nothing matches on them.
type DemoResult<T> = Result<T, String>;

/// Attach a sentence of context to any displayable error.
trait Context<T> {
    fn ctx(self, what: impl std::fmt::Display) -> DemoResult<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> DemoResult<T> {
        self.map_err(|e| format!("{what}: {e}"))
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
            _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C)".to_string()),
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
    daemon: Option<tokio::process::Child>,
    daemon_log: PathBuf,
    /// Absolute path the `printerd` script is deployed to.
    printerd_path: PathBuf,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The task that reaps printerd 1.0.0 (started by the demo itself).
    old_printerd: Option<tokio::task::JoinHandle<()>>,
}

/// What `/progress` answered.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    stage: String,
    progress: i64,
    message: String,
    error: Option<String>,
}

impl Demo {
    fn new(console: Arc<Console>) -> Demo {
        Demo {
            console,
            sandbox: PathBuf::new(),
            daemon: None,
            daemon_log: PathBuf::new(),
            printerd_path: PathBuf::new(),
            servers: Vec::new(),
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
        let tls = make_certificates()?;
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
        let pkg_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .ctx("cannot bind the package server")?;
        let pkg_addr = pkg_listener.local_addr().ctx("package server address")?;
        let acceptor = tls_acceptor(&tls)?;
        self.servers.push(tokio::spawn(serve_package(
            pkg_listener,
            acceptor,
            package.clone(),
            con.clone(),
        )));
        let package_url = format!("https://{pkg_addr}/{PACKAGE_NAME}");
        con.line(&format!(
            "demo: package server {package_url} (throttled to {} MB/s)",
            SERVE_BYTES_PER_S / (1024 * 1024)
        ));

        let api_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .ctx("cannot bind the fake device-api")?;
        let api_addr = api_listener.local_addr().ctx("device-api address")?;
        let reports = Arc::new(AtomicUsize::new(0));
        self.servers.push(tokio::spawn(serve_device_api(
            api_listener,
            con.clone(),
            reports.clone(),
        )));
        con.line(&format!("demo: fake device-api http://{api_addr}"));

        // 5. Version 1.0.0 installed and running.
        install_old_version(&sandbox, &self.printerd_path, &web_ui)?;
        let (old_pid, reaper) = start_old_printerd(&self.printerd_path)?;
        self.old_printerd = Some(reaper);
        con.line(&format!(
            "demo: installed version {OLD_VERSION} under {}; printerd {OLD_VERSION} running as pid {old_pid}",
            root.display()
        ));

        // 6. The daemon.
        let listen = free_port()?;
        let config_path = sandbox.join("config.toml");
        let config = format!(
            "# Written by `tope-updater demo`.\n\
             listen = {}\n\
             work_dir = {}\n\
             device_api_url = {}\n\
             allowed_roots = [{}]\n\
             ca_file = {}\n\
             ota_gui_path = {}\n\
             stop_timeout_s = 3\n\
             log_level = \"debug\"\n",
            toml_str(&listen.to_string()),
            toml_path(&work),
            toml_str(&format!("http://{api_addr}")),
            toml_path(&root),
            toml_path(&ca_file),
            toml_path(&sandbox.join("no-ota-gui")),
        );
        std::fs::write(&config_path, config).ctx("cannot write the daemon config")?;
        let exe = std::env::current_exe().ctx("cannot find this program's path")?;
        let log = std::fs::File::create(&self.daemon_log).ctx("cannot create daemon.log")?;
        let log2 = log.try_clone().ctx("cannot duplicate daemon.log")?;
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&sandbox)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .ctx(format!("cannot start {}", exe.display()))?;
        con.line(&format!(
            "demo: daemon started (pid {}): {} serve --config {}",
            child.id().unwrap_or(0),
            exe.display(),
            config_path.display()
        ));
        con.line(&format!("demo: daemon log {}", self.daemon_log.display()));
        self.daemon = Some(child);

        let client = api_client()?;
        let base = format!("http://{listen}/api/v1.0");
        self.wait_until_up(&client, &base).await?;
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
        let p = self.watch(&client, &base, &["toInstall"]).await?;
        if p.stage != "toInstall" {
            return Err(describe_failure("download", &p));
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
        let p = self.watch(&client, &base, &["success"]).await?;
        if p.stage != "success" {
            return Err(describe_failure("installation", &p));
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
                return Err(format!(
                    "printerd {NEW_VERSION} is not running after the update (start_cmd)"
                ))
            }
        }
        let printerd_log =
            std::fs::read_to_string(sandbox.join("printerd.log")).unwrap_or_default();
        con.line("demo: printerd.log:");
        for l in printerd_log.lines() {
            con.line(&format!("  {l}"));
        }
        con.line(&format!(
            "demo: device-api received {} callbacks",
            reports.load(Ordering::Relaxed)
        ));
        con.line(&format!("demo: daemon log {}", self.daemon_log.display()));
        con.line(&format!(
            "demo: updater log {}",
            work.join("logs/updater.log").display()
        ));
        Ok(())
    }

    /// Poll `/progress` until the daemon answers, or fail if it exits first.
    async fn wait_until_up(&mut self, client: &reqwest::Client, base: &str) -> DemoResult<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the daemon exited at start ({status})"));
                }
            }
            if get_progress(client, base).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the daemon did not answer /progress within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Show a live progress line until the stage is one of `until` or `failed`.
    async fn watch(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        until: &[&str],
    ) -> DemoResult<Progress> {
        let deadline = Instant::now() + STAGE_TIMEOUT;
        let mut errors = 0;
        loop {
            if let Some(child) = self.daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.console.end_bar();
                    return Err(format!("the daemon exited ({status})"));
                }
            }
            match get_progress(client, base).await {
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
                        return Err(format!("/progress stopped answering: {e}"));
                    }
                }
            }
            if Instant::now() > deadline {
                self.console.end_bar();
                return Err(format!(
                    "no {} within {} s",
                    until.join("/"),
                    STAGE_TIMEOUT.as_secs()
                ));
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
                if let Some(pid) = child
                    .id()
                    .and_then(|p| rustix::process::Pid::from_raw(p as i32))
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                    Ok(Ok(status)) => self
                        .console
                        .line(&format!("demo: daemon stopped by SIGTERM ({status})")),
                    Ok(Err(e)) => self.console.line(&format!("demo: daemon wait failed: {e}")),
                    Err(_) => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        result = Err("the daemon did not exit within 20 s of SIGTERM".into());
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
        for s in self.servers.drain(..) {
            s.abort();
        }
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

fn describe_failure(what: &str, p: &Progress) -> String {
    format!(
        "{what} ended in stage {} ({}): {}",
        p.stage,
        p.message,
        p.error.as_deref().unwrap_or("no error given")
    )
}

fn expect_code_200(answer: &Value, endpoint: &str) -> DemoResult<()> {
    if answer.get("code").and_then(Value::as_i64) == Some(200) {
        Ok(())
    } else {
        Err(format!("{endpoint} was refused: {answer}"))
    }
}

// ---------------------------------------------------------------------------------------
// Terminal output

/// Serialises output: whole lines from every task, plus one live progress line that is
/// redrawn in place on a terminal (and printed at each stage or 10 % step otherwise).
struct Console {
    tty: bool,
    /// No output at all (unit tests).
    quiet: bool,
    state: Mutex<ConsoleState>,
}

#[derive(Default)]
struct ConsoleState {
    /// The progress line currently on screen (terminal only), empty when none.
    bar: String,
    /// Last (stage, tenth) printed when not on a terminal.
    last: Option<(String, i64)>,
}

impl Console {
    fn new() -> Console {
        Console {
            tty: std::io::stdout().is_terminal(),
            quiet: false,
            state: Mutex::new(ConsoleState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Print a whole line above the progress line. Output errors are ignored.
    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let st = self.lock();
        let mut out = std::io::stdout().lock();
        if self.tty && !st.bar.is_empty() {
            let _ = write!(out, "\r{}\r", " ".repeat(st.bar.chars().count()));
        }
        let _ = writeln!(out, "{text}");
        if self.tty && !st.bar.is_empty() {
            let _ = write!(out, "{}", st.bar);
        }
        let _ = out.flush();
    }

    /// Redraw the progress line.
    fn bar(&self, p: &Progress) {
        if self.quiet {
            return;
        }
        let text = render_bar(p);
        let mut st = self.lock();
        let mut out = std::io::stdout().lock();
        if self.tty {
            let old = st.bar.chars().count();
            let new = text.chars().count();
            let _ = write!(out, "\r{text}{}", " ".repeat(old.saturating_sub(new)));
            st.bar = text;
        } else {
            let key = (p.stage.clone(), p.progress / 10);
            if st.last.as_ref() != Some(&key) {
                let _ = writeln!(out, "{text}");
                st.last = Some(key);
            }
        }
        let _ = out.flush();
    }

    /// Leave the progress line on screen and continue below it.
    fn end_bar(&self) {
        let mut st = self.lock();
        if self.tty && !st.bar.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            let _ = out.flush();
        }
        st.bar.clear();
        st.last = None;
    }
}

fn render_bar(p: &Progress) -> String {
    const WIDTH: usize = 30;
    let pct = p.progress.clamp(0, 100) as usize;
    let filled = pct * WIDTH / 100;
    let mut s = format!(
        "[{}{}] {pct:>3}% {:<11} {}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        p.stage,
        p.message
    );
    if let Some(e) = &p.error {
        let _ = write!(s, " ({e})");
    }
    // One terminal line: a wrapped line could not be redrawn with `\r`.
    if s.chars().count() > 110 {
        s = s.chars().take(107).collect::<String>() + "...";
    }
    s
}

// ---------------------------------------------------------------------------------------
// The daemon's HTTP API

fn api_client() -> DemoResult<reqwest::Client> {
    // Plain HTTP only, but the client still wants a TLS configuration: an empty trust store
    // with the ring provider keeps it independent of any process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ctx("TLS client configuration")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .ctx("cannot build the HTTP client")
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> DemoResult<Value> {
    let bytes = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .ctx(format!("POST {url}"))?
        .bytes()
        .await
        .ctx(format!("POST {url}: reading the answer"))?;
    serde_json::from_slice(&bytes).ctx(format!("POST {url}: the answer is not JSON"))
}

async fn get_progress(client: &reqwest::Client, base: &str) -> DemoResult<Progress> {
    let url = format!("{base}/progress");
    let bytes = client
        .get(&url)
        .send()
        .await
        .ctx(format!("GET {url}"))?
        .bytes()
        .await
        .ctx(format!("GET {url}: reading the answer"))?;
    let v: Value = serde_json::from_slice(&bytes).ctx(format!("GET {url}: not JSON"))?;
    parse_progress(&v).ok_or_else(|| format!("GET {url}: unexpected answer {v}"))
}

/// Read the `/progress` envelope: `data` holds the four fields (also when failed).
fn parse_progress(v: &Value) -> Option<Progress> {
    let data = v.get("data").filter(|d| d.is_object()).unwrap_or(v);
    let stage = data
        .get("stage")
        .or_else(|| v.get("stage"))?
        .as_str()?
        .to_string();
    let progress = data
        .get("progress")
        .or_else(|| v.get("progress"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let message = data
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let error = data
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            (stage == "failed")
                .then(|| v.get("msg").and_then(Value::as_str).map(str::to_string))
                .flatten()
        });
    Some(Progress {
        stage,
        progress,
        message,
        error,
    })
}

// ---------------------------------------------------------------------------------------
// Certificates

struct DemoTls {
    ca_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn make_certificates() -> DemoResult<DemoTls> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().ctx("CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).ctx("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "tope-updater demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).ctx("CA certificate")?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().ctx("server key")?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .ctx("server parameters")?;
    server
        .distinguished_name
        .push(DnType::CommonName, "tope-updater demo package server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).ctx("server certificate")?;
    Ok(DemoTls {
        ca_pem: ca_cert.pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

fn tls_acceptor(tls: &DemoTls) -> DemoResult<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ctx("TLS server configuration")?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(tls.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.key_der.clone())),
        )
        .ctx("TLS server certificate")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

// ---------------------------------------------------------------------------------------
// The package

struct Package {
    bytes: Vec<u8>,
    md5: String,
    /// Strong ETag, derived from the content.
    etag: String,
}

fn printerd_script(version: &str, log: &Path) -> String {
    // `sleep & wait` so that SIGTERM is handled at once, not after the sleep.
    format!(
        "#!/bin/sh\n\
         # printerd {version}: stand-in for the printer's motion daemon.\n\
         LOG={log}\n\
         echo \"$(date -u +%H:%M:%S) printerd {version} started (pid $$)\" >> \"$LOG\"\n\
         trap 'echo \"$(date -u +%H:%M:%S) printerd {version} stopped by SIGTERM (pid $$)\" >> \"$LOG\"; exit 0' TERM\n\
         while :; do sleep 1 & wait $!; done\n",
        log = shell_quote(&log.to_string_lossy()),
    )
}

fn index_html(version: &str) -> String {
    format!(
        "<!doctype html>\n<title>Printer {version}</title>\n<h1>Printer web UI {version}</h1>\n<script src=\"app.js\"></script>\n"
    )
}

fn app_js(version: &str) -> String {
    format!("console.log(\"web-ui {version}\");\n")
}

/// Pseudo-random bytes (xorshift64*): incompressible, so the package keeps its size.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn build_package(sandbox: &Path, printerd_dst: &Path, web_ui_dst: &Path) -> DemoResult<Package> {
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    let manifest = json!({
        "version": NEW_VERSION,
        "modules": [
            {
                "name": "printer-daemon",
                "src": "modules/printerd/printerd",
                "dst": printerd_dst,
                "process_name": "printerd",
                "start_cmd": [printerd_dst],
                "restart_order": 2
            },
            {
                "name": "web-ui",
                "src": "modules/web-ui",
                "dst": web_ui_dst,
                "restart_order": 1
            }
        ]
    });
    let manifest = serde_json::to_vec_pretty(&manifest).ctx("manifest")?;
    let file = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let exec = file.unix_permissions(0o755);
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    let dir = SimpleFileOptions::default().unix_permissions(0o755);
    let log = sandbox.join("printerd.log");

    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let entries: Vec<(&str, SimpleFileOptions, Vec<u8>)> = vec![
        ("manifest.json", file, manifest),
        (
            "modules/printerd/printerd",
            exec,
            printerd_script(NEW_VERSION, &log).into_bytes(),
        ),
        (
            "modules/web-ui/index.html",
            file,
            index_html(NEW_VERSION).into_bytes(),
        ),
        (
            "modules/web-ui/app.js",
            file,
            app_js(NEW_VERSION).into_bytes(),
        ),
        (
            "modules/web-ui/assets/texture.bin",
            stored,
            pseudo_random(ASSET_BYTES, 0x746f_7065_2d75_7064),
        ),
    ];
    for d in [
        "modules/",
        "modules/printerd/",
        "modules/web-ui/",
        "modules/web-ui/assets/",
    ] {
        zw.add_directory(d, dir).ctx(format!("zip: {d}"))?;
    }
    for (name, opts, data) in entries {
        zw.start_file(name, opts).ctx(format!("zip: {name}"))?;
        zw.write_all(&data).ctx(format!("zip: {name}"))?;
    }
    let bytes = zw.finish().ctx("zip: finishing")?.into_inner();
    let md5 = hex(&md5::Md5::digest(&bytes));
    let etag = format!("\"{md5}\"");
    Ok(Package { bytes, md5, etag })
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> DemoResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, data).ctx(format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx(format!("cannot chmod {}", path.display()))
}

fn install_old_version(sandbox: &Path, printerd: &Path, web_ui: &Path) -> DemoResult<()> {
    let log = sandbox.join("printerd.log");
    write_file(
        printerd,
        printerd_script(OLD_VERSION, &log).as_bytes(),
        0o755,
    )?;
    write_file(
        &web_ui.join("index.html"),
        index_html(OLD_VERSION).as_bytes(),
        0o644,
    )?;
    write_file(
        &web_ui.join("app.js"),
        app_js(OLD_VERSION).as_bytes(),
        0o644,
    )
}

/// Start printerd 1.0.0 as the printer would have it running. A task reaps it when the
/// updater stops it (a zombie would look alive in `/proc`).
fn start_old_printerd(path: &Path) -> DemoResult<(u32, tokio::task::JoinHandle<()>)> {
    let mut child = tokio::process::Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ctx(format!("cannot start {}", path.display()))?;
    let pid = child.id().unwrap_or(0);
    let reaper = tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok((pid, reaper))
}

// ---------------------------------------------------------------------------------------
// HTTPS package server: one request per connection, `Connection: close`.

async fn serve_package(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    package: Arc<Package>,
    console: Arc<Console>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let package = package.clone();
        let console = console.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            // A client that goes away mid-body is normal (cancel, retry); nothing to report.
            let _ = answer_package_request(tls, &package, &console).await;
        });
    }
}

/// What a `Range` header asks of a body of a given length.
#[derive(Debug, PartialEq)]
enum RangeAnswer {
    /// No usable range: the whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial(u64, u64),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// A single `bytes=` range (`N-`, `N-M`, `-N`); anything else is ignored as RFC 9110
/// allows, which serves the whole body.
fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial(len - n.min(len), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeAnswer::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial(start, end.min(len - 1))
}

/// Read the request head (up to the blank line), at most 16 KiB.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > 16 * 1024 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

async fn answer_package_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    package: &Package,
    console: &Console,
) -> std::io::Result<()> {
    let head = read_head(&mut s).await?;
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let method = request.next().unwrap_or("").to_string();
    let target = request.next().unwrap_or("").to_string();
    let mut range = None;
    let mut if_range = None;
    for l in lines {
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim().to_string();
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value);
            } else if name.trim().eq_ignore_ascii_case("if-range") {
                if_range = Some(value);
            }
        }
    }

    let len = package.bytes.len() as u64;
    let mut extra = String::new();
    let (status, body) = if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", None)
    } else if target != format!("/{PACKAGE_NAME}") {
        ("404 Not Found", None)
    } else {
        // If-Range with another validator: the client's partial copy is stale, send all.
        let honour = if_range.as_deref().is_none_or(|v| v == package.etag);
        let answer = match (&range, honour) {
            (Some(r), true) => parse_range(r, len),
            _ => RangeAnswer::Full,
        };
        match answer {
            RangeAnswer::Full => ("200 OK", Some((0, len))),
            RangeAnswer::Partial(start, end) => {
                let _ = write!(extra, "Content-Range: bytes {start}-{end}/{len}\r\n");
                ("206 Partial Content", Some((start, end + 1)))
            }
            RangeAnswer::Unsatisfiable => {
                let _ = write!(extra, "Content-Range: bytes */{len}\r\n");
                ("416 Range Not Satisfiable", None)
            }
        }
    };
    let (from, to) = body.unwrap_or((0, 0));
    let response = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/zip\r\n\
         Content-Length: {}\r\n\
         ETag: {}\r\n\
         Accept-Ranges: bytes\r\n\
         {extra}\
         Connection: close\r\n\r\n",
        to - from,
        package.etag
    );
    console.line(&format!(
        "[package-server] {method} {target}{} -> {status}",
        range
            .as_deref()
            .map(|r| format!(" (Range: {r})"))
            .unwrap_or_default()
    ));
    s.write_all(response.as_bytes()).await?;
    if method == "GET" && to > from {
        let slice = package
            .bytes
            .get(from as usize..to as usize)
            .unwrap_or_default();
        let started = Instant::now();
        let mut sent = 0u64;
        for chunk in slice.chunks(16 * 1024) {
            s.write_all(chunk).await?;
            sent += chunk.len() as u64;
            let due = Duration::from_secs_f64(sent as f64 / SERVE_BYTES_PER_S as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
    s.flush().await?;
    s.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Fake device-api

#[derive(Clone)]
struct DeviceApi {
    console: Arc<Console>,
    reports: Arc<AtomicUsize>,
}

async fn serve_device_api(listener: TcpListener, console: Arc<Console>, reports: Arc<AtomicUsize>) {
    let app = axum::Router::new()
        .route("/api/v1.0/ota/report", axum::routing::post(report))
        .with_state(DeviceApi {
            console: console.clone(),
            reports,
        });
    if let Err(e) = axum::serve(listener, app).await {
        console.line(&format!("[device-api] server stopped: {e}"));
    }
}

async fn report(
    axum::extract::State(api): axum::extract::State<DeviceApi>,
    body: axum::body::Bytes,
) -> axum::Json<Value> {
    api.reports.fetch_add(1, Ordering::Relaxed);
    let line = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => format!(
            "[device-api] stage={} progress={} error={}",
            v.get("stage").and_then(Value::as_str).unwrap_or("?"),
            v.get("progress").map(Value::to_string).unwrap_or_default(),
            v.get("error").map(Value::to_string).unwrap_or_default(),
        ),
        Err(e) => format!("[device-api] unreadable report ({e})"),
    };
    api.console.line(&line);
    axum::Json(json!({"code": 200, "msg": "success", "data": {"status": "received"}}))
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// A port that was free a moment ago, for the daemon's `listen`.
fn free_port() -> DemoResult<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx("cannot find a free port")?;
    l.local_addr().ctx("cannot find a free port")
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Every file and directory under `dir`, with mode and size, sorted by path.
fn list_tree(dir: &Path, out: &mut Vec<(u32, u64, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((m.permissions().mode() & 0o7777, m.len(), p.clone()));
        if m.is_dir() {
            list_tree(&p, out);
        }
    }
}

/// Live (not zombie) processes named `printerd` running the script at `path`.
fn printerd_pids(path: &Path) -> Vec<i32> {
    let want = path.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != "printerd" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('Z') {
            continue;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg == want.as_bytes()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The new printerd (not `old_pid`), waiting up to 3 s for it to appear.
async fn wait_for_printerd(path: &Path, old_pid: u32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(pid) = printerd_pids(path)
            .into_iter()
            .find(|p| i64::from(*p) != i64::from(old_pid))
        {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=4-", 10), Partial(4, 9));
        assert_eq!(parse_range("bytes=9-", 10), Partial(9, 9));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=2-5", 10), Partial(2, 5));
        assert_eq!(parse_range("bytes=2-50", 10), Partial(2, 9));
        assert_eq!(parse_range("bytes=-3", 10), Partial(7, 9));
        assert_eq!(parse_range("bytes=-30", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 10), Full);
        assert_eq!(parse_range("bytes=0-1,4-5", 10), Full);
        assert_eq!(parse_range("items=0-", 10), Full);
        assert_eq!(parse_range("bytes=x-", 10), Full);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn package_server_answers_full_partial_stale_and_unsatisfiable() {
        let package = Package {
            bytes: (0..=255u8).cycle().take(100_000).collect(),
            md5: String::new(),
            etag: "\"abc\"".into(),
        };
        let console = Console {
            tty: false,
            quiet: true,
            state: Mutex::new(ConsoleState::default()),
        };
        async fn ask(package: &Package, console: &Console, head: &str) -> (String, Vec<u8>) {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            client.write_all(head.as_bytes()).await.unwrap();
            answer_package_request(server, package, console)
                .await
                .unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8(out[..split].to_vec()).unwrap();
            (head, out[split + 4..].to_vec())
        }
        let path = format!("/{PACKAGE_NAME}");

        let (h, b) = ask(&package, &console, &format!("GET {path} HTTP/1.1\r\n\r\n")).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(h.contains("Content-Length: 100000\r\n"), "{h}");
        assert!(h.contains("ETag: \"abc\""), "{h}");
        assert_eq!(b, package.bytes);

        let req =
            format!("GET {path} HTTP/1.1\r\nRange: bytes=99000-\r\nIf-Range: \"abc\"\r\n\r\n");
        let (h, b) = ask(&package, &console, &req).await;
        assert!(h.starts_with("HTTP/1.1 206"), "{h}");
        assert!(
            h.contains("Content-Range: bytes 99000-99999/100000\r\n"),
            "{h}"
        );
        assert!(h.contains("Content-Length: 1000\r\n"), "{h}");
        assert_eq!(b, package.bytes[99_000..]);

        let req = format!("GET {path} HTTP/1.1\r\nrange: bytes=50-\r\nif-range: \"old\"\r\n\r\n");
        let (h, b) = ask(&package, &console, &req).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b.len(), 100_000);

        let req = format!("GET {path} HTTP/1.1\r\nRange: bytes=100000-\r\n\r\n");
        let (h, b) = ask(&package, &console, &req).await;
        assert!(h.starts_with("HTTP/1.1 416"), "{h}");
        assert!(h.contains("Content-Range: bytes */100000\r\n"), "{h}");
        assert!(b.is_empty());

        let (h, _) = ask(&package, &console, "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 404"), "{h}");

        let (h, b) = ask(&package, &console, &format!("HEAD {path} HTTP/1.1\r\n\r\n")).await;
        assert!(h.contains("Content-Length: 100000\r\n"), "{h}");
        assert!(b.is_empty());
    }

    #[test]
    fn package_holds_a_valid_manifest_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pd = dir.path().join("root/opt/tope/printerd/printerd");
        let wu = dir.path().join("root/opt/tope/web-ui");
        let p = build_package(dir.path(), &pd, &wu).unwrap();
        assert!(p.bytes.len() > ASSET_BYTES);
        assert_eq!(p.md5.len(), 32);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(p.bytes)).unwrap();
        let manifest: Value = {
            let mut f = z.by_name("manifest.json").unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f, &mut s).unwrap();
            serde_json::from_str(&s).unwrap()
        };
        assert_eq!(manifest["version"], NEW_VERSION);
        assert_eq!(manifest["modules"][0]["process_name"], "printerd");
        assert_eq!(manifest["modules"][0]["start_cmd"][0], pd.to_str().unwrap());
        let exe = z.by_name("modules/printerd/printerd").unwrap();
        assert_eq!(exe.unix_mode().map(|m| m & 0o777), Some(0o755));
    }

    #[test]
    fn progress_envelopes() {
        let ok = json!({"code":200,"msg":"success","data":{"stage":"downloading","progress":47,"message":"m","error":null}});
        let p = parse_progress(&ok).unwrap();
        assert_eq!(
            (p.stage.as_str(), p.progress, p.error),
            ("downloading", 47, None)
        );
        let failed = json!({"code":500,"msg":"MD5_MISMATCH: x","stage":"failed","progress":0,
            "data":{"stage":"failed","progress":0,"message":"m","error":"MD5_MISMATCH: x"}});
        let p = parse_progress(&failed).unwrap();
        assert_eq!(p.error.as_deref(), Some("MD5_MISMATCH: x"));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c"), "\"a\\\"b\\\\c\"");
        let t: toml::Table = toml::from_str(&format!("k = {}", toml_str("x\"y\\z"))).unwrap();
        assert_eq!(t["k"].as_str(), Some("x\"y\\z"));
    }
}
