//! One API connection: hyper's HTTP/1 state machine over a socket that reports incoming
//! bytes, watched by the timeouts of its [`Limits`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::registry::{Conn, Event, Registry};
use super::MAX_BUF;
use crate::shutdown::Shutdown;

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

/// Serve one connection until it ends, times out, is closed to make room, or the server
/// stops.
pub(super) async fn serve_connection(
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
            // Not answered within the limit: the error makes hyper close the connection.
            let answer = tokio::time::timeout(limits.request, call).await;
            conn.request_done();
            match answer {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(never)) => match never {},
                Err(elapsed) => Err(elapsed),
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
