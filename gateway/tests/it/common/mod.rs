//! Helpers shared by the integration tests: the real gateway binary on a free port, an
//! in-process gateway built from YAML, and a recording HTTP server for webhook targets.
#![allow(dead_code)]

pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_api::compile::{CompileOptions, compile, parse_text};
use acteon_gateway::config::{LiveConfig, Runtime};
use acteon_gateway::metrics::Metrics;
use acteon_gateway::pipeline::{Gateway, GatewayOptions};
use acteon_gateway::state::MemoryStore;
use parking_lot::Mutex;
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A gateway compiled from YAML documents, in process, on the memory backend.
pub fn gateway(yaml: &str) -> Gateway {
    let docs =
        parse_text("test.yaml", yaml).unwrap_or_else(|e| panic!("test YAML does not parse: {e:?}"));
    let compiled = compile(&docs, &CompileOptions::default());
    assert!(
        compiled.rejections.is_empty(),
        "test config rejected: {:?}",
        compiled.rejections
    );
    let runtime =
        Runtime::build(compiled.snapshot, &reqwest::Client::new(), None).expect("runtime builds");
    Gateway {
        config: LiveConfig::new(runtime),
        state: Arc::new(MemoryStore::new()),
        metrics: Arc::new(Metrics::new()),
        options: GatewayOptions::default(),
        confirmer: Default::default(),
        delivered: Default::default(),
        chain_activity: Default::default(),
        guards: Default::default(),
        audit: None,
    }
}

/// An action as JSON, parsed into the gateway's type.
pub fn action(v: Value) -> acteon_gateway::action::Action {
    serde_json::from_value(v).expect("test action parses")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The gateway binary, running until dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `acteon-gateway serve` with extra arguments and waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[], None)
    }

    /// Like [`Server::start`], with extra environment variables (after `RUST_LOG=warn`, so
    /// they may override it) and, if given, the log (stdout and stderr) written to `log`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], log: Option<&Path>) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        // The log goes to stdout; errors at exit to stderr.
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                let copy = file.try_clone().expect("log file handle");
                (Stdio::from(file), Stdio::from(copy))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_acteon-gateway"))
            .current_dir(repo_root())
            .arg("serve")
            .args(["--listen", &listen])
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("gateway binary starts");
        let mut server = Server {
            child,
            base: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&listen).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("gateway exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not listen on {listen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a [`Recorder`] received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// When it arrived.
    pub at: Instant,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

/// A local HTTP server that records requests and answers with a configurable status/delay
/// (body `{"ok":true}`, or under `/echo` the request's own body).
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Statuses to answer in order; when empty, 200.
    pub script: Arc<Mutex<Vec<u16>>>,
    pub delay: Arc<Mutex<Duration>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let rec = Recorder {
            addr: listener.local_addr().expect("addr"),
            requests: Arc::default(),
            script: Arc::default(),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
        };
        async fn handle(
            State(rec): State<Recorder>,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> (StatusCode, String) {
            let delay = *rec.delay.lock();
            tokio::time::sleep(delay).await;
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            // Paths under /echo answer with the body they received.
            let answer = if uri.path().starts_with("/echo") {
                body.to_string()
            } else {
                r#"{"ok":true}"#.to_owned()
            };
            rec.requests.lock().push(Recorded {
                path: uri.path().to_owned(),
                at: Instant::now(),
                headers,
                body,
            });
            let status = {
                let mut script = rec.script.lock();
                if script.is_empty() {
                    200
                } else {
                    script.remove(0)
                }
            };
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                answer,
            )
        }
        let app = axum::Router::new().fallback(handle).with_state(rec.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        rec
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().len()
    }
}

/// Sends every action to `/v1/dispatch` of the gateways at `bases`, round-robin, at most
/// 128 in flight; each must answer 200. Returns the outcomes in order.
pub async fn send_round_robin(
    client: &reqwest::Client,
    bases: &[String],
    actions: Vec<Value>,
) -> Vec<Value> {
    let limit = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::with_capacity(actions.len());
    for (i, a) in actions.into_iter().enumerate() {
        let url = format!("{}/v1/dispatch", bases[i % bases.len()]);
        let client = client.clone();
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&a).send().await.expect("sent");
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            drop(permit);
            assert_eq!(status, 200, "{body}");
            body
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// The Redis of the tests (`ACTEON_TEST_REDIS_URL`, else the local default).
pub fn redis_url() -> String {
    std::env::var("ACTEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Postgres of the tests (`ACTEON_TEST_POSTGRES_URL`, else the local default).
pub fn postgres_url() -> String {
    std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// GET `url`: status and JSON body (the text as a JSON string when it is not JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = client.get(url).send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
