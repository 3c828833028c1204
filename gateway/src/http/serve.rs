//! The HTTP/1.1 server: an accept loop with a connection cap, per-connection idle and
//! header deadlines ([`conn::TimedIo`]), and a shutdown that first turns unready, keeps
//! serving for a delay (so load balancers stop sending), then drains.
//!
//! At the cap the loop stops accepting: further connections wait in the kernel's listen
//! backlog (they are not refused) and are accepted as soon as a connection ends; idle ones
//! end after the idle timeout, so a flood of idle connections delays others by at most that.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderValue, Method, Request, header};
use axum::response::IntoResponse;
use futures::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_service::Service;

use super::AppState;
use super::conn::{Activity, Deadlines, TimedIo, TimeoutCounters};
use super::dispatch;

/// Limits and timings of the server (flags `--http-*`, `--shutdown-*`).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub max_connections: u32,
    pub deadlines: Deadlines,
    /// Longest wait for in-flight requests once draining.
    pub drain_timeout: Duration,
}

struct ServerMetrics {
    open: IntGauge,
    timeouts: TimeoutCounters,
}

impl ServerMetrics {
    fn new(registry: &Registry) -> ServerMetrics {
        let open = IntGauge::new("acteon_http_connections", "Open client connections")
            .expect("static metric definition");
        let counter = |kind: &str| {
            IntCounter::with_opts(
                prometheus::Opts::new(
                    "acteon_http_connection_timeouts_total",
                    "Client connections closed by a deadline",
                )
                .const_label("kind", kind),
            )
            .expect("static metric definition")
        };
        let timeouts = TimeoutCounters {
            idle: counter("idle"),
            header: counter("header"),
        };
        for m in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(timeouts.idle.clone()),
            Box::new(timeouts.header.clone()),
        ] {
            // Registered once per process; a second server in one process shares nothing.
            let _ = registry.register(m);
        }
        ServerMetrics { open, timeouts }
    }
}

/// Serves the API ([`super::router`]) of `app` on `listener` until `shutdown` resolves,
/// then turns unready, keeps serving for the delay `shutdown` answered, stops accepting and
/// drains for up to `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<AppState>,
    registry: &Registry,
    options: ServeOptions,
    shutdown: impl Future<Output = Duration>,
) {
    let metrics = Arc::new(ServerMetrics::new(registry));
    let permits = Arc::new(Semaphore::new(options.max_connections as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let lifecycle = app.lifecycle.clone();
    let conn = ConnContext {
        router: super::router(app.clone()),
        app,
        metrics,
        deadlines: options.deadlines,
        stop: stop_rx,
    };
    {
        let accept = accept_loop(&listener, &permits, &conn);
        tokio::pin!(accept);
        let delay = tokio::select! {
            _ = &mut accept => Duration::ZERO,
            delay = shutdown => delay,
        };
        lifecycle.start_draining();
        tracing::info!(
            delay = ?delay,
            "shutting down: /readyz answers 503; still serving during the delay"
        );
        tokio::select! {
            _ = &mut accept => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    // Stop accepting: new connections are refused (and go to other replicas).
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!("draining in-flight requests");
    let all = permits.acquire_many(options.max_connections);
    match tokio::time::timeout(options.drain_timeout, all).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            open = options.max_connections as usize - permits.available_permits(),
            "drain timeout reached; exiting with connections still open"
        ),
    }
}

/// Accepts while a permit is free. Never returns.
async fn accept_loop(listener: &TcpListener, permits: &Arc<Semaphore>, conn: &ConnContext) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(conn.clone().run(stream, permit));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Per-connection errors (the peer reset before accept) are ignored; resource exhaustion
/// (EMFILE, ENFILE, ENOMEM) is logged and retried after a pause instead of spinning.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 100 ms (is --http-max-connections above the file limit?)");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Resolves when the server stops (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[derive(Clone)]
struct ConnContext {
    router: Router,
    app: Arc<AppState>,
    metrics: Arc<ServerMetrics>,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
}

impl ConnContext {
    async fn run(mut self, stream: TcpStream, _permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        self.metrics.open.inc();
        let activity = Arc::new(Activity::default());
        let io = TimedIo::new(
            stream,
            activity.clone(),
            self.deadlines,
            self.metrics.timeouts.clone(),
        );
        let (router, app) = (self.router.clone(), self.app.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            activity.request_started();
            let draining = app.lifecycle.is_draining();
            // Dispatch, the hot path, skips the router: routing, its request extensions,
            // boxing of body and handler future, cloning the headers for the extractor
            // were ~10% of an ungated dispatch. Same handler, same answer.
            let response = if req.method() == Method::POST && req.uri().path() == "/v1/dispatch" {
                let app = app.clone();
                let query = Query::try_from_uri(req.uri());
                // Boxed: hyper moves the service's future a few times before polling it,
                // and unboxed this one is kilobytes (the whole dispatch state machine).
                Either::Left(Box::pin(async move {
                    Ok(dispatch::dispatch_request(&app, query, req)
                        .await
                        .into_response())
                }))
            } else {
                Either::Right(router.clone().call(req))
            };
            let activity = activity.clone();
            async move {
                let Ok::<_, Infallible>(mut resp) = response.await;
                activity.response_ready();
                if draining {
                    // Ask the client to reconnect: through the Service, to another replica.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Header deadlines are TimedIo's (hyper's would also bound idle keep-alive).
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped(&mut self.stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        self.metrics.open.dec();
    }
}
