//! Starting a process again exactly as it ran before an installation stopped it (docs/API.md
//! 9.6): its argv as raw bytes, its working directory, user, group, supplementary groups and
//! environment, as recorded from `/proc` before it was stopped.
//!
//! - Without systemd the program is a child of the updater (in a process group of its own,
//!   reaped by a thread), the credentials set in the child before `exec`.
//! - Under systemd it is a transient service started by `systemd-run` with `--uid`, `--gid` and
//!   `SupplementaryGroups=`. systemd takes command lines and variables as UTF-8 text, so the
//!   exact bytes go through a `/bin/sh -c` script that receives every argument, the working
//!   directory and every variable octal-escaped (ASCII), decodes them with `printf '%b'`,
//!   changes to the directory and `exec`s `env -i <variables> <argv>`: the program runs with
//!   nothing but its own environment, under its own name.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::childenv::ChildEnv;
use super::error::ProcessError;
use super::spawn::{
    check_executable, detached, is_executable, run_launch, spawn_reaped, systemd_run_program,
    unit_name, unit_options, Started,
};

/// How a process ran. `None` (a journal of an earlier version) keeps the updater's own.
#[derive(Debug, Clone, Copy)]
pub struct AsItRan<'a> {
    pub argv: &'a [OsString],
    pub cwd: Option<&'a Path>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Option<&'a [u32]>,
    /// `NAME=value` entries; `None`: the updater's environment.
    pub env: Option<&'a [OsString]>,
    /// Its `comm`: a script the kernel ran through its `#!` line is executed again itself (see
    /// [`command_line`]).
    pub comm: Option<&'a OsStr>,
}

/// The command to execute: `argv`, or, for a script the kernel ran through its `#!` line (its
/// `comm` is the script's name), the script and what follows it, so that the kernel builds the
/// same argv again and the process keeps its name. A script that is no longer an executable
/// file starting with `#!` is run through its interpreter, as recorded.
fn command_line<'a>(how: &AsItRan<'a>, cwd: &Path) -> &'a [OsString] {
    let Some(comm) = how.comm else {
        return how.argv;
    };
    let args: Vec<&[u8]> = how.argv.iter().map(|a| a.as_bytes()).collect();
    let Some(i) = super::names::shebang_script(&args, comm.as_bytes()) else {
        return how.argv;
    };
    let script = cwd.join(&how.argv[i]);
    let mut head = [0u8; 2];
    let starts_with_shebang = std::fs::File::open(&script)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"#!");
    if starts_with_shebang && is_executable(&script) {
        &how.argv[i..]
    } else {
        how.argv
    }
}

/// Start the process again as it ran (see the module documentation). `DEPLOYMENT_FAILED` when
/// `argv` is empty or the program cannot be started.
pub fn start_as_it_ran(how: &AsItRan) -> Result<Started, ProcessError> {
    let cwd = how.cwd.filter(|d| d.is_dir()).unwrap_or(Path::new("/"));
    let argv = command_line(how, cwd);
    let Some((program, args)) = argv.split_first() else {
        return Err(ProcessError::EmptyStart);
    };
    let shown = super::show(how.argv);
    if let Some(systemd_run) = systemd_run_program() {
        return launch_unit(&systemd_run, how, argv, cwd, &shown);
    }
    let mut cmd = detached(program, args, cwd);
    match how.env {
        Some(env) => {
            cmd.env_clear();
            for entry in env {
                if let Some((k, v)) = split_var(entry) {
                    cmd.env(k, v);
                }
            }
        }
        // Not recorded (a journal of an earlier version): the tools' environment, never the
        // updater's own (docs/API.md 9.6).
        None => ChildEnv::tool().apply(&mut cmd),
    }
    set_credentials(&mut cmd, how);
    let pid = spawn_reaped(&mut cmd, &shown)?;
    tracing::info!("started {shown} again as it ran (pid {pid})");
    Ok(Started::Process { pid })
}

/// `NAME=value` split at its first `=`; `None` without one or with an empty name.
fn split_var(entry: &OsStr) -> Option<(&OsStr, &OsStr)> {
    let b = entry.as_bytes();
    let eq = b.iter().position(|&c| c == b'=').filter(|&i| i > 0)?;
    Some((OsStr::from_bytes(&b[..eq]), OsStr::from_bytes(&b[eq + 1..])))
}

/// Groups, then group, then user, set in the child before `exec` (std's `uid`/`gid` would
/// drop the supplementary groups, and set the user before a `pre_exec` could set them).
fn set_credentials(cmd: &mut Command, how: &AsItRan) {
    if how.uid.is_none() && how.gid.is_none() && how.groups.is_none() {
        return;
    }
    use rustix::process::{Gid, Uid};
    let groups: Option<Vec<Gid>> = how
        .groups
        .map(|g| g.iter().map(|&g| Gid::from_raw(g)).collect());
    let gid = how.gid.map(Gid::from_raw);
    let uid = how.uid.map(Uid::from_raw);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe operations are allowed. It makes setgroups, setresgid and setresuid
    // system calls through rustix (raw syscalls: no allocation, no lock, no libc state) on
    // values built before the fork and moved into the closure, which it only reads. The child
    // has a single thread, so the per-thread calls set the whole process's credentials.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(g) = &groups {
                rustix::thread::set_thread_groups(g)?;
            }
            if let Some(g) = gid {
                rustix::thread::set_thread_res_gid(g, g, g)?;
            }
            if let Some(u) = uid {
                rustix::thread::set_thread_res_uid(u, u, u)?;
            }
            Ok(())
        });
    }
}

/// A byte string as `printf '%b'` reads it: safe bytes as they are, any other as `\0ooo`.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'=' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\0{b:03o}"));
        }
    }
    out
}

/// The script of a systemd start: its arguments are the working directory, then the
/// variables and the argv, each escaped.
const SCRIPT: &str = "d=$(printf '%bx' \"$1\"); shift; k=$#; \
    for w; do a=$(printf '%bx' \"$w\"); set -- \"$@\" \"${a%x}\"; done; shift \"$k\"; \
    cd \"${d%x}\" || exit 127; exec env -i \"$@\"";

/// Start `how` as a transient service through `systemd-run` (see the module documentation).
fn launch_unit(
    systemd_run: &Path,
    how: &AsItRan,
    argv: &[OsString],
    cwd: &Path,
    shown: &str,
) -> Result<Started, ProcessError> {
    let program = Path::new(&argv[0]);
    check_executable(program, cwd, shown)?;
    let unit = unit_name(program);
    let mut cmd = Command::new(systemd_run);
    // systemd-run itself gets the tools' environment; the unit gets the recorded one.
    ChildEnv::tool().apply(&mut cmd);
    cmd.arg(format!("--unit={unit}"));
    if let Some(u) = how.uid {
        cmd.arg(format!("--uid={u}"));
    }
    if let Some(g) = how.gid {
        cmd.arg(format!("--gid={g}"));
    }
    if let Some(groups) = how.groups.filter(|g| !g.is_empty()) {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--property=SupplementaryGroups={}", list.join(" ")));
    }
    unit_options(&mut cmd)
        .args(["/bin/sh", "-c", SCRIPT, "sh"])
        .arg(escape(cwd.as_os_str().as_bytes()));
    // Without a recorded environment (a journal of an earlier version): the tools'
    // environment, never the updater's own (docs/API.md 9.6).
    let tool: Vec<OsString>;
    let env = match how.env {
        Some(e) => e,
        None => {
            tool = ChildEnv::tool()
                .vars()
                .into_iter()
                .map(|(k, v)| {
                    let mut e = OsString::from(k);
                    e.push("=");
                    e.push(v);
                    e
                })
                .collect();
            &tool
        }
    };
    let env: Vec<&OsString> = env.iter().filter(|e| split_var(e).is_some()).collect();
    cmd.args(env.iter().map(|e| escape(e.as_bytes())));
    // `env` takes a first word holding `=` for a variable: such a program is given by path.
    let mut argv = argv.iter();
    if let Some(first) = argv.next() {
        let b = first.as_bytes();
        if b.contains(&b'=') && !b.starts_with(b"/") {
            cmd.arg(escape(&[b"./", b].concat()));
        } else {
            cmd.arg(escape(b));
        }
    }
    cmd.args(argv.map(|a| escape(a.as_bytes())));
    run_launch(cmd, shown, None)?;
    tracing::info!("started {shown} again as it ran, as unit {unit}");
    Ok(Started::Unit { name: unit })
}

#[cfg(test)]
mod tests {
    use super::super::spawn::SYSTEMD_RUN_OVERRIDE;
    use super::super::tests::{fake_systemd_run, unique_name, wait_found};
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStringExt;
    use std::time::Duration;

    /// A shell under a unique name (a symlink: `comm` is the link's name) and how it runs:
    /// a loop, a non-UTF-8 argument, an empty one.
    fn shell(dir: &Path) -> (String, Vec<OsString>) {
        let name = unique_name();
        let link = dir.join(&name);
        std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
        let argv = vec![
            link.into_os_string(),
            "-c".into(),
            "while :; do sleep 1; done".into(),
            OsString::from_vec(b"x=\xff\xfe %s \\0101 'q'".to_vec()),
            "".into(),
        ];
        (name, argv)
    }

    fn proc_list(pid: i32, file: &str) -> Vec<Vec<u8>> {
        let data = fs::read(format!("/proc/{pid}/{file}")).unwrap();
        let body = data.strip_suffix(&[0]).unwrap_or(&data).to_vec();
        body.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
    }

    fn bytes(list: &[OsString]) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = list.iter().map(|a| a.as_bytes().to_vec()).collect();
        v.sort();
        v
    }

    #[test]
    fn docs_api_9_6_plain_restart_as_it_ran() {
        let d = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (name, argv) = shell(d.path());
        let env = vec![
            OsString::from("PRINTER_PORT=/dev/ttyS3"),
            OsString::from_vec(b"RAW=\x80".to_vec()),
        ];
        let root = rustix::process::getuid().is_root();
        let how = AsItRan {
            argv: &argv,
            cwd: Some(d.path()),
            uid: root.then_some(65534),
            gid: root.then_some(65534),
            groups: root.then_some(&[4, 20][..]),
            env: Some(&env),
            comm: None,
        };
        let Started::Process { pid } = start_as_it_ran(&how).unwrap() else {
            panic!("a plain start")
        };
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        let pid = pid as i32;
        assert_eq!(found[0].pid, pid);
        let cmdline: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        assert_eq!(proc_list(pid, "cmdline"), cmdline);
        let mut seen = proc_list(pid, "environ");
        seen.sort();
        assert_eq!(seen, bytes(&env));
        assert_eq!(fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), d.path());
        if root {
            let who = super::super::identity(&found[0]).unwrap().unwrap();
            assert_eq!((who.uid, who.gid, who.groups), (65534, 65534, vec![4, 20]));
        }
        super::super::stop_by_name(&name, Duration::from_secs(5)).unwrap();
        assert!(start_as_it_ran(&AsItRan { argv: &[], ..how }).is_err());
    }

    #[test]
    fn docs_api_9_6_systemd_restart_as_it_ran_keeps_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let fake = fake_systemd_run(d.path());
        SYSTEMD_RUN_OVERRIDE.with(|o| *o.borrow_mut() = Some(fake));
        let (name, argv) = shell(d.path());
        let cwd = d.path().join(OsString::from_vec(b"dir \xe9 'x'".to_vec()));
        fs::create_dir(&cwd).unwrap();
        let env = vec![
            OsString::from("PRINTER_PORT=/dev/ttyS3"),
            OsString::from_vec(b"RAW=\x80\n%b $HOME `x`".to_vec()),
        ];
        let how = AsItRan {
            argv: &argv,
            cwd: Some(&cwd),
            uid: Some(65534),
            gid: Some(100),
            groups: Some(&[4, 20]),
            env: Some(&env),
            comm: None,
        };
        let started = start_as_it_ran(&how).unwrap();
        SYSTEMD_RUN_OVERRIDE.with(|o| *o.borrow_mut() = None);
        assert!(matches!(started, Started::Unit { .. }), "{started:?}");
        let found = wait_found(&name, 1);
        assert_eq!(found.len(), 1);
        let pid = found[0].pid;
        let cmdline: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        assert_eq!(proc_list(pid, "cmdline"), cmdline);
        let mut seen = proc_list(pid, "environ");
        seen.sort();
        assert_eq!(seen, bytes(&env));
        assert_eq!(fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), cwd);
        // The options before `--` (the command after it holds non-UTF-8 bytes).
        let log = String::from_utf8_lossy(&fs::read(d.path().join("log")).unwrap()).into_owned();
        let opts: Vec<&str> = log.lines().skip(1).take_while(|l| *l != "--").collect();
        assert_eq!(
            opts,
            [
                "--uid=65534",
                "--gid=100",
                "--property=SupplementaryGroups=4 20",
                "--property=RemainAfterExit=yes",
                "--collect",
                "--quiet",
                "--no-ask-password"
            ]
        );
        super::super::stop_by_name(&name, Duration::from_secs(5)).unwrap();
    }
}
