//! A hand-written plain-HTTP package server whose every answer the test decides (cut bodies,
//! ignored ranges, lying Content-Range, a trickle, a throttled link), for the download's
//! resilience to hostile servers. nginx is always well-behaved, and mock-server crates cannot
//! cut a body halfway.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as received: lowercase header names.
#[derive(Debug, Clone)]
pub struct Request {
    pub index: usize,
    pub line: String,
    pub headers: HashMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }

    /// N of `Range: bytes=N-`.
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

/// What to send back: the raw bytes (status line, headers, body), then the connection closes.
pub type Behaviour = dyn Fn(&Request) -> Vec<u8> + Send + Sync;

/// One part of an answer sent over time.
#[derive(Debug, Clone)]
pub enum Part {
    /// Sent at once.
    Bytes(Vec<u8>),
    /// Nothing for this long (the connection stays open).
    Pause(Duration),
    /// Sent at about this many bytes per second, in pieces of at most 1 KiB.
    Throttled { data: Vec<u8>, bytes_per_s: u64 },
}

/// An answer sent part after part; the connection closes after the last one (or as soon as
/// the client closes it, or the server stops).
pub type Answer = Vec<Part>;

/// What to send back, over time.
pub type StreamingBehaviour = dyn Fn(&Request) -> Answer + Send + Sync;

pub struct HostileServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HostileServer {
    pub fn start(behaviour: Box<Behaviour>) -> HostileServer {
        HostileServer::start_streaming(Box::new(move |r: &Request| vec![Part::Bytes(behaviour(r))]))
    }

    /// A server whose answers are sent part after part ([`Part`]).
    pub fn start_streaming(behaviour: Box<StreamingBehaviour>) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let behaviour: Arc<StreamingBehaviour> = Arc::from(behaviour);
        let handle = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (reqs, b, stop) = (reqs.clone(), behaviour.clone(), stop2.clone());
                        workers.push(std::thread::spawn(move || serve(stream, &reqs, &*b, &stop)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        HostileServer {
            port,
            requests,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self, rel: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, rel)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    reqs: &Mutex<Vec<Request>>,
    behaviour: &StreamingBehaviour,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = {
        let mut all = reqs.lock().unwrap();
        let r = Request {
            index: all.len(),
            line,
            headers,
        };
        all.push(r.clone());
        r
    };
    for part in behaviour(&req) {
        if send_part(&mut stream, part, stop).is_err() {
            break;
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Sends one part; `Err` once the client has gone or the server stops.
fn send_part(stream: &mut TcpStream, part: Part, stop: &AtomicBool) -> std::io::Result<()> {
    let stopped = || std::io::Error::other("server stopping");
    match part {
        Part::Bytes(b) => stream.write_all(&b),
        Part::Pause(d) => {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if stop.load(Ordering::SeqCst) {
                    return Err(stopped());
                }
                if client_closed(stream) {
                    return Err(std::io::Error::other("client closed"));
                }
                std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
            }
            Ok(())
        }
        Part::Throttled { data, bytes_per_s } => {
            let start = Instant::now();
            for (i, piece) in data.chunks(1024).enumerate() {
                if stop.load(Ordering::SeqCst) {
                    return Err(stopped());
                }
                let due = start + Duration::from_secs_f64((i * 1024) as f64 / bytes_per_s as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                stream.write_all(piece)?;
            }
            Ok(())
        }
    }
}

/// Whether the client has closed its end (a read would return 0 at once).
fn client_closed(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    let _ = stream.set_nonblocking(true);
    let closed = matches!(stream.peek(&mut b), Ok(0));
    let _ = stream.set_nonblocking(false);
    closed
}

pub const ETAG: &str = "\"tope-test-etag\"";

/// `200` with the whole body; `cut_at` truncates the body (the connection then closes).
pub fn full(data: &[u8], cut_at: Option<usize>) -> Vec<u8> {
    let mut out = full_head(data.len());
    out.extend_from_slice(&data[..cut_at.unwrap_or(data.len()).min(data.len())]);
    out
}

/// The head of a `200` announcing `len` bytes.
pub fn full_head(len: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/zip\r\n\
         Accept-Ranges: bytes\r\nETag: {ETAG}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a `206` for the bytes `start..len` of a `len`-byte file.
pub fn partial_head(start: usize, len: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Type: application/zip\r\n\
         Content-Range: bytes {start}-{}/{len}\r\nAccept-Ranges: bytes\r\nETag: {ETAG}\r\n\
         Connection: close\r\n\r\n",
        len - start,
        len - 1
    )
    .into_bytes()
}

/// A correct head for `req` (206 from the requested offset when the range is valid and
/// If-Range, when sent, matches; else 200) and the offset its body starts at.
pub fn honest_head(len: usize, req: &Request) -> (Vec<u8>, usize) {
    let if_range_ok = req.header("if-range").is_none_or(|v| v == ETAG);
    match req.range_start() {
        Some(n) if if_range_ok && (n as usize) < len => (partial_head(n as usize, len), n as usize),
        _ => (full_head(len), 0),
    }
}

/// `206` claiming the range `claimed_start..` but sending the bytes from `real_start`.
pub fn partial(data: &[u8], claimed_start: usize, real_start: usize) -> Vec<u8> {
    let len = data.len();
    let body = &data[real_start.min(len)..];
    let mut out = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Type: application/zip\r\n\
         Content-Range: bytes {claimed_start}-{}/{len}\r\nAccept-Ranges: bytes\r\nETag: {ETAG}\r\n\
         Connection: close\r\n\r\n",
        body.len(),
        len - 1
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A correct answer: 206 from the requested offset when the range is valid (and If-Range,
/// when sent, matches), else 200 with everything.
pub fn honest(data: &[u8], req: &Request) -> Vec<u8> {
    let if_range_ok = req.header("if-range").is_none_or(|v| v == ETAG);
    match req.range_start() {
        Some(n) if if_range_ok && (n as usize) < data.len() => {
            partial(data, n as usize, n as usize)
        }
        _ => full(data, None),
    }
}
