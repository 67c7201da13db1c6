//! The command line: the daemon (`serve`, the default) and the commands for people. Each
//! subcommand hands over to the module that owns its job; nothing else happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tope-updater",
    version,
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
        #[cfg(feature = "demo")]
        Some(Command::Demo) => crate::demo::run(),
    }
}
