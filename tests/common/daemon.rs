//! The real `tope-updater` binary, started with a config file in the test's directory: the
//! test-shaped face of the crate's kit (`tope_updater::kit::daemon`, shared with `demo`),
//! which writes the config (with the `toml` crate), builds the command line and awaits the
//! first `/progress`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tope_updater::kit::daemon as kit;
use tope_updater::kit::DaemonConfig;
use tope_updater::server::ServerTimeouts;

use super::http;
use super::{FakeDeviceApi, Nginx, Workspace};

pub const BIN: &str = env!("CARGO_BIN_EXE_tope-updater");
pub const API: &str = "/api/v1.0";

/// Config values the tests vary; everything else is fixed to the test's directories.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub allow_http: bool,
    pub stop_timeout_s: u64,
    /// `None`: a path that does not exist.
    pub ota_gui_path: Option<PathBuf>,
    /// Write `ca_file = <workspace>/ca.pem` (the nginx CA) when that file exists.
    pub use_ca_file: bool,
    /// More TOML, merged into the config (a key given here wins).
    pub extra_toml: String,
    /// The API's timeouts (`[server]`); `None`: the contract's 10 s / 60 s / 10 s.
    pub server_timeouts: Option<ServerTimeouts>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            allow_http: false,
            stop_timeout_s: 2,
            ota_gui_path: None,
            use_ca_file: true,
            extra_toml: String::new(),
            server_timeouts: None,
        }
    }
}

pub struct Daemon {
    child: Option<Child>,
    /// The executable started: the build's binary, or a copy of it (docs/API.md 9.4).
    bin: PathBuf,
    pub addr: SocketAddr,
    pub work_dir: PathBuf,
    pub config_path: PathBuf,
    out_dir: PathBuf,
    runs: u32,
    /// The first envelope /progress answered after the latest (re)start.
    pub first_progress: Option<Value>,
}

/// The config of a daemon of this workspace, as the kit writes it.
pub fn daemon_config(
    ws: &Workspace,
    api: &FakeDeviceApi,
    port: u16,
    o: &DaemonOptions,
) -> DaemonConfig {
    let mut c = DaemonConfig::new(
        ([127, 0, 0, 1], port).into(),
        &ws.work_dir(),
        &api.url(),
        vec![ws.root()],
    );
    c.ota_gui_path = o
        .ota_gui_path
        .clone()
        .unwrap_or_else(|| ws.path().join("no-such-ota-gui"));
    c.stop_timeout_s = o.stop_timeout_s;
    c.allow_http = o.allow_http;
    c.ca_file = (o.use_ca_file && ws.ca_file().exists()).then(|| ws.ca_file());
    match o.server_timeouts {
        Some(t) => c.with_server_timeouts(t),
        None => c,
    }
}

/// The TOML config for a daemon of this workspace (`extra_toml` merged in). Without
/// `server_timeouts` and without a table in `extra_toml` it holds no table, so more keys may
/// be appended to it.
pub fn config_text(ws: &Workspace, api: &FakeDeviceApi, port: u16, o: &DaemonOptions) -> String {
    daemon_config(ws, api, port, o)
        .to_toml(&o.extra_toml)
        .unwrap_or_else(|e| panic!("daemon config: {e}"))
}

/// Appends `serve --config <config_path>` to `cmd` (the binary itself, or a program that runs
/// the binary named as its last argument, such as strace), run from `out_dir` with stdout and
/// stderr into `<out_dir>/<stem>.stdout` and `.stderr`, without proxy variables (everything is
/// on loopback) and in a process group of its own.
pub fn serve_command<'a>(
    cmd: &'a mut Command,
    config_path: &Path,
    out_dir: &Path,
    stem: &str,
) -> &'a mut Command {
    let out = std::fs::File::create(out_dir.join(format!("{stem}.stdout"))).unwrap();
    let err = std::fs::File::create(out_dir.join(format!("{stem}.stderr"))).unwrap();
    // Programs the daemon starts are plain children here, also on a host where systemd runs
    // (a test must not leave transient units behind); tests of systemd-run name a fake.
    if !cmd.get_envs().any(|(k, _)| k == "TOPE_SYSTEMD_RUN") {
        cmd.env("TOPE_SYSTEMD_RUN", "");
    }
    kit::serve_command(cmd, config_path, out_dir, out, err)
}

/// Spawns the binary with `serve --config <path>`, output into `daemon-<run>.stdout` and
/// `.stderr` in `out_dir`.
pub fn spawn_raw(config_path: &Path, out_dir: &Path, run: u32) -> Child {
    serve_command(
        &mut Command::new(BIN),
        config_path,
        out_dir,
        &format!("daemon-{run}"),
    )
    .spawn()
    .expect("spawn tope-updater")
}

/// Writes `<workspace>/updater.toml` for a daemon on a free port; returns its path and the port.
pub fn write_config(ws: &Workspace, api: &FakeDeviceApi, opts: &DaemonOptions) -> (PathBuf, u16) {
    let port = super::free_port();
    let config_path = ws.path().join("updater.toml");
    std::fs::write(&config_path, config_text(ws, api, port, opts)).unwrap();
    (config_path, port)
}

impl Daemon {
    /// Writes the config and starts the daemon; returns once GET /progress answers.
    pub fn start(ws: &Workspace, api: &FakeDeviceApi, opts: DaemonOptions) -> Daemon {
        let (config_path, port) = write_config(ws, api, &opts);
        Daemon::start_with_config(&config_path, port, &ws.work_dir(), ws.path())
    }

    pub fn start_with_config(
        config_path: &Path,
        port: u16,
        work_dir: &Path,
        out_dir: &Path,
    ) -> Daemon {
        Daemon::start_binary(Path::new(BIN), config_path, port, work_dir, out_dir)
    }

    /// [`Daemon::start_with_config`] with another executable, e.g. a copy of the build's
    /// binary at the path a self-update replaces (docs/API.md 9.4).
    pub fn start_binary(
        bin: &Path,
        config_path: &Path,
        port: u16,
        work_dir: &Path,
        out_dir: &Path,
    ) -> Daemon {
        let mut d = Daemon {
            child: None,
            bin: bin.to_path_buf(),
            addr: ([127, 0, 0, 1], port).into(),
            work_dir: work_dir.to_path_buf(),
            config_path: config_path.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            runs: 0,
            first_progress: None,
        };
        d.spawn_and_wait();
        d
    }

    fn spawn_and_wait(&mut self) {
        self.spawn_under_and_wait(&[]);
    }

    /// Starts the daemon again, run by `wrapper` (a program and its arguments that runs the
    /// binary named as its last argument, such as `strace ... --`).
    pub fn restart_under(&mut self, wrapper: &[&str]) {
        assert!(self.child.is_none(), "restart_under() of a running daemon");
        self.spawn_under_and_wait(wrapper);
    }

    /// Starts the daemon again under `strace`, every `fsync`, `fdatasync` and `syncfs` taking
    /// `delay` longer (a slow SD card), the trace in `trace`. seccomp-bpf stops the daemon at
    /// the flushes only.
    pub fn restart_with_slow_flushes(&mut self, delay: Duration, trace: &Path) {
        let inject = format!(
            "inject=fsync,fdatasync,syncfs:delay_exit={}",
            delay.as_micros()
        );
        self.restart_under(&[
            "strace",
            "-f",
            "--seccomp-bpf",
            "-e",
            "trace=fsync,fdatasync,syncfs",
            "-e",
            &inject,
            "-o",
            trace.to_str().expect("utf-8 path"),
            "--",
        ]);
    }

    fn spawn_under_and_wait(&mut self, wrapper: &[&str]) {
        self.runs += 1;
        self.child = Some(match wrapper.split_first() {
            None => serve_command(
                &mut Command::new(&self.bin),
                &self.config_path,
                &self.out_dir,
                &format!("daemon-{}", self.runs),
            )
            .spawn()
            .expect("spawn tope-updater"),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                serve_command(
                    &mut cmd,
                    &self.config_path,
                    &self.out_dir,
                    &format!("daemon-{}", self.runs),
                )
                .spawn()
                .expect("spawn the wrapped tope-updater")
            }
        });
        let child = self.child.as_mut().expect("just spawned");
        match kit::wait_ready(self.addr, child, Duration::from_secs(30)) {
            Ok(first) => self.first_progress = Some(first),
            Err(e) => panic!("tope-updater: {e}:\n{}", self.output()),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// SIGKILL (a power cut, as far as the daemon can tell) and reap.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to `timeout`) for the exit status.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        super::procs::signal(c.id() as i32, rustix::process::Signal::TERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("tope-updater did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again with the same config and work_dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() of a running daemon");
        self.spawn_and_wait();
    }

    /// stdout, stderr of every run and the tail of the updater log.
    pub fn output(&self) -> String {
        let mut s = String::new();
        for run in 1..=self.runs {
            for kind in ["stdout", "stderr"] {
                let p = self.out_dir.join(format!("daemon-{run}.{kind}"));
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                s.push_str(&format!(
                    "--- daemon run {run} {kind} ---\n{}\n",
                    super::nginx::tail(&text, 60)
                ));
            }
        }
        let log =
            std::fs::read_to_string(self.work_dir.join("logs/updater.log")).unwrap_or_default();
        s.push_str(&format!(
            "--- logs/updater.log (tail) ---\n{}\n",
            super::nginx::tail(&log, 60)
        ));
        s
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> http::Response {
        let full = format!("{API}{path}");
        http::request(self.addr, method, &full, ct, body)
            .unwrap_or_else(|e| panic!("{method} {full}: {e}\n{}", self.output()))
    }

    /// POST a JSON value; returns (HTTP status, envelope).
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, Some("application/json"), body.to_string().as_bytes())
    }

    /// POST raw bytes with an optional content type; returns (HTTP status, envelope).
    pub fn post_raw(&self, path: &str, ct: Option<&str>, body: &[u8]) -> (u16, Value) {
        let r = self.request("POST", path, ct, body);
        (r.status, r.json())
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.request("GET", path, None, b"");
        (r.status, r.json())
    }

    /// The whole /progress envelope (asserting HTTP 200).
    pub fn progress(&self) -> Value {
        let (status, v) = self.get_json("/progress");
        assert_eq!(status, 200, "/progress HTTP status; body {v}");
        v
    }

    /// Polls /progress every 50 ms until `cond(envelope)` holds.
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.progress();
            if cond(&p) {
                return p;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last /progress: {p}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `data.stage == stage`; fails at once if the stage becomes `failed` instead
    /// (unless `failed` is what is awaited).
    pub fn wait_stage(&self, stage: &str, timeout: Duration) -> Value {
        let p = self.wait_for(&format!("stage {stage}"), timeout, |p| {
            let s = stage_of(p);
            s == stage || (s == "failed" && stage != "failed")
        });
        if stage_of(&p) != stage {
            panic!(
                "expected stage {stage}, the update failed: {p}\n{}",
                self.output()
            );
        }
        p
    }

    /// POST /download of `body`, asserting it is accepted (`downloading`).
    #[track_caller]
    pub fn post_download(&self, body: &Value) {
        assert_ok_status(
            &self.post_json("/download", body),
            "downloading",
            "/download",
        );
    }

    /// POST /update of `version`, asserting it is accepted (`installing`).
    #[track_caller]
    pub fn post_update(&self, version: &str) {
        assert_ok_status(
            &self.post_json("/update", &json!({ "version": version })),
            "installing",
            "/update",
        );
    }

    /// Serves `package` as `nginx`'s `name`, downloads it as `version` and waits (30 s) for
    /// `toInstall`; returns that /progress.
    pub fn download_package(
        &self,
        nginx: &Nginx,
        name: &str,
        version: &str,
        package: &[u8],
    ) -> Value {
        let url = nginx.put(name, package);
        self.post_download(&super::download_body(version, &url, name, package));
        self.wait_stage("toInstall", Duration::from_secs(30))
    }

    /// Waits (60 s) for the outcome of an installation: `success` or `failed`.
    pub fn wait_outcome(&self) -> Value {
        self.wait_for("success or failed", Duration::from_secs(60), |p| {
            matches!(stage_of(p).as_str(), "success" | "failed")
        })
    }

    /// `download_package`, then /update up to the outcome; returns the final /progress.
    pub fn install_package(
        &self,
        nginx: &Nginx,
        name: &str,
        version: &str,
        package: &[u8],
    ) -> Value {
        self.download_package(nginx, name, version, package);
        self.post_update(version);
        self.wait_outcome()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().expect("try_wait") {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The whole process group (serve_command makes one per start): under a wrapper such
            // as strace, killing the wrapper alone would leave the daemon running.
            if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

/// Every /progress stage, in the order an update goes through them (`failed` last).
pub const STAGES: [&str; 8] = [
    "idle",
    "downloading",
    "verifying",
    "toInstall",
    "installing",
    "rebooting",
    "success",
    "failed",
];

/// `data.stage` of a /progress envelope ("" when absent).
pub fn stage_of(p: &Value) -> String {
    p["data"]["stage"].as_str().unwrap_or("").to_string()
}

/// `data.progress` of a /progress envelope (-1 when absent).
pub fn progress_of(p: &Value) -> i64 {
    p["data"]["progress"].as_i64().unwrap_or(-1)
}

/// Checks an API error envelope: HTTP 200, `code`, `msg` starting with `<CODE>: `, data null.
pub fn check_error(answer: &(u16, Value), code: i64, error_code: &str) -> Result<(), String> {
    let (status, v) = answer;
    let msg = v["msg"].as_str().unwrap_or("");
    if *status != 200 {
        Err(format!("HTTP status {status}, not 200; body {v}"))
    } else if v["code"].as_i64() != Some(code) {
        Err(format!("envelope code is not {code}; body {v}"))
    } else if !msg.starts_with(&format!("{error_code}: ")) {
        Err(format!(
            "msg does not start with `{error_code}: `; body {v}"
        ))
    } else if !v.get("data").is_some_and(|d| d.is_null()) {
        Err(format!("data is not null; body {v}"))
    } else {
        Ok(())
    }
}

/// Asserts an API error envelope (see `check_error`).
#[track_caller]
pub fn assert_error(answer: &(u16, Value), code: i64, error_code: &str, context: &str) {
    if let Err(e) = check_error(answer, code, error_code) {
        panic!("{context}: {e}");
    }
}

/// Asserts a success envelope with `data.status == status`.
#[track_caller]
pub fn assert_ok_status(answer: &(u16, Value), status: &str, context: &str) {
    let (http_status, v) = answer;
    assert_eq!(*http_status, 200, "{context}: HTTP status; body {v}");
    assert_eq!(v["code"].as_i64(), Some(200), "{context}: code; body {v}");
    assert_eq!(
        v["msg"].as_str(),
        Some("success"),
        "{context}: msg; body {v}"
    );
    assert_eq!(
        v["data"]["status"].as_str(),
        Some(status),
        "{context}: data.status; body {v}"
    );
}

/// How many flushes a [`Daemon::restart_with_slow_flushes`] trace shows delayed; none is a
/// failure (strace's inject is not working, and nothing was tested).
pub fn delayed_flushes(trace: &Path) -> usize {
    let n = std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("(DELAYED)"))
        .count();
    assert!(n > 0, "no flush was delayed: is strace's inject working?");
    n
}

/// `tope-updater status --config <config> --json`.
pub fn status_json(config: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run tope-updater status");
    assert!(out.status.success(), "status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}
