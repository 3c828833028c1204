//! A client connection with the two deadlines hyper's HTTP/1 server does not separate:
//! an idle keep-alive connection (no request started) is closed after `idle`, and a request
//! whose head is still incomplete `header` after its first byte (slowloris) is closed too.
//!
//! hyper's own `header_read_timeout` starts when a connection becomes idle, so it would make
//! the idle timeout and the header timeout one number; this wrapper keeps them apart. While a
//! request is being handled (the service counts it in [`Activity`]) no deadline applies here: the body read
//! is bounded by the handler (`--http-body-timeout-ms`) and delivery by provider timeouts.
//!
//! Cost on the hot path: two relaxed atomic loads per read and a clock read per response.
//! The timer is re-armed lazily (it may fire early and be pushed back), so a keep-alive
//! request normally touches the timer wheel not at all.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Counters of connections closed by a deadline.
#[derive(Clone)]
pub struct TimeoutCounters {
    pub idle: IntCounter,
    pub header: IntCounter,
}

/// Requests handed to the service and responses it produced, on one connection.
pub struct Activity {
    opened: Instant,
    started: AtomicU32,
    finished: AtomicU32,
    /// When the last response was ready, in ms since `opened`.
    finished_at_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            started: AtomicU32::new(0),
            finished: AtomicU32::new(0),
            finished_at_ms: AtomicU64::new(0),
        }
    }

    pub fn request_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn response_ready(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.finished_at_ms.store(ms, Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    fn last_response(&self) -> Instant {
        self.opened + Duration::from_millis(self.finished_at_ms.load(Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

#[derive(Clone, Copy)]
enum Phase {
    /// No request started since this instant (connection opened or last response).
    Idle(Instant),
    /// The first byte of a request head arrived at this instant.
    Head(Instant),
    /// A request is being handled.
    Busy,
}

/// Deadlines of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub idle: Duration,
    pub header: Duration,
}

impl Deadlines {
    /// How long a new connection may wait before its first request starts. A client opens
    /// a connection to send a request: one that sends nothing is held no longer than a slow
    /// request head would be (as nginx's `client_header_timeout` does), so thousands of
    /// silent connections cannot keep the connection cap full for a whole idle period.
    pub fn first_request(&self) -> Duration {
        self.idle.min(self.header)
    }
}

pub struct TimedIo {
    inner: TcpStream,
    /// Updated by the service; a response seen finished ends the request's phase.
    activity: Arc<Activity>,
    seen_finished: u32,
    phase: Phase,
    sleep: Pin<Box<Sleep>>,
    deadlines: Deadlines,
    counters: TimeoutCounters,
}

impl TimedIo {
    pub fn new(
        inner: TcpStream,
        activity: Arc<Activity>,
        deadlines: Deadlines,
        counters: TimeoutCounters,
    ) -> TimedIo {
        let now = Instant::now();
        TimedIo {
            inner,
            activity,
            seen_finished: 0,
            phase: Phase::Idle(now),
            sleep: Box::pin(tokio::time::sleep_until(now + deadlines.first_request())),
            deadlines,
            counters,
        }
    }

    /// Brings the phase up to date with the service's counters. A response finished since
    /// the last look starts an idle period even if this wrapper never saw the request busy
    /// (a fast handler answers within the poll that read its request).
    fn observe_activity(&mut self) {
        let finished = self.activity.finished.load(Ordering::Relaxed);
        let started = self.activity.started.load(Ordering::Relaxed);
        if started != finished {
            self.phase = Phase::Busy;
        } else if finished != self.seen_finished || matches!(self.phase, Phase::Busy) {
            self.phase = Phase::Idle(self.activity.last_response());
        }
        self.seen_finished = finished;
    }

    /// Called when a read would block: fails the read once the current deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (deadline, counter, what) = match self.phase {
            Phase::Busy => {
                // hyper reads again after the response only when woken: keep a timer armed
                // so that an idle period is noticed at most `idle` after it began (the
                // deadline itself counts from the response). No wake-up per request.
                while self.sleep.as_mut().poll(cx).is_ready() {
                    self.sleep
                        .as_mut()
                        .reset(Instant::now() + self.deadlines.idle);
                }
                return Poll::Pending;
            }
            Phase::Idle(since) => {
                let wait = if self.seen_finished == 0 {
                    self.deadlines.first_request()
                } else {
                    self.deadlines.idle
                };
                (since + wait, &self.counters.idle, "idle")
            }
            Phase::Head(since) => (
                since + self.deadlines.header,
                &self.counters.header,
                "request head",
            ),
        };
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                counter.inc();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} timeout"),
                )));
            }
            // Armed for an earlier deadline: push it back and wait again.
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.observe_activity();
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && matches!(me.phase, Phase::Idle(_)) {
                    me.phase = Phase::Head(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => me.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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
