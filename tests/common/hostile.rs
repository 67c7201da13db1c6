//! Plain-HTTP package servers whose every answer the test decides (cut bodies, ignored ranges,
//! lying Content-Range, a trickle, a throttled link), for the download's resilience to hostile
//! servers: the kit's server (`tope_updater::kit::serve`) with the answers of
//! `tope_updater::kit::range`, under one ETag. nginx is always well-behaved, and mock-server
//! crates cannot cut a body halfway.

use tope_updater::kit::{range, Server};

pub use tope_updater::kit::serve::{Answer, Part, Request};

/// What to send back: the raw bytes (status line, headers, body), then the connection closes.
pub type Behaviour = dyn Fn(&Request) -> Vec<u8> + Send + Sync;

/// What to send back, over time.
pub type StreamingBehaviour = dyn Fn(&Request) -> Answer + Send + Sync;

/// A running server; dropping it stops it.
pub struct HostileServer {
    pub port: u16,
    server: Server,
}

impl HostileServer {
    pub fn start(behaviour: Box<Behaviour>) -> HostileServer {
        HostileServer::start_streaming(Box::new(move |r: &Request| vec![Part::Bytes(behaviour(r))]))
    }

    /// A server whose answers are sent part after part ([`Part`]).
    pub fn start_streaming(behaviour: Box<StreamingBehaviour>) -> HostileServer {
        let server = Server::http(behaviour).expect("start the package server");
        HostileServer {
            port: server.port(),
            server,
        }
    }

    pub fn url(&self, rel: &str) -> String {
        self.server.url(rel)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

pub const ETAG: &str = "\"tope-test-etag\"";

/// `200` with the whole body; `cut_at` truncates the body (the connection then closes).
pub fn full(data: &[u8], cut_at: Option<usize>) -> Vec<u8> {
    range::cut(data, ETAG, cut_at)
}

/// A correct head for `req` (206 from the requested offset when the range is valid and
/// If-Range, when sent, matches; else 200) and the offset its body starts at.
pub fn honest_head(len: usize, req: &Request) -> (Vec<u8>, usize) {
    let (head, body) = range::honest(len as u64, ETAG, req);
    (head, body.start as usize)
}

/// `206` claiming the range `claimed_start..` but sending the bytes from `real_start`.
pub fn partial(data: &[u8], claimed_start: usize, real_start: usize) -> Vec<u8> {
    range::misplaced(data, ETAG, claimed_start, real_start)
}

/// A correct answer: 206 from the requested offset when the range is valid (and If-Range,
/// when sent, matches), else 200 with everything.
pub fn honest(data: &[u8], req: &Request) -> Vec<u8> {
    let (mut out, body) = range::honest(data.len() as u64, ETAG, req);
    out.extend_from_slice(range::slice(data, body));
    out
}
