//! Benchmarks, run as tests against the real daemon, nginx over HTTPS on loopback and a fake
//! device-api. Each prints its figures as `bench: ...` lines; none asserts a timing (timings
//! depend on the machine). What is asserted: the peak resident memory stays below the
//! 50 MiB ceiling, every download completes with the right MD5, and `/progress` answers every
//! request with a valid envelope while under load.
//!
//! Short by default (a 20 MiB package, a few seconds per benchmark), so CI runs them with the
//! other tests. The long run (scripts/bench.sh):
//! `BENCH_PACKAGE_MB=500 cargo test --release --test bench -- --nocapture --test-threads=1`.
//!
//! Environment: `BENCH_PACKAGE_MB` (package size, MiB, default 20), `BENCH_CONNS` (concurrent
//! keep-alive `/progress` clients, default 2), `BENCH_REPEAT` (runs of the throughput
//! comparison, default 3), `BENCH_LINK_RATES` (the capped speeds of that comparison, MiB/s,
//! default `1,10`), `BENCH_LINK_SECS` (how long a capped run lasts at most, default 3: its
//! package is the smaller of `BENCH_PACKAGE_MB` and rate x seconds), `BENCH_LOAD_CPU` (the CPU
//! the load generators are pinned to, default the last one; `none` leaves them unpinned),
//! `BENCH_DELTA_MB` (the delta download benchmark's package, MiB, default 8).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::bench::*;
use common::daemon::{assert_ok_status, STAGES};
use common::*;
use serde_json::json;

const VERSION: &str = "3.1.4";
/// The ceiling for the daemon's peak resident memory over a download plus install (the aim
/// is under 10 MiB, flat in the package size).
const RSS_CEILING_KIB: u64 = 50 * 1024;
/// Package size above which the memory benchmark also runs at this size, to show flatness.
const FLAT_REFERENCE_MB: u64 = 50;
const PROGRESS: &str = "/api/v1.0/progress";

/// The benchmarks run one at a time even when the harness runs tests in parallel: each one
/// would otherwise disturb the others' figures.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn package_mb() -> u64 {
    env_u64("BENCH_PACKAGE_MB", 20).max(1)
}

/// How long the throttled downloads last.
fn throttled_secs(mb: u64) -> u64 {
    if mb > FLAT_REFERENCE_MB {
        10
    } else {
        3
    }
}

/// Generous: a debug build hashes and deploys much more slowly than a release build.
fn stage_timeout(mb: u64) -> Duration {
    Duration::from_secs(120 + 2 * mb)
}

fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    }
}

fn hwm_kib(pid: i32) -> u64 {
    proc_status_kib(pid, "VmHWM").expect("VmHWM of the daemon")
}

/// What a download benchmark runs against (dropped in this order: the daemon first).
struct Rig {
    d: Daemon,
    api: FakeDeviceApi,
    pkg: BenchPackage,
    nginx: Nginx,
    _ws: Workspace,
}

impl Rig {
    /// nginx (`/throttled/` at `rate` bytes per second) serving a package of `mb` MiB as
    /// `rel`, a device-api and a daemon.
    fn start(rel: &str, mb: u64, rate: u64) -> Option<Rig> {
        let ws = Workspace::new();
        let nginx = start_nginx(&ws.path().join("nginx"), &ws.ca_file(), rate)?;
        let api = FakeDeviceApi::start();
        let pkg = write_package(&nginx.www(rel), mb, VERSION, &ws.root());
        let d = Daemon::start(&ws, &api, DaemonOptions::default());
        Some(Rig {
            d,
            api,
            pkg,
            nginx,
            _ws: ws,
        })
    }

    /// POST /download of the package from `url` (`what` in a failure message), then waits
    /// up to `timeout` for `toInstall`.
    fn download(&self, url: &str, what: &str, timeout: Duration) {
        let answer = self.d.post_json("/download", &self.pkg.download_body(url));
        assert_ok_status(&answer, "downloading", what);
        self.d.wait_stage("toInstall", timeout);
    }

    /// POST /update, then waits for `success`; returns when /update was answered.
    fn install(&self, mb: u64) -> Instant {
        let answer = self.d.post_json("/update", &json!({"version": VERSION}));
        let answered = Instant::now();
        assert_ok_status(&answer, "installing", "POST /update");
        self.d.wait_stage("success", stage_timeout(mb));
        answered
    }
}

/// How long a throttled download of `mb` MiB lasts and its rate (bytes per second).
fn throttling(mb: u64) -> (u64, u64) {
    let secs = throttled_secs(mb);
    (secs, mb * MIB / secs)
}

// ------------------------------------------------------------------ 1. memory

struct MemoryRun {
    package_bytes: u64,
    idle_kib: u64,
    after_download_kib: u64,
    peak_kib: u64,
    rss_end_kib: u64,
}

/// Download and install a package of `mb` MiB; the daemon's VmHWM after start, after the
/// download and at the end.
fn memory_run(mb: u64) -> Option<MemoryRun> {
    let rig = Rig::start("pkg/bench.zip", mb, MIB)?;
    let pkg = &rig.pkg;
    let pid = rig.d.pid();
    let idle_kib = hwm_kib(pid);

    let url = rig.nginx.url("pkg/bench.zip");
    rig.download(&url, "POST /download", stage_timeout(mb));
    let after_download_kib = hwm_kib(pid);
    rig.install(mb);
    let peak_kib = hwm_kib(pid);
    let rss_end_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);

    // toInstall means the daemon's MD5 matched; the installed file is checked here too.
    let len = std::fs::metadata(&pkg.big_dst)
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(len, pkg.big_len, "size of the installed big file");
    assert_eq!(
        md5_file_streaming(&pkg.big_dst),
        pkg.big_md5,
        "MD5 of the installed big file"
    );
    Some(MemoryRun {
        package_bytes: pkg.size,
        idle_kib,
        after_download_kib,
        peak_kib,
        rss_end_kib,
    })
}

/// Peak resident memory (VmHWM) of the daemon over a whole download + install; with a large
/// `BENCH_PACKAGE_MB` also at 50 MiB, to show it does not grow with the package.
#[test]
fn bench_memory_peak_rss_download_and_install() {
    let _serial = serial();
    let mb = package_mb();
    let sizes = if mb > FLAT_REFERENCE_MB {
        vec![FLAT_REFERENCE_MB, mb]
    } else {
        vec![mb]
    };
    let mut peaks = Vec::new();
    for size in sizes {
        let Some(r) = memory_run(size) else { return };
        println!(
            "bench: peak RSS {:.1} MiB (VmHWM) for a {:.0} MiB package, download + install \
             (idle after start {:.1} MiB, after the download {:.1} MiB, VmRSS at the end {:.1} MiB; {})",
            r.peak_kib as f64 / 1024.0,
            mib(r.package_bytes),
            r.idle_kib as f64 / 1024.0,
            r.after_download_kib as f64 / 1024.0,
            r.rss_end_kib as f64 / 1024.0,
            build_kind(),
        );
        assert!(
            r.peak_kib < RSS_CEILING_KIB,
            "peak RSS {} KiB for a {size} MiB package is above the {} KiB ceiling",
            r.peak_kib,
            RSS_CEILING_KIB
        );
        peaks.push((size, r.peak_kib));
    }
    if let [(small, a), (big, b)] = peaks[..] {
        println!(
            "bench: peak RSS flatness: {small} MiB -> {:.1} MiB, {big} MiB -> {:.1} MiB ({:+.1} MiB)",
            a as f64 / 1024.0,
            b as f64 / 1024.0,
            (b as f64 - a as f64) / 1024.0
        );
    }
}

// ------------------------------------------------------------------ 2. /progress under load

const PHASE_IDLE: usize = 0;
const PHASE_THROTTLED: usize = 1;
const PHASE_FULL_SPEED: usize = 2;
const PHASE_INSTALL: usize = 3;

struct HammerResult {
    /// (phase, latency) of every valid answer.
    samples: Vec<(usize, Duration)>,
    errors: Vec<String>,
    pinned: Option<usize>,
}

/// Closed-loop `/progress` clients on keep-alive connections, until `stop`.
fn hammer(
    addr: std::net::SocketAddr,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HammerResult> {
    std::thread::spawn(move || {
        let pinned = load_cpu().and_then(pin_current_thread);
        let mut client = KeepAlive::new(addr);
        let mut samples = Vec::with_capacity(1 << 16);
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let ph = phase.load(Ordering::Relaxed);
            let t = Instant::now();
            let answer = client.get(PROGRESS);
            let latency = t.elapsed();
            match answer {
                Ok((status, body)) => match check_progress(status, &body) {
                    Ok(_) => samples.push((ph, latency)),
                    Err(e) => errors.push(e),
                },
                Err(e) => errors.push(format!("request failed: {e}")),
            }
        }
        HammerResult {
            samples,
            errors,
            pinned,
        }
    })
}

/// GET /progress latency while the daemon downloads (throttled, then at full speed),
/// verifies and installs, with `BENCH_CONNS` clients asking as fast as they can.
#[test]
fn bench_progress_latency_under_load() {
    let _serial = serial();
    let mb = package_mb();
    let (secs, rate) = throttling(mb);
    let Some(rig) = Rig::start("pkg/load.zip", mb, rate) else {
        return;
    };
    let (d, pkg) = (&rig.d, &rig.pkg);
    let full_url = rig.nginx.url("pkg/load.zip");
    let slow_url = rig.nginx.link("pkg/load.zip", "throttled/load-slow.zip");

    let conns = env_u64("BENCH_CONNS", 2).max(1) as usize;
    let phase = Arc::new(AtomicUsize::new(PHASE_IDLE));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..conns)
        .map(|_| hammer(d.addr, phase.clone(), stop.clone()))
        .collect();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::sleep(Duration::from_millis(300));
        phase.store(PHASE_THROTTLED, Ordering::SeqCst);
        rig.download(
            &slow_url,
            "POST /download (throttled)",
            stage_timeout(mb) + Duration::from_secs(secs),
        );

        phase.store(PHASE_FULL_SPEED, Ordering::SeqCst);
        rig.download(&full_url, "POST /download (full speed)", stage_timeout(mb));

        phase.store(PHASE_INSTALL, Ordering::SeqCst);
        rig.install(mb);
    }));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<HammerResult> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }

    let pinned = match results[0].pinned {
        Some(cpu) => format!("pinned to CPU {cpu}"),
        None => "not pinned".to_string(),
    };
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.errors).collect();
    let all: Vec<(usize, Duration)> = results.iter().flat_map(|r| r.samples.clone()).collect();
    let of_phase = |p: Option<usize>| -> Vec<Duration> {
        all.iter()
            .filter(|(ph, _)| p.is_none_or(|p| *ph == p))
            .map(|(_, l)| *l)
            .collect()
    };
    let label = [
        (
            Some(PHASE_THROTTLED),
            format!(
                "throttled download ({:.1} MiB/s, ~{secs} s) + verification",
                mib(rate)
            ),
        ),
        (
            Some(PHASE_FULL_SPEED),
            "full-speed download + verification".to_string(),
        ),
        (Some(PHASE_INSTALL), "installation".to_string()),
        (None, "whole run".to_string()),
    ];
    println!(
        "bench: GET /progress under load: {conns} keep-alive clients asking back to back ({pinned}), \
         {:.0} MiB package, {}",
        mib(pkg.size),
        build_kind()
    );
    for (p, name) in label {
        println!(
            "bench: /progress latency, {name}: {}",
            latency_summary(&mut of_phase(p))
        );
    }
    assert!(
        errors.is_empty(),
        "{} of the /progress answers under load were not valid envelopes, e.g. {}",
        errors.len(),
        errors[0]
    );
    assert!(!all.is_empty(), "no /progress answer recorded");
    let md5 = md5_file_streaming(&pkg.big_dst);
    assert_eq!(md5, pkg.big_md5, "MD5 of the installed big file");
}

// ------------------------------------------------------------------ 3. callbacks

/// One `/progress` observation: when its answer arrived and what it said.
struct Seen {
    at: Instant,
    view: ProgressView,
}

fn stage_rank(s: &str) -> usize {
    STAGES.iter().position(|x| *x == s).unwrap_or(usize::MAX)
}

fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

/// Delay between a change becoming visible on `/progress` (polled every 2 ms) and the
/// callback about it arriving at device-api; plus `/update` -> `installing` callback and
/// last downloaded byte -> `toInstall` callback.
#[test]
fn bench_callback_latency() {
    let _serial = serial();
    let mb = package_mb();
    let (secs, rate) = throttling(mb);
    let Some(rig) = Rig::start("pkg/cb.zip", mb, rate) else {
        return;
    };
    let (d, api, pkg) = (&rig.d, &rig.api, &rig.pkg);
    let url = rig.nginx.link("pkg/cb.zip", "throttled/cb.zip");

    const POLL_EVERY: Duration = Duration::from_millis(2);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let addr = d.addr;
        std::thread::spawn(move || {
            let mut client = KeepAlive::new(addr);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok((status, body)) = client.get(PROGRESS) {
                    if let Ok(view) = check_progress(status, &body) {
                        seen.push(Seen {
                            at: Instant::now(),
                            view,
                        });
                    }
                }
                std::thread::sleep(POLL_EVERY);
            }
            seen
        })
    };
    let poll_start = Instant::now();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::sleep(Duration::from_millis(100));
        rig.download(
            &url,
            "POST /download",
            stage_timeout(mb) + Duration::from_secs(secs),
        );
        let update_answered = rig.install(mb);
        api.wait_for_report("success", Duration::from_secs(10), |b| {
            b["stage"] == "success"
        });
        std::thread::sleep(Duration::from_millis(100));
        update_answered
    }));
    stop.store(true, Ordering::SeqCst);
    let seen = poller.join().unwrap();
    let update_answered = match run {
        Ok(t) => t,
        Err(panic) => std::panic::resume_unwind(panic),
    };

    let reports: Vec<_> = api
        .reports()
        .into_iter()
        .filter(|r| r.at > poll_start && r.body["stage"] != "idle")
        .collect();
    let report_at = |stage: &str| {
        reports
            .iter()
            .find(|r| r.body["stage"] == stage)
            .map(|r| r.at)
            .unwrap_or_else(|| panic!("no `{stage}` callback arrived"))
    };
    let first_seen = |f: &dyn Fn(&ProgressView) -> bool| seen.iter().find(|s| f(&s.view));

    // Every callback against the first poll that showed its stage and progress.
    let mut delays = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    let mut unobserved = 0;
    for r in &reports {
        let stage = r.body["stage"].as_str().unwrap_or("").to_string();
        let progress = r.body["progress"].as_i64().unwrap_or(0);
        let message = r.body["message"].as_str().unwrap_or("");
        // A download step is pushed when the progress reaches it (the message moves with every
        // chunk); any other report when its stage, progress and message appear together.
        let shows = |v: &ProgressView| {
            v.stage == stage
                && if stage == "downloading" {
                    v.progress >= progress
                } else {
                    v.progress == progress && v.message == message
                }
        };
        match first_seen(&shows) {
            Some(s) => {
                let delay = signed_ms(r.at, s.at);
                delays.push(delay);
                if worst.as_ref().is_none_or(|(w, _)| delay > *w) {
                    let what = format!(
                        "{stage} {progress}% `{}`",
                        r.body["message"].as_str().unwrap_or("")
                    );
                    worst = Some((delay, what));
                }
            }
            None => unobserved += 1,
        }
    }
    let steps = reports
        .iter()
        .filter(|r| r.body["stage"] == "downloading")
        .count();

    let installing_cb = report_at("installing");
    let to_install_cb = report_at("toInstall");
    let success_cb = report_at("success");
    let last_byte = first_seen(&|v| {
        v.bytes_total > 0
            && v.bytes_downloaded == v.bytes_total
            && stage_rank(&v.stage) >= stage_rank("downloading")
    })
    .expect("a /progress answer with every byte downloaded");
    let to_install_seen =
        first_seen(&|v| v.stage == "toInstall").expect("toInstall seen on /progress");
    let success_seen = first_seen(&|v| v.stage == "success").expect("success seen on /progress");

    println!(
        "bench: callbacks: {} received ({steps} during the download), {:.0} MiB package \
         throttled to {:.1} MiB/s, /progress polled every {} ms; {}",
        reports.len(),
        mib(pkg.size),
        mib(rate),
        POLL_EVERY.as_millis(),
        build_kind()
    );
    assert!(!delays.is_empty(), "no callback matched a /progress change");
    let (max, worst) = worst.unwrap();
    println!(
        "bench: callback after the change was visible on /progress: {} matched, median {:.2} ms, \
         max {max:.2} ms (the {worst} report; {unobserved} changes too brief for the poller to see)",
        delays.len(),
        median_f64(&delays),
    );
    println!(
        "bench: POST /update answered -> first `installing` callback: {:.2} ms",
        signed_ms(installing_cb, update_answered)
    );
    println!(
        "bench: last byte downloaded (seen on /progress) -> `toInstall` callback: {:.2} ms \
         (includes the final fsync and the verification); `toInstall` seen -> its callback: {:.2} ms",
        signed_ms(to_install_cb, last_byte.at),
        signed_ms(to_install_cb, to_install_seen.at)
    );
    println!(
        "bench: `success` seen on /progress -> its callback: {:.2} ms",
        signed_ms(success_cb, success_seen.at)
    );
    assert_eq!(
        md5_file_streaming(&pkg.big_dst),
        pkg.big_md5,
        "MD5 of the installed big file"
    );
}

// ------------------------------------------------------------------ 4. throughput vs curl

fn sync_all_disks() {
    let _ = Command::new("sync").status();
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let took = t.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    took
}

fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("curl not found: CI must install it (see scripts/test.sh)");
    }
    ok
}

struct CurlRun {
    curl: Duration,
    md5sum: Duration,
    fdatasync: Duration,
    /// CPU seconds of curl, of md5sum and of `sync -d` (the file's writeback, which the
    /// daemon's checkpoints do in its own threads and curl leaves to the kernel's flusher).
    curl_cpu: f64,
    md5sum_cpu: f64,
    sync_cpu: f64,
}

/// `curl -o` into `dir`, then `md5sum` and `sync -d` of the file, each timed.
fn curl_run(url: &str, ca: &Path, dir: &Path, expect_md5: &str) -> CurlRun {
    let out = dir.join("curl.out");
    let cpu0 = cpu_secs(None);
    let curl = timed(
        Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(ca)
            .arg("-o")
            .arg(&out)
            .arg(url)
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY"),
    );
    let cpu1 = cpu_secs(None);
    let t = Instant::now();
    let sum = Command::new("md5sum")
        .arg(&out)
        .output()
        .expect("run md5sum");
    let md5sum = t.elapsed();
    let cpu2 = cpu_secs(None);
    let text = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        text.split_whitespace().next(),
        Some(expect_md5),
        "MD5 of curl's download"
    );
    let fdatasync = timed(Command::new("sync").arg("-d").arg(&out));
    let cpu3 = cpu_secs(None);
    std::fs::remove_file(&out).unwrap();
    CurlRun {
        curl,
        md5sum,
        fdatasync,
        curl_cpu: cpu1 - cpu0,
        md5sum_cpu: cpu2 - cpu1,
        sync_cpu: cpu3 - cpu2,
    }
}

/// The HTTP stack alone, the floor under the daemon's receive thread: the daemon's own
/// download client (`net::download_client`, reqwest over rustls with the same settings) on a
/// single-threaded runtime, each chunk of the body written to a file as it comes; no hash, no
/// gathering, no checkpoint, no callback. The CPU seconds of its one thread.
fn stack_run(url: &str, ca: &Path, dir: &Path, size: u64) -> f64 {
    use std::io::Write;
    let out = dir.join("stack.out");
    let cpu = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let tls = tope_updater::net::tls_config(Some(ca)).expect("TLS configuration");
            let client = tope_updater::net::download_client(&tls, false).expect("client");
            let mut file = std::fs::File::create(&out).expect("create the stack's file");
            let cpu0 = thread_cpu_secs();
            rt.block_on(async {
                let mut resp = client.get(url).send().await.expect("GET");
                assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
                while let Some(chunk) = resp.chunk().await.expect("body") {
                    file.write_all(&chunk).expect("write");
                }
            });
            thread_cpu_secs() - cpu0
        })
        .join()
        .expect("the stack's thread")
    });
    let len = std::fs::metadata(&out).unwrap().len();
    assert_eq!(len, size, "length of the stack's download");
    std::fs::remove_file(&out).unwrap();
    cpu
}

/// What one daemon download cost.
struct DaemonRun {
    wall: Duration,
    /// CPU seconds of the daemon, all its threads, from POST /download to `toInstall`.
    cpu: f64,
    /// The daemon's peak resident memory (`VmHWM`) at the end, KiB.
    peak_kib: u64,
    /// CPU seconds of nginx over the same span (serving, encrypting).
    server_cpu: f64,
}

/// The daemon's download + verification: from POST /download until its `toInstall` callback
/// reaches device-api, with a fresh daemon (so its `VmHWM` is this download's peak). The end is
/// seen from the callback, not by polling `/progress`: answering 100 polls a second cost the
/// daemon about 10 ms of CPU per second, which is the benchmark's, not the download's (curl
/// is not polled either).
fn daemon_run(nginx: &Nginx, pkg: &BenchPackage, url: &str, mb: u64) -> DaemonRun {
    let ws = Workspace::new();
    std::fs::copy(&nginx.ca_file, ws.ca_file()).unwrap();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, DaemonOptions::default());
    let cpu0 = cpu_secs(Some(d.pid()));
    let server0 = cpu_secs(Some(nginx.pid()));
    let t = Instant::now();
    let answer = d.post_json("/download", &pkg.download_body(url));
    assert_ok_status(&answer, "downloading", "POST /download");
    api.wait_for_report("toInstall", stage_timeout(mb), |b| {
        b["stage"] == "toInstall"
    });
    let wall = t.elapsed();
    let cpu = cpu_secs(Some(d.pid())) - cpu0;
    let server_cpu = cpu_secs(Some(nginx.pid())) - server0;
    let peak_kib = hwm_kib(d.pid());
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        md5_file_streaming(&ws.tmp_file(name)),
        pkg.md5,
        "MD5 of the daemon's download"
    );
    DaemonRun {
        wall,
        cpu,
        peak_kib,
        server_cpu,
    }
}

/// The load average over the last minute (`/proc/loadavg`), printed next to every figure.
fn load_1min() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// How one speed is compared.
struct Comparison<'a> {
    label: &'a str,
    /// Where curl's file goes.
    scratch: &'a Path,
    repeat: usize,
    /// Whether curl is installed (else the daemon is timed alone).
    curl: bool,
}

/// Times `repeat` rounds of curl (when installed), the HTTP stack alone and the daemon
/// fetching `url`, each round after a `sync`, and prints the medians under `label`.
fn compare_with_curl(how: &Comparison<'_>, nginx: &Nginx, pkg: &BenchPackage, url: &str) {
    let Comparison {
        label,
        scratch,
        repeat,
        curl,
    } = *how;
    let mb = pkg.size / MIB + 1;
    let load_before = load_1min();
    let mut daemon_s = Vec::new();
    let mut curl_s = Vec::new();
    let mut md5sum_s = Vec::new();
    let mut sync_s = Vec::new();
    let mut daemon_cpu = Vec::new();
    let mut server_cpu = Vec::new();
    let mut stack_cpu = Vec::new();
    let mut curl_cpu = Vec::new();
    let mut md5sum_cpu = Vec::new();
    let mut sync_cpu = Vec::new();
    let mut ratios = Vec::new();
    let mut ratios_synced = Vec::new();
    let mut peak_kib = 0;
    for _ in 0..repeat {
        let mut c_run = None;
        if curl {
            sync_all_disks();
            let c = curl_run(url, &nginx.ca_file, scratch, &pkg.md5);
            curl_s.push(c.curl.as_secs_f64());
            md5sum_s.push(c.md5sum.as_secs_f64());
            sync_s.push(c.fdatasync.as_secs_f64());
            curl_cpu.push(c.curl_cpu);
            md5sum_cpu.push(c.md5sum_cpu);
            sync_cpu.push(c.sync_cpu);
            c_run = Some(c);
        }
        sync_all_disks();
        stack_cpu.push(stack_run(url, &nginx.ca_file, scratch, pkg.size));
        sync_all_disks();
        let d = daemon_run(nginx, pkg, url, mb);
        daemon_s.push(d.wall.as_secs_f64());
        daemon_cpu.push(d.cpu);
        server_cpu.push(d.server_cpu);
        peak_kib = peak_kib.max(d.peak_kib);
        // Back to back, so a change of the machine's load hits both sides of one ratio.
        if let Some(c) = c_run.filter(|c| c.curl_cpu + c.md5sum_cpu > 0.0) {
            ratios.push(d.cpu / (c.curl_cpu + c.md5sum_cpu));
            ratios_synced.push(d.cpu / (c.curl_cpu + c.md5sum_cpu + c.sync_cpu));
        }
    }
    let size = mib(pkg.size);
    let dm = median_f64(&daemon_s);
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let median_or_dash = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", median_f64(v))
        }
    };
    println!(
        "bench: download + MD5 verification of {size:.0} MiB over HTTPS, {label}, median of \
         {repeat}; {}; load average {load_before} before, {} after",
        build_kind(),
        load_1min()
    );
    println!(
        "bench:   daemon (POST /download -> toInstall): {dm:.3} s, {:.1} MiB/s (runs: {} s); \
         peak RSS {:.1} MiB",
        size / dm,
        list(&daemon_s),
        peak_kib as f64 / 1024.0
    );
    let (dc, sc, nc) = (
        median_f64(&daemon_cpu),
        median_f64(&stack_cpu),
        median_f64(&server_cpu),
    );
    if curl {
        let cm = median_f64(&curl_s);
        let sm = median_f64(&md5sum_s);
        let fm = median_f64(&sync_s);
        println!(
            "bench:   curl -o file: {cm:.3} s, {:.1} MiB/s (runs: {} s); then md5sum {sm:.3} s, \
             then fdatasync {fm:.3} s",
            size / cm,
            list(&curl_s)
        );
        println!(
            "bench:   daemon / curl = {:.2}; daemon / (curl + md5sum) = {:.2}; \
             daemon / (curl + md5sum + fdatasync) = {:.2}; daemon / md5sum = {:.2}",
            dm / cm,
            dm / (cm + sm),
            dm / (cm + sm + fm),
            dm / sm
        );
        let (cc, mc, yc) = (
            median_f64(&curl_cpu),
            median_f64(&md5sum_cpu),
            median_f64(&sync_cpu),
        );
        println!(
            "bench:   CPU: daemon {dc:.3} s (runs: {}), curl {cc:.3} s + md5sum {mc:.3} s \
             (runs: {}): daemon / (curl + md5sum) = {:.2} (median of the per-round ratios {}: \
             {}); with the fdatasync's writeback ({yc:.3} s) on curl's side as on the daemon's: \
             {}; daemon {:.1} ms/MiB",
            list(&daemon_cpu),
            list(
                &curl_cpu
                    .iter()
                    .zip(&md5sum_cpu)
                    .map(|(c, m)| c + m)
                    .collect::<Vec<_>>()
            ),
            dc / (cc + mc),
            ratios.len(),
            median_or_dash(&ratios),
            median_or_dash(&ratios_synced),
            dc * 1000.0 / size
        );
        println!(
            "bench:   CPU of the HTTP stack alone (the daemon's reqwest + rustls client, each \
             chunk written to a file, no hash): {sc:.3} s (runs: {}) = {:.2} x curl; the \
             daemon beyond it {:.3} s, md5sum {mc:.3} s",
            list(&stack_cpu),
            sc / cc,
            dc - sc
        );
    } else {
        println!(
            "bench:   CPU: daemon {dc:.3} s (runs: {}); the HTTP stack alone {sc:.3} s",
            list(&daemon_cpu)
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "bench:   nginx CPU while serving the daemon {nc:.3} s; daemon + nginx over {cores} \
         CPUs: at least {:.3} s of wall time on this machine ({:.2} x the daemon's)",
        (dc + nc) / cores,
        (dc + nc) / cores / dm
    );
}

/// The capped link speeds of the comparison, MiB/s (`BENCH_LINK_RATES`, a comma-separated
/// list; default 1 and 10), each served by nginx `limit_rate`.
fn link_rates_mib() -> Vec<u64> {
    let v = std::env::var("BENCH_LINK_RATES").unwrap_or_else(|_| "1,10".into());
    v.split(',')
        .filter_map(|r| r.trim().parse::<u64>().ok())
        .filter(|r| *r > 0)
        .collect()
}

/// How long one capped download lasts at most (`BENCH_LINK_SECS`, default 3 s; scripts/bench.sh
/// uses 10): the package of a capped run is `BENCH_PACKAGE_MB` or rate x this, whichever is
/// smaller, so a 1 MiB/s run of a 200 MiB package does not take 200 s.
fn link_secs() -> u64 {
    env_u64("BENCH_LINK_SECS", 3).max(1)
}

/// The daemon's download with MD5 on the way against plain `curl` (and `curl` + `md5sum`) for
/// the same file from the same nginx, median of `BENCH_REPEAT` runs: once as fast as loopback
/// goes (the daemon's own cost dominates), then on links limited by nginx to each of
/// `BENCH_LINK_RATES` (closer to a printer's network). docs/API.md 9.7: the daemon's CPU is
/// compared with curl's and md5sum's at every speed.
#[test]
fn bench_download_throughput_vs_curl() {
    let _serial = serial();
    let mb = package_mb();
    let repeat = env_u64("BENCH_REPEAT", 3).max(1) as usize;
    let base = tempfile::Builder::new()
        .prefix("tope-bench-")
        .tempdir()
        .unwrap();
    let curl = have_curl();
    if !curl {
        eprintln!("curl not installed: timing the daemon only (run scripts/test.sh)");
    }
    let root = base.path().join("root");
    for rate_mib in std::iter::once(0).chain(link_rates_mib()) {
        // One nginx per speed: its `/throttled/` location has one `limit_rate`.
        let dir = base.path().join(format!("nginx-{rate_mib}"));
        let Some(nginx) = start_nginx(&dir, &dir.join("ca.pem"), rate_mib.max(1) * MIB) else {
            return;
        };
        let (rel, size_mb, label) = if rate_mib == 0 {
            (
                "pkg/speed.zip",
                mb,
                "loopback without a rate limit".to_string(),
            )
        } else {
            let size_mb = mb.min(rate_mib * link_secs()).max(1);
            (
                "throttled/link.zip",
                size_mb,
                format!("link limited to {rate_mib} MiB/s by nginx"),
            )
        };
        let pkg = write_package(&nginx.www(rel), size_mb, VERSION, &root);
        let url = nginx.url(rel);
        let how = Comparison {
            label: &label,
            scratch: base.path(),
            repeat,
            curl,
        };
        compare_with_curl(&how, &nginx, &pkg, &url);
        std::fs::remove_file(&pkg.path).unwrap();
    }
}

// ------------------------------------------------------------------ delta downloads

/// What one download of the delta benchmark cost.
struct WireRun {
    bytes: u64,
    requests: usize,
    wall: Duration,
    cpu: f64,
}

/// POST /download of `pkg` served as `rel` (version `version`), until `toInstall`: the bytes
/// and requests in nginx's access log, the wall time and the daemon's CPU seconds.
fn wire_run(d: &Daemon, nginx: &Nginx, rel: &str, version: &str, pkg: &[u8]) -> WireRun {
    let url = nginx.put(rel, pkg);
    let name = rel.rsplit('/').next().unwrap();
    let cpu0 = cpu_secs(Some(d.pid()));
    let t = Instant::now();
    d.post_download(&download_body(version, &url, name, pkg));
    d.wait_stage("toInstall", Duration::from_secs(600));
    let wall = t.elapsed();
    let cpu = cpu_secs(Some(d.pid())) - cpu0;
    let lines = nginx.access_log(Some(rel));
    WireRun {
        bytes: lines.iter().map(|l| l.body_bytes_sent).sum(),
        requests: lines.len(),
        wall,
        cpu,
    }
}

/// docs/API.md 9.5: a signed package of 400 files of which 20 change, over a link capped at
/// 10 MiB/s by nginx (`limit_rate`): bytes on the wire, HTTP requests, wall time and the
/// daemon's CPU of a full download against a delta, and the daemon's peak resident memory over
/// the delta (download and package assembly). `BENCH_DELTA_MB` (default 8) is the package size.
#[test]
fn bench_delta_download() {
    use common::signed::{files, signed_package, test_key};
    let _serial = serial();
    let mb = env_u64("BENCH_DELTA_MB", 8).max(1);
    let (count, changed) = (400usize, 20usize);
    let file_size = (mb * MIB / count as u64) as usize;
    let rate = 10 * MIB;
    let ws = Workspace::new();
    let Some(nginx) = Nginx::start_with(
        &ws.path().join("nginx"),
        &ws.ca_file(),
        common::nginx::NginxOptions {
            throttled_rate: Some(rate),
            quiet: false,
        },
    ) else {
        return;
    };
    let api = FakeDeviceApi::start();
    let (key, public) = test_key();
    let opts = DaemonOptions {
        extra_toml: format!("trusted_keys = [\"{public}\"]\nsettle_s = 0\n"),
        ..Default::default()
    };
    let d = Daemon::start(&ws, &api, opts);
    let dst = ws.root().join("app");
    let dst_text = dst.to_string_lossy().to_string();
    let v1 = files(count, file_size, |_| 1);
    let pkg1 = signed_package("1.0.0", &dst_text, &key, &v1);
    drop(v1);
    let full = wire_run(&d, &nginx, "throttled/v1.zip", "1.0.0", &pkg1);
    d.post_update("1.0.0");
    d.wait_stage("success", stage_timeout(mb));
    let step = count / changed;
    let v2 = files(count, file_size, |i| if i % step == 0 { 2 } else { 1 });
    let pkg2 = signed_package("1.1.0", &dst_text, &key, &v2);
    // The peak resident memory from here on (writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write(format!("/proc/{}/clear_refs", d.pid()), "5");
    let delta = wire_run(&d, &nginx, "throttled/v2.zip", "1.1.0", &pkg2);
    let peak_kib = hwm_kib(d.pid());
    d.post_update("1.1.0");
    d.wait_stage("success", stage_timeout(mb));
    for (i, (name, data)) in v2.iter().enumerate().step_by(37) {
        let found = std::fs::read(dst.join(name.trim_start_matches("app/"))).unwrap_or_default();
        assert!(found == *data, "file {i} after the delta installation");
    }
    println!(
        "bench: delta download ({}): package {:.1} MiB, {count} files of {} KiB, {changed} \
         changed, nginx limit_rate {} MiB/s",
        build_kind(),
        mib(pkg2.len() as u64),
        file_size / 1024,
        rate / MIB
    );
    for (label, r) in [("full ", &full), ("delta", &delta)] {
        println!(
            "bench: delta download: {label}: {:.2} MiB on the wire ({:.1} % of the package) in \
             {} HTTP requests, {:.2} s to toInstall, daemon CPU {:.2} s",
            mib(r.bytes),
            100.0 * r.bytes as f64 / pkg2.len() as f64,
            r.requests,
            r.wall.as_secs_f64(),
            r.cpu
        );
    }
    println!(
        "bench: delta download: delta path peak RSS {peak_kib} KiB (VmHWM reset before it); \
         wall time {:.1}x faster, {:.1}x fewer bytes",
        full.wall.as_secs_f64() / delta.wall.as_secs_f64().max(1e-3),
        full.bytes as f64 / delta.bytes.max(1) as f64
    );
}
