//! tope-updater: the OTA updater daemon of the printer. See `docs/ARCHITECTURE.md`.

pub mod api;
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
pub mod lifecycle;
pub mod logging;
pub mod net;
pub mod package;
pub mod process;
pub mod report;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod updater;
