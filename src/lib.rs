//! tope-updater: the OTA updater daemon of the printer. See `docs/ARCHITECTURE.md`.

pub mod api;
pub mod check_config;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod deploy;
pub mod download;
pub mod error;
pub mod fsutil;
pub mod guard;
pub mod lifecycle;
pub mod logging;
pub mod net;
pub mod outcome;
pub mod package;
pub mod process;
pub mod report;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod status;
pub mod systemd;
pub mod updater;
