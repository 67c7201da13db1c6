//! Command line: `tope-updater [serve] [--config PATH]`, `tope-updater demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tope-updater",
    version,
    about = "OTA updater daemon of the printer"
)]
struct Cli {
    /// TOML configuration file (missing keys take their defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Run a whole update on this machine in a sandbox: package server, fake device-api,
    /// the real daemon, live progress.
    #[cfg(feature = "demo")]
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => tope_updater::daemon::serve(cli.config.as_deref()),
        #[cfg(feature = "demo")]
        Some(Command::Demo) => tope_updater::demo::run(),
    }
}
