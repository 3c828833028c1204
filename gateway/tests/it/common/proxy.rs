//! A fault-injection TCP proxy for integration tests: put it between a gateway and Redis or
//! Postgres, then `cut()` the link "under load" and `restore()` it.
//!
//! ```text
//! let proxy = FaultProxy::start(redis_addr);          // listens on 127.0.0.1:<free port>
//! let url = format!("redis://{}", proxy.addr());       // give this to the gateway
//! proxy.cut();      // every open connection is closed; new ones are accepted but never
//!                   // answered (a black hole: clients time out, they are not refused)
//! proxy.restore();  // new connections are forwarded again
//! ```
//!
//! Use it from a test module with `use crate::common::proxy;`. The proxy runs on its
//! own thread with its own tokio runtime, so it works the same from `#[test]` and
//! `#[tokio::test]` (any flavour), and `cut`/`restore` are plain synchronous calls. Dropping
//! the proxy closes the listener and every connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections; every change of `cut` bumps `epoch`, and each
/// connection lives only as long as the epoch it was accepted in.
#[derive(Clone, Copy, Debug)]
struct Mode {
    cut: bool,
    epoch: u64,
    shutdown: bool,
}

/// A TCP proxy on 127.0.0.1 that forwards to one upstream address until it is cut.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Forwarding connections currently open (including ones being set up).
    forwarding: Arc<AtomicUsize>,
    /// Connections accepted since start (forwarded or black-holed).
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:<free port> to `upstream`. The upstream is connected
    /// lazily, once per client connection, so it need not be up yet.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        listener
            .set_nonblocking(true)
            .expect("proxy listener non-blocking");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, rx) = watch::channel(Mode {
            cut: false,
            epoch: 0,
            shutdown: false,
        });
        let forwarding = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (fwd, acc) = (forwarding.clone(), accepted.clone());
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(accept_loop(listener, upstream, rx, fwd, acc));
                // Dropping the runtime cancels the connection tasks, closing their sockets.
            })
            .expect("proxy thread starts");
        FaultProxy {
            addr,
            upstream,
            mode,
            forwarding,
            accepted,
            thread: Some(thread),
        }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Cuts the link: closes every open connection (both sides, before this returns) and,
    /// until [`restore`](Self::restore), accepts new connections and holds them open without
    /// forwarding or answering anything. A no-op when already cut.
    pub fn cut(&self) {
        self.mode.send_modify(|m| {
            if !m.cut {
                m.cut = true;
                m.epoch += 1;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.forwarding.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "fault proxy: connections still open 5 s after cut()"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Restores the link: new connections are forwarded again. Connections black-holed
    /// during the cut are closed (they never reached the upstream, as with a dead host).
    /// A no-op when not cut.
    pub fn restore(&self) {
        self.mode.send_modify(|m| {
            if m.cut {
                m.cut = false;
                m.epoch += 1;
            }
        });
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.mode.borrow().cut
    }

    /// Forwarding connections open right now.
    pub fn open_connections(&self) -> usize {
        self.forwarding.load(Ordering::SeqCst)
    }

    /// Connections accepted since the proxy started (forwarded or black-holed).
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.mode.send_modify(|m| m.shutdown = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Decrements the forwarding count however the connection task ends (even if cancelled).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    mut rx: watch::Receiver<Mode>,
    forwarding: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
) {
    let listener = TcpListener::from_std(listener).expect("proxy listener in tokio");
    loop {
        let accept = tokio::select! {
            _ = rx.wait_for(|m| m.shutdown) => return,
            accept = listener.accept() => accept,
        };
        let client = match accept {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or an aborted handshake: keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        // Counted before the mode is read, so that `cut()` waits for a connection accepted
        // concurrently with it (which then sees a stale epoch and closes at once).
        forwarding.fetch_add(1, Ordering::SeqCst);
        let guard = Counted(forwarding.clone());
        let mode = *rx.borrow();
        if mode.shutdown {
            return;
        }
        if mode.cut {
            drop(guard);
            tokio::spawn(black_hole(client, mode.epoch, rx.clone()));
        } else {
            tokio::spawn(forward(client, upstream, mode.epoch, rx.clone(), guard));
        }
    }
}

/// Resolves when the mode moves past `epoch` (a cut or restore) or the proxy shuts down.
async fn epoch_ends(mut rx: watch::Receiver<Mode>, epoch: u64) {
    let _ = rx.wait_for(|m| m.epoch != epoch || m.shutdown).await;
}

/// Forwards bytes both ways until either side closes or the link is cut.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    epoch: u64,
    rx: watch::Receiver<Mode>,
    _guard: Counted,
) {
    tokio::select! {
        _ = epoch_ends(rx, epoch) => {}
        _ = async {
            // Upstream down: close the client connection, as a refused connect would.
            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        } => {}
    }
    // Both sockets are dropped here: the client and the upstream see the connection close.
}

/// Holds a connection open without answering, discarding what the client sends, until the
/// link is restored, the client goes away, or the proxy shuts down.
async fn black_hole(mut client: TcpStream, epoch: u64, rx: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    tokio::select! {
        _ = epoch_ends(rx, epoch) => {}
        _ = async {
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } => {}
    }
}
