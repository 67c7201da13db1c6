//! A real nginx (Range, If-Range, ETag, limit_rate) serving packages over HTTPS on loopback,
//! with a certificate from a CA generated for the test.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// Bytes per second allowed under `/slow/`.
pub const SLOW_RATE: u64 = 512 * 1024;

/// What may differ between the package servers of the tests.
#[derive(Debug, Clone, Default)]
pub struct NginxOptions {
    /// Files under `/throttled/` are served at this many bytes per second.
    pub throttled_rate: Option<u64>,
    /// No access log and only warnings in the error log (benchmarks: no I/O besides the
    /// downloads being measured).
    pub quiet: bool,
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    /// The CA of the server's certificate.
    pub ca_file: PathBuf,
}

/// One line of the access log.
#[derive(Debug, Clone)]
pub struct AccessLine {
    pub status: u16,
    pub body_bytes_sent: u64,
    /// The `Range` request header, if any.
    pub range: Option<String>,
    /// The `If-Range` request header, if any.
    pub if_range: Option<String>,
    /// The request line, e.g. `GET /pkg.zip HTTP/1.1`.
    pub request: String,
}

impl AccessLine {
    /// The start offset N of a `Range: bytes=N-...` header.
    pub fn range_start(&self) -> Option<u64> {
        let r = self.range.as_deref()?;
        let spec = r.strip_prefix("bytes=")?;
        spec.split('-').next()?.trim().parse().ok()
    }

    pub fn path(&self) -> &str {
        self.request.split(' ').nth(1).unwrap_or("")
    }
}

/// A fresh CA (written to `ca_out`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key` in `dir`), from the kit.
pub fn write_tls_material(dir: &Path, ca_out: &Path) -> (PathBuf, PathBuf) {
    let tls = tope_updater::kit::Certificates::generate("test").expect("generate certificates");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, &tls.cert_pem).unwrap();
    std::fs::write(&key_path, &tls.key_pem).unwrap();
    std::fs::write(ca_out, &tls.ca_pem).unwrap();
    (cert_path, key_path)
}

impl Nginx {
    /// The process serving (nginx runs without a master process here).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Starts nginx in `dir`. Without nginx: panics under CI, else prints why and gives `None`.
    pub fn start(dir: &Path, ca_out: &Path) -> Option<Nginx> {
        Nginx::start_with(dir, ca_out, NginxOptions::default())
    }

    /// `start` with `options`.
    pub fn start_with(dir: &Path, ca_out: &Path, options: NginxOptions) -> Option<Nginx> {
        if !Path::new(NGINX_BIN).exists() {
            if std::env::var_os("CI").is_some() {
                panic!("{NGINX_BIN} not found: CI must install nginx-light (see .ci/run)");
            }
            eprintln!("skipping: nginx not installed (run scripts/test.sh)");
            return None;
        }
        std::fs::create_dir_all(dir.join("www/slow")).unwrap();
        std::fs::create_dir_all(dir.join("temp")).unwrap();
        let (cert, key) = write_tls_material(dir, ca_out);
        let port = super::free_port();
        let d = dir.display();
        let (error_level, access_log) = if options.quiet {
            ("warn", "access_log off;".to_string())
        } else {
            ("info", format!("access_log {d}/access.log ranges;"))
        };
        let throttled = match options.throttled_rate {
            Some(rate) => {
                std::fs::create_dir_all(dir.join("www/throttled")).unwrap();
                format!("location /throttled/ {{\n            limit_rate {rate};\n        }}")
            }
            None => String::new(),
        };
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log {error_level};
events {{ worker_connections 128; }}
http {{
    log_format ranges '$status|$body_bytes_sent|$http_range|$http_if_range|$request';
    {access_log}
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    default_type application/octet-stream;
    keepalive_timeout 5s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {d}/www;
        location /slow/ {{
            limit_rate {SLOW_RATE};
        }}
        location /norange/ {{
            max_ranges 0;
        }}
        {throttled}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.join("nginx.out")).unwrap();
        let mut cmd = Command::new(NGINX_BIN);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            port,
            dir: dir.to_path_buf(),
            ca_file: ca_out.to_path_buf(),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited ({status}) at start:\n{}\n{}",
                    std::fs::read_to_string(dir.join("nginx.out")).unwrap_or_default(),
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                panic!("nginx did not listen on {addr} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }

    /// Writes `bytes` as `www/<rel>` and returns its https URL.
    pub fn put(&self, rel: &str, bytes: &[u8]) -> String {
        let p = self.www(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        self.url(rel)
    }

    pub fn www(&self, rel: &str) -> PathBuf {
        self.dir.join("www").join(rel)
    }

    pub fn url(&self, rel: &str) -> String {
        format!("https://127.0.0.1:{}/{}", self.port, rel)
    }

    /// Makes the file `www/<from>` also available as `www/<to>` (a hard link); returns its URL.
    pub fn link(&self, from: &str, to: &str) -> String {
        let dst = self.www(to);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&dst);
        std::fs::hard_link(self.www(from), &dst).expect("hard link in www");
        self.url(to)
    }

    /// The access log so far (lines whose request path is `/<rel>` when `rel` is given).
    pub fn access_log(&self, rel: Option<&str>) -> Vec<AccessLine> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let opt = |s: &str| (s != "-" && !s.is_empty()).then(|| s.to_string());
        text.lines()
            .filter_map(|l| {
                let mut f = l.splitn(5, '|');
                Some(AccessLine {
                    status: f.next()?.parse().ok()?,
                    body_bytes_sent: f.next()?.parse().ok()?,
                    range: opt(f.next()?),
                    if_range: opt(f.next()?),
                    request: f.next()?.to_string(),
                })
            })
            .filter(|a| rel.is_none_or(|r| a.path() == format!("/{r}")))
            .collect()
    }

    pub fn raw_access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- nginx access log ---\n{}\n--- nginx error log (tail) ---\n{}",
                self.raw_access_log(),
                tail(
                    &std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default(),
                    30
                )
            );
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
