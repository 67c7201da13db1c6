//! Benchmark: installing many small files (a web UI, say) against `unzip -o` + `sync` of the
//! same ZIP on the same filesystem, first install and overwrite; the flush system calls the
//! daemon makes (`strace -c`); the same install with every flush delayed by 10 ms (what an SD
//! card or eMMC costs); and how long the printer's processes are down. Prints `bench:` lines;
//! asserts what the installation must do (every file in place) and the flush discipline (a
//! few flushes per directory, never one per file), never a timing.
//!
//! Short by default (500 files in 5 directories); `scripts/bench.sh` runs
//! `BENCH_FILES=5000` (50 directories). `BENCH_FLUSH_FILES` (default 2000 in the long run,
//! the same as `BENCH_FILES` otherwise) sets the size of the delayed-flush run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bench::{cpu_secs, env_u64};
use common::daemon::delayed_flushes;
use common::procs::{self, KillOnDrop, Spawned};
use common::*;
use serde_json::json;

const FILES_PER_DIR: u64 = 100;

/// The web UI of `files` files (about 2 KiB each, text-like) in `files / 100` directories,
/// plus a running program, as a package of `version`.
fn web_package(
    root: &Path,
    files: u64,
    version: &str,
    seed: u64,
    prog: &Path,
    name: &str,
) -> Vec<u8> {
    let mut entries = Vec::new();
    for i in 0..files {
        let words: String = (0..300)
            .map(|w| format!("w{} ", (w * 7 + i * 13 + seed) % 97))
            .collect();
        entries.push(Entry::file(
            &format!("ui/d{:02}/f{i:05}.js", i / FILES_PER_DIR),
            words.as_bytes(),
            0o644,
        ));
    }
    entries.push(Entry::file(
        &format!("bin/{name}"),
        &sleep_binary_with_marker(version),
        0o755,
    ));
    let m = manifest(
        version,
        vec![
            json!({"name": "svc", "src": format!("bin/{name}"), "dst": prog.display().to_string(),
                   "process_name": name, "start_cmd": [prog.display().to_string(), "3600"],
                   "restart_order": 1}),
            json!({"name": "ui", "src": "ui", "dst": root.join("ui").display().to_string()}),
        ],
    );
    build_package(&m, &entries)
}

/// `unzip -o -q` of `zip` into `dir`, then `sync`: wall and CPU seconds.
fn unzip_and_sync(zip: &Path, dir: &Path) -> (f64, f64) {
    std::fs::create_dir_all(dir).unwrap();
    let cpu0 = cpu_secs(None);
    let t = Instant::now();
    let ok = Command::new("unzip")
        .args(["-o", "-q"])
        .arg(zip)
        .arg("-d")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("sync").status().is_ok_and(|s| s.success());
    assert!(ok, "unzip -o + sync of {} failed", zip.display());
    (t.elapsed().as_secs_f64(), cpu_secs(None) - cpu0)
}

/// A tool the benchmark runs: missing is a failure under CI, else the benchmark is skipped.
fn have(tool: &str) -> bool {
    if Command::new(tool).arg("-v").output().is_ok()
        || Command::new(tool).arg("-V").output().is_ok()
    {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing: CI must install it (scripts/test.sh does)"
    );
    eprintln!("skipping the install benchmark: {tool} is missing");
    false
}

/// `strace` attached to the daemon for one installation.
struct Strace {
    child: std::process::Child,
    out: PathBuf,
}

impl Strace {
    /// Attach to every thread of `pid`: `-c` counts the flushes, or `delay` injects a delay
    /// after each flush.
    fn attach(pid: i32, out: &Path, delay: Option<Duration>) -> Strace {
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-p", &pid.to_string(), "-o"]).arg(out);
        match delay {
            Some(d) => cmd.args([
                "-e",
                "trace=fsync,fdatasync,syncfs",
                "-e",
                &format!("inject=fsync,fdatasync,syncfs:delay_exit={}", d.as_micros()),
            ]),
            None => cmd.args(["-c", "-e", "trace=fsync,fdatasync,syncfs"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strace");
        // strace reports attaching on stderr; wait until every thread is attached.
        let status = format!("/proc/{pid}/status");
        wait_until("strace attached", Duration::from_secs(10), || {
            let s = std::fs::read_to_string(&status).ok()?;
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
                .then_some(())
        });
        Strace {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Detach (SIGINT) and return strace's output.
    fn finish(mut self) -> String {
        procs::signal(self.child.id() as i32, rustix::process::Signal::INT);
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

/// Calls of each flush system call in a `strace -c` summary.
fn flush_calls(summary: &str) -> u64 {
    summary
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.last()?;
            matches!(name, "fsync" | "fdatasync" | "syncfs")
                // % time, seconds, usecs/call, calls, [errors,] syscall
                .then(|| f.get(3)?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// The daemon's "processes were down for N ms" of its latest installation.
fn down_ms(work: &Path) -> Option<u64> {
    let log = std::fs::read_to_string(work.join("logs/updater.log")).ok()?;
    log.lines()
        .rev()
        .find_map(|l| l.split("processes were down for ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

struct Run {
    wall: f64,
    cpu: f64,
    down_ms: Option<u64>,
    strace: Option<String>,
}

/// Download `package` as `version`, then install it (timed from POST /update to `success`),
/// optionally under strace.
fn daemon_install(
    d: &Daemon,
    nginx: &Nginx,
    work: &Path,
    version: &str,
    package: &[u8],
    strace: Option<(&Path, Option<Duration>)>,
) -> Run {
    d.download_package(nginx, &format!("ui-{version}.zip"), version, package);
    let tracer = strace.map(|(out, delay)| Strace::attach(d.pid(), out, delay));
    let cpu0 = cpu_secs(Some(d.pid()));
    let t = Instant::now();
    d.post_update(version);
    let p = d.wait_for("success", Duration::from_secs(600), |p| {
        matches!(daemon::stage_of(p).as_str(), "success" | "failed")
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_secs(Some(d.pid())) - cpu0;
    assert_eq!(daemon::stage_of(&p), "success", "{p}\n{}", d.output());
    Run {
        wall,
        cpu,
        down_ms: down_ms(work),
        strace: tracer.map(Strace::finish),
    }
}

#[test]
fn bench_install_many_small_files_vs_unzip() {
    if !have("unzip") || !have("strace") {
        return;
    }
    let files = env_u64("BENCH_FILES", 500).max(FILES_PER_DIR);
    let flush_files = env_u64("BENCH_FLUSH_FILES", files.min(2000)).max(FILES_PER_DIR);
    let dirs = files.div_ceil(FILES_PER_DIR);
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let name = unique_name("bnch");
    let _kill = KillOnDrop::names(&[&name]);
    let prog = ws.root().join("bin").join(&name);
    write_file(&prog, &sleep_binary_with_marker("0.0.1"), 0o755);
    let _old = Spawned::spawn(Command::new(&prog).arg("3600"));
    procs::wait_for_named(&name, Duration::from_secs(5));
    let mut d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: "settle_s = 0\n".into(),
            ..DaemonOptions::default()
        },
    );

    // The same ZIP through unzip + sync, into a fresh directory and over it, on the same
    // filesystem as the daemon's allowed root.
    let first = web_package(&ws.root(), files, "1.0.1", 1, &prog, &name);
    let second = web_package(&ws.root(), files, "1.0.2", 2, &prog, &name);
    let zip1 = ws.path().join("first.zip");
    std::fs::write(&zip1, &first).unwrap();
    let zip2 = ws.path().join("second.zip");
    std::fs::write(&zip2, &second).unwrap();
    let unzip_dir = ws.path().join("root/unzip");
    let (u1_wall, u1_cpu) = unzip_and_sync(&zip1, &unzip_dir);
    let (u2_wall, u2_cpu) = unzip_and_sync(&zip2, &unzip_dir);

    let first_run = daemon_install(&d, &nginx, &ws.work_dir(), "1.0.1", &first, None);
    let counted_out = ws.path().join("strace-c.txt");
    let over = daemon_install(
        &d,
        &nginx,
        &ws.work_dir(),
        "1.0.2",
        &second,
        Some((&counted_out, None)),
    );
    for i in [0, files / 2, files - 1] {
        let f = ws
            .root()
            .join(format!("ui/d{:02}/f{i:05}.js", i / FILES_PER_DIR));
        let want =
            std::fs::read(unzip_dir.join(format!("ui/d{:02}/f{i:05}.js", i / FILES_PER_DIR)));
        assert_eq!(
            std::fs::read(&f).ok(),
            want.ok(),
            "{} differs from unzip's",
            f.display()
        );
    }
    let flushes = flush_calls(over.strace.as_deref().unwrap_or(""));
    assert!(
        flushes > 0 && flushes <= 4 * dirs + 40,
        "{flushes} flush calls for {files} files in {dirs} directories: expected a few per \
         directory, never one per file\n{}",
        over.strace.as_deref().unwrap_or("")
    );

    // An overwrite with every flush taking 10 ms more, as on an SD card. The daemon runs
    // under strace from its start, so that seccomp-bpf stops it at the flushes only.
    let slow_pkg = web_package(&ws.root(), flush_files, "1.0.3", 3, &prog, &name);
    let delayed_out = ws.path().join("strace-delay.txt");
    assert!(d.sigterm_and_wait(Duration::from_secs(30)).success());
    d.restart_with_slow_flushes(Duration::from_millis(10), &delayed_out);
    let slow = daemon_install(&d, &nginx, &ws.work_dir(), "1.0.3", &slow_pkg, None);
    let delayed = delayed_flushes(&delayed_out);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    eprintln!(
        "bench: install of {files} files in {dirs} directories ({}):",
        build_kind()
    );
    eprintln!("bench:   | run | daemon wall s | daemon CPU s | unzip+sync wall s | unzip+sync CPU s | wall ratio |");
    eprintln!(
        "bench:   | first install | {:.2} | {:.2} | {u1_wall:.2} | {u1_cpu:.2} | {:.1}x |",
        first_run.wall,
        first_run.cpu,
        ratio(first_run.wall, u1_wall)
    );
    eprintln!(
        "bench:   | overwrite | {:.2} | {:.2} | {u2_wall:.2} | {u2_cpu:.2} | {:.1}x |",
        over.wall,
        over.cpu,
        ratio(over.wall, u2_wall)
    );
    eprintln!("bench:   flush calls (fsync + fdatasync + syncfs) during the overwrite: {flushes}");
    eprintln!(
        "bench:   {flush_files} files with every flush ({delayed}) delayed by 10 ms: \
         {:.2} s",
        slow.wall
    );
    eprintln!(
        "bench:   processes down (stop to last start): first {} ms, overwrite {} ms, delayed flushes {} ms",
        show(first_run.down_ms),
        show(over.down_ms),
        show(slow.down_ms)
    );
}

fn show(ms: Option<u64>) -> String {
    ms.map_or_else(|| "?".into(), |m| m.to_string())
}

fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    }
}
