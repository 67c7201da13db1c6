//! docs/API.md 8.2, nobody can starve the API: request-head, request and idle timeouts, and a
//! connection cap that keeps `/progress` fast and an installation working while a thousand
//! connections idle or trickle, under the usual 1024-descriptor limit. The timeouts are
//! checked against a daemon given short ones in `[server]` (docs/API.md 7), both bounds
//! each; the contract's defaults (10 s, 60 s) are what a daemon without `[server]` logs, and
//! what the server applies by default (its unit tests).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bench::{latency_summary, proc_status_kib};
use common::daemon::{assert_error, delayed_flushes, stage_of, write_config, API};
use common::procs::{self, require_tool, KillOnDrop, Spawned, WrappedDaemon};
use common::*;
use serde_json::json;
use tope_updater::server::ServerTimeouts;

/// A request head that never ends (no empty line), sent a byte at a time.
const ENDLESS_HEAD: &[u8] = b"GET /api/v1.0/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ";

/// How many connections an attack keeps open, how many it had to open again after the
/// daemon closed them, and how many connects failed.
#[derive(Debug, Default)]
struct AttackCounts {
    opened: AtomicU64,
    reopened: AtomicU64,
    connect_errors: AtomicU64,
}

/// `idle` connections that send nothing and `trickling` ones that send one byte of an endless
/// request head per second, spread over a few threads; every connection the daemon closes is
/// opened again (each is checked once a second, a tenth of them every 100 ms), so the pressure
/// never lets up.
struct Attack {
    stop: Arc<AtomicBool>,
    counts: Arc<AttackCounts>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Hostile {
    stream: Option<TcpStream>,
    /// Opened at least once.
    opened: bool,
    trickle: bool,
    sent: usize,
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Whether the daemon closed `s` (EOF, reset); never blocks.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

impl Attack {
    fn start(addr: SocketAddr, idle: usize, trickling: usize, threads: usize) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(AttackCounts::default());
        let total = idle + trickling;
        let handles = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let counts = counts.clone();
                std::thread::spawn(move || {
                    let mut mine: Vec<Hostile> = (0..total)
                        .filter(|i| i % threads == t)
                        .map(|i| Hostile {
                            stream: None,
                            opened: false,
                            trickle: i >= idle,
                            sent: 0,
                        })
                        .collect();
                    // Each socket is visited once a second, a tenth of them every 100 ms.
                    const SLICES: usize = 10;
                    let mut slice = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let round = Instant::now();
                        for h in mine.iter_mut().skip(slice).step_by(SLICES) {
                            if h.stream.as_mut().is_some_and(is_closed) {
                                h.stream = None;
                            }
                            if h.stream.is_none() {
                                match connect(addr) {
                                    Some(s) => {
                                        h.stream = Some(s);
                                        let c = if h.opened {
                                            &counts.reopened
                                        } else {
                                            &counts.opened
                                        };
                                        h.opened = true;
                                        h.sent = 0;
                                        c.fetch_add(1, Ordering::SeqCst);
                                    }
                                    None => {
                                        counts.connect_errors.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            } else if h.trickle {
                                let byte = ENDLESS_HEAD.get(h.sent).copied().unwrap_or(b'a');
                                if let Some(s) = h.stream.as_mut() {
                                    if s.write(&[byte]).is_ok() {
                                        h.sent += 1;
                                    }
                                }
                            }
                        }
                        slice = (slice + 1) % SLICES;
                        let left = Duration::from_millis(100).saturating_sub(round.elapsed());
                        std::thread::sleep(left);
                    }
                })
            })
            .collect();
        Attack {
            stop,
            counts,
            threads: handles,
        }
    }

    fn stop(self) -> Arc<AttackCounts> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.counts
    }
}

/// `/progress` asked every 100 ms, each time on a new connection, until stopped: the time of
/// every answer, and the failures.
struct Poller {
    stop: Arc<AtomicBool>,
    /// Successful answers so far.
    answered: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(Vec<Duration>, Vec<String>)>,
}

impl Poller {
    fn start(addr: SocketAddr) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let answered = Arc::new(AtomicU64::new(0));
        let a = answered.clone();
        let thread = std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut failures = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                match http::request(addr, "GET", &format!("{API}/progress"), None, b"") {
                    Ok(r) if r.status == 200 && r.json()["data"]["stage"].is_string() => {
                        times.push(t.elapsed());
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.push(format!("HTTP {}: {}", r.status, r.text())),
                    Err(e) => failures.push(format!("{e} after {:?}", t.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            (times, failures)
        });
        Poller {
            stop,
            answered,
            thread,
        }
    }

    fn stop(self) -> (Vec<Duration>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// This test process needs more than 1100 descriptors: raise its soft limit to the hard one.
fn raise_own_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The daemon's `Max open files` soft limit, from /proc/<pid>/limits.
fn fd_soft_limit_of(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn open_fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Section 8.2: 1100 connections, half idle and half trickling a request head at a byte per
/// second (every one the daemon closes is opened again), against a daemon started with a
/// descriptor limit of 1024 (soft and hard): `/progress`, polled every 100 ms on fresh
/// connections, answers every time in under 100 ms, and a full download and installation
/// (stopping and restarting a program) succeeds.
#[test]
fn contract_8_2_1100_connections_under_1024_fds_progress_fast_and_install_succeeds() {
    if !require_tool(
        "prlimit",
        "util-linux, to start the daemon with 1024 descriptors",
    ) {
        return;
    }
    let own = raise_own_fd_limit();
    assert!(
        own >= 1300,
        "this test needs 1300 descriptors, the hard limit is {own}"
    );
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    const VERSION: &str = "8.2.0";

    // A program the installation stops and starts again, and 1 MiB of data.
    let prog = unique_name("fdp");
    let _kill = KillOnDrop::names(&[&prog]);
    let dst = ws.root().join("prog").join(&prog);
    write_file(&dst, &sleep_binary_with_marker("old"), 0o755);
    let _old = Spawned::spawn(Command::new(&dst).arg("1000"));
    procs::wait_for_named(&prog, Duration::from_secs(5));
    let blob = pseudo_random_bytes(1024 * 1024, 82);
    let package = build_package(
        &manifest(
            VERSION,
            vec![
                json!({"name": "prog", "src": "prog", "dst": dst.display().to_string(),
                       "process_name": prog, "start_cmd": [dst.display().to_string(), "1000"],
                       "restart_order": 1}),
                json!({"name": "data", "src": "data", "dst": ws.root().join("data").display().to_string()}),
            ],
        ),
        &[
            Entry::file("prog", &sleep_binary_with_marker("new"), 0o755),
            Entry::file("data/blob.bin", &blob, 0o644),
        ],
    );
    let url = nginx.put("pkg.zip", &package);

    let (config, port) = write_config(&ws, &api, &DaemonOptions::default());
    let d = WrappedDaemon::start(
        &["prlimit".as_ref(), "--nofile=1024".as_ref()],
        &[],
        &config,
        port,
        &ws.work_dir(),
        ws.path(),
        "limited",
    );
    let pid = d.child.id();
    assert_eq!(fd_soft_limit_of(pid), Some(1024), "prlimit must apply");

    let attack = Attack::start(d.addr, 550, 550, 4);
    wait_until(
        "1100 hostile connections opened",
        Duration::from_secs(60),
        || (attack.counts.opened.load(Ordering::SeqCst) >= 1100).then_some(()),
    );
    let poller = Poller::start(d.addr);
    // The cap is in force: the daemon has closed connections and the attack opened them again.
    wait_until(
        "the daemon to close connections beyond its cap",
        Duration::from_secs(30),
        || (attack.counts.reopened.load(Ordering::SeqCst) > 0).then_some(()),
    );
    let fds_under_attack = open_fds_of(pid);
    let p = d.install(&url, VERSION, &package);
    // /progress is timed 20 times more (2 s) with the restarted program running, and at least
    // 40 times in all.
    let wanted = (poller.answered.load(Ordering::SeqCst) + 20).max(40);
    wait_until("20 more /progress answers", Duration::from_secs(60), || {
        (poller.answered.load(Ordering::SeqCst) >= wanted).then_some(())
    });
    let (mut times, failures) = poller.stop();
    let counts = attack.stop();
    let peak_rss_kib = proc_status_kib(pid as i32, "VmHWM").unwrap_or(0);

    let max = times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "progress under attack: {}; {} failures; \
         hostile connections opened {}, opened again after being closed {}, connect errors {}; \
         daemon descriptors in use {}, peak RSS {} KiB",
        latency_summary(&mut times),
        failures.len(),
        counts.opened.load(Ordering::SeqCst),
        counts.reopened.load(Ordering::SeqCst),
        counts.connect_errors.load(Ordering::SeqCst),
        fds_under_attack,
        peak_rss_kib
    );
    assert_eq!(stage_of(&p), "success", "{p}\n{}", d.output());
    assert!(has_marker(&dst, "new"));
    assert_eq!(md5_file(&ws.root().join("data/blob.bin")), md5_hex(&blob));
    let again = procs::wait_for_named(&prog, Duration::from_secs(10));
    assert_eq!(procs::exe_of(again[0]).as_deref(), Some(dst.as_path()));
    assert!(
        failures.is_empty(),
        "/progress failed under attack: {failures:?}"
    );
    assert!(times.len() >= 40, "too few answers: {}", times.len());
    assert!(
        max < Duration::from_millis(100),
        "/progress took {max:?} ({})",
        latency_summary(&mut times)
    );
    assert!(
        fds_under_attack < 400,
        "the daemon held {fds_under_attack} descriptors under attack"
    );
    assert!(
        peak_rss_kib < 50 * 1024,
        "peak RSS {peak_rss_kib} KiB under attack"
    );
    assert!(
        counts.reopened.load(Ordering::SeqCst) > 0,
        "the daemon must have closed connections beyond its cap"
    );
}

/// Time until the daemon closes `s` (EOF or reset), measured from `since`; `None` if it is
/// still open after `limit`.
fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut b = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut b) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(since.elapsed())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Short API timeouts for the tests of 8.2's timeouts: the daemon applies what `[server]`
/// says (docs/API.md 7), so the rules are checked in seconds instead of a minute. The head
/// timeout is shorter than the idle one, as in the contract (10 s and 60 s).
const HEAD: Duration = Duration::from_millis(1500);
const IDLE: Duration = Duration::from_millis(4000);
const REQUEST: Duration = Duration::from_millis(2000);
/// How late a close may come on a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

fn short_timeouts() -> DaemonOptions {
    DaemonOptions {
        server_timeouts: Some(ServerTimeouts {
            head: HEAD,
            idle: IDLE,
            request: REQUEST,
        }),
        ..Default::default()
    }
}

/// `closed` is within [`SLACK`] after `timeout`, and not before it (a few ms of timer
/// rounding aside).
#[track_caller]
fn assert_closed_at(what: &str, closed: Option<Duration>, timeout: Duration) {
    let closed = closed.unwrap_or_else(|| panic!("the {what} connection is still open"));
    assert!(
        closed + Duration::from_millis(20) >= timeout && closed < timeout + SLACK,
        "the {what} connection was closed after {closed:?}, not about {timeout:?}"
    );
}

/// The daemon's log says which timeouts it applies.
fn logged_timeouts(ws: &Workspace) -> String {
    let log = std::fs::read_to_string(ws.work_dir().join("logs/updater.log")).unwrap_or_default();
    log.lines()
        .find(|l| l.contains("request head within"))
        .unwrap_or_default()
        .to_string()
}

/// Section 8.2 (docs/API.md 7, `[server] head_timeout_ms`): a connection that has not sent a
/// complete request head within the head timeout is closed, and not before it: one that
/// sends nothing, and one that trickles a head at five bytes a second. (`request_timeout_ms`)
/// A request whose body is trickled is closed at the request timeout, counted from its head.
#[test]
fn contract_8_2_incomplete_request_head_closed_after_the_head_timeout() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, short_timeouts());
    assert!(
        logged_timeouts(&ws).contains(
            "request head within 1500 ms, idle connections closed after 4000 ms, \
             requests within 2000 ms"
        ),
        "{}",
        logged_timeouts(&ws)
    );
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(d.addr).unwrap();
    let mut trickle = TcpStream::connect(d.addr).unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        for b in ENDLESS_HEAD.iter().chain(std::iter::repeat(&b'a')).take(50) {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let limit = HEAD + SLACK + Duration::from_secs(5);
    let trickle_closed = closed_after(&mut trickle, t0, limit);
    let silent_closed = closed_after(&mut silent, t0, limit);
    assert_closed_at("trickling", trickle_closed, HEAD);
    assert_closed_at("silent", silent_closed, HEAD);
    feeder.join().unwrap();

    // A complete head announcing 100 bytes of body, of which 2 come: closed at the request
    // timeout, without an answer.
    let mut slow_body = TcpStream::connect(d.addr).unwrap();
    let head = format!(
        "POST {API}/download HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"",
        d.addr
    );
    let sent = Instant::now();
    slow_body.write_all(head.as_bytes()).unwrap();
    let closed = closed_after(
        &mut slow_body,
        sent,
        REQUEST + SLACK + Duration::from_secs(5),
    );
    assert_closed_at("slow body", closed, REQUEST);
    // The daemon still answers.
    assert_eq!(d.progress()["code"], 200);
}

/// Section 8.2 (docs/API.md 7, `[server] idle_timeout_ms`): an idle keep-alive connection is
/// closed after the idle timeout, and not before it: a poller keeps its connection between
/// polls, also across a pause longer than the head timeout.
#[test]
fn contract_8_2_idle_keep_alive_connection_closed_after_the_idle_timeout() {
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let d = Daemon::start(&ws, &api, short_timeouts());
    let mut s = TcpStream::connect(d.addr).unwrap();
    let ask = format!("GET {API}/progress HTTP/1.1\r\nHost: {}\r\n\r\n", d.addr);
    // Two requests on the connection, a pause longer than the head timeout (and shorter than
    // the idle one) apart: it stays usable while idle.
    let pause = HEAD + (IDLE - HEAD) / 2;
    for round in 0..2 {
        if round > 0 {
            std::thread::sleep(pause);
        }
        s.write_all(ask.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !complete_response(&got) {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "closed before answering (round {round})");
            got.extend_from_slice(&b[..n]);
        }
    }
    let answered = Instant::now();
    let closed = closed_after(&mut s, answered, IDLE + SLACK + Duration::from_secs(5));
    assert_closed_at("idle keep-alive", closed, IDLE);
}

/// Whether `raw` holds a whole HTTP response with a Content-Length body.
fn complete_response(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    raw.len() >= end + 4 + len
}

/// A command that writes the updater's files (here the `DISK_FULL` outcome of a `/download`,
/// on storage where every flush takes 500 ms, as on a worn SD card) never holds up
/// `/progress`: while `/download` waits for its flushes, `/progress` answers and shows the
/// download that is being refused.
#[test]
fn contract_8_2_progress_answers_while_a_command_waits_for_slow_flushes() {
    if !require_tool("strace", "to make every flush of the daemon slow") {
        return;
    }
    let ws = Workspace::new();
    let api = FakeDeviceApi::start();
    let st = rustix::fs::statvfs(ws.work_dir()).expect("statvfs");
    let size = st.f_bavail * st.f_frsize + (1 << 30);
    let mut d = common::Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: format!("max_package_size = {}\n", size * 2),
            ..Default::default()
        },
    );
    // Without `[server]` the contract's timeouts apply (docs/API.md 8.2: 10 s, 60 s).
    assert!(
        logged_timeouts(&ws).contains(
            "request head within 10000 ms, idle connections closed after 60000 ms, \
             requests within 10000 ms"
        ),
        "{}",
        logged_timeouts(&ws)
    );
    assert!(d.sigterm_and_wait(Duration::from_secs(30)).success());
    let trace = ws.path().join("strace.txt");
    d.restart_with_slow_flushes(Duration::from_millis(500), &trace);
    let body = json!({
        "version": "8.2.1", "package_url": "https://127.0.0.1:9/huge.zip",
        "package_name": "huge.zip", "package_size": size, "package_md5": md5_hex(b"huge"),
    });
    let done = AtomicBool::new(false);
    let (answer, seen) = std::thread::scope(|s| {
        let download = s.spawn(|| {
            let a = d.post_json("/download", &body);
            done.store(true, Ordering::SeqCst);
            a
        });
        // Every /progress answered while /download is still waiting for its answer.
        let mut seen = Vec::new();
        while !done.load(Ordering::SeqCst) {
            let p = d.progress();
            if !done.load(Ordering::SeqCst) {
                seen.push(p);
            }
        }
        (download.join().expect("the /download thread"), seen)
    });
    assert_error(
        &answer,
        500,
        "DISK_FULL",
        "/download larger than the free space",
    );
    delayed_flushes(&trace);
    assert!(
        seen.iter()
            .any(|p| stage_of(p) == "downloading" && p["data"]["version"] == "8.2.1"),
        "no /progress answered while /download waited for its flushes: {seen:?}"
    );
}
