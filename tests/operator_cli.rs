//! Commands for operators, run as the real binary: `check-config`, `--version` with the git
//! commit, and the man pages generated from the command line definition.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::daemon::BIN;
use common::*;

#[path = "../examples/man.rs"]
#[allow(dead_code)]
mod man;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run tope-updater")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The effective configuration: every key, the file's values and the defaults for the rest,
/// as TOML that check-config (and so the daemon) reads back to the same output.
#[test]
fn check_config_prints_the_effective_configuration() {
    let ws = Workspace::new();
    let config = ws.path().join("config.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:2345\"\nallowed_roots = [\"/opt/tope\", \"/srv/./printer\"]\n\
         log_level = \"debug\"\nwork_dir = \"/var/lib/tope-updater\"\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for line in [
        "listen = \"127.0.0.1:2345\"",
        "allowed_roots = [\"/opt/tope\", \"/srv/printer\"]",
        "log_level = \"debug\"",
        "work_dir = \"/var/lib/tope-updater\"",
        // Defaults of the keys the file leaves out.
        "device_api_url = \"http://127.0.0.1:9080\"",
        "stop_timeout_s = 10",
        "trust_window_hours = 24",
        "max_package_size = 4294967296",
        "allow_http = false",
        "settle_s = 3",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "missing `{line}`:\n{printed}"
        );
    }
    // Fed back, the printout gives the same configuration.
    let again = ws.path().join("effective.toml");
    std::fs::write(&again, &printed).unwrap();
    let out2 = run(&["check-config", "--config", again.to_str().unwrap()]);
    assert_eq!(out2.status.code(), Some(0), "{}", text(&out2.stderr));
    let body = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("# tope-updater"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&text(&out2.stdout)), body(&printed));
}

/// A bad configuration: exit 2 and a message naming the key (the daemon's own rules).
#[test]
fn check_config_exits_2_naming_the_bad_key() {
    let ws = Workspace::new();
    let missing_ca = ws.path().join("no-such-ca.pem");
    for (toml, key) in [
        ("lisen = \"127.0.0.1:1\"\n".to_string(), "lisen"),
        ("stop_timeout_s = 0\n".to_string(), "stop_timeout_s"),
        ("log_level = \"loud\"\n".to_string(), "log_level"),
        ("allowed_roots = [\"/\"]\n".to_string(), "allowed_roots"),
        (
            format!("ca_file = {:?}\n", missing_ca.display().to_string()),
            "ca_file",
        ),
    ] {
        let config = ws.path().join("bad.toml");
        std::fs::write(&config, &toml).unwrap();
        let out = run(&["check-config", "--config", config.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(
            err.contains(key),
            "{toml}: the message must name `{key}`: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing printed on stdout for {toml}"
        );
    }
    let out = run(&[
        "check-config",
        "--config",
        ws.path().join("absent.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("absent.toml"));
}

/// `--version`: the crate version and the commit the binary was built from.
#[test]
fn version_names_the_git_commit() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let v = text(&out.stdout);
    let want_prefix = format!("tope-updater {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want_prefix), "{v}");
    let commit = v
        .trim()
        .strip_prefix(&want_prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{v}"));
    let expected = match std::env::var("TOPE_UPDATER_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => Some(c),
        _ => Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| text(&o.stdout).trim().to_string()),
    };
    match expected {
        Some(c) => assert_eq!(commit, c, "{v}"),
        None => assert_eq!(commit, "unknown", "{v}"),
    }
}

/// The man pages: one for the program and one per subcommand, valid roff (groff reports no
/// warning), naming every subcommand and option of the command line.
#[test]
fn man_pages_cover_every_command_and_render_cleanly() {
    let ws = Workspace::new();
    let pages = man::write_pages(&ws.path().join("man")).expect("generate the man pages");
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[0], "tope-updater.1");
    for page in ["tope-updater-serve.1", "tope-updater-check-config.1"] {
        assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
    }
    let main = std::fs::read_to_string(&pages[0]).unwrap();
    for needle in [
        "check\\-config",
        "\\-\\-config",
        "/etc/tope\\-updater/config.toml",
        "EXIT STATUS",
        env!("CARGO_PKG_VERSION"),
    ] {
        assert!(main.contains(needle), "`{needle}` missing from the page");
    }
    if !Path::new("/usr/bin/groff").exists() {
        if std::env::var_os("CI").is_some() {
            panic!("CI must install groff-base (see scripts/test.sh)");
        }
        eprintln!("skipping the roff check: groff not installed");
        return;
    }
    for page in &pages {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(page)
            .output()
            .expect("run groff");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            text(&out.stderr)
        );
    }
}

/// Runs the binary with `args`, killing it if it has not exited within `limit`.
fn run_bounded(args: &[&str], limit: std::time::Duration) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tope-updater");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for tope-updater"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("tope-updater {args:?} still running after {limit:?}");
        }
    }
}

/// docs/API.md 9.6: a `--config` that is a FIFO, a device, a huge file or a symlink to a
/// secret is refused at once (exit 2), never read whole, and a parse error shows a line and
/// a column, never the file's content. `status` reads its config the same way.
#[test]
fn contract_9_6_config_files_are_read_bounded_and_never_echoed() {
    use std::time::Duration;
    let ws = Workspace::new();
    let fifo = ws.path().join("fifo.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let huge = ws.path().join("huge.toml");
    // 2 MiB of valid TOML comments: refused for its size, not for its syntax.
    std::fs::write(&huge, "# padding\n".repeat(210_000)).unwrap();
    let secret = ws.path().join("shadow");
    std::fs::write(
        &secret,
        "root:$6$Zq8Secretsalt$S3cr3tHashValue0123456789:19000:0:99999:7:::\n",
    )
    .unwrap();
    let linked = ws.path().join("linked.toml");
    std::os::unix::fs::symlink(&secret, &linked).unwrap();
    for (path, why) in [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (huge.as_path(), "more than"),
        (linked.as_path(), "line 1, column"),
    ] {
        for cmd in ["check-config", "status"] {
            let out = run_bounded(
                &[cmd, "--config", path.to_str().unwrap()],
                Duration::from_secs(20),
            );
            let err = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd} {}: {err}",
                path.display()
            );
            assert!(err.contains(why), "{cmd} {}: {err}", path.display());
            for leaked in ["Secretsalt", "S3cr3tHash", "19000", "root:"] {
                assert!(
                    !err.contains(leaked) && !text(&out.stdout).contains(leaked),
                    "{cmd} echoed the file's content: {err}"
                );
            }
        }
    }
    // A symlink to a good configuration is followed.
    let good = ws.path().join("good.toml");
    std::fs::write(&good, "listen = \"127.0.0.1:2346\"\n").unwrap();
    let link = ws.path().join("link.toml");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let out = run_bounded(
        &["check-config", "--config", link.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("listen = \"127.0.0.1:2346\""));
}
