//! Fleet mode (docs/API.md 9.1): the updater as a client of a hawkBit DDI fleet server
//! (Eclipse hawkBit, goosebit).
//!
//! `ddi` holds the wire types of the Direct Device Integration API and the rules applied to
//! what the server sends (poll interval bounds, one chunk with one artifact, the strongest hash,
//! links that must be URLs). No I/O happens there. `config` is the `[fleet]` table, `http` the
//! bounded requests, `offer` turns an offered deployment into the updater's `PackageSpec`,
//! `store` keeps the action in `tmp/fleet.json`, and `client` is the poll loop the daemon
//! starts when the table is present.

pub mod client;
pub mod config;
pub mod ddi;
pub mod http;
pub mod offer;
pub mod store;
