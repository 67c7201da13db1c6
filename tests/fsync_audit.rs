//! docs/API.md section 6, the part SIGKILL cannot show (it does not lose the page cache): the
//! real daemon runs a whole download and installation under `strace`, and the trace must show
//! the crash-safe write protocol on every file that matters:
//! - every rename onto `state.json` or the install journal comes after an fsync/fdatasync of
//!   the renamed file (after its last write) and is followed by an fsync of the target's
//!   directory (by the same thread, before it renames anything else);
//! - every rename onto a deployed file is covered by an earlier flush of the renamed file or of
//!   its whole filesystem (`syncfs`) after the file's last write, and is followed by an fsync
//!   of its directory before the journal is written again (the write that says `committed`);
//!   no deployed file is flushed on its own (flushes are per directory, not per file);
//! - the removal of `state.json` and of the journal is followed by an fsync of the directory;
//! - every `state.json` written during the download claims no more `bytes_downloaded` than
//!   the package file held when it was last fdatasync'd.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{serve_command, stage_of, write_config, API, BIN};
use common::procs::{self, KillOnDrop, Spawned};
use common::*;
use serde_json::{json, Value};

const VERSION: &str = "5.0.2";
const TRACED: &str =
    "trace=openat,write,pwrite64,fsync,fdatasync,syncfs,rename,renameat,renameat2,\
     unlink,unlinkat";

// ------------------------------------------------------------------ strace

/// Whether strace can trace here. Missing or not permitted: a panic under CI, else `false`
/// after printing why.
fn strace_usable(dir: &Path) -> bool {
    let out = dir.join("strace-probe.txt");
    let why = match Command::new("strace")
        .args(["-f", "-o"])
        .arg(&out)
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "`strace -f -o FILE true` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("strace cannot be run: {e}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why}: CI must install strace (scripts/test.sh does)");
    }
    eprintln!("skipping the fsync audit: {why} (run scripts/test.sh to install strace)");
    false
}

/// The daemon started by `strace -f -y ... tope-updater serve --config ...`.
struct TracedDaemon {
    strace: Child,
    addr: SocketAddr,
    trace: PathBuf,
    out_dir: PathBuf,
    work_dir: PathBuf,
}

impl TracedDaemon {
    fn start(ws: &Workspace, api: &FakeDeviceApi) -> TracedDaemon {
        let (config, port) = write_config(ws, api, &DaemonOptions::default());
        let trace = ws.path().join("strace.txt");
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-y", "-s", "2048", "-e", TRACED, "-o"])
            .arg(&trace)
            .arg(BIN);
        serve_command(&mut cmd, &config, ws.path(), "traced");
        let strace = cmd.spawn().expect("spawn strace");
        let mut d = TracedDaemon {
            strace,
            addr: ([127, 0, 0, 1], port).into(),
            trace,
            out_dir: ws.path().to_path_buf(),
            work_dir: ws.work_dir(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) =
                common::http::request(d.addr, "GET", &format!("{API}/progress"), None, b"")
            {
                if r.status == 200 {
                    break;
                }
            }
            if let Ok(Some(st)) = d.strace.try_wait() {
                panic!(
                    "strace exited ({st}) before the daemon answered:\n{}",
                    d.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the traced daemon did not answer /progress within 60 s:\n{}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn output(&self) -> String {
        let mut s = String::new();
        for f in ["traced.stdout", "traced.stderr"] {
            let text = std::fs::read_to_string(self.out_dir.join(f)).unwrap_or_default();
            s.push_str(&format!(
                "--- {f} ---\n{}\n",
                common::nginx::tail(&text, 40)
            ));
        }
        let log =
            std::fs::read_to_string(self.work_dir.join("logs/updater.log")).unwrap_or_default();
        s.push_str(&format!(
            "--- updater.log (tail) ---\n{}\n",
            common::nginx::tail(&log, 40)
        ));
        s
    }

    fn post_json(&self, path: &str, body: &Value) -> Value {
        let r = common::http::request(
            self.addr,
            "POST",
            &format!("{API}{path}"),
            Some("application/json"),
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.output()));
        r.json()
    }

    fn wait_stage(&self, stage: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let p = common::http::request(self.addr, "GET", &format!("{API}/progress"), None, b"")
                .map(|r| r.json())
                .unwrap_or(Value::Null);
            let s = stage_of(&p);
            if s == stage {
                return p;
            }
            assert!(
                s != "failed" && Instant::now() < deadline,
                "waiting for stage {stage}: {p}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The traced daemon: the tope-updater (not strace) running this test's config.
    fn daemon_pid(&self) -> i32 {
        let config = self.out_dir.join("updater.toml");
        wait_until("the daemon under strace", Duration::from_secs(5), || {
            procs::pids_named_with_arg("tope-updater", config.as_os_str())
                .first()
                .copied()
        })
    }

    /// SIGTERM to the daemon; once the programs it started are gone too, strace exits and
    /// the trace is complete.
    fn stop(&mut self, started_programs: &[&str]) {
        procs::signal(self.daemon_pid(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for name in started_programs {
                for pid in procs::pids_named(name) {
                    procs::signal(pid, rustix::process::Signal::KILL);
                }
            }
            if let Some(st) = self.strace.try_wait().expect("try_wait strace") {
                assert!(st.success(), "strace exited with {st}\n{}", self.output());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "strace did not exit within 30 s of SIGTERM to the daemon\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TracedDaemon {
    fn drop(&mut self) {
        if self.strace.try_wait().ok().flatten().is_none() {
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}

// ------------------------------------------------------------------ the trace

/// One system call, from the line that started it to the line that finished it.
#[derive(Debug, Clone)]
struct Call {
    /// Line numbers (1-based) of its start and of its end (the same unless it was
    /// interrupted by another thread's line).
    start: usize,
    end: usize,
    tid: i32,
    name: String,
    args: String,
    ret: String,
}

impl Call {
    fn ok(&self) -> bool {
        self.ret.starts_with('0')
    }

    /// The path strace -y shows next to the first argument (`7</a/b>`).
    fn fd_path(&self) -> Option<PathBuf> {
        fd_annotation(&self.args)
    }

    /// The path of the fd an openat returned.
    fn opened_path(&self) -> Option<PathBuf> {
        if self.ret.starts_with('-') {
            return None;
        }
        fd_annotation(&self.ret)
    }

    /// Bytes written (write, pwrite64).
    fn written(&self) -> u64 {
        self.ret
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// (from, to) of a rename, rename(at) or renameat2, made absolute with the dirfd paths.
    fn rename_paths(&self) -> Option<(PathBuf, PathBuf)> {
        let a = split_args(&self.args);
        let (from, to) = match self.name.as_str() {
            "rename" => (resolve(None, a.first()?)?, resolve(None, a.get(1)?)?),
            _ => (
                resolve(a.first(), a.get(1)?)?,
                resolve(a.get(2), a.get(3)?)?,
            ),
        };
        Some((from, to))
    }

    /// The path of an unlink or unlinkat.
    fn unlink_path(&self) -> Option<PathBuf> {
        let a = split_args(&self.args);
        match self.name.as_str() {
            "unlink" => resolve(None, a.first()?),
            _ => resolve(a.first(), a.get(1)?),
        }
    }
}

fn fd_annotation(s: &str) -> Option<PathBuf> {
    let open = s.find('<')?;
    let close = open + s[open..].find('>')?;
    Some(PathBuf::from(&s[open + 1..close]))
}

/// Splits an argument list at the commas outside strings.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_str = false;
    let mut escaped = false;
    for c in args.chars() {
        if in_str {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            cur.push(c);
        } else if c == ',' {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// A quoted path argument, relative ones joined to the dirfd's path (`AT_FDCWD</cwd>`).
fn resolve(dirfd: Option<&String>, quoted: &str) -> Option<PathBuf> {
    let inner = quoted.strip_prefix('"')?;
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let p = PathBuf::from(inner.replace("\\\"", "\"").replace("\\\\", "\\"));
    if p.is_absolute() {
        return Some(p);
    }
    Some(fd_annotation(dirfd?)?.join(p))
}

/// Parses `strace -f -o` output, joining `<unfinished ...>` / `<... resumed>` pairs.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<i32, (usize, String, String)> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.parse::<i32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                pending.insert(tid, (n, name.to_string(), args.trim_end().to_string()));
            }
            continue;
        }
        let (start, name, args_and_ret) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            let (start, args) = match pending.remove(&tid) {
                Some((s, pname, a)) if pname == name => (s, a),
                _ => (n, String::new()),
            };
            (start, name.to_string(), format!("{args}{tail}"))
        } else {
            let Some((name, tail)) = rest.split_once('(') else {
                continue;
            };
            (n, name.to_string(), tail.to_string())
        };
        let Some(eq) = args_and_ret.rfind(" = ") else {
            continue;
        };
        let args = args_and_ret[..eq].trim_end();
        let args = args.strip_suffix(')').unwrap_or(args).to_string();
        calls.push(Call {
            start,
            end: n,
            tid,
            name,
            args,
            ret: args_and_ret[eq + 3..].trim().to_string(),
        });
    }
    calls.sort_by_key(|c| (c.end, c.start));
    calls
}

fn is_sync(c: &Call) -> bool {
    matches!(c.name.as_str(), "fsync" | "fdatasync") && c.ok()
}

fn is_syncfs(c: &Call) -> bool {
    c.name == "syncfs" && c.ok()
}

fn is_write(c: &Call) -> bool {
    matches!(c.name.as_str(), "write" | "pwrite64")
}

fn is_rename(c: &Call) -> bool {
    c.name.starts_with("rename") && c.ok()
}

fn is_unlink(c: &Call) -> bool {
    c.name.starts_with("unlink") && c.ok()
}

fn show(c: &Call) -> String {
    format!(
        "line {}: [{}] {}({}) = {}",
        c.start,
        c.tid,
        c.name,
        shorten(&c.args),
        c.ret
    )
}

fn shorten(s: &str) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

/// After `after` (a rename or unlink of `target`), the same thread fsyncs the target's
/// directory before it renames or unlinks anything else.
fn dir_synced_after(calls: &[Call], after: &Call, target: &Path) -> Result<(), String> {
    let dir = target.parent().expect("target has a directory");
    for c in calls
        .iter()
        .filter(|c| c.tid == after.tid && c.start > after.end)
    {
        if is_sync(c) && c.fd_path().as_deref() == Some(dir) {
            return Ok(());
        }
        if is_rename(c) || is_unlink(c) {
            return Err(format!(
                "{}\n  is not followed by an fsync of {} before\n  {}",
                show(after),
                dir.display(),
                show(c)
            ));
        }
    }
    Err(format!(
        "{}\n  is never followed by an fsync of {}",
        show(after),
        dir.display()
    ))
}

/// After `after` (a rename onto the deployed file `target`), its directory is fsynced before
/// the journal is renamed into place again.
fn dir_synced_before_journal(
    calls: &[Call],
    after: &Call,
    target: &Path,
    journal: &Path,
) -> Result<(), String> {
    let dir = target.parent().expect("target has a directory");
    for c in calls.iter().filter(|c| c.start > after.end) {
        if is_sync(c) && c.fd_path().as_deref() == Some(dir) {
            return Ok(());
        }
        if is_rename(c) && c.rename_paths().is_some_and(|(_, to)| to == journal) {
            return Err(format!(
                "{}\n  is not followed by an fsync of {} before the journal is written:\n  {}",
                show(after),
                dir.display(),
                show(c)
            ));
        }
    }
    Err(format!(
        "{}\n  is never followed by an fsync of {}",
        show(after),
        dir.display()
    ))
}

/// Before `rename` (from -> to), `from` was fsynced after its last write and open, or (when
/// `fs_root` is given) its filesystem was flushed with `syncfs` on a descriptor below `fs_root`.
fn source_synced_before(
    calls: &[Call],
    rename: &Call,
    from: &Path,
    fs_root: Option<&Path>,
) -> Result<(), String> {
    let before: Vec<&Call> = calls.iter().filter(|c| c.end < rename.start).collect();
    let last_touch = before
        .iter()
        .filter(|c| {
            (is_write(c) && c.fd_path().as_deref() == Some(from))
                || (c.name == "openat" && c.opened_path().as_deref() == Some(from))
        })
        .map(|c| c.end)
        .max()
        .unwrap_or(0);
    let synced = before.iter().any(|c| {
        c.start > last_touch
            && ((is_sync(c) && c.fd_path().as_deref() == Some(from))
                || (is_syncfs(c)
                    && fs_root.is_some_and(|r| c.fd_path().is_some_and(|p| p.starts_with(r)))))
    });
    if synced {
        Ok(())
    } else {
        Err(format!(
            "{}\n  renames {} that was not fsynced after its last write (line {last_touch})",
            show(rename),
            from.display()
        ))
    }
}

/// `"bytes_downloaded": N` in the JSON text of a traced write.
fn bytes_downloaded_in(write_args: &str) -> Option<u64> {
    let key = "bytes_downloaded\\\": ";
    let at = write_args.find(key)? + key.len();
    let digits: String = write_args[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The files the audit watches.
struct Watched {
    /// The allowed root: the filesystem the deployed files live on.
    root: PathBuf,
    deployed: Vec<PathBuf>,
    state_json: PathBuf,
    journal: PathBuf,
    package: PathBuf,
}

/// What the audit found.
#[derive(Default)]
struct Audit {
    problems: Vec<String>,
    renames_per_target: HashMap<PathBuf, usize>,
    /// fsync/fdatasync of a deployed file or its temporary (should be none: flushes are per
    /// directory and per filesystem).
    per_file_flushes: usize,
    syncfs: usize,
    unlinks: usize,
    package_syncs: usize,
    /// `bytes_downloaded` of every state.json written, in order.
    checkpoints: Vec<u64>,
}

impl Audit {
    fn renames_onto(&self, p: &Path) -> usize {
        self.renames_per_target.get(p).copied().unwrap_or(0)
    }

    fn summary(&self, calls: usize) -> String {
        format!(
            "{calls} calls traced; renames per target {:?}; {} flushes of single deployed files; \
             {} syncfs; {} removals of state.json/journal; {} syncs of the package; \
             bytes_downloaded in state.json writes {:?}",
            self.renames_per_target,
            self.per_file_flushes,
            self.syncfs,
            self.unlinks,
            self.package_syncs,
            self.checkpoints
        )
    }
}

fn audit(calls: &[Call], w: &Watched) -> Audit {
    let mut out = Audit::default();
    // Renames onto the files that matter.
    for r in calls.iter().filter(|c| is_rename(c)) {
        let Some((from, to)) = r.rename_paths() else {
            out.problems.push(format!("cannot parse {}", show(r)));
            continue;
        };
        if !(w.deployed.contains(&to) || to == w.state_json || to == w.journal) {
            continue;
        }
        *out.renames_per_target.entry(to.clone()).or_default() += 1;
        let deployed = w.deployed.contains(&to);
        let fs_root = deployed.then_some(w.root.as_path());
        if let Err(e) = source_synced_before(calls, r, &from, fs_root) {
            out.problems.push(e);
        }
        let after = if deployed {
            dir_synced_before_journal(calls, r, &to, &w.journal)
        } else {
            dir_synced_after(calls, r, &to)
        };
        if let Err(e) = after {
            out.problems.push(e);
        }
    }
    // Flushes of single deployed files (or their temporaries), and of whole filesystems.
    for c in calls {
        if is_syncfs(c) {
            out.syncfs += 1;
        } else if is_sync(c) {
            let Some(p) = c.fd_path() else { continue };
            // A staging file beside it: the updater's own `.tope-stage-<id>-<n>` (docs/API.md
            // 9.6), or `<name>.tmp` as earlier versions named it.
            let tmp_of = |d: &PathBuf| {
                p.as_os_str() == format!("{}.tmp", d.display()).as_str()
                    || (p.parent() == d.parent()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(".tope-stage-")))
            };
            if w.deployed.iter().any(|d| *d == p || tmp_of(d)) {
                out.per_file_flushes += 1;
            }
        }
    }
    // Removals of state.json (after success) and of the journal.
    for u in calls.iter().filter(|c| is_unlink(c)) {
        let Some(p) = u.unlink_path() else { continue };
        if p == w.state_json || p == w.journal {
            out.unlinks += 1;
            if let Err(e) = dir_synced_after(calls, u, &p) {
                out.problems.push(e);
            }
        }
    }
    // The download: a state.json never claims bytes that were not fdatasync'd.
    let state_tmp = PathBuf::from(format!("{}.tmp", w.state_json.display()));
    let mut written = 0u64;
    let mut durable = 0u64;
    let mut last_state_write: HashMap<i32, Option<u64>> = HashMap::new();
    for c in calls {
        let fd = c.fd_path();
        if is_write(c) && fd.as_deref() == Some(w.package.as_path()) {
            written += c.written();
        } else if is_sync(c) && fd.as_deref() == Some(w.package.as_path()) {
            durable = written;
            out.package_syncs += 1;
        } else if is_write(c) && fd.as_deref() == Some(state_tmp.as_path()) {
            last_state_write.insert(c.tid, bytes_downloaded_in(&c.args));
        } else if is_rename(c) && c.rename_paths().is_some_and(|(_, to)| to == w.state_json) {
            match last_state_write.get(&c.tid).copied().flatten() {
                Some(claimed) => {
                    if claimed > durable {
                        out.problems.push(format!(
                            "{}\n  persists bytes_downloaded {claimed} while only {durable} \
                             bytes of {} were fdatasync'd",
                            show(c),
                            w.package.display()
                        ));
                    }
                    out.checkpoints.push(claimed);
                }
                None => out.problems.push(format!(
                    "{}\n  no traced write of state.json.tmp with bytes_downloaded before it",
                    show(c)
                )),
            }
        }
    }
    out
}

// ------------------------------------------------------------------ the test

#[test]
fn contract_6_every_rename_is_fsynced_before_and_its_directory_after() {
    let ws = Workspace::new();
    if !strace_usable(ws.path()) {
        return;
    }
    let Some(nginx) = ws.nginx() else { return };
    let api = FakeDeviceApi::start();
    let proc_name = unique_name("fsau");
    let _kill = KillOnDrop::names(&[&proc_name]);

    // Module prog: a running program (stopped, replaced, started again). Module files: a
    // directory with existing files, a new subdirectory and a 2 MiB blob.
    let prog = ws.root().join("prog").join(&proc_name);
    write_file(&prog, &sleep_binary_with_marker("audit-old"), 0o755);
    let _old = Spawned::spawn(Command::new(&prog).arg("3600"));
    procs::wait_for_named(&proc_name, Duration::from_secs(5));
    let files_dst = ws.root().join("files");
    write_file(&files_dst.join("a.conf"), b"old a\n", 0o644);
    write_file(&files_dst.join("blob.bin"), b"old blob\n", 0o644);
    let m = manifest(
        VERSION,
        vec![
            json!({"name": "prog", "src": format!("prog/{proc_name}"),
                   "dst": prog.display().to_string(), "process_name": proc_name,
                   "start_cmd": [prog.display().to_string(), "3600"], "restart_order": 1}),
            json!({"name": "files", "src": "files", "dst": files_dst.display().to_string()}),
        ],
    );
    let package = build_package(
        &m,
        &[
            Entry::file(
                &format!("prog/{proc_name}"),
                &sleep_binary_with_marker("audit-new"),
                0o755,
            ),
            Entry::file("files/a.conf", b"new a\n", 0o644),
            Entry::file(
                "files/blob.bin",
                &pseudo_random_bytes(2 * 1024 * 1024, 5),
                0o644,
            ),
            Entry::file("files/sub/b.conf", b"new b\n", 0o644),
        ],
    );
    let deployed: Vec<PathBuf> = vec![
        prog.clone(),
        files_dst.join("a.conf"),
        files_dst.join("blob.bin"),
        files_dst.join("sub/b.conf"),
    ];
    // At nginx's /slow/ rate the download lasts seconds, so every 5 % step gets its own
    // checkpoint (at loopback speed the checkpointer rightly folds them into a few).
    let url = nginx.put("slow/audit.zip", &package);

    let mut d = TracedDaemon::start(&ws, &api);
    let answer = d.post_json(
        "/download",
        &download_body(VERSION, &url, "audit.zip", &package),
    );
    assert_eq!(answer["data"]["status"], "downloading", "{answer}");
    d.wait_stage("toInstall", Duration::from_secs(120));
    let answer = d.post_json("/update", &json!({"version": VERSION}));
    assert_eq!(answer["data"]["status"], "installing", "{answer}");
    d.wait_stage("success", Duration::from_secs(120));
    assert!(
        has_marker(&prog, "audit-new"),
        "the program was not deployed"
    );
    d.stop(&[&proc_name]);

    let text = std::fs::read_to_string(&d.trace).expect("read the strace output");
    let calls = parse_trace(&text);
    let journal = ws.work_dir().join("backups/journal.json");
    let watched = Watched {
        root: ws.root(),
        deployed: deployed.clone(),
        state_json: ws.state_file(),
        journal: journal.clone(),
        package: ws.tmp_file("audit.zip"),
    };
    let found = audit(&calls, &watched);
    let summary = found.summary(calls.len());
    eprintln!("fsync audit: {summary}");
    assert!(
        found.problems.is_empty(),
        "{} violation(s) of the write protocol:\n{}\n\n{summary}",
        found.problems.len(),
        found.problems.join("\n")
    );
    for p in &deployed {
        assert!(
            found.renames_onto(p) >= 1,
            "no traced rename onto {} (is the trace complete?): {summary}",
            p.display()
        );
    }
    assert!(
        found.renames_onto(&journal) >= 5,
        "the journal must be written at staging, staged, stopping, swapping and committed: \
         {summary}"
    );
    assert_eq!(
        found.per_file_flushes, 0,
        "deployed files are flushed by one syncfs, not one by one: {summary}"
    );
    assert!(
        found.syncfs >= 1,
        "no syncfs barrier before the renames: {summary}"
    );
    // About 4 s at nginx's /slow/ rate: the first 5 % step at once, one more 2 s later, and
    // the end (docs/API.md 9.7).
    let rising = found.checkpoints.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        rising >= 3 && found.package_syncs >= 3,
        "the download must checkpoint as it goes (synced package, rising bytes_downloaded): \
         {summary}"
    );
    assert!(
        found.unlinks >= 2,
        "state.json and the journal are removed after success: {summary}"
    );
}

/// The checker itself, on hand-written traces (including lines split by another thread): the
/// right protocol passes, each missing step is reported.
#[test]
fn audit_reports_each_missing_step() {
    let w = Watched {
        root: PathBuf::from("/r"),
        deployed: vec![PathBuf::from("/r/app/a.bin")],
        state_json: PathBuf::from("/w/tmp/state.json"),
        journal: PathBuf::from("/w/backups/journal.json"),
        package: PathBuf::from("/w/tmp/p.zip"),
    };
    let good = r#"10 openat(AT_FDCWD</w>, "/w/tmp/p.zip", O_RDWR|O_CREAT|O_CLOEXEC, 0666) = 5</w/tmp/p.zip>
10 write(5</w/tmp/p.zip>, "abcd", 4) = 4
10 fdatasync(5</w/tmp/p.zip> <unfinished ...>
11 write(9<anon_inode:[eventfd]>, "\1\0\0\0\0\0\0\0", 8) = 8
10 <... fdatasync resumed>)          = 0
10 openat(AT_FDCWD</w>, "/w/tmp/state.json.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 6</w/tmp/state.json.tmp>
10 write(6</w/tmp/state.json.tmp>, "{\n  \"bytes_downloaded\": 4,\n  \"stage\": \"downloading\"\n}", 52) = 52
10 fsync(6</w/tmp/state.json.tmp>)   = 0
10 rename("/w/tmp/state.json.tmp", "/w/tmp/state.json") = 0
10 openat(AT_FDCWD</w>, "/w/tmp", O_RDONLY|O_CLOEXEC) = 6</w/tmp>
10 fsync(6</w/tmp>)                  = 0
12 openat(AT_FDCWD</w>, "/r/app/a.bin.tmp", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 7</r/app/a.bin.tmp>
12 write(7</r/app/a.bin.tmp>, "new", 3) = 3
12 syncfs(8</r/app>) = 0
12 renameat(8</r/app>, "a.bin.tmp", 8</r/app>, "a.bin" <unfinished ...>
10 write(5</w/tmp/p.zip>, "efgh", 4) = 4
12 <... renameat resumed>) = 0
12 fsync(8</r/app>) = 0
12 openat(AT_FDCWD</w>, "/w/backups/journal.json.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 6</w/backups/journal.json.tmp>
12 write(6</w/backups/journal.json.tmp>, "{}", 2) = 2
12 fsync(6</w/backups/journal.json.tmp>) = 0
12 rename("/w/backups/journal.json.tmp", "/w/backups/journal.json") = 0
12 openat(AT_FDCWD</w>, "/w/backups", O_RDONLY|O_CLOEXEC) = 7</w/backups>
12 fsync(7</w/backups>) = 0
12 unlink("/w/backups/journal.json") = 0
12 openat(AT_FDCWD</w>, "/w/backups", O_RDONLY|O_CLOEXEC) = 7</w/backups>
12 fsync(7</w/backups>) = 0
"#;
    let ok = audit(&parse_trace(good), &w);
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.renames_onto(Path::new("/r/app/a.bin")), 1);
    assert_eq!((ok.per_file_flushes, ok.syncfs), (0, 1));
    assert_eq!(ok.checkpoints, vec![4]);
    assert_eq!((ok.unlinks, ok.package_syncs), (1, 1));

    // (what is replaced, by what): each breaks one step of the protocol.
    let broken = [
        // No flush of the new file (nor of its filesystem) before its rename.
        ("12 syncfs(8</r/app>) = 0\n", ""),
        // A flush of another filesystem only.
        ("12 syncfs(8</r/app>) = 0\n", "12 syncfs(9</w/tmp>) = 0\n"),
        // A write after the flush.
        (
            "12 syncfs(8</r/app>) = 0\n",
            "12 syncfs(8</r/app>) = 0\n12 write(7</r/app/a.bin.tmp>, \"x\", 1) = 1\n",
        ),
        // No fsync of the directory before the journal is written again.
        ("12 fsync(8</r/app>) = 0\n", ""),
        // No fsync of the journal before its rename.
        ("12 fsync(6</w/backups/journal.json.tmp>) = 0\n", ""),
        // No fsync of the directory after the unlink.
        ("12 unlink(\"/w/backups/journal.json\") = 0\n12 openat(AT_FDCWD</w>, \"/w/backups\", O_RDONLY|O_CLOEXEC) = 7</w/backups>\n12 fsync(7</w/backups>) = 0\n", "12 unlink(\"/w/backups/journal.json\") = 0\n"),
        // state.json claims more bytes than were synced.
        ("bytes_downloaded\\\": 4", "bytes_downloaded\\\": 8"),
    ];
    for (remove, replacement) in broken {
        let text = good.replacen(remove, replacement, 1);
        assert_ne!(text, good);
        let found = audit(&parse_trace(&text), &w);
        assert!(
            !found.problems.is_empty(),
            "the audit missed a broken protocol (`{}` replaced):\n{text}",
            remove.trim()
        );
    }
}
