//! `tope-updater`: see `src/cli.rs` for the commands.

fn main() -> std::process::ExitCode {
    tope_updater::cli::main()
}
