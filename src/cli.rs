//! The command line: the daemon (`serve`, the default) and the commands for people. Each
//! subcommand hands over to the module that owns its job; nothing else happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

/// Parse the command line and run the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => crate::daemon::serve(cli.config.as_deref()),
        Some(Command::Status { json }) => crate::status::run(cli.config.as_deref(), json),
        Some(Command::CheckConfig) => crate::check_config::run(cli.config.as_deref()),
        #[cfg(feature = "demo")]
        Some(Command::Demo) => crate::demo::run(),
    }
}
