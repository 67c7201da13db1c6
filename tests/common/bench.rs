//! Tools for the benchmarks (tests/bench.rs): large packages written straight to disk, an nginx
//! with a configurable `limit_rate`, a keep-alive client for `/progress`, `/proc` memory
//! figures and small statistics.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tope_updater::checksum::{Algorithm, Hasher};
use tope_updater::kit::package::PackageWriter;
use tope_updater::kit::Noise;

use super::daemon::STAGES;
use super::nginx::{Nginx, NginxOptions};

pub const MIB: u64 = 1 << 20;

/// The environment variable `name` as a number, or `default` when unset or unparsable.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------ packages

/// A package written to disk by `write_package`.
#[derive(Debug, Clone)]
pub struct BenchPackage {
    pub path: PathBuf,
    pub size: u64,
    pub md5: String,
    pub version: String,
    /// Where the big file lands once installed, its length and MD5.
    pub big_dst: PathBuf,
    pub big_len: u64,
    pub big_md5: String,
}

impl BenchPackage {
    /// The body of POST /download for this package at `url`.
    pub fn download_body(&self, url: &str) -> Value {
        let name = url.rsplit('/').next().unwrap_or("bench.zip");
        json!({
            "version": self.version,
            "package_url": url,
            "package_name": name,
            "package_size": self.size,
            "package_md5": self.md5,
        })
    }
}

/// MD5 of a file, read in 1 MiB blocks.
pub fn md5_file_streaming(path: &Path) -> String {
    tope_updater::kit::md5_file(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes a package of about `total_mib` MiB to `path` without holding it in memory: module
/// `firmware` (a directory: one big incompressible file, stored, plus a config and a script)
/// and module `web-ui` (two small deflated files). Every `dst` lies under `root`.
pub fn write_package(path: &Path, total_mib: u64, version: &str, root: &Path) -> BenchPackage {
    assert!(total_mib >= 1, "package size must be at least 1 MiB");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let big_len = total_mib * MIB - 64 * 1024;
    let fw_dst = root.join("firmware");
    let ui_dst = root.join("web-ui");
    let manifest = json!({
        "version": version,
        "modules": [
            {"name": "firmware", "src": "modules/firmware",
             "dst": fw_dst.display().to_string(), "restart_order": 1},
            {"name": "web-ui", "src": "modules/web-ui",
             "dst": ui_dst.display().to_string(), "restart_order": 2},
        ],
    });
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut w = PackageWriter::new(file);
    w.start_file("manifest.json", 0o644, false, false).unwrap();
    w.write_all(serde_json::to_string_pretty(&manifest).unwrap().as_bytes())
        .unwrap();

    w.start_file(
        "modules/firmware/firmware.bin",
        0o644,
        true,
        big_len >= u32::MAX as u64,
    )
    .unwrap();
    let mut noise = Noise::new(total_mib ^ 0x7073);
    let mut h = Hasher::new(Algorithm::Md5);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = big_len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        noise.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).expect("write package");
        left -= n as u64;
    }
    let big_md5 = h.finalize().to_hex();

    let small: [(&str, u32, Vec<u8>); 4] = [
        (
            "modules/firmware/firmware.conf",
            0o644,
            format!("version = \"{version}\"\nspeed = 42\n").into_bytes(),
        ),
        (
            "modules/firmware/bin/run.sh",
            0o755,
            b"#!/bin/sh\nexec ./firmware.bin \"$@\"\n".to_vec(),
        ),
        (
            "modules/web-ui/index.html",
            0o644,
            b"<!doctype html><title>printer</title><script src=app.js></script>\n".to_vec(),
        ),
        (
            "modules/web-ui/app.js",
            0o644,
            "console.log('printer ui');\n".repeat(200).into_bytes(),
        ),
    ];
    for (name, mode, data) in small {
        w.start_file(name, mode, false, false).unwrap();
        w.write_all(&data).unwrap();
    }
    let file = w.finish().expect("finish zip");
    file.sync_all().ok();
    drop(file);

    let size = std::fs::metadata(path).unwrap().len();
    BenchPackage {
        path: path.to_path_buf(),
        size,
        md5: md5_file_streaming(path),
        version: version.to_string(),
        big_dst: fw_dst.join("firmware.bin"),
        big_len,
        big_md5,
    }
}

// ------------------------------------------------------------------ nginx

/// nginx for the benchmarks (quiet: no access log), its CA written to `ca_out`: everything at
/// full speed, except under `/throttled/`, limited to `throttled_rate` bytes per second.
pub fn start_nginx(dir: &Path, ca_out: &Path, throttled_rate: u64) -> Option<Nginx> {
    Nginx::start_with(
        dir,
        ca_out,
        NginxOptions {
            throttled_rate: Some(throttled_rate),
            quiet: true,
        },
    )
}

// ------------------------------------------------------------------ /proc

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmHWM`, `VmRSS`), in KiB.
pub fn proc_status_kib(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Pins the calling thread to one CPU with `taskset` (when the machine has more than one and
/// taskset is installed). Returns the CPU, or `None` when the thread was left unpinned.
pub fn pin_current_thread(cpu: usize) -> Option<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 || cpu >= cpus {
        return None;
    }
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    let tid = link.file_name()?.to_str()?.to_string();
    let ok = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(cpu)
}

/// The CPU the load generators are pinned to: `BENCH_LOAD_CPU` (`none` to leave them free),
/// by default the last one.
pub fn load_cpu() -> Option<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match std::env::var("BENCH_LOAD_CPU") {
        Ok(v) if v.trim() == "none" => None,
        Ok(v) => v.trim().parse().ok(),
        Err(_) => (cpus >= 2).then_some(cpus - 1),
    }
}

// ------------------------------------------------------------------ HTTP keep-alive client

/// One persistent HTTP/1.1 connection for GET requests (the way ota-gui's HTTP library polls).
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections opened so far.
    pub connects: u32,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
            connects: 0,
        }
    }

    /// GET `path`; returns (HTTP status, body). On any error the connection is dropped (the
    /// next call opens a new one).
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            self.stream = Some(s);
            self.connects += 1;
        }
        let r = self.exchange(path);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let stream = self.stream.as_mut().unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n\r\n",
            self.addr
        );
        stream.write_all(req.as_bytes())?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let (head_end, status, len, close) = loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| invalid("headers not UTF-8"))?;
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| invalid("bad status line"))?;
                let mut len = None;
                let mut close = false;
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse::<usize>().ok();
                        } else if k.eq_ignore_ascii_case("connection")
                            && v.trim().eq_ignore_ascii_case("close")
                        {
                            close = true;
                        }
                    }
                }
                let len = len.ok_or_else(|| invalid("no Content-Length"))?;
                break (end + 4, status, len, close);
            }
        };
        while self.buf.len() < head_end + len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(invalid("body cut short"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// What one `/progress` answer said.
#[derive(Debug, Clone)]
pub struct ProgressView {
    pub stage: String,
    pub progress: i64,
    pub message: String,
    pub bytes_downloaded: u64,
    pub bytes_total: u64,
}

/// Checks a `/progress` answer is a valid success envelope (HTTP 200, `code` 200, `msg`
/// `success`, `data` with a known stage, progress 0-100, a message and a null error).
pub fn check_progress(status: u16, body: &[u8]) -> Result<ProgressView, String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status != 200 {
        return Err(format!("HTTP {status}: {}", text()));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", text()))?;
    let d = &v["data"];
    let stage = d["stage"].as_str().unwrap_or("");
    let progress = d["progress"].as_i64().unwrap_or(-1);
    if v["code"].as_i64() != Some(200)
        || v["msg"].as_str() != Some("success")
        || !STAGES.contains(&stage)
        || stage == "failed"
        || !(0..=100).contains(&progress)
        || !d["message"].is_string()
        || !d["error"].is_null()
    {
        return Err(format!("not a valid success envelope: {v}"));
    }
    Ok(ProgressView {
        stage: stage.to_string(),
        progress,
        message: d["message"].as_str().unwrap_or("").to_string(),
        bytes_downloaded: d["bytes_downloaded"].as_u64().unwrap_or(0),
        bytes_total: d["bytes_total"].as_u64().unwrap_or(0),
    })
}

// ------------------------------------------------------------------ statistics

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median_f64(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 50.0)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `count, p50, p99, max` of latencies, as one line fragment.
pub fn latency_summary(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no requests".to_string();
    }
    samples.sort_unstable();
    format!(
        "{} requests, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        samples.len(),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(percentile(samples, 99.9)),
        ms(*samples.last().unwrap()),
    )
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// CPU seconds (user + system) of process `pid`, all its threads; for `None`, of this
/// process's children waited for so far. Both to the nanosecond or microsecond: `/proc/<pid>/stat`
/// counts in 10 ms ticks, too coarse to compare a download of a few seconds at a capped speed
/// with curl's.
pub fn cpu_secs(pid: Option<i32>) -> f64 {
    match pid {
        Some(p) => process_cpu_secs(p),
        None => children_cpu_secs(),
    }
}

/// The CPU-time clock of another process (`clock_getcpuclockid`), read with `clock_gettime`.
fn process_cpu_secs(pid: i32) -> f64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid, writable clockid_t for the call's duration.
    let rc = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    assert_eq!(rc, 0, "clock_getcpuclockid({pid}): error {rc}");
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(
        rc,
        0,
        "clock_gettime(CPU clock of {pid}): {}",
        std::io::Error::last_os_error()
    );
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds (user + system) of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// `getrusage(RUSAGE_CHILDREN)`: user + system time of the children waited for.
fn children_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data; all-zero is a valid value that the call overwrites.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call's duration.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
