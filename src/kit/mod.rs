//! The kit of `tope-updater demo` and of the integration tests: the stand-ins for what surrounds
//! the updater on a printer, written once and used by both.
//!
//! - [`serve`]: a package server on loopback, plain HTTP or HTTPS, whose every answer is chosen
//!   by a function of the request: the honest answer of [`range`] (`Range`, `If-Range`, `ETag`,
//!   206/416) or a hostile one (a cut body, a lying `Content-Range`, a pause, a trickle).
//! - [`daemon`]: the real daemon started with a configuration of the caller's (written by the
//!   `toml` crate) and awaited until its `/progress` answers.
//! - [`device_api`]: a fake device-api recording the updater's reports; it can be down, come
//!   back on the same port, answer a chosen status or answer late.
//! - [`ddi_server`]: a fake hawkBit DDI fleet server: scripted offers and cancels, recorded
//!   requests, hostile answers per resource.
//! - [`tls`]: a CA and a server certificate for `127.0.0.1`/`localhost`, generated on the spot.
//! - [`package`]: ZIP packages built in memory or streamed to a file, with incompressible
//!   pseudo-random content.
//!
//! Digests go through [`crate::checksum`] (the crate's one hex helper) and processes are found
//! with [`crate::process::scan`]: the kit has neither of its own. It is built only with the
//! `demo` feature; the printer build (`--no-default-features`) leaves it out.

pub mod daemon;
pub mod ddi_server;
pub mod device_api;
pub mod package;
pub mod range;
pub mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;

use crate::checksum::{Algorithm, Hasher};

pub use daemon::{DaemonConfig, DaemonError};
pub use ddi_server::DdiServer;
pub use device_api::FakeDeviceApi;
pub use package::{build_package, build_zip, manifest, pseudo_random_bytes, Entry, Noise};
pub use serve::{Answer, Part, Request, Responder, Server};
pub use tls::Certificates;

/// Lowercase hex MD5 of some bytes (what `/download` announces as `package_md5`).
pub fn md5_hex(bytes: &[u8]) -> String {
    let mut h = Hasher::new(Algorithm::Md5);
    h.update(bytes);
    h.finalize().to_hex()
}

/// Lowercase hex MD5 of a file, streamed (packages of several GiB included).
pub fn md5_file(path: &Path) -> std::io::Result<String> {
    let sum = crate::download::hash_file(path, Algorithm::Md5, None, &mut |_| {})?;
    // Without a shutdown flag the hash always completes.
    Ok(sum.map(|c| c.to_hex()).unwrap_or_default())
}

/// An address on 127.0.0.1 whose port was free a moment ago.
pub fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A server on a thread of its own, with its own single-threaded runtime, so that synchronous
/// tests can use it. Dropping it tells the server to stop and joins the thread; the runtime
/// goes with the thread, closing every connection.
pub(crate) struct ServerThread {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Run `serve(listener, stop)` on a thread named `name`; `stop` changes to `true` when the
    /// server is dropped.
    pub(crate) fn spawn<F, Fut>(
        name: &str,
        listener: std::net::TcpListener,
        serve: F,
    ) -> std::io::Result<ServerThread>
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::watch::Receiver<bool>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _in_runtime = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || rt.block_on(serve(listener, stopped)))?;
        Ok(ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_of_bytes_and_of_a_file_agree() {
        assert_eq!(md5_hex(b"hello world"), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data = pseudo_random_bytes(3 << 20 | 17, 5);
        std::fs::write(&p, &data).unwrap();
        assert_eq!(md5_file(&p).unwrap(), md5_hex(&data));
        assert!(md5_file(&dir.path().join("missing")).is_err());
    }
}
