//! A real goosebit (a hawkBit DDI fleet server in Python) for the fleet tests (docs/API.md 9.1):
//! installed by `scripts/goosebit.sh` into a cached virtual environment, started on a free
//! loopback port in a temporary directory of its own (settings, SQLite database, artifacts,
//! log), its database migrated with `aerich upgrade`, an admin user made through its `/setup`
//! form, and driven through its own HTTP API with the admin's bearer token.
//!
//! Without goosebit (the script fails: no network, no Python 3.11): under `CI` the test fails,
//! otherwise it is skipped with a message. A goosebit that is installed but does not start is
//! always a failure.
//!
//! What the harness relies on, read from goosebit 0.2.12's own code:
//! - settings: a YAML file named by `GOOSEBIT_SETTINGS` (keys `port`, `tenant`, `poll_time`,
//!   `db_uri`, `artifacts_dir`, `device_auth.enable`/`mode`, `track_device_ip`); `GOOSEBIT_*`
//!   environment variables override it, so the harness removes any it inherits;
//! - the schema: `aerich -c <pyproject.toml> upgrade`, whose `[tool.aerich]` names
//!   `goosebit.db.config.TORTOISE_CONF` and the migrations shipped in the package;
//! - the first user: `POST /setup` (form `username`, `password`, all permissions), then
//!   `POST /login` answers `{"access_token", "token_type": "bearer"}`;
//! - the DDI API under `/{tenant}/controller/v1/{controller_id}`; a device appears in the
//!   registry at its first poll; device auth (`device_auth`) reads
//!   `Authorization: TargetToken <t>`;
//! - software is uploaded as a SWU (goosebit reads `software.version` and
//!   `hardware-compatibility` from the first cpio member, `sw-description`) and put on a device
//!   by assigning it (`PATCH /api/v1/devices {"devices", "software": "<id>"}`), which goosebit
//!   refuses unless the software is compatible with the device's `hw_boardname`/`hw_revision`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};

/// How goosebit authenticates devices (`device_auth` in its settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAuth {
    /// `device_auth.enable: false`: any device may poll (goosebit's default).
    Off,
    /// `lax`: a device registers without a token; once a token is set for it (API), it must
    /// poll with `Authorization: TargetToken <token>`.
    Lax,
    /// `setup`: a device that polls with a `TargetToken` gets that token recorded.
    Setup,
    /// `strict`: only devices set up through the API, each with its token.
    Strict,
}

impl DeviceAuth {
    fn yaml(self) -> &'static str {
        match self {
            DeviceAuth::Off => "  enable: false\n",
            DeviceAuth::Lax => "  enable: true\n  mode: lax\n",
            DeviceAuth::Setup => "  enable: true\n  mode: setup\n",
            DeviceAuth::Strict => "  enable: true\n  mode: strict\n",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GoosebitOptions {
    pub device_auth: DeviceAuth,
    /// goosebit's `poll_time`: the `sleep` it states to registered devices (`HH:MM:SS`).
    pub poll_time: String,
}

impl Default for GoosebitOptions {
    fn default() -> Self {
        GoosebitOptions {
            device_auth: DeviceAuth::Off,
            poll_time: "00:00:05".to_string(),
        }
    }
}

/// A device as goosebit's API shows it (`GET /api/v1/devices` and `.../{id}/log`).
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub id: String,
    pub sw_version: Option<String>,
    /// `Unknown`, `Registered`, `Running`, `Error`, `Finished`.
    pub last_state: String,
    /// `Rollout`, `Assigned`, `Latest`, `Pinned`.
    pub update_mode: String,
    pub hw_model: Option<String>,
    pub hw_revision: Option<String>,
    pub progress: Option<i64>,
    /// Every feedback's `details`, one per line, since the action started.
    pub log: Option<String>,
    /// Seconds since its last poll.
    pub last_seen: Option<i64>,
    pub raw: serde_json::Value,
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the raw body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer (HTTP {}) is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Panics naming `what` unless the status is 2xx.
    pub fn ok(self, what: &str) -> Answer {
        assert!(
            (200..300).contains(&self.status),
            "{what}: HTTP {} {}",
            self.status,
            self.text()
        );
        self
    }
}

/// A synchronous HTTP client: the crate's `reqwest` (its `blocking` feature is not built) on a
/// current-thread runtime of its own, with the crate's TLS setup. One request at a time.
pub struct BlockingHttp {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl BlockingHttp {
    pub fn new() -> BlockingHttp {
        let tls = tope_updater::net::tls_config(None).expect("TLS setup");
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            // A fresh connection per request: uvicorn closes idle keep-alive connections after
            // 5 s, and a request sent on one as it closes fails with no answer.
            .pool_max_idle_per_host(0)
            .build()
            .expect("HTTP client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        BlockingHttp { rt, client }
    }

    /// Sends one request: `headers` as given, `body` when not empty.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            Ok(Answer {
                status,
                body: body.to_vec(),
            })
        })
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", url, headers, Vec::new())
            .unwrap_or_else(|e| panic!("GET {e}"))
    }

    /// `method` with a JSON body.
    pub fn send_json(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let mut h = headers.to_vec();
        h.push(("Content-Type", "application/json"));
        self.request(method, url, &h, body)
            .unwrap_or_else(|e| panic!("{method} {e}"))
    }
}

impl Default for BlockingHttp {
    fn default() -> Self {
        BlockingHttp::new()
    }
}

/// The goosebit virtual environment (`scripts/goosebit.sh`, run once per test process), or
/// `None` (after saying why) when it cannot be had outside CI.
pub fn venv() -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let got = VENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/goosebit.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(PathBuf::from(path))
    });
    match got {
        Ok(p) => Some(p.clone()),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("goosebit is needed by the fleet tests under CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping: goosebit not available ({e})");
            None
        }
    }
}

/// The migrations goosebit ships, for `aerich upgrade`.
fn migrations_dir(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let rd = std::fs::read_dir(&lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display()));
    for e in rd.flatten() {
        let p = e.path().join("site-packages/goosebit/db/migrations");
        if p.is_dir() {
            return p;
        }
    }
    panic!("no goosebit/db/migrations under {}", lib.display())
}

pub struct Goosebit {
    child: Child,
    /// Removed on drop unless the test failed (then kept, and its path printed).
    dir: Option<tempfile::TempDir>,
    pub port: u16,
    tenant: String,
    token: String,
    pub http: BlockingHttp,
}

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "tope-test-admin-pw";

impl Goosebit {
    /// Starts goosebit with default options; `None` (skip) only when it cannot be installed
    /// outside CI.
    pub fn start() -> Option<Goosebit> {
        Goosebit::start_with(GoosebitOptions::default())
    }

    pub fn start_with(options: GoosebitOptions) -> Option<Goosebit> {
        let venv = venv()?;
        let migrations = migrations_dir(&venv);
        // A port taken between `free_port` and uvicorn's bind makes goosebit exit: try again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("tope-goosebit-")
                .tempdir()
                .expect("tempdir");
            let d = dir.path().to_path_buf();
            std::fs::create_dir_all(d.join("artifacts")).unwrap();
            std::fs::write(
                d.join("pyproject.toml"),
                format!(
                    "[tool.aerich]\ntortoise_orm = \"goosebit.db.config.TORTOISE_CONF\"\n\
                     location = \"{}\"\nsrc_folder = \"./.\"\n",
                    migrations.display()
                ),
            )
            .unwrap();
            let port = super::free_port();
            write_settings(&d, port, &options);
            migrate(&venv, &d);
            let child = spawn_server(&venv, &d, port);
            let mut gb = Goosebit {
                child,
                dir: Some(dir),
                port,
                tenant: "DEFAULT".to_string(),
                token: String::new(),
                http: BlockingHttp::new(),
            };
            match gb.wait_listening() {
                Ok(()) => {
                    gb.create_admin();
                    return Some(gb);
                }
                Err(log) if log.contains("address already in use") => last_log = log,
                // The drop of `gb` while panicking keeps its directory and prints its log.
                Err(log) => panic!("goosebit did not start: {log}"),
            }
        }
        panic!("goosebit found no free port in 3 tries:\n{last_log}")
    }

    /// Waits (no fixed sleep) until goosebit answers HTTP on its port; `Err(log)` when it exited.
    fn wait_listening(&mut self) -> Result<(), String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let url = format!("{}/login", self.ddi_url());
        let mut exited = None;
        let ready = super::wait_until_or_none(Duration::from_secs(90), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                return None;
            }
            // Any HTTP answer (302 to /setup before the first user) means the app is up.
            self.http
                .request("GET", &url, &[], Vec::new())
                .ok()
                .map(|_| true)
        });
        match (ready, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => Err(format!("goosebit exited ({status}):\n{}", self.log())),
            _ => panic!(
                "goosebit did not answer on {addr} within 90 s:\n{}",
                self.log()
            ),
        }
    }

    /// The first user through goosebit's `/setup` form, then a login for the API token.
    fn create_admin(&mut self) {
        let form = format!("username={ADMIN_USER}&password={ADMIN_PASSWORD}");
        let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
        let setup = format!("{}/setup", self.ddi_url());
        self.http
            .request("POST", &setup, &form_type, form.clone().into_bytes())
            .unwrap_or_else(|e| panic!("POST /setup: {e}"))
            .ok("goosebit /setup");
        let login = format!("{}/login", self.ddi_url());
        let answer = self
            .http
            .request("POST", &login, &form_type, form.into_bytes())
            .unwrap_or_else(|e| panic!("POST /login: {e}"))
            .ok("goosebit /login");
        let token = answer.json()["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("/login answered no access_token: {}", answer.text()))
            .to_string();
        self.token = token;
    }

    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => unreachable!("the directory lives as long as the server"),
        }
    }

    /// What goosebit printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("goosebit.log")).unwrap_or_default()
    }

    /// The server's base URL: the `url` of the updater's `[fleet]` table.
    pub fn ddi_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The tenant goosebit serves (`[fleet] tenant`).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// `GET` here polls: `{url}/{tenant}/controller/v1/{controller_id}`.
    pub fn controller_url(&self, controller_id: &str) -> String {
        format!(
            "{}/{}/controller/v1/{controller_id}",
            self.ddi_url(),
            self.tenant
        )
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A request to goosebit's management API (`/api/v1/...`) as the admin.
    pub fn api(&self, method: &str, path: &str, json: Option<serde_json::Value>) -> Answer {
        let url = format!("{}/api/v1/{path}", self.ddi_url());
        let bearer = self.bearer();
        let auth = [("Authorization", bearer.as_str())];
        match json {
            Some(v) => self
                .http
                .send_json(method, &url, &auth, v.to_string().into_bytes()),
            None => self
                .http
                .request(method, &url, &auth, Vec::new())
                .unwrap_or_else(|e| panic!("{method} {e}")),
        }
    }

    /// Uploads a software file (a SWU, see [`swu_fixture`]) as a multipart form, as goosebit's
    /// UI does; returns goosebit's id of the software (also the DDI action id it offers).
    pub fn upload_software(&self, path: &Path) -> i64 {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        let boundary = "tope-goosebit-boundary-7d3f9a";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let bearer = self.bearer();
        let url = format!("{}/api/v1/software", self.ddi_url());
        let answer = self
            .http
            .request(
                "PUT",
                &url,
                &[
                    ("Authorization", bearer.as_str()),
                    ("Content-Type", content_type.as_str()),
                ],
                body,
            )
            .unwrap_or_else(|e| panic!("PUT {e}"))
            .ok("goosebit software upload");
        answer.json()["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("upload answered no id: {}", answer.text()))
    }

    /// Puts a software on a device (goosebit's `Assigned` update mode). The device must have
    /// polled (it exists) and be compatible (its `hw_boardname`/`hw_revision`).
    pub fn assign(&self, device_id: &str, software_id: i64) {
        self.api(
            "PATCH",
            "devices",
            Some(serde_json::json!({
                "devices": [device_id],
                "software": software_id.to_string(),
            })),
        )
        .ok("goosebit assign");
    }

    /// Sets the token a device must poll with (device auth `lax`/`strict`).
    pub fn set_device_token(&self, device_id: &str, token: &str) {
        self.api(
            "PUT",
            "devices",
            Some(serde_json::json!({ "devices": [device_id], "auth_token": token })),
        )
        .ok("goosebit device token");
    }

    /// The device as goosebit shows it, `None` when it is not in the registry. (goosebit's
    /// `GET /api/v1/devices/{id}` answers 500 once a software is assigned, so the list is read.)
    pub fn device(&self, device_id: &str) -> Option<DeviceView> {
        let list = self
            .api("GET", "devices", None)
            .ok("goosebit devices")
            .json();
        let raw = list["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("devices answer without a list: {list}"))
            .iter()
            .find(|d| d["id"] == device_id)?
            .clone();
        let log = self
            .api("GET", &format!("devices/{device_id}/log"), None)
            .ok("goosebit device log")
            .json();
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        Some(DeviceView {
            id: device_id.to_string(),
            sw_version: s(&raw["sw_version"]),
            last_state: s(&raw["last_state"]).unwrap_or_default(),
            update_mode: s(&raw["update_mode"]).unwrap_or_default(),
            hw_model: s(&raw["hardware"]["model"]),
            hw_revision: s(&raw["hardware"]["revision"]),
            progress: raw["progress"].as_i64(),
            log: s(&log["log"]),
            last_seen: raw["last_seen"].as_i64(),
            raw,
        })
    }
}

fn write_settings(d: &Path, port: u16, options: &GoosebitOptions) {
    let yaml = format!(
        "port: {port}\ntenant: DEFAULT\npoll_time: \"{poll}\"\n\
         db_uri: \"sqlite://{db}\"\nartifacts_dir: \"{artifacts}\"\n\
         track_device_ip: true\ndevice_auth:\n{auth}",
        poll = options.poll_time,
        db = d.join("db.sqlite3").display(),
        artifacts = d.join("artifacts").display(),
        auth = options.device_auth.yaml(),
    );
    std::fs::write(d.join("goosebit.yaml"), yaml).unwrap();
}

/// goosebit's environment: its settings file and nothing else of `GOOSEBIT_*`.
fn goosebit_command(program: &Path, d: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GOOSEBIT_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("GOOSEBIT_SETTINGS", d.join("goosebit.yaml"))
        .current_dir(d)
        .stdin(Stdio::null());
    cmd
}

fn migrate(venv: &Path, d: &Path) {
    let out = goosebit_command(&venv.join("bin/aerich"), d)
        .arg("-c")
        .arg(d.join("pyproject.toml"))
        .arg("upgrade")
        .output()
        .expect("run aerich");
    assert!(
        out.status.success() && d.join("db.sqlite3").exists(),
        "aerich upgrade failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_server(venv: &Path, d: &Path, port: u16) -> Child {
    let log = std::fs::File::create(d.join("goosebit.log")).unwrap();
    let mut cmd = goosebit_command(&venv.join("bin/python"), d);
    cmd.args(["-m", "uvicorn", "goosebit:app", "--host", "127.0.0.1"])
        .arg("--port")
        .arg(port.to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().expect("spawn goosebit")
}

impl Drop for Goosebit {
    fn drop(&mut self) {
        // The whole process group: uvicorn and anything it started.
        let _ = kill_process_group(Pid::from_child(&self.child), Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let log =
                    std::fs::read_to_string(dir.path().join("goosebit.log")).unwrap_or_default();
                let kept = dir.keep();
                eprintln!(
                    "--- goosebit log (kept in {}) ---\n{}",
                    kept.display(),
                    super::nginx::tail(&log, 60)
                );
            }
        }
    }
}

/// A SWU envelope for goosebit (docs/API.md 9.3), written by the updater's own
/// `swu::write_envelope_for`: `sw-description` with `software.version` and one image
/// `{ filename = image_name; type = "tope-package"; sha256 }`, followed by the image. With
/// `board` (`hw_boardname`, its `hardware-compatibility` revisions) the image stands in that
/// board's section, so goosebit makes the software compatible with that board.
pub fn swu_fixture(
    dir: &Path,
    swu_name: &str,
    version: &str,
    board: Option<(&str, &[&str])>,
    image_name: &str,
    image: &[u8],
) -> PathBuf {
    let image_path = dir.join(format!("{swu_name}.image"));
    std::fs::write(&image_path, image).unwrap();
    let meta = tope_updater::swu::EnvelopeMeta {
        version: version.to_string(),
        board: board.map(|(name, _)| name.to_string()),
        hardware_compatibility: board
            .map(|(_, revs)| revs.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default(),
    };
    let out_path = dir.join(swu_name);
    // The image member is named after `image_name` (`<stem>.zip`).
    tope_updater::swu::write_envelope_for(&out_path, &image_path, &meta, Path::new(image_name))
        .unwrap_or_else(|e| panic!("write {}: {e}", out_path.display()));
    let written = tope_updater::swu::open(&out_path).unwrap();
    assert_eq!(
        written.filename, image_name,
        "an image name the writer keeps"
    );
    std::fs::remove_file(&image_path).unwrap();
    out_path
}

/// The attributes a printer sends (`[fleet] attributes`).
pub fn printer_attributes(board: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("hw_boardname".to_string(), board.to_string()),
        ("hw_revision".to_string(), revision.to_string()),
    ])
}
