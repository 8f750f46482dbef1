//! Spreads client connections evenly over the workers.
//!
//! Every worker accepts on the same listening sockets, and the kernel
//! wakes whichever is waiting: under a burst one worker often takes most
//! of the connections (14/50 of `wrk -c64` was seen). Each worker then gets
//! about the same CPU time, so the clients on the crowded worker wait
//! longer for every answer, and the tail latency is theirs.
//!
//! So the worker that accepted a connection places it: on itself when no
//! worker has fewer open connections, else on the worker with the fewest,
//! through that worker's inbox (the socket is taken off this worker's
//! reactor, sent over a channel, and registered with the other's). With
//! keep-alive traffic a connection moves at most once, when it opens; the
//! common case (already balanced) costs two atomic loads. haproxy spreads
//! its accepted connections over its threads the same way.
//!
//! The open count of a worker is raised when a connection is placed on it
//! and lowered when the connection's task ends ([`Placed`]).
//!
//! Stopping: a worker's inbox serves whatever was sent to it before the
//! stop; after that the inbox is closed, a send fails, and the accepting
//! worker serves the connection itself. No accepted connection is dropped.
//!
//! Bounded: an inbox holds at most [`INBOX`] connections. A worker that
//! does not take them in (its thread is stuck on something long) would
//! otherwise collect connections without bound, each an open socket; when
//! its inbox is full the accepting worker serves the connection itself, as
//! when the inbox is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::conn::listener::Kind;

/// Connections an inbox holds at most. A worker takes its moved
/// connections in as soon as it runs, so a full inbox means that worker
/// is stuck; a burst's worth (a few hundred) is plenty otherwise.
pub(crate) const INBOX: usize = 256;

/// The workers' open-connection counts and inboxes.
pub(crate) struct Spread {
    open: Box<[AtomicUsize]>,
    inbox: Box<[mpsc::Sender<Moved>]>,
}

/// A connection on its way to another worker.
pub(crate) struct Moved {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) kind: Kind,
    pub(crate) held: Held,
}

/// What a connection holds until it ends (both released when dropped):
/// its `max_connections` permit and its place in its worker's open count.
pub(crate) struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    placed: Placed,
}

impl Held {
    pub(crate) fn new(permit: Option<OwnedSemaphorePermit>, placed: Placed) -> Self {
        Held {
            _permit: permit,
            placed,
        }
    }

    /// Counts the connection on worker `me` instead (its inbox was closed,
    /// so the accepting worker serves it).
    pub(crate) fn move_to(&mut self, me: usize) {
        self.placed.move_to(me);
    }
}

/// One open connection counted on a worker; uncounted when dropped.
pub(crate) struct Placed {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.spread.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Spread {
    /// For `n` workers: the spread and each worker's inbox receiver.
    pub(crate) fn new(n: usize) -> (Arc<Spread>, Vec<mpsc::Receiver<Moved>>) {
        Self::with_inbox(n, INBOX)
    }

    /// The same, with inboxes of `capacity` connections.
    fn with_inbox(n: usize, capacity: usize) -> (Arc<Spread>, Vec<mpsc::Receiver<Moved>>) {
        let (inbox, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(capacity)).unzip();
        let spread = Spread {
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            inbox: inbox.into_boxed_slice(),
        };
        (Arc::new(spread), receivers)
    }

    /// The worker a connection accepted by worker `me` goes to: `me`
    /// unless another has fewer open connections; counted there at once.
    pub(crate) fn place(self: &Arc<Self>, me: usize) -> Placed {
        let mut best = me;
        let mut fewest = self.open[me].load(Ordering::Relaxed);
        for (w, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < fewest {
                best = w;
                fewest = n;
            }
        }
        self.open[best].fetch_add(1, Ordering::Relaxed);
        Placed {
            spread: self.clone(),
            worker: best,
        }
    }

    /// Sends a connection to worker `to`'s inbox; gives it back when that
    /// inbox is closed (the worker is stopping) or full (it is stuck).
    pub(crate) fn send(&self, to: usize, moved: Moved) -> Result<(), Moved> {
        self.inbox[to].try_send(moved).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
        })
    }

    #[cfg(test)]
    fn open(&self, w: usize) -> usize {
        self.open[w].load(Ordering::Relaxed)
    }

    /// `gantry_proxy_open_connections{worker="N"}`: client connections
    /// open on each worker (plain and TLS, from accept to close).
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(
            "# HELP gantry_proxy_open_connections Client connections open, by worker thread.\n\
             # TYPE gantry_proxy_open_connections gauge\n",
        );
        for (w, open) in self.open.iter().enumerate() {
            let _ = writeln!(
                out,
                "gantry_proxy_open_connections{{worker=\"{w}\"}} {}",
                open.load(Ordering::Relaxed)
            );
        }
    }
}

impl Placed {
    /// The worker this connection is counted on.
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    fn move_to(&mut self, me: usize) {
        if self.worker != me {
            self.spread.open[me].fetch_add(1, Ordering::Relaxed);
            self.spread.open[self.worker].fetch_sub(1, Ordering::Relaxed);
            self.worker = me;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_worker_with_the_fewest() {
        let (spread, _rx) = Spread::new(3);
        // Worker 1 accepts everything, as under a burst.
        let placed: Vec<Placed> = (0..9).map(|_| spread.place(1)).collect();
        assert_eq!((spread.open(0), spread.open(1), spread.open(2)), (3, 3, 3));
        // Ties stay on the accepting worker.
        assert_eq!(placed[0].worker(), 1);
        drop(placed);
        assert_eq!((spread.open(0), spread.open(1), spread.open(2)), (0, 0, 0));
    }

    #[test]
    fn a_closed_inbox_gives_the_connection_back() {
        let (spread, mut rx) = Spread::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let _busy = spread.place(0);
        let placed = spread.place(0);
        assert_eq!(placed.worker(), 1);
        rx[1].close();
        let moved = Moved {
            stream,
            peer,
            kind: Kind {
                tls: false,
                proxy_protocol: false,
            },
            held: Held::new(None, placed),
        };
        let mut back = spread.send(1, moved).expect_err("inbox is closed");
        back.held.move_to(0);
        assert_eq!((spread.open(0), spread.open(1)), (2, 0));
    }

    #[test]
    fn a_full_inbox_gives_the_connection_back() {
        let (spread, mut rx) = Spread::with_inbox(2, 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            accepted.push(listener.accept().unwrap());
        }
        let moved = |(stream, peer): (std::net::TcpStream, SocketAddr), placed| Moved {
            stream,
            peer,
            kind: Kind {
                tls: false,
                proxy_protocol: false,
            },
            held: Held::new(None, placed),
        };
        let _busy = spread.place(0);
        let first = spread.place(0);
        assert_eq!(first.worker(), 1);
        // A tie stays where it was accepted: worker 1 again.
        let second = spread.place(1);
        assert_eq!(second.worker(), 1);
        let second_peer = accepted[1].1;
        let mut conns = accepted.into_iter();
        assert!(spread.send(1, moved(conns.next().unwrap(), first)).is_ok());
        // The inbox holds one: the second comes back, whole.
        let mut back = spread
            .send(1, moved(conns.next().unwrap(), second))
            .expect_err("inbox is full");
        assert_eq!(back.peer, second_peer);
        back.held.move_to(0);
        assert_eq!((spread.open(0), spread.open(1)), (2, 1));
        // Once the worker takes its connection in, there is room again.
        let taken = rx[1].try_recv().expect("the first is in the inbox");
        assert!(spread.send(1, back).is_ok());
        drop(taken);
        assert!(rx[1].try_recv().is_ok());
    }
}
