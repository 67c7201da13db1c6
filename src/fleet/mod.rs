//! Fleet mode (docs/API.md 9.1): the updater as a client of a hawkBit DDI fleet server
//! (Eclipse hawkBit, goosebit).
//!
//! `ddi` holds the wire types of the Direct Device Integration API and the rules applied to
//! what the server sends (poll interval bounds, one chunk with one artifact, the strongest hash,
//! links that must be URLs). No I/O happens here.

pub mod ddi;
