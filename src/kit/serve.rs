//! A package server on 127.0.0.1, plain HTTP or HTTPS, one request per connection. Every
//! request is recorded, then a [`Responder`] (a function of the request) says what to send,
//! part after part: bytes at once, a pause with the connection open, bytes at a given rate.
//! So the same server is the demo's honest package server ([`super::range::honest`],
//! throttled) and the tests' hostile one (cut bodies, lying ranges, trickles).
//!
//! It runs on a thread of its own with its own single-threaded runtime, so synchronous tests
//! and the demo's runtime use it alike; dropping it stops it and closes every connection.
//! mock-server crates cannot cut a body halfway, and tower-http's `ServeDir` ignores
//! `If-Range`: hence this small server.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ServerThread;
use crate::sync::lock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest request head read; a longer one closes the connection.
const MAX_HEAD: usize = 64 * 1024;
/// How long a read of the request head, a TLS handshake or one write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes written at once (each write has [`IO_TIMEOUT`]).
const WRITE_PIECE: usize = 64 * 1024;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0 for the first request the server received, then 1, 2...
    pub index: usize,
    /// The request line, e.g. `GET /pkg.zip HTTP/1.1`.
    pub line: String,
    /// Header names in lowercase.
    pub headers: HashMap<String, String>,
}

impl Request {
    /// Parse a request head (up to, without, the blank line). `None` without a request line.
    pub fn parse(index: usize, head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n");
        let line = lines.next().filter(|l| !l.is_empty())?.to_string();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Request {
            index,
            line,
            headers,
        })
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    /// The request target, e.g. `/pkg.zip?x=1`.
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    /// N of `Range: bytes=N-...`.
    pub fn range_start(&self) -> Option<u64> {
        let r = self.header("range")?;
        r.strip_prefix("bytes=")?
            .split('-')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// One part of an answer.
#[derive(Debug, Clone)]
pub enum Part {
    /// Sent at once.
    Bytes(Vec<u8>),
    /// Nothing for this long, the connection open (cut short when the client closes it).
    Pause(Duration),
    /// Sent at about this many bytes per second.
    Throttled { data: Vec<u8>, bytes_per_s: u64 },
}

/// An answer, sent part after part; the connection closes after the last one.
pub type Answer = Vec<Part>;

/// What to send back to a request.
pub type Responder = dyn Fn(&Request) -> Answer + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Request>>,
    responder: Box<Responder>,
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    /// Dropped last: stops the server.
    _thread: ServerThread,
}

impl Server {
    /// A plain-HTTP server on a free port of 127.0.0.1.
    pub fn http(responder: Box<Responder>) -> io::Result<Server> {
        Server::start(None, responder)
    }

    /// An HTTPS server on a free port of 127.0.0.1 (see [`super::tls::Certificates`]).
    pub fn https(tls: Arc<rustls::ServerConfig>, responder: Box<Responder>) -> io::Result<Server> {
        Server::start(Some(tokio_rustls::TlsAcceptor::from(tls)), responder)
    }

    fn start(
        tls: Option<tokio_rustls::TlsAcceptor>,
        responder: Box<Responder>,
    ) -> io::Result<Server> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder,
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let for_thread = shared.clone();
        let thread = ServerThread::spawn("kit-package-server", listener, move |l, stop| {
            accept_loop(l, tls, for_thread, stop)
        })?;
        Ok(Server {
            addr,
            scheme,
            shared,
            _thread: thread,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http(s)://127.0.0.1:<port>/<rel>`.
    pub fn url(&self, rel: &str) -> String {
        format!("{}://{}/{rel}", self.scheme, self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }
}

/// Accepts until told to stop; returning drops the runtime's tasks, closing every connection.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some(tcp) = next_connection(&listener, &mut stop).await else {
            return;
        };
        let (tls, shared, stop) = (tls.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            // A client that goes away mid-answer is normal (cancel, retry): nothing to report.
            let _ = match tls {
                None => connection(tcp, &shared, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, &shared, stop).await,
                        _ => Ok(()),
                    }
                }
            };
        });
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut rd))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head"))??;
    let request = {
        let mut all = lock(&shared.requests);
        let r = Request::parse(all.len(), &head)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no request line"))?;
        all.push(r.clone());
        r
    };
    for part in (shared.responder)(&request) {
        send(&mut rd, &mut wr, part, &mut stop).await?;
    }
    wr.flush().await?;
    wr.shutdown().await
}

/// The request head, up to the blank line (excluded).
async fn read_head<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
}

fn stopping() -> io::Error {
    io::Error::other("server stopping")
}

async fn write<S: AsyncWrite>(wr: &mut WriteHalf<S>, data: &[u8]) -> io::Result<()> {
    tokio::time::timeout(IO_TIMEOUT, wr.write_all(data))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write"))?
}

/// Sends one part; an error once the client has gone, a write stalls or the server stops.
async fn send<S: AsyncRead + AsyncWrite>(
    rd: &mut ReadHalf<S>,
    wr: &mut WriteHalf<S>,
    part: Part,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    match part {
        Part::Bytes(data) => {
            for piece in data.chunks(WRITE_PIECE) {
                tokio::select! {
                    r = write(wr, piece) => r?,
                    _ = stop.changed() => return Err(stopping()),
                }
            }
            Ok(())
        }
        Part::Pause(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => Ok(()),
                _ = stop.changed() => Err(stopping()),
                _ = client_closed(rd) => Err(io::Error::other("client closed")),
            }
        }
        Part::Throttled { data, bytes_per_s } => {
            let rate = bytes_per_s.max(1);
            // Pieces of about 1/64 s, between 1 KiB and 16 KiB.
            let piece = (rate / 64).clamp(1024, 16 * 1024) as usize;
            let start = Instant::now();
            let mut sent = 0u64;
            for chunk in data.chunks(piece) {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.changed() => return Err(stopping()),
                }
                tokio::select! {
                    r = write(wr, chunk) => r?,
                    _ = stop.changed() => return Err(stopping()),
                }
                sent += chunk.len() as u64;
            }
            Ok(())
        }
    }
}

/// Resolves once the client has closed its end (or the connection broke).
async fn client_closed<S: AsyncRead>(rd: &mut ReadHalf<S>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// The kit servers' next connection, or `None` once `stop` changes; a failed accept (out of
/// descriptors or the like) is tried again shortly.
pub(crate) async fn next_connection(
    listener: &tokio::net::TcpListener,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => return Some(tcp),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = stop.changed() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn exchange(addr: SocketAddr, request: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn records_requests_and_sends_every_part_in_order() {
        let server = Server::http(Box::new(|r: &Request| {
            vec![
                Part::Bytes(format!("HTTP/1.1 200 OK\r\nX-Index: {}\r\n\r\n", r.index).into()),
                Part::Pause(Duration::from_millis(20)),
                Part::Throttled {
                    data: vec![b'x'; 3000],
                    bytes_per_s: 100_000,
                },
            ]
        }))
        .unwrap();
        let out = exchange(server.addr(), "GET /a HTTP/1.1\r\nRange: bytes=5-\r\n\r\n");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nX-Index: 0\r\n\r\n"),
            "{text}"
        );
        assert!(text.ends_with(&"x".repeat(3000)), "{text}");
        exchange(server.addr(), "HEAD /b HTTP/1.1\r\nhOsT: h\r\n\r\n");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!((reqs[0].method(), reqs[0].target()), ("GET", "/a"));
        assert_eq!(reqs[0].range_start(), Some(5));
        assert_eq!((reqs[1].index, reqs[1].header("Host")), (1, Some("h")));
        assert!(server.url("p.zip").starts_with("http://127.0.0.1:"));
    }

    #[test]
    fn a_throttled_part_takes_its_time_and_drop_ends_a_pause() {
        let server = Server::http(Box::new(|_: &Request| {
            vec![
                Part::Throttled {
                    data: vec![0; 20 * 1024],
                    bytes_per_s: 40 * 1024,
                },
                Part::Pause(Duration::from_secs(600)),
            ]
        }))
        .unwrap();
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut got = vec![0u8; 20 * 1024];
        s.read_exact(&mut got).unwrap();
        // 20 KiB at 40 KiB/s: the last piece is due after about 0.47 s.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        let t = std::time::Instant::now();
        drop(server);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the pause ended with the server"
        );
    }
}
