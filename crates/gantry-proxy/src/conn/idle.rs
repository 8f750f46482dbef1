//! Idle client connections end: [`IdleIo`] wraps a client connection
//! that hyper serves and ends it (as a clean EOF) once no byte has moved
//! for `idle_timeout` while no request on it is waiting for its response
//! ([`Activity::begin`] marks one). HTTP/1.1 keep-alive and HTTP/2
//! connections alike. A response body that stalls longer than
//! `idle_timeout` after its headers is cut too, like a reverse proxy's send
//! timeout.
//!
//! Request header size (431) and header read time (slowloris) are hyper
//! settings, applied in `runtime::server`, and the same limits of the
//! proxy's own HTTP/1.1 server (`conn::http1_server`, which also keeps its
//! own idle timer: `IdleIo` wraps only connections hyper serves).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests of one connection still waiting for their response.
#[derive(Default)]
pub(crate) struct Activity {
    busy: AtomicUsize,
}

/// Held while a request waits for its response: the connection is not idle.
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Relaxed);
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// A client connection with an idle timeout.
pub(crate) struct IdleIo<S> {
    inner: S,
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
}

impl<S> IdleIo<S> {
    pub(crate) fn new(inner: S, idle: Duration) -> (IdleIo<S>, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let now = Instant::now();
        let io = IdleIo {
            inner,
            idle,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + idle)),
            activity: activity.clone(),
        };
        (io, activity)
    }

    /// True once the connection has been idle for `idle`; else the timer
    /// is armed to wake this task when it may be.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            let due = self.last + self.idle;
            if self.activity.busy.load(Relaxed) > 0 {
                self.last = now;
                self.sleep.as_mut().reset(now + self.idle);
            } else if due > now {
                self.sleep.as_mut().reset(due);
            } else {
                return true;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.timed_out(cx) => {
                tracing::debug!(idle = ?this.idle, "closing an idle client connection");
                // EOF: hyper ends an idle connection quietly.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last = Instant::now();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last = Instant::now();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
