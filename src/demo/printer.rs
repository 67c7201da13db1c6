//! The printer the demo updates, inside the sandbox: version 1.0.0 of two modules
//! (`printerd`, a script that runs, and `web-ui`, a directory), the package of version 1.1.0,
//! and the `printerd` processes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Context, DemoResult, ASSET_BYTES, NEW_VERSION, OLD_VERSION};
use crate::kit::{self, Entry};

/// The package the demo serves.
pub(super) struct Package {
    pub bytes: Vec<u8>,
    pub md5: String,
    /// Strong ETag, derived from the content.
    pub etag: String,
}

/// Name of the process the package restarts.
const PRINTERD: &str = "printerd";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn printerd_script(version: &str, log: &Path) -> String {
    // `sleep & wait` so that SIGTERM is handled at once, not after the sleep.
    format!(
        "#!/bin/sh\n\
         # printerd {version}: stand-in for the printer's motion daemon.\n\
         LOG={log}\n\
         echo \"$(date -u +%H:%M:%S) printerd {version} started (pid $$)\" >> \"$LOG\"\n\
         trap 'echo \"$(date -u +%H:%M:%S) printerd {version} stopped by SIGTERM (pid $$)\" >> \"$LOG\"; exit 0' TERM\n\
         while :; do sleep 1 & wait $!; done\n",
        log = shell_quote(&log.to_string_lossy()),
    )
}

fn index_html(version: &str) -> String {
    format!(
        "<!doctype html>\n<title>Printer {version}</title>\n<h1>Printer web UI {version}</h1>\n<script src=\"app.js\"></script>\n"
    )
}

fn app_js(version: &str) -> String {
    format!("console.log(\"web-ui {version}\");\n")
}

/// Version 1.1.0 of both modules, with an incompressible asset that makes it about 8 MB.
pub(super) fn build_package(
    sandbox: &Path,
    printerd_dst: &Path,
    web_ui_dst: &Path,
) -> DemoResult<Package> {
    let manifest = kit::manifest(
        NEW_VERSION,
        vec![
            json!({
                "name": "printer-daemon",
                "src": "modules/printerd/printerd",
                "dst": printerd_dst,
                "process_name": PRINTERD,
                "start_cmd": [printerd_dst],
                "restart_order": 2
            }),
            json!({
                "name": "web-ui",
                "src": "modules/web-ui",
                "dst": web_ui_dst,
                "restart_order": 1
            }),
        ],
    );
    let log = sandbox.join("printerd.log");
    let bytes = kit::build_package(
        &manifest,
        &[
            Entry::dir("modules/"),
            Entry::dir("modules/printerd/"),
            Entry::dir("modules/web-ui/"),
            Entry::dir("modules/web-ui/assets/"),
            Entry::file(
                "modules/printerd/printerd",
                printerd_script(NEW_VERSION, &log).as_bytes(),
                0o755,
            ),
            Entry::file(
                "modules/web-ui/index.html",
                index_html(NEW_VERSION).as_bytes(),
                0o644,
            ),
            Entry::file(
                "modules/web-ui/app.js",
                app_js(NEW_VERSION).as_bytes(),
                0o644,
            ),
            Entry::file(
                "modules/web-ui/assets/texture.bin",
                &kit::pseudo_random_bytes(ASSET_BYTES, 0x746f_7065_2d75_7064),
                0o644,
            ),
        ],
    )
    .ctx("cannot build the package")?;
    let md5 = kit::md5_hex(&bytes);
    let etag = format!("\"{md5}\"");
    Ok(Package { bytes, md5, etag })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> DemoResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, data).ctx(format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx(format!("cannot chmod {}", path.display()))
}

/// Version 1.0.0 of both modules, where the package will deploy.
pub(super) fn install_old_version(
    sandbox: &Path,
    printerd: &Path,
    web_ui: &Path,
) -> DemoResult<()> {
    let log = sandbox.join("printerd.log");
    write_file(
        printerd,
        printerd_script(OLD_VERSION, &log).as_bytes(),
        0o755,
    )?;
    write_file(
        &web_ui.join("index.html"),
        index_html(OLD_VERSION).as_bytes(),
        0o644,
    )?;
    write_file(
        &web_ui.join("app.js"),
        app_js(OLD_VERSION).as_bytes(),
        0o644,
    )
}

/// Start printerd 1.0.0 as the printer would have it running. A task reaps it when the
/// updater stops it (a zombie would look alive in `/proc`).
pub(super) fn start_old_printerd(path: &Path) -> DemoResult<(u32, tokio::task::JoinHandle<()>)> {
    let mut child = tokio::process::Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ctx(format!("cannot start {}", path.display()))?;
    let pid = child.id().unwrap_or(0);
    let reaper = tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok((pid, reaper))
}

/// Live (not zombie) processes named `printerd` running the script at `path`. The script's
/// shell forks for `sleep`; until that fork has exec'd it looks like printerd too, so a
/// process whose parent is one of them is left out.
pub(super) fn printerd_pids(path: &Path) -> Vec<i32> {
    let want = path.as_os_str();
    let found: Vec<_> = crate::process::scan(PRINTERD)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.argv.iter().any(|a| a == want))
        .collect();
    found
        .iter()
        .filter(|p| !found.iter().any(|q| q.id.pid == p.ppid))
        .map(|p| p.id.pid)
        .collect()
}

/// The new printerd (not `old_pid`), waiting up to 3 s for it to appear.
pub(super) async fn wait_for_printerd(path: &Path, old_pid: u32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(pid) = printerd_pids(path)
            .into_iter()
            .find(|p| i64::from(*p) != i64::from(old_pid))
        {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file and directory under `dir`, with mode and size, sorted by path.
pub(super) fn list_tree(dir: &Path, out: &mut Vec<(u32, u64, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((m.permissions().mode() & 0o7777, m.len(), p.clone()));
        if m.is_dir() {
            list_tree(&p, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn package_holds_a_valid_manifest_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pd = dir.path().join("root/opt/tope/printerd/printerd");
        let wu = dir.path().join("root/opt/tope/web-ui");
        let p = build_package(dir.path(), &pd, &wu).unwrap();
        assert!(p.bytes.len() > ASSET_BYTES);
        assert_eq!(p.md5, kit::md5_hex(&p.bytes));
        assert_eq!(p.etag, format!("\"{}\"", p.md5));
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(p.bytes)).unwrap();
        let manifest: Value = {
            let mut f = z.by_name("manifest.json").unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f, &mut s).unwrap();
            serde_json::from_str(&s).unwrap()
        };
        assert_eq!(manifest["version"], NEW_VERSION);
        assert_eq!(manifest["modules"][0]["process_name"], "printerd");
        assert_eq!(manifest["modules"][0]["start_cmd"][0], pd.to_str().unwrap());
        let exe = z.by_name("modules/printerd/printerd").unwrap();
        assert_eq!(exe.unix_mode().map(|m| m & 0o777), Some(0o755));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn printerd_is_found_by_its_script_path_and_not_once_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("opt/printerd");
        install_old_version(dir.path(), &script, &dir.path().join("web-ui")).unwrap();
        let (pid, reaper) = start_old_printerd(&script).unwrap();
        let found = wait_for_printerd(&script, 0).await;
        assert_eq!(found, Some(pid as i32));
        assert!(printerd_pids(&dir.path().join("other/printerd")).is_empty());
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(p, rustix::process::Signal::KILL).unwrap();
        tokio::time::timeout(Duration::from_secs(5), reaper)
            .await
            .unwrap()
            .unwrap();
        // A fork of the killed shell that had not exec'd `sleep` yet becomes `sleep` a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !printerd_pids(&script).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(printerd_pids(&script).is_empty());
    }
}
