//! The API's HTTP server: an accept loop of our own around hyper's HTTP/1 connections, so that
//! nobody can starve the API (CONTRACT.md 8.2). `axum::serve` has no header-read timeout, no
//! idle timeout and no connection cap.
//!
//! - A connection must send a complete request head within [`HEAD_TIMEOUT`] of being accepted,
//!   or of the first byte of its next request; a trickle of bytes does not extend that.
//! - A keep-alive connection with no request in progress is closed after [`IDLE_TIMEOUT`].
//!   (hyper's own `header_read_timeout` also runs while a keep-alive connection idles, so it
//!   cannot give 10 s for a head and 60 s of idling at once: both are timed here.)
//! - A request must be answered within [`REQUEST_TIMEOUT`] of its head (a body trickled in
//!   byte by byte ends there), or the connection is closed.
//! - At most `cap` connections live at once, derived from the descriptor soft limit so that
//!   most descriptors stay free for an installation. The loop never stops accepting: a legit
//!   client must never wait in the kernel's backlog behind attackers. When a connection comes
//!   in at the cap, the oldest connection with no request in progress is closed to make room,
//!   those that never completed a request first (a poller that just got its answer is kept
//!   before a connection that never asked anything). Only when every connection is in the
//!   middle of a request is the newcomer closed instead.
//! - An accept error such as `EMFILE` closes the oldest idle connection and pauses the loop
//!   briefly instead of spinning.
//! - On shutdown the listener is closed, idle connections close at once, requests in progress
//!   get up to [`SHUTDOWN_GRACE`] to finish.
//!
//! An operator sees a `WARN` line at most every 10 s while this happens, with the counts.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use rustix::io::Errno;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// Time to send a complete request head (CONTRACT.md 8.2).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a keep-alive connection may idle between requests (CONTRACT.md 8.2).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time from a complete head to the answer (the body included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most API connections ever kept, whatever the descriptor limit: the API's clients are
/// ota-gui, device-api and an operator, and every connection costs memory.
pub const MAX_CONNECTIONS: usize = 128;
/// Fewest API connections, however low the descriptor limit.
const MIN_CONNECTIONS: usize = 4;
/// Time requests in progress get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// hyper's per-connection buffer limit: request heads are small, and 1000 connections must not
/// cost 400 KiB each (hyper's default).
const MAX_BUF: usize = 16 * 1024;
/// Least time between two warnings about connections being closed.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Pending connections the kernel may queue for `accept` (it caps this at
/// `net.core.somaxconn`, 4096 on current kernels). std's 128 overflows when a flood of
/// connections arrives at once: a legitimate client's SYN is then dropped and retried 1 s
/// later, which is exactly the wait the accept loop exists to prevent.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Bind the API's listening socket with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    // Calling listen again on a listening socket only changes its backlog.
    rustix::net::listen(&listener, LISTEN_BACKLOG)?;
    Ok(listener)
}

/// The limits one server applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub head: Duration,
    pub idle: Duration,
    pub request: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The contract's timeouts, and a connection cap of one eighth of the descriptor soft
    /// limit (between 4 and [`MAX_CONNECTIONS`]): with the usual 1024, 128 connections, and
    /// nearly 900 descriptors left for downloading and deploying.
    pub fn for_fd_limit(nofile_soft: u64) -> Limits {
        let cap = usize::try_from(nofile_soft / 8).unwrap_or(usize::MAX);
        Limits {
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
            request: REQUEST_TIMEOUT,
            max_connections: cap.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS),
        }
    }
}

/// The descriptor limits at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// The soft limit the daemon was started with (its children get it back).
    pub soft_before: u64,
    /// The soft limit now.
    pub soft: u64,
    pub hard: u64,
}

/// Raise the descriptor soft limit to the hard limit (no privilege needed). A failure leaves
/// the soft limit as it was (and is logged by the caller through the result).
pub fn raise_fd_limit() -> (FdLimits, Option<io::Error>) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let mut limits = FdLimits {
        soft_before: before,
        soft: before,
        hard,
    };
    if before >= hard {
        return (limits, None);
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            limits.soft = hard;
            (limits, None)
        }
        Err(e) => (limits, Some(e.into())),
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being read or answered.
    Busy,
    /// Between requests, nothing received yet.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    /// When the last request was answered (the accept time before that).
    last_done: Instant,
    /// Whether any request was answered on this connection.
    served: bool,
}

impl Timing {
    fn deadline(&self, l: &Limits) -> Instant {
        self.since
            + match self.phase {
                Phase::Head => l.head,
                // The service's own timeout ends the request; this is a backstop.
                Phase::Busy => l.request + Duration::from_secs(1),
                Phase::Idle => l.idle,
            }
    }
}

/// One live connection, shared by its task, its I/O, its service and the registry.
struct Conn {
    id: u64,
    timing: Mutex<Timing>,
    /// Notified when the registry closes this connection to make room.
    close: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn new(id: u64) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            timing: Mutex::new(Timing {
                phase: Phase::Head,
                since: now,
                last_done: now,
                served: false,
            }),
            close: Notify::new(),
        }
    }

    fn timing(&self) -> Timing {
        *lock(&self.timing)
    }

    /// Bytes arrived: on an idle connection they start the next request head.
    fn on_bytes(&self) {
        let mut t = lock(&self.timing);
        if t.phase == Phase::Idle {
            t.phase = Phase::Head;
            t.since = Instant::now();
        }
    }

    fn request_started(&self) {
        let mut t = lock(&self.timing);
        t.phase = Phase::Busy;
        t.since = Instant::now();
    }

    fn request_done(&self) {
        let mut t = lock(&self.timing);
        let now = Instant::now();
        t.phase = Phase::Idle;
        t.since = now;
        t.last_done = now;
        t.served = true;
    }
}

/// The connection to close to make room, if any: no request in progress; those that never
/// completed a request before those that did; the oldest first.
fn pick_victim<'a>(conns: impl Iterator<Item = (u64, &'a Timing)>) -> Option<u64> {
    conns
        .filter(|(_, t)| t.phase != Phase::Busy)
        .min_by_key(|(id, t)| (t.served, t.last_done, *id))
        .map(|(id, _)| id)
}

/// Counts shown in the periodic warning.
#[derive(Debug, Default)]
struct Pressure {
    evicted: u64,
    refused: u64,
    timed_out: u64,
    accept_errors: u64,
    last_accept_error: Option<String>,
    last_warning: Option<Instant>,
}

enum Event {
    Evicted,
    Refused,
    TimedOut,
    AcceptError(String),
}

/// The live connections.
struct Registry {
    limits: Limits,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    pressure: Mutex<Pressure>,
}

impl Registry {
    fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            conns: Mutex::new(HashMap::new()),
            pressure: Mutex::new(Pressure::default()),
        }
    }

    /// Register a new connection, closing another one at the cap. `false`: every connection
    /// is busy, the newcomer must be closed.
    fn admit(&self, conn: Arc<Conn>) -> bool {
        let mut conns = lock(&self.conns);
        let event = if conns.len() < self.limits.max_connections {
            None
        } else if Self::evict_locked(&mut conns).is_some() {
            Some(Event::Evicted)
        } else {
            Some(Event::Refused)
        };
        let admitted = !matches!(event, Some(Event::Refused));
        if admitted {
            conns.insert(conn.id, conn);
        }
        drop(conns);
        if let Some(ev) = event {
            self.note(ev);
        }
        admitted
    }

    fn evict_locked(conns: &mut HashMap<u64, Arc<Conn>>) -> Option<Arc<Conn>> {
        let timings: Vec<(u64, Timing)> = conns.iter().map(|(id, c)| (*id, c.timing())).collect();
        let id = pick_victim(timings.iter().map(|(id, t)| (*id, t)))?;
        let victim = conns.remove(&id)?;
        victim.close.notify_one();
        Some(victim)
    }

    /// Close the connection [`pick_victim`] chooses (descriptors ran out). Whether one was.
    fn evict_one(&self) -> bool {
        let evicted = Self::evict_locked(&mut lock(&self.conns)).is_some();
        if evicted {
            self.note(Event::Evicted);
        }
        evicted
    }

    fn remove(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    fn note(&self, ev: Event) {
        let mut p = lock(&self.pressure);
        match ev {
            Event::Evicted => p.evicted += 1,
            Event::Refused => p.refused += 1,
            Event::TimedOut => p.timed_out += 1,
            Event::AcceptError(e) => {
                p.accept_errors += 1;
                p.last_accept_error = Some(e);
            }
        }
        let due = p.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due {
            drop(p);
            self.warn_now();
        }
    }

    /// Log what happened since the last warning, if anything did.
    fn warn_now(&self) {
        let mut p = lock(&self.pressure);
        if p.evicted + p.refused + p.timed_out + p.accept_errors == 0 {
            return;
        }
        let open = lock(&self.conns).len();
        tracing::warn!(
            "API connections: {open} open (limit {}); since the last report {} closed to make \
             room, {} refused (all busy), {} closed for not sending a request within {} s or \
             idling {} s, {} accept errors{}",
            self.limits.max_connections,
            p.evicted,
            p.refused,
            p.timed_out,
            self.limits.head.as_secs(),
            self.limits.idle.as_secs(),
            p.accept_errors,
            p.last_accept_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
        *p = Pressure {
            last_warning: Some(Instant::now()),
            ..Pressure::default()
        };
    }
}

/// The socket, telling its connection when bytes arrive.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_bytes();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request that was not answered within [`Limits::request`]: hyper closes the connection.
#[derive(Debug)]
struct RequestTimedOut;

impl std::fmt::Display for RequestTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request not complete in time")
    }
}

impl std::error::Error for RequestTimedOut {}

/// Serve one connection until it ends, times out, is closed to make room, or the server
/// stops.
async fn serve_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    router: Router,
    registry: Arc<Registry>,
    stop: Shutdown,
) {
    let limits = registry.limits;
    // Nothing is built for a connection until it sends something: in a flood of silent
    // connections each one costs only its socket.
    let first_bytes = tokio::select! {
        r = stream.readable() => r.is_ok(),
        () = tokio::time::sleep_until(conn.timing().deadline(&limits)) => {
            registry.note(Event::TimedOut);
            false
        }
        () = conn.close.notified() => false,
        () = stop.wait() => false,
    };
    if !first_bytes {
        registry.remove(conn.id);
        return;
    }
    // Answers are small: never hold one back waiting for an ACK.
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let conn = svc_conn.clone();
        async move {
            conn.request_started();
            let call = tower_service::Service::call(&mut router, req);
            let answer = tokio::time::timeout(limits.request, call).await;
            conn.request_done();
            match answer {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(never)) => match never {},
                Err(_) => Err(RequestTimedOut),
            }
        }
    });
    let http = http1::Builder::new()
        .keep_alive(true)
        // Timed here (see the module documentation), so no timer is handed to hyper.
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF)
        .serve_connection(io, service);
    tokio::pin!(http);
    let mut draining = false;
    loop {
        let deadline = conn.timing().deadline(&limits);
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("API connection {} ended: {e}", conn.id);
                }
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                let t = conn.timing();
                if Instant::now() >= t.deadline(&limits) {
                    tracing::debug!("API connection {} closed: {:?} for too long", conn.id, t.phase);
                    registry.note(Event::TimedOut);
                    break;
                }
            }
            () = conn.close.notified() => {
                tracing::debug!("API connection {} closed to make room", conn.id);
                break;
            }
            () = stop.wait(), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
    registry.remove(conn.id);
}

/// What to do after a failed `accept`.
async fn after_accept_error(e: io::Error, registry: &Registry) {
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    let out_of_resources = matches!(
        errno,
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    );
    let per_connection = matches!(
        errno,
        Some(Errno::CONNABORTED | Errno::CONNRESET | Errno::PROTO | Errno::PERM | Errno::INTR)
    );
    if per_connection {
        return;
    }
    registry.note(Event::AcceptError(e.to_string()));
    // Descriptors ran out: free one (the next accept gets it); never spin on the error.
    let freed = out_of_resources && registry.evict_one();
    let pause = if freed {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(100)
    };
    tokio::time::sleep(pause).await;
}

/// Serve `router` on `listener` under `limits` until `stop` is set, then let the requests in
/// progress finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: Shutdown) {
    let registry = Arc::new(Registry::new(limits));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id: u64 = 0;
    let mut report = tokio::time::interval(WARN_EVERY);
    loop {
        tokio::select! {
            () = stop.wait() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = report.tick() => {
                let due = lock(&registry.pressure)
                    .last_warning
                    .is_some_and(|t| t.elapsed() >= WARN_EVERY);
                if due {
                    registry.warn_now();
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    next_id += 1;
                    let conn = Arc::new(Conn::new(next_id));
                    if !registry.admit(conn.clone()) {
                        drop(stream);
                        continue;
                    }
                    tasks.spawn(serve_connection(
                        stream,
                        conn,
                        router.clone(),
                        registry.clone(),
                        stop.clone(),
                    ));
                    // Let the new connection read its request before the next accept: in a
                    // flood, a client whose head is already here is answered instead of
                    // being closed for room by the newcomers queued behind it.
                    tokio::task::yield_now().await;
                }
                Err(e) => after_accept_error(e, &registry).await,
            },
        }
    }
    drop(listener);
    let open = registry.len();
    if open > 0 {
        tracing::info!("closing {open} API connections");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} API connections still busy after {} s: closed",
            tasks.len(),
            SHUTDOWN_GRACE.as_secs()
        );
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn cap_follows_the_fd_limit_within_bounds() {
        assert_eq!(Limits::for_fd_limit(1024).max_connections, 128);
        assert_eq!(Limits::for_fd_limit(256).max_connections, 32);
        assert_eq!(Limits::for_fd_limit(10).max_connections, MIN_CONNECTIONS);
        assert_eq!(
            Limits::for_fd_limit(1 << 20).max_connections,
            MAX_CONNECTIONS
        );
        assert_eq!(
            Limits::for_fd_limit(u64::MAX).max_connections,
            MAX_CONNECTIONS
        );
        let l = Limits::for_fd_limit(1024);
        assert_eq!(
            (l.head, l.idle),
            (Duration::from_secs(10), Duration::from_secs(60))
        );
    }

    #[test]
    fn victim_is_the_oldest_connection_without_a_request_in_progress() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let timing = |phase, last_done, served| Timing {
            phase,
            since: last_done,
            last_done,
            served,
        };
        let conns = [
            (1, timing(Phase::Busy, at(0), false)),
            (2, timing(Phase::Idle, at(1), true)),
            (3, timing(Phase::Head, at(5), false)),
            (4, timing(Phase::Head, at(3), false)),
        ];
        // Never-served first, oldest first, busy never.
        assert_eq!(pick_victim(conns.iter().map(|(i, t)| (*i, t))), Some(4));
        assert_eq!(
            pick_victim(conns[..3].iter().map(|(i, t)| (*i, t))),
            Some(3)
        );
        assert_eq!(
            pick_victim(conns[..2].iter().map(|(i, t)| (*i, t))),
            Some(2)
        );
        assert_eq!(pick_victim(conns[..1].iter().map(|(i, t)| (*i, t))), None);
    }

    fn small_limits(max_connections: usize) -> Limits {
        Limits {
            head: Duration::from_millis(400),
            idle: Duration::from_millis(1200),
            request: Duration::from_millis(400),
            max_connections,
        }
    }

    /// A server on a thread of its own with a one-route router; its address and stop flag.
    fn start(limits: Limits) -> (std::net::SocketAddr, Shutdown, std::thread::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Shutdown::new();
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let router = Router::new().route(
                    "/p",
                    axum::routing::post(|body: String| async move { body }).get(|| async { "ok" }),
                );
                let l = TcpListener::from_std(listener).unwrap();
                serve(l, router, limits, s).await;
            });
        });
        (addr, stop, h)
    }

    /// When the server closed `s` (EOF or reset), if it did within `within`.
    fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> Option<std::time::Instant> {
        s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1024];
        loop {
            match s.read(&mut b) {
                Ok(0) => return Some(std::time::Instant::now()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Some(std::time::Instant::now())
                }
                Err(_) => return None,
            }
        }
    }

    fn get(s: &mut std::net::TcpStream) -> String {
        s.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    #[test]
    fn contract_8_2_head_idle_and_body_timeouts() {
        let (addr, stop, h) = start(small_limits(16));
        let t0 = std::time::Instant::now();
        // Nothing sent: closed after the head timeout.
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        // A head trickled past the timeout: closed all the same.
        let mut trickle = std::net::TcpStream::connect(addr).unwrap();
        let tr = trickle.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut tr = tr;
            for b in b"GET /p HTTP/1.1\r\nHost: x\r\n".iter() {
                if tr.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // An answered keep-alive connection outlives the head timeout, then idles out.
        let mut kept = std::net::TcpStream::connect(addr).unwrap();
        assert!(get(&mut kept).ends_with("ok"));
        let answered = std::time::Instant::now();
        let silent_closed = closed_within(&mut silent, Duration::from_secs(3)).unwrap() - t0;
        assert!(
            silent_closed >= Duration::from_millis(400) && silent_closed < Duration::from_secs(1),
            "{silent_closed:?}"
        );
        let trickle_closed = closed_within(&mut trickle, Duration::from_secs(3)).unwrap() - t0;
        assert!(
            trickle_closed < Duration::from_secs(1),
            "{trickle_closed:?}"
        );
        feeder.join().unwrap();
        let idle_closed = closed_within(&mut kept, Duration::from_secs(3)).unwrap() - answered;
        assert!(
            idle_closed >= Duration::from_millis(1100) && idle_closed < Duration::from_secs(2),
            "{idle_closed:?}"
        );
        // A body announced but trickled: the request ends at its timeout, without an answer.
        let mut slow_body = std::net::TcpStream::connect(addr).unwrap();
        let sent = std::time::Instant::now();
        slow_body
            .write_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .unwrap();
        let t = closed_within(&mut slow_body, Duration::from_secs(3)).unwrap() - sent;
        assert!(t < Duration::from_secs(2), "{t:?}");
        stop.trigger();
        h.join().unwrap();
    }

    #[test]
    fn contract_8_2_cap_closes_the_oldest_idle_connection_and_keeps_answering() {
        let (addr, stop, h) = start(small_limits(4));
        let mut poller = std::net::TcpStream::connect(addr).unwrap();
        assert!(get(&mut poller).ends_with("ok"));
        let mut idle: Vec<std::net::TcpStream> = (0..4)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // The first silent connections made room for the later ones; the poller, which was
        // answered, is kept.
        let first_closed = closed_within(&mut idle[0], Duration::from_millis(300));
        assert!(first_closed.is_some());
        assert!(get(&mut poller).ends_with("ok"));
        // Fresh connections are still accepted and answered at the cap.
        for _ in 0..10 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            assert!(get(&mut s).ends_with("ok"));
        }
        // Shutdown closes what is left and returns.
        let t = std::time::Instant::now();
        stop.trigger();
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(closed_within(&mut idle[3], Duration::from_secs(1)).is_some());
    }
}
