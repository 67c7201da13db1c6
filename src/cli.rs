//! The command line: the daemon (`serve`, the default) and the commands for people. Each
//! subcommand hands over to the module that owns its job; nothing else happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::tools;

/// `--version`: the crate version and the git commit it was built from (build.rs).
pub const VERSION_TEXT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TOPE_UPDATER_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "tope-updater",
    version = VERSION_TEXT,
    about = "OTA updater daemon of the printer"
)]
pub struct Cli {
    /// TOML configuration file (missing keys take their defaults).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Show what the updater is doing or last did (read from the work dir; the daemon may be
    /// running or stopped). Writes nothing.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file as the daemon would read it and print the effective
    /// configuration (every key, defaults included). Exit 0, or 2 naming the bad key.
    CheckConfig,
    /// Run a whole update on this machine in a sandbox: package server, fake device-api,
    /// the real daemon, live progress.
    #[cfg(feature = "demo")]
    Demo,
    /// Make a signing key: the private key into FILE (mode 0600), the public key (for the
    /// config's `trusted_keys`) on stdout.
    Keygen {
        /// Where to write the private key (never over an existing file).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Build a package from DIR (manifest.json and the files it names); prints the JSON
    /// device-api needs for /download. `--config` applies its allowed_roots. With an `--out`
    /// ending in `.swu`, the package is wrapped in a SWU envelope (for fleet servers).
    Pack {
        dir: PathBuf,
        /// The package to write; its file name is the package_name. `.swu`: a SWU envelope
        /// around the package.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Sign with this private key (from `keygen`): adds the sha256 map and manifest.sig.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// `.swu` only: put the image in this board's section of sw-description (a fleet
        /// server offers it to devices whose hw_boardname is NAME).
        #[arg(long, value_name = "NAME")]
        board: Option<String>,
        /// `.swu` only: a hardware revision the package is for; repeatable.
        #[arg(long = "hardware-compatibility", value_name = "REV")]
        hardware_compatibility: Vec<String>,
    },
    /// Install a package through the running daemon (its `listen` address from --config):
    /// a local FILE (a USB stick: size, MD5 and version read from it, or size and MD5 from
    /// FILE.json, the line `pack` printed) or a URL (with --size, --md5, --version or --json).
    /// Shows the progress; exit 0 on success, 1 with the error on failure, 2 when no daemon
    /// answers, 130 on Ctrl-C (which stops following, not the update).
    Install {
        /// The package file, or its https:// URL.
        #[arg(value_name = "FILE|URL")]
        target: String,
        /// Size of the package in bytes (a URL only).
        #[arg(long, value_name = "BYTES")]
        size: Option<u64>,
        /// MD5 of the package, 32 hex characters (a URL only).
        #[arg(long, value_name = "HEX")]
        md5: Option<String>,
        /// Version of the package, x.y.z (a URL only).
        #[arg(long, value_name = "X.Y.Z")]
        version: Option<String>,
        /// A file holding the JSON line `pack` printed for the package (default for a FILE:
        /// FILE.json when it exists).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Check a package as the daemon would; with --key, its signature too. `--config`
    /// applies its allowed_roots, trusted_keys and require_signature.
    Verify {
        file: PathBuf,
        /// A trusted public key (base64, as keygen printed it); repeatable, any one verifying
        /// is enough.
        #[arg(long = "key", value_name = "PUBKEY")]
        keys: Vec<String>,
    },
}

/// Parse the command line and run the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version exit 0; a usage error exits 1 like every other failure.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let config = cli.config.as_deref();
    match cli.command {
        None | Some(Command::Serve) => crate::daemon::serve(config),
        Some(Command::Status { json }) => crate::status::run(config, json),
        Some(Command::CheckConfig) => crate::check_config::run(config),
        #[cfg(feature = "demo")]
        Some(Command::Demo) => crate::demo::run(),
        Some(Command::Keygen { out }) => tools::finish("keygen", tools::keygen::run(&out)),
        Some(Command::Pack {
            dir,
            out,
            key,
            board,
            hardware_compatibility,
        }) => tools::finish(
            "pack",
            tools::pack::run(
                &dir,
                &out,
                key.as_deref(),
                config,
                &tools::pack::Wrap {
                    board,
                    hardware_compatibility,
                },
            )
            .and_then(|p| serde_json::to_string(&p).map_err(tools::ToolError::Print)),
        ),
        Some(Command::Install {
            target,
            size,
            md5,
            version,
            json,
        }) => tools::install::run(
            &tools::install::Args {
                target,
                size,
                md5,
                version,
                json,
            },
            config,
        ),
        Some(Command::Verify { file, keys }) => {
            tools::finish("verify", tools::verify::run(&file, &keys, config))
        }
    }
}
