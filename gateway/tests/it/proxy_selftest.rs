//! The fault-injection proxy used by the backend-outage tests, checked against a small echo
//! server: bytes flow both ways; `cut()` closes open connections and black-holes new ones
//! (accepted, never answered); `restore()` makes new connections work again.

use crate::common::proxy;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// An echo server on a free loopback port; the counter holds its open connections.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
    let addr = listener.local_addr().expect("echo address");
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Writes `msg` and reads the same number of bytes back, failing after 2 s.
async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.expect("write through proxy");
    let mut back = vec![0u8; msg.len()];
    timeout(Duration::from_secs(2), stream.read_exact(&mut back))
        .await
        .expect("echo answered within 2 s")
        .expect("read through proxy");
    back
}

/// True when the peer closed the connection (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// True when a read gets nothing at all (no bytes, no close) for `quiet`.
async fn silent_for(stream: &mut TcpStream, quiet: Duration) -> bool {
    let mut buf = [0u8; 64];
    timeout(quiet, stream.read(&mut buf)).await.is_err()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn bytes_flow_both_ways() {
    let (echo, _) = echo_server().await;
    let proxy = FaultProxy::start(echo);
    assert_ne!(proxy.addr(), echo);
    assert_eq!(proxy.upstream(), echo);
    assert!(proxy.addr().ip().is_loopback());

    let mut a = TcpStream::connect(proxy.addr()).await.expect("connect");
    let mut b = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(roundtrip(&mut a, b"hello").await, b"hello");
    assert_eq!(roundtrip(&mut b, b"world").await, b"world");

    // A large payload written and read concurrently (more than the socket buffers hold).
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = a.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.map(|_| w) });
    let mut back = vec![0u8; payload.len()];
    timeout(Duration::from_secs(10), r.read_exact(&mut back))
        .await
        .expect("4 MiB echoed within 10 s")
        .expect("read 4 MiB");
    assert!(back == payload, "payload corrupted through the proxy");
    writer.await.expect("writer task").expect("write 4 MiB");
    assert_eq!(proxy.open_connections(), 2);
}

#[tokio::test]
async fn cut_closes_open_connections_and_black_holes_new_ones() {
    let (echo, upstream_open) = echo_server().await;
    let proxy = FaultProxy::start(echo);
    let mut old = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(roundtrip(&mut old, b"before").await, b"before");
    wait_until("the upstream has the connection", || {
        upstream_open.load(Ordering::SeqCst) == 1
    })
    .await;

    let started = Instant::now();
    proxy.cut();
    assert!(proxy.is_cut());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "cut() took {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.open_connections(), 0);
    // The client side is closed at once...
    assert!(
        closed_within(&mut old, Duration::from_millis(500)).await,
        "the open connection was not closed by cut()"
    );
    // ...and so is the upstream side.
    wait_until("the upstream connection is closed", || {
        upstream_open.load(Ordering::SeqCst) == 0
    })
    .await;

    // A new connection is accepted (not refused) but gets no answer and is not closed.
    let accepted = proxy.accepted_connections();
    let mut new = timeout(Duration::from_secs(1), TcpStream::connect(proxy.addr()))
        .await
        .expect("connect does not hang while cut")
        .expect("connect is accepted while cut");
    new.write_all(b"anyone?").await.expect("write while cut");
    assert!(
        silent_for(&mut new, Duration::from_millis(500)).await,
        "a connection made while cut got an answer or was closed"
    );
    assert_eq!(proxy.accepted_connections(), accepted + 1);
    assert_eq!(
        upstream_open.load(Ordering::SeqCst),
        0,
        "a black-holed connection reached the upstream"
    );

    // cut() twice is harmless.
    proxy.cut();
    assert!(silent_for(&mut new, Duration::from_millis(100)).await);
}

#[tokio::test]
async fn restore_makes_new_connections_work_again() {
    let (echo, _) = echo_server().await;
    let proxy = FaultProxy::start(echo);
    proxy.cut();
    let mut held = TcpStream::connect(proxy.addr())
        .await
        .expect("connect while cut");
    held.write_all(b"lost").await.expect("write while cut");
    assert!(silent_for(&mut held, Duration::from_millis(200)).await);

    proxy.restore();
    assert!(!proxy.is_cut());
    let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(roundtrip(&mut fresh, b"after").await, b"after");
    // What was black-holed during the cut is dropped, never delivered late.
    assert!(
        closed_within(&mut held, Duration::from_secs(1)).await,
        "a black-holed connection survived restore()"
    );

    // Several cut/restore cycles.
    for round in 0..3u8 {
        proxy.cut();
        assert!(closed_within(&mut fresh, Duration::from_millis(500)).await);
        let mut during = TcpStream::connect(proxy.addr()).await.expect("connect");
        during.write_all(&[round]).await.expect("write while cut");
        assert!(silent_for(&mut during, Duration::from_millis(100)).await);
        proxy.restore();
        fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut fresh, &[round; 3]).await, [round; 3]);
    }
    proxy.restore(); // restoring twice is harmless
    assert_eq!(roundtrip(&mut fresh, b"still").await, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_closes_client_connections() {
    // Nothing listens on the upstream port: clients are closed, as a refusal would be.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let proxy = FaultProxy::start(dead);
    let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);
    wait_until("the failed connection is forgotten", || {
        proxy.open_connections() == 0
    })
    .await;
}

/// The proxy needs no runtime from its caller: plain threads and blocking sockets work.
#[test]
fn works_from_blocking_code() {
    let echo = std::net::TcpListener::bind("127.0.0.1:0").expect("echo binds");
    let echo_addr = echo.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for mut socket in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf) {
                    if n == 0 || socket.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = FaultProxy::start(echo_addr);
    let mut s = std::net::TcpStream::connect(proxy.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    s.write_all(b"sync").expect("write");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"sync");

    proxy.cut();
    let mut buf = [0u8; 8];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "connection survived cut()"
    );
    let mut held = std::net::TcpStream::connect(proxy.addr()).expect("connect while cut");
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    held.write_all(b"x").expect("write while cut");
    let err = held.read(&mut buf).expect_err("no answer while cut");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "expected a timeout, got {err:?}"
    );

    proxy.restore();
    let mut s = std::net::TcpStream::connect(proxy.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    s.write_all(b"back").expect("write");
    s.read_exact(&mut back).expect("echo after restore");
    assert_eq!(&back, b"back");
    let addr = proxy.addr();
    drop(proxy);
    // Dropping the proxy closes its listener and its connections.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "proxy still listening after drop"
    );
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
}
