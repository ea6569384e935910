//! A TCP listener that bounds what clients can hold: how many connections at once (in all and
//! from one address), how long a connection may sit without a byte moving, and how long it may
//! live at all.
//!
//! axum's `serve` sets no header-read timeout and no connection limit, so they are enforced
//! here, under hyper, on the socket: a slow or hostile client can hold at most
//! [`Limits::connections`] sockets, each for at most [`Limits::lifetime`], and a socket that
//! moves no byte for [`Limits::idle`] is closed. When every slot is taken, new connections
//! wait in the kernel's backlog; a connection beyond [`Limits::per_peer`] from one address is
//! closed at once, so that one client cannot take every slot.

use axum::serve::Listener;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// What one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Connections served at once from one IP address; more are closed when accepted.
    pub per_peer: usize,
    /// A connection that moves no byte for this long is closed (also bounds reading headers).
    pub idle: Duration,
    /// A connection is closed after this long, at its next read.
    pub lifetime: Duration,
}

/// A [`TcpListener`] that hands out [`Guarded`] connections within [`Limits`].
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    peers: Peers,
    limits: Limits,
}

/// Open connections by client address; an address leaves the map with its last connection.
#[derive(Clone, Debug, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Peers {
    /// Counts a connection from `ip`, unless it already has `most`.
    fn enter(&self, ip: IpAddr, most: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(ip).or_insert(0);
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// One connection counted for its address until dropped.
#[derive(Debug)]
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, limits: Limits) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(limits.connections)),
            peers: Peers::default(),
            limits,
        }
    }
}

impl Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let permit = loop {
            if let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await {
                break permit;
            }
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let Some(peer) = self.peers.enter(addr.ip(), self.limits.per_peer) else {
                        // Dropped: closed at once, and the slot waits for another client.
                        debug!(%addr, "too many connections from one address");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return (Guarded::new(stream, permit, peer, self.limits), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds a slot until it is dropped and times out when idle or old.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _peer: PeerSlot,
    idle_after: Duration,
    idle: Pin<Box<Sleep>>,
    expires: Instant,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, peer: PeerSlot, limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            stream,
            _slot: slot,
            _peer: peer,
            idle_after: limits.idle,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            expires: now + limits.lifetime,
        }
    }

    /// A write's outcome as the caller sees it: bytes taken reset the idle clock; a write the
    /// socket has not taken for the idle timeout fails as timed out.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touched();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn touched(&mut self) {
        let deadline = Instant::now() + self.idle_after;
        self.idle.as_mut().reset(deadline);
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if Instant::now() >= self.expires {
            // Reads as the end of the stream: hyper closes the connection once it is idle.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        self.written(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
