//! docs/API.md 9.7: the download costs no more CPU than `curl` + `md5sum` in part because the
//! body is written in gathered buffers of up to 256 KiB, not one chunk of the HTTP stack (at
//! most 64 KiB, often a single 16 KiB TLS record) at a time: one `write` and one hash update
//! per buffer, and on a slow link no wake-up of another thread either (the receiving thread
//! writes the buffer itself). The real daemon downloads from nginx under `strace`, and the
//! writes to the package file are counted, with the thread that made them.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::nginx::NginxOptions;
use common::*;

const VERSION: &str = "9.7.0";
/// The link's speed, bytes per second.
const LINK_RATE: u64 = 10 << 20;

/// Whether `strace -f` works here; missing: a panic under CI, else `false` (test skipped).
fn strace_usable() -> bool {
    let ok = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("strace cannot trace here: CI must install it (scripts/test.sh does)");
    }
    if !ok {
        eprintln!("skipping: strace cannot trace here (run scripts/test.sh)");
    }
    ok
}

/// What a trace says of the writes to one file.
struct Writes {
    /// The thread (strace's pid column) and size of each successful `write`.
    calls: Vec<(String, u64)>,
    /// The threads that opened the file.
    openers: Vec<String>,
}

/// The successful `write`s to `file` in an `strace -f` trace of `trace=openat,write,close` of
/// one process (its threads share descriptors, so an fd is followed from the `openat` that
/// returned it to its `close`). A call split by another thread's (`<unfinished ...>`, then
/// `<... write resumed>`) is joined again first.
fn writes_to(trace: &str, file: &Path) -> Writes {
    let name = format!("\"{}\"", file.display());
    let mut unfinished: HashMap<&str, &str> = HashMap::new();
    let mut is_file: HashMap<String, bool> = HashMap::new();
    let mut calls = Vec::new();
    let mut openers = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let joined;
        let call = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            unfinished.insert(pid, head);
            continue;
        } else if rest.starts_with("<... ") {
            let Some(head) = unfinished.remove(pid) else {
                continue;
            };
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            joined = format!("{head}{tail}");
            joined.as_str()
        } else {
            rest
        };
        let result = call.rsplit_once(" = ").map(|(_, r)| r.trim());
        if call.starts_with("openat(") {
            if let Some(fd) = result.filter(|r| r.parse::<u32>().is_ok()) {
                is_file.insert(fd.to_string(), call.contains(&name));
                if call.contains(&name) {
                    openers.push(pid.to_string());
                }
            }
        } else if let Some(args) = call.strip_prefix("close(") {
            is_file.remove(args.split(')').next().unwrap_or(""));
        } else if let Some(args) = call.strip_prefix("write(") {
            let fd = args.split(',').next().unwrap_or("");
            if is_file.get(fd) == Some(&true) {
                if let Some(n) = result.and_then(|r| r.parse::<u64>().ok()) {
                    calls.push((pid.to_string(), n));
                }
            }
        }
    }
    Writes { calls, openers }
}

/// docs/API.md 9.7: 8 MiB on a link of 10 MiB/s (nginx `limit_rate`: the body arrives in
/// bursts of a few TLS records, handed over by the HTTP stack as chunks of 16 to 64 KiB) reach
/// the package file in gathered writes of 160 KiB or more on average (a buffer goes over when
/// it holds 256 KiB, 25 ms at this rate, or when its first byte is 100 ms old). Writing each
/// chunk as it comes averaged about 36 KiB at 512 KiB/s and 67 KiB at 10 MiB/s. At this rate
/// the thread that receives the body (the download job's, which opened the file) makes every
/// write itself once the first 100 ms have measured the link: no buffer wakes the write thread.
/// The file holds the package's bytes, so nothing was lost or reordered on the way.
#[test]
fn api_9_7_the_body_is_written_in_gathered_buffers_not_per_chunk() {
    let ws = Workspace::new();
    if !strace_usable() {
        return;
    }
    let Some(nginx) = Nginx::start_with(
        &ws.path().join("nginx"),
        &ws.ca_file(),
        NginxOptions {
            throttled_rate: Some(LINK_RATE),
            quiet: true,
        },
    ) else {
        return;
    };
    let api = FakeDeviceApi::start();
    let mut d = Daemon::start(&ws, &api, DaemonOptions::default());
    let trace = ws.path().join("writes.strace");
    d.sigterm_and_wait(Duration::from_secs(10));
    d.restart_under(&[
        "strace",
        "-f",
        "--seccomp-bpf",
        "-e",
        "trace=openat,write,close",
        "-e",
        "signal=none",
        "-o",
        trace.to_str().expect("utf-8 path"),
        "--",
    ]);
    let package = pseudo_random_bytes(8 << 20, 97);
    let url = nginx.put("throttled/gathered.zip", &package);
    d.post_download(&download_body(VERSION, &url, "gathered.zip", &package));
    d.wait_stage("toInstall", Duration::from_secs(60));
    let file = ws.tmp_file("gathered.zip");
    assert_eq!(
        std::fs::read(&file).expect("the downloaded package"),
        package,
        "the package file holds the package"
    );
    // SIGTERM to the process group (strace and the daemon); strace writes the whole trace out
    // once the daemon has exited.
    let group = rustix::process::Pid::from_raw(d.pid()).expect("a pid");
    rustix::process::kill_process_group(group, rustix::process::Signal::TERM)
        .expect("SIGTERM to the daemon's process group");
    assert!(
        d.wait_exit(Duration::from_secs(20)).is_some(),
        "strace and the daemon did not exit after SIGTERM"
    );
    let text = std::fs::read_to_string(&trace).expect("strace output");
    let writes = writes_to(&text, &file);
    let sizes: Vec<u64> = writes.calls.iter().map(|(_, n)| *n).collect();
    let total: u64 = sizes.iter().sum();
    assert_eq!(
        total,
        package.len() as u64,
        "every byte of the package is one of the writes traced ({} writes)",
        sizes.len()
    );
    let mean = total / sizes.len() as u64;
    eprintln!(
        "{} writes to the package file, {mean} bytes on average, largest {:?}",
        sizes.len(),
        sizes.iter().max()
    );
    assert!(
        mean >= 160 * 1024,
        "{} writes of {mean} bytes on average for 8 MiB at 10 MiB/s: not gathered (largest \
         {:?})",
        sizes.len(),
        sizes.iter().max()
    );
    assert_eq!(
        writes.openers.len(),
        1,
        "one opening of the package file: {:?}",
        writes.openers
    );
    // The first rate window (100 ms) goes to the write thread, as on a fast link; once the
    // link is measured slow, only what is still queued for it.
    let receiver = &writes.openers[0];
    let first_here = writes
        .calls
        .iter()
        .position(|(pid, _)| pid == receiver)
        .expect("no write by the receiving thread");
    let elsewhere: u64 = writes.calls[..first_here].iter().map(|(_, n)| n).sum();
    let later: Vec<&(String, u64)> = writes.calls[first_here..]
        .iter()
        .filter(|(pid, _)| pid != receiver)
        .collect();
    assert!(
        later.is_empty() && elsewhere <= 2 << 20,
        "the receiving thread (thread {receiver}) did not make the writes after the first \
         window: {elsewhere} bytes by another thread first, then {later:?}"
    );
}

/// The bytes of `state.json` claim as durable (0 when there is none).
fn state_bytes(ws: &Workspace) -> u64 {
    std::fs::read(ws.state_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["bytes_downloaded"].as_u64())
        .unwrap_or(0)
}

/// docs/API.md 9.7 with section 6: the rate cap sleeps in steps of 20 ms or more while the
/// stream waits on one shutdown subscription; SIGTERM in such a sleep (nginx sends at full
/// speed, the cap of 256 KiB/s keeps the daemon asleep most of the time) still ends the
/// download at once: exit status 0, the gathered bytes written and the position saved, never
/// beyond what the file holds.
#[test]
fn api_9_7_sigterm_during_a_rate_cap_pause_exits_zero_with_the_position_saved() {
    let ws = Workspace::new();
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let mut d = Daemon::start(
        &ws,
        &api,
        DaemonOptions {
            extra_toml: "max_download_bytes_per_s = 262144\n".into(),
            ..Default::default()
        },
    );
    let package = pseudo_random_bytes(4 << 20, 98);
    let url = nginx.put("capped.zip", &package);
    d.post_download(&download_body(VERSION, &url, "capped.zip", &package));
    wait_until(
        "bytes_downloaded > 0 in state.json",
        Duration::from_secs(30),
        || (state_bytes(&ws) > 0).then_some(()),
    );
    let status = d.sigterm_and_wait(Duration::from_secs(15));
    let output = d.output();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}\n{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
    let persisted = state_bytes(&ws);
    let on_disk = std::fs::metadata(ws.tmp_file("capped.zip"))
        .expect("the partial file")
        .len();
    assert!(
        persisted > 0 && persisted <= on_disk && on_disk < package.len() as u64,
        "position saved {persisted}, file {on_disk} of {} bytes",
        package.len()
    );
    let written = std::fs::read(ws.tmp_file("capped.zip")).expect("the partial file");
    assert!(
        package.starts_with(&written),
        "the partial file is a prefix of the package"
    );
}
