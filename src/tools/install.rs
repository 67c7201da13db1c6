//! `tope-updater install <FILE|URL> [--config PATH]` (docs/API.md 9.2): for a person at the
//! printer, with a package on a USB stick or a URL. It drives the running daemon through its
//! own API, exactly as device-api would: `/download`, `/progress` until `toInstall`,
//! `/update`, `/progress` until `success` or `failed`.
//!
//! - A local FILE is sent as `file://<absolute path>` (symlinks resolved here, since the
//!   daemon refuses a final symlink). Its version comes from its manifest, read and checked by
//!   the daemon's own package reader under the configuration's rules. Its size and MD5 come
//!   from `<FILE>.json` when that file sits next to it (the JSON line `pack` prints, saved
//!   beside the package) and describes a file of this size; otherwise the MD5 is computed.
//! - A URL needs the size, MD5 and version: `--size`, `--md5`, `--version`, or `--json FILE`
//!   holding the line `pack` printed (the flags win over the file).
//! - Exit 0 on `success`; 1 with `"<CODE>: <detail>"` on stderr when a request is refused or
//!   the update fails; 2 when no daemon answers (naming the address tried); 130 after Ctrl-C,
//!   which stops following, never the update.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::error::ToolError;
use crate::apiclient::{self, ClientError, Progress};
use crate::checksum::Algorithm;
use crate::config::Config;
use crate::console::Console;
use crate::download::file::file_url_of;
use crate::fsutil::{read_back, ReadBack, MAX_READ_BACK};
use crate::package::{Package, PackagePolicy};

/// How often `/progress` is asked (ota-gui's pace).
const POLL: Duration = Duration::from_millis(500);
/// How long the daemon may not answer while an update runs (it may restart during one,
/// e.g. a power-safe recovery or a self-update) before `install` gives up following.
const LOST_AFTER: Duration = Duration::from_secs(90);

/// What the command line gave.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// A package file, or an `https://` / `http://` URL.
    pub target: String,
    pub size: Option<u64>,
    pub md5: Option<String>,
    pub version: Option<String>,
    /// The JSON line `pack` printed, in a file.
    pub json: Option<PathBuf>,
}

/// Why `install` stops short of `success`.
#[derive(Debug)]
enum Stop {
    /// Refused, failed, or bad input: exit 1 with this text.
    Failed(ToolError),
    /// No daemon answers: exit 2.
    Unreachable(ToolError),
    /// Ctrl-C: exit 130, the update goes on.
    Interrupted,
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Stop {
        if e.unreachable {
            Stop::Unreachable(ToolError::Client(e))
        } else {
            Stop::Failed(ToolError::Client(e))
        }
    }
}

impl From<ToolError> for Stop {
    fn from(e: ToolError) -> Stop {
        Stop::Failed(e)
    }
}

/// The `/download` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub version: String,
    pub package_url: String,
    pub package_name: String,
    pub package_size: u64,
    pub package_md5: String,
}

pub fn run(args: &Args, config: Option<&Path>) -> ExitCode {
    let result = Config::load(config)
        .map_err(|e| Stop::Failed(e.into()))
        .and_then(|cfg| {
            let addr = crate::apiclient::probe_addr(cfg.listen);
            let console = Console::per_stage();
            let req = request_for(args, &cfg, &console)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ToolError::System {
                    what: "runtime",
                    source,
                })?;
            let driven = rt.block_on(async {
                let r = drive(addr, &req, &console).await;
                // Whatever ended it, what follows starts on a line of its own.
                console.end_bar();
                r
            });
            // A `/progress` request still running on the blocking pool (after a Ctrl-C) ends
            // by itself within its timeout; the command does not wait for it.
            rt.shutdown_background();
            driven.map_err(|e| match e {
                Stop::Unreachable(ToolError::Client(source)) => {
                    Stop::Unreachable(ToolError::NoDaemon { addr, source })
                }
                other => other,
            })
        });
    match result {
        Ok(version) => {
            println!("installed version {version}");
            ExitCode::SUCCESS
        }
        Err(Stop::Failed(why)) => {
            eprintln!("tope-updater install: {why}");
            ExitCode::FAILURE
        }
        Err(Stop::Unreachable(why)) => {
            eprintln!("tope-updater install: {why}");
            ExitCode::from(2)
        }
        Err(Stop::Interrupted) => {
            eprintln!(
                "tope-updater install: stopped following; the update goes on in the updater. \
                 Follow it with `tope-updater status`."
            );
            ExitCode::from(130)
        }
    }
}

fn is_url(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// The `/download` request for the target.
fn request_for(args: &Args, cfg: &Config, console: &Console) -> Result<Request, ToolError> {
    if is_url(&args.target) {
        return url_request(args);
    }
    if args.size.is_some() || args.md5.is_some() || args.version.is_some() {
        return Err(ToolError::Usage(
            "--size, --md5 and --version are for a URL; a file's are read from the file".into(),
        ));
    }
    let path =
        std::fs::canonicalize(&args.target).map_err(|e| ToolError::inspect(&args.target, e))?;
    let meta = std::fs::metadata(&path).map_err(|e| ToolError::inspect(&path, e))?;
    if !meta.is_file() {
        return Err(ToolError::NotAFile { path });
    }
    let policy = PackagePolicy {
        allowed_roots: Some(&cfg.allowed_roots),
        signatures: cfg.signatures(),
    };
    let version = Package::open(&path, None, &policy)
        .map_err(|source| ToolError::PackageAt {
            path: path.clone(),
            source: source.into(),
        })?
        .manifest
        .version;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ToolError::BadFile {
            path: path.clone(),
            why: "the file name is not UTF-8".into(),
        })?
        .to_string();
    let sidecar = args.json.clone().unwrap_or_else(|| sidecar_of(&path));
    let described = read_description(&sidecar, args.json.is_some())?;
    let md5 = match described {
        Some(d) if d.package_size != Some(meta.len()) => {
            return Err(ToolError::About {
                why: format!(
                    "describes a package of {} bytes, {} has {}: not its description",
                    d.package_size.map_or("unknown".into(), |s| s.to_string()),
                    path.display(),
                    meta.len()
                ),
                path: sidecar,
            })
        }
        Some(Description {
            version: Some(v), ..
        }) if v != version => {
            return Err(ToolError::About {
                path: sidecar,
                why: format!("is for version {v}, the package's manifest says {version}"),
            })
        }
        Some(Description {
            package_md5: Some(md5),
            ..
        }) => md5,
        _ => {
            console.line(&format!("computing the MD5 of {}...", path.display()));
            crate::download::hash_file(&path, Algorithm::Md5, None, &mut |_| {})
                .map_err(|e| ToolError::inspect(&path, e))?
                .map(|c| c.to_hex())
                .ok_or(ToolError::HashInterrupted)?
        }
    };
    Ok(Request {
        version,
        package_url: file_url_of(&path),
        package_name: name,
        package_size: meta.len(),
        package_md5: md5,
    })
}

/// `<FILE>.json`: the whole file name with `.json` added (`update.zip.json`).
pub fn sidecar_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".json");
    PathBuf::from(s)
}

/// What a `pack` line says about a package.
#[derive(Debug, Default, PartialEq, Eq)]
struct Description {
    version: Option<String>,
    package_name: Option<String>,
    package_size: Option<u64>,
    package_md5: Option<String>,
}

/// Read a `pack` line from `path`; `None` when the file is absent and was not asked for.
/// Read only when it is a regular file of at most 1 MiB; an error names a line and column,
/// never the content.
fn read_description(path: &Path, required: bool) -> Result<Option<Description>, ToolError> {
    let data = match read_back(path, MAX_READ_BACK) {
        ReadBack::Missing if !required => return Ok(None),
        ReadBack::Missing => {
            return Err(ToolError::BadFile {
                path: path.to_path_buf(),
                why: "no such file".into(),
            })
        }
        ReadBack::Refused(why) => {
            return Err(ToolError::About {
                path: path.to_path_buf(),
                why,
            })
        }
        ReadBack::Data(d) => d,
    };
    let v: Value = serde_json::from_slice(&data).map_err(|e| ToolError::NotPackLine {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
    })?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let md5 = text("package_md5");
    if md5
        .as_deref()
        .is_some_and(|m| m.len() != 32 || !m.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ToolError::BadFile {
            path: path.to_path_buf(),
            why: "package_md5 is not 32 hex characters".into(),
        });
    }
    Ok(Some(Description {
        version: text("version"),
        package_name: text("package_name"),
        package_size: v.get("package_size").and_then(Value::as_u64),
        package_md5: md5.map(|m| m.to_ascii_lowercase()),
    }))
}

fn url_request(args: &Args) -> Result<Request, ToolError> {
    let d = match &args.json {
        Some(p) => read_description(p, true)?.unwrap_or_default(),
        None => Description::default(),
    };
    let missing = |what: &str| {
        ToolError::Usage(format!(
            "a URL needs {what}: give --size, --md5 and --version, or --json FILE holding the \
             line `pack` printed"
        ))
    };
    let url_name = args
        .target
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    Ok(Request {
        version: args
            .version
            .clone()
            .or(d.version)
            .ok_or_else(|| missing("the package's version"))?,
        package_url: args.target.clone(),
        package_name: d
            .package_name
            .or(url_name)
            .ok_or_else(|| missing("a package name"))?,
        package_size: args
            .size
            .or(d.package_size)
            .ok_or_else(|| missing("the package's size"))?,
        package_md5: args
            .md5
            .clone()
            .or(d.package_md5)
            .ok_or_else(|| missing("the package's MD5"))?,
    })
}

/// The envelope's error text, or `Ok` when `code` is 200.
fn check_answer(answer: &Value) -> Result<(), Stop> {
    if answer.get("code").and_then(Value::as_i64) == Some(200) {
        return Ok(());
    }
    Err(Stop::Failed(ToolError::RequestRefused(
        answer
            .get("msg")
            .and_then(Value::as_str)
            .map_or_else(|| format!("unexpected answer {answer}"), str::to_string),
    )))
}

/// The whole exchange with the daemon; the version installed.
async fn drive(addr: SocketAddr, req: &Request, console: &Console) -> Result<String, Stop> {
    let base = format!("http://{addr}/api/v1.0");
    let client = apiclient::api_client()?;
    // One SIGINT stream for the whole exchange: a Ctrl-C between two awaits is kept, not lost.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| ToolError::System {
            what: "cannot watch for Ctrl-C",
            source,
        })?;
    let sig = &mut sigint;
    let body = json!({
        "version": req.version,
        "package_url": req.package_url,
        "package_name": req.package_name,
        "package_size": req.package_size,
        "package_md5": req.package_md5,
    });
    console.line(&format!(
        "installing {} version {} ({} bytes)",
        req.package_name, req.version, req.package_size
    ));
    let answer = interruptible(
        sig,
        apiclient::post(&client, &format!("{base}/download"), &body),
    )
    .await?
    .map_err(Stop::from)?;
    check_answer(&answer)?;
    // `installing` or `success`: someone else asked for the update meanwhile.
    let ready = follow(sig, addr, console, &["toInstall", "installing", "success"]).await?;
    if ready.stage == "toInstall" {
        let body = json!({ "version": req.version });
        let answer = interruptible(
            sig,
            apiclient::post(&client, &format!("{base}/update"), &body),
        )
        .await?
        .map_err(Stop::from)?;
        check_answer(&answer)?;
    }
    follow(sig, addr, console, &["success"]).await?;
    Ok(req.version.clone())
}

/// Await `f` unless Ctrl-C comes first.
async fn interruptible<T>(
    sigint: &mut tokio::signal::unix::Signal,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Stop> {
    tokio::select! {
        v = f => Ok(v),
        _ = sigint.recv() => Err(Stop::Interrupted),
    }
}

/// Follow `/progress` until a stage of `until` (returned) or `failed` (its error).
async fn follow(
    sigint: &mut tokio::signal::unix::Signal,
    addr: SocketAddr,
    console: &Console,
    until: &[&str],
) -> Result<Progress, Stop> {
    let mut answered = Instant::now();
    loop {
        match interruptible(sigint, apiclient::get_progress(addr)).await? {
            Ok(p) => {
                answered = Instant::now();
                console.bar(&p);
                if p.stage == "failed" {
                    console.end_bar();
                    return Err(Stop::Failed(ToolError::UpdateFailed(
                        p.error.unwrap_or_else(|| "INTERNAL_ERROR: failed".into()),
                    )));
                }
                if until.contains(&p.stage.as_str()) {
                    if p.stage == "success" || !console.is_tty() {
                        console.end_bar();
                    }
                    return Ok(p);
                }
                if p.stage == "idle" {
                    console.end_bar();
                    return Err(Stop::Failed(ToolError::NoLongerRunning));
                }
            }
            // The daemon may restart during an update: keep asking for a while.
            Err(e) if e.unreachable && answered.elapsed() < LOST_AFTER => {}
            Err(e) => {
                console.end_bar();
                return Err(e.into());
            }
        }
        interruptible(sigint, tokio::time::sleep(POLL)).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_9_2_url_requests_take_flags_over_the_pack_line() {
        let d = tempfile::tempdir().unwrap();
        let line = d.path().join("p.json");
        std::fs::write(
            &line,
            r#"{"version":"1.2.3","package_name":"p.zip","package_size":10,"package_md5":"0123456789ABCDEF0123456789abcdef"}"#,
        )
        .unwrap();
        let mut args = Args {
            target: "https://h/x/q.zip?sig=1".into(),
            json: Some(line),
            ..Args::default()
        };
        let r = url_request(&args).unwrap();
        assert_eq!(r.package_name, "p.zip");
        assert_eq!(r.package_md5, "0123456789abcdef0123456789abcdef");
        args.size = Some(11);
        args.json = None;
        let e = url_request(&args).unwrap_err();
        assert!(matches!(e, ToolError::Usage(_)), "{e:?}");
        assert!(e.to_string().contains("--md5"), "{e}");
        args.md5 = Some("0".repeat(32));
        args.version = Some("2.0.0".into());
        let r = url_request(&args).unwrap();
        assert_eq!((r.package_name.as_str(), r.package_size), ("q.zip", 11));
    }

    #[test]
    fn api_9_2_a_pack_line_is_read_without_echoing_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.zip.json");
        std::fs::write(&p, "secret-content").unwrap();
        let e = read_description(&p, true).unwrap_err();
        assert!(matches!(e, ToolError::NotPackLine { line: 1, .. }), "{e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(matches!(
            read_description(&d.path().join("no"), false),
            Ok(None)
        ));
        assert_eq!(
            sidecar_of(Path::new("/m/u.zip")),
            Path::new("/m/u.zip.json")
        );
    }
}
