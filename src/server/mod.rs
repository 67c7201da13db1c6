//! The API's HTTP server: an accept loop of our own around hyper's HTTP/1 connections, so that
//! nobody can starve the API (docs/API.md 8.2). `axum::serve` has no header-read timeout, no
//! idle timeout and no connection cap.
//!
//! The three timeouts are a [`ServerTimeouts`] given to the server (the daemon takes them from
//! the configuration's `[server]` table, docs/API.md 7; the defaults are the contract's):
//!
//! - A connection must send a complete request head within `head` (default [`HEAD_TIMEOUT`])
//!   of being accepted, or of the first byte of its next request; a trickle of bytes does not
//!   extend that.
//! - A keep-alive connection with no request in progress is closed after `idle` (default
//!   [`IDLE_TIMEOUT`]). (hyper's own `header_read_timeout` also runs while a keep-alive
//!   connection idles, so it cannot give 10 s for a head and 60 s of idling at once: both are
//!   timed here.)
//! - A request must be answered within `request` (default [`REQUEST_TIMEOUT`]) of its head (a
//!   body trickled in byte by byte ends there), or the connection is closed.
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

mod connection;
mod registry;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustix::io::Errno;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;
use connection::serve_connection;
use registry::{Conn, Event, Registry};

/// Time to send a complete request head (docs/API.md 8.2).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a keep-alive connection may idle between requests (docs/API.md 8.2).
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

/// The API's connection timeouts (docs/API.md 8.2; configured in `[server]`, docs/API.md 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// Time to send a complete request head.
    pub head: Duration,
    /// Time a keep-alive connection may idle between requests.
    pub idle: Duration,
    /// Time from a complete head to the answer.
    pub request: Duration,
}

impl Default for ServerTimeouts {
    /// The contract's: 10 s for a head, 60 s of idling, 10 s for a request.
    fn default() -> Self {
        ServerTimeouts {
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
            request: REQUEST_TIMEOUT,
        }
    }
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
    /// `timeouts`, and a connection cap of one eighth of the descriptor soft limit (between
    /// 4 and [`MAX_CONNECTIONS`]): with the usual 1024, 128 connections, and nearly 900
    /// descriptors left for downloading and deploying.
    pub fn for_fd_limit(nofile_soft: u64, timeouts: ServerTimeouts) -> Limits {
        let cap = usize::try_from(nofile_soft / 8).unwrap_or(usize::MAX);
        Limits {
            head: timeouts.head,
            idle: timeouts.idle,
            request: timeouts.request,
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
    // docs/API.md 9.4: while a new updater binary serves on the same socket, this one does
    // not accept (connections wait in the backlog for the other).
    let mut gate = crate::handover::accepting();
    let mut accepting = *gate.borrow_and_update();
    loop {
        tokio::select! {
            () = stop.wait() => break,
            Ok(()) = gate.changed() => {
                accepting = *gate.borrow_and_update();
                crate::handover::acknowledge(accepting);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = report.tick() => registry.report_if_due(),
            accepted = listener.accept(), if accepting => match accepted {
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
        let t = ServerTimeouts::default();
        assert_eq!(Limits::for_fd_limit(1024, t).max_connections, 128);
        assert_eq!(Limits::for_fd_limit(256, t).max_connections, 32);
        assert_eq!(Limits::for_fd_limit(10, t).max_connections, MIN_CONNECTIONS);
        assert_eq!(
            Limits::for_fd_limit(1 << 20, t).max_connections,
            MAX_CONNECTIONS
        );
        assert_eq!(
            Limits::for_fd_limit(u64::MAX, t).max_connections,
            MAX_CONNECTIONS
        );
    }

    /// docs/API.md 8.2: by default a head gets 10 s, an idle connection 60 s, a request 10 s;
    /// timeouts given to the server are the ones it applies.
    #[test]
    fn contract_8_2_default_timeouts_and_given_ones() {
        let l = Limits::for_fd_limit(1024, ServerTimeouts::default());
        assert_eq!(
            (l.head, l.idle, l.request),
            (
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(10)
            )
        );
        let given = ServerTimeouts {
            head: Duration::from_millis(300),
            idle: Duration::from_millis(900),
            request: Duration::from_millis(500),
        };
        let l = Limits::for_fd_limit(1024, given);
        assert_eq!(
            (l.head, l.idle, l.request),
            (given.head, given.idle, given.request)
        );
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
