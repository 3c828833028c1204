//! `acteon-load`: drives a running gateway's `POST /v1/dispatch` over HTTP/1.1 keep-alive
//! connections and reports throughput, latency percentiles and the outcomes it got back.
//!
//! Closed loop by default: each of `--concurrency` connections sends its next request as soon
//! as the previous answer arrives. With `--rate N` the connections share a fixed schedule of
//! N requests/s instead (the "half load" latency measurement). A request sent on time is
//! timed from its actual send; one sent late because earlier answers were slow is timed from
//! its scheduled time, so a stalled gateway shows up as latency rather than as fewer
//! requests (no coordinated omission).
//!
//! Only loopback addresses may be targeted. See README.md for the rule set it is meant for.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Load generator for the Acteon gateway's dispatch API.
#[derive(Parser, Debug)]
#[command(name = "acteon-load", version, about)]
struct Args {
    /// Gateway base URL (http, loopback address only); requests go to `<url>/v1/dispatch`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// How long to send, e.g. `10s`, `500ms`, `2m` (a bare number is seconds).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Total requests per second, spread over the connections (default: as fast as answers come).
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// `mixed`: executed, dedup, throttled, suppressed and rerouted actions in equal parts
    /// (for bench-rules.yaml); `noop`: executed actions only. With gated-rules.yaml as well:
    /// `gated-dedup` (fresh ids, each `dedup_key` sent exactly twice in a row by one
    /// connection, so half are `Deduplicated`), `grouped` (grouped by `payload.k`, 256
    /// groups), `scheduled` (parked 3600 s), `scheduled-soon` (parked 5 s).
    #[arg(long, value_enum, default_value_t = Scenario::Mixed)]
    scenario: Scenario,
    /// Tenant of the actions. With `--tenants N` above 1 the tenants are `<prefix>0` …
    /// `<prefix>N-1`, e.g. `--tenant-prefix tenant- --tenants 96` for the background rules.
    #[arg(long, default_value = "load")]
    tenant_prefix: String,
    /// Number of tenants to spread the actions over (see `--tenant-prefix`).
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Namespace of the actions.
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Distinct dedup keys of the `dedup` actions (the first of each executes, the rest are duplicates).
    #[arg(long, default_value_t = 16)]
    dedup_keys: u64,
    /// Stop after this many requests in total (default: only `--duration` limits the run).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Send `Authorization: Bearer <token>` (a gateway with `--auth on`).
    #[arg(long)]
    bearer: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Mixed,
    Noop,
    GatedDedup,
    Grouped,
    Scheduled,
    ScheduledSoon,
    /// Each dispatch starts a chain (`chains.sh`).
    Chained,
    /// Executed actions delivered by the webhook provider `sink` (`webhook.sh`).
    Webhook,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Mixed => "mixed",
            Scenario::Noop => "noop",
            Scenario::GatedDedup => "gated-dedup",
            Scenario::Grouped => "grouped",
            Scenario::Scheduled => "scheduled",
            Scenario::ScheduledSoon => "scheduled-soon",
            Scenario::Chained => "chained",
            Scenario::Webhook => "webhook",
        }
    }

    fn kinds(self) -> &'static [Kind] {
        match self {
            Scenario::Mixed => &MIXED,
            Scenario::Noop => std::slice::from_ref(&EXECUTED),
            Scenario::GatedDedup => std::slice::from_ref(&GATED),
            Scenario::Grouped => std::slice::from_ref(&GROUPED),
            Scenario::Scheduled => std::slice::from_ref(&SCHEDULED),
            Scenario::ScheduledSoon => std::slice::from_ref(&SCHEDULED_SOON),
            Scenario::Chained => std::slice::from_ref(&CHAINED),
            Scenario::Webhook => std::slice::from_ref(&TO_SINK),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n =
        f64::from_str(num).map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How a request's `dedup_key` is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dedup {
    /// None.
    No,
    /// From a pool of `--dedup-keys` shared by the whole run.
    Pool,
    /// Unique to the connection and `seq / 2`: each key is sent exactly twice, in a row.
    Pairs,
}

/// What a request is for: action type, provider, and how it carries a dedup key.
#[derive(Clone, Copy)]
struct Kind {
    action_type: &'static str,
    provider: &'static str,
    dedup: Dedup,
}

const EXECUTED: Kind = Kind {
    action_type: "executed",
    provider: "noop-a",
    dedup: Dedup::No,
};
const TO_SINK: Kind = Kind {
    action_type: "executed",
    provider: "sink",
    dedup: Dedup::No,
};
const GATED: Kind = Kind {
    action_type: "gated",
    provider: "noop-a",
    dedup: Dedup::Pairs,
};
const GROUPED: Kind = Kind {
    action_type: "grouped",
    provider: "noop-a",
    dedup: Dedup::No,
};
const SCHEDULED: Kind = Kind {
    action_type: "scheduled",
    provider: "noop-a",
    dedup: Dedup::No,
};
const SCHEDULED_SOON: Kind = Kind {
    action_type: "scheduled-soon",
    provider: "noop-a",
    dedup: Dedup::No,
};
const CHAINED: Kind = Kind {
    action_type: "chained",
    provider: "noop-a",
    dedup: Dedup::No,
};
const MIXED: [Kind; 5] = [
    EXECUTED,
    Kind {
        action_type: "dedup",
        provider: "noop-a",
        dedup: Dedup::Pool,
    },
    Kind {
        action_type: "throttled",
        provider: "noop-a",
        dedup: Dedup::No,
    },
    Kind {
        action_type: "suppressed",
        provider: "noop-a",
        dedup: Dedup::No,
    },
    Kind {
        action_type: "rerouted",
        provider: "noop-a",
        dedup: Dedup::No,
    },
];

/// Where and what to send; shared by the workers.
struct Plan {
    addr: SocketAddr,
    authority: String,
    path: String,
    kinds: &'static [Kind],
    /// JSON-encoded (quoted) tenants and namespace.
    tenants: Vec<String>,
    namespace: String,
    dedup_keys: u64,
    run: String,
    /// Requests left to send with `--requests`.
    budget: Option<std::sync::atomic::AtomicU64>,
    deadline: Instant,
    /// Seconds between two requests of one connection, in `--rate` mode.
    interval: Option<Duration>,
    concurrency: usize,
    /// The `Authorization` header value, if any.
    authorization: Option<String>,
    start: Instant,
}

/// What one worker saw.
struct Tally {
    requests: u64,
    errors: Vec<(String, u64)>,
    outcomes: Vec<(String, u64)>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            requests: 0,
            errors: Vec::new(),
            outcomes: Vec::new(),
            // 1 µs … 100 s, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
        }
    }

    fn count(list: &mut Vec<(String, u64)>, key: &str) {
        match list.iter_mut().find(|(k, _)| k == key) {
            Some((_, n)) => *n += 1,
            None => list.push((key.to_owned(), 1)),
        }
    }

    fn error(&mut self, what: &str) {
        self.requests += 1;
        Tally::count(&mut self.errors, what);
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        for (list, from) in [
            (&mut self.errors, other.errors),
            (&mut self.outcomes, other.outcomes),
        ] {
            for (k, n) in from {
                match list.iter_mut().find(|(key, _)| *key == k) {
                    Some((_, m)) => *m += n,
                    None => list.push((k, n)),
                }
            }
        }
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }
}

/// The outcome tag of a dispatch answer: the string (`"Deduplicated"`) or the single key of
/// the object (`{"Executed": {…}}`) at the top level.
fn outcome_tag(body: &[u8]) -> Option<&str> {
    let skip_ws = |b: &[u8]| -> usize {
        b.iter()
            .position(|c| !c.is_ascii_whitespace())
            .unwrap_or(b.len())
    };
    let mut rest = &body[skip_ws(body)..];
    if rest.first() == Some(&b'{') {
        rest = &rest[1..];
        rest = &rest[skip_ws(rest)..];
    }
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|c| *c == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

fn body(plan: &Plan, worker: usize, seq: u64, buf: &mut String) {
    let kind = plan.kinds[(seq as usize + worker) % plan.kinds.len()];
    let tenant = &plan.tenants[(seq as usize + worker) / plan.kinds.len() % plan.tenants.len()];
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"id":"{run}-{worker}-{seq}","namespace":{ns},"tenant":{tenant},"provider":"{provider}","action_type":"{action_type}","payload":{{"severity":4,"message":"acteon-load","seq":{seq},"k":{k}}}"#,
        run = plan.run,
        ns = plan.namespace,
        provider = kind.provider,
        action_type = kind.action_type,
        k = (seq + worker as u64) % 256,
    );
    match kind.dedup {
        Dedup::No => {}
        Dedup::Pool => {
            let _ = write!(
                buf,
                r#","dedup_key":"key-{}""#,
                seq % plan.dedup_keys.max(1)
            );
        }
        Dedup::Pairs => {
            let _ = write!(buf, r#","dedup_key":"{}-{worker}-{}""#, plan.run, seq / 2);
        }
    }
    buf.push('}');
}

async fn connect(plan: &Plan) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake".to_owned())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(plan: Arc<Plan>, id: usize) -> Tally {
    let mut tally = Tally::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut buf = String::with_capacity(512);
    // In rate mode the connections take turns: connection `id` starts `id/concurrency` of an
    // interval late, so the total rate is even.
    let offset = plan
        .interval
        .map(|i| i.mul_f64(id as f64 / plan.concurrency as f64));
    let mut seq: u64 = 0;
    loop {
        let scheduled = match (plan.interval, offset) {
            (Some(interval), Some(offset)) => {
                let at = plan.start + offset + interval.mul_f64(seq as f64);
                if at >= plan.deadline {
                    break;
                }
                if Instant::now() < at {
                    // On schedule: time from the actual send, so the timer's millisecond
                    // granularity is not counted as gateway latency.
                    tokio::time::sleep_until(at.into()).await;
                    Instant::now()
                } else {
                    // Behind schedule because earlier answers were slow: the wait counts.
                    at
                }
            }
            _ => {
                let now = Instant::now();
                if now >= plan.deadline {
                    break;
                }
                now
            }
        };
        if let Some(budget) = &plan.budget {
            use std::sync::atomic::Ordering;
            if budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
            {
                break;
            }
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&plan).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    tally.error(&e);
                    seq += 1;
                    // Do not spin on a gateway that is down.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        body(&plan, id, seq, &mut buf);
        seq += 1;
        let mut request = Request::post(plan.path.as_str())
            .header(HOST, plan.authority.as_str())
            .header(CONTENT_TYPE, "application/json");
        if let Some(value) = &plan.authorization {
            request = request.header(AUTHORIZATION, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(buf.as_bytes())))
            .expect("a valid request");
        let ready = s.ready().await;
        let answer = match ready {
            Ok(()) => s.send_request(request).await,
            Err(e) => Err(e),
        };
        let response = match answer {
            Ok(r) => r,
            Err(_) => {
                tally.error("transport");
                sender = None;
                continue;
            }
        };
        let status = response.status();
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                tally.error("transport (body)");
                sender = None;
                continue;
            }
        };
        let micros = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally.latency.saturating_record(micros.max(1));
        if status != StatusCode::OK {
            tally.error(&format!("HTTP {}", status.as_u16()));
            continue;
        }
        tally.requests += 1;
        Tally::count(
            &mut tally.outcomes,
            outcome_tag(&bytes).unwrap_or("(unparsed)"),
        );
    }
    tally
}

/// Resolves the URL to a loopback socket address, the `Host` value and the dispatch path.
async fn target(url: &str) -> Result<(SocketAddr, String, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("--url `{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url `{url}`: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url `{url}`: no host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("--url `{url}`: cannot resolve `{host}`: {e}"))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("--url `{url}`: `{host}` has no address"))?;
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "--url `{url}`: {} is not a loopback address; acteon-load only targets 127.0.0.0/8 and ::1",
            bad.ip()
        ));
    }
    let base = uri.path().trim_end_matches('/');
    Ok((addr, authority.to_string(), format!("{base}/v1/dispatch")))
}

fn print_report(args: &Args, plan: &Plan, tally: &Tally, elapsed: Duration) {
    let errors: u64 = tally.errors.iter().map(|(_, n)| n).sum();
    let mode = match args.rate {
        Some(r) => format!("paced at {r} req/s (late sends timed from their schedule)"),
        None => "closed loop".to_owned(),
    };
    let scenario = args.scenario.name();
    println!(
        "acteon-load: POST http://{}{} ({}), scenario {scenario}, {} connections, {:.1} s, {mode}",
        plan.authority,
        plan.path,
        plan.addr,
        args.concurrency,
        elapsed.as_secs_f64()
    );
    println!("requests     {}", tally.requests);
    println!("errors       {errors}");
    for (what, n) in &tally.errors {
        println!("  {what:<24} {n}");
    }
    let ok = tally.requests - errors;
    println!(
        "throughput   {:.0} req/s (200 answers)",
        ok as f64 / elapsed.as_secs_f64()
    );
    let h = &tally.latency;
    if h.is_empty() {
        println!("latency      (no answers)");
    } else {
        let q = |q: f64| h.value_at_quantile(q);
        println!(
            "latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0}, {} answers)",
            q(0.50),
            q(0.90),
            q(0.99),
            q(0.999),
            h.max(),
            h.mean(),
            h.len()
        );
    }
    println!("outcomes");
    let mut outcomes = tally.outcomes.clone();
    outcomes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (tag, n) in &outcomes {
        println!("  {tag:<24} {n}");
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if args.tenants == 0 {
        return Err("--tenants must be at least 1".into());
    }
    let interval = match args.rate {
        Some(r) if !(r.is_finite() && r > 0.0) => return Err("--rate must be positive".into()),
        Some(r) => Some(Duration::from_secs_f64(args.concurrency as f64 / r)),
        None => None,
    };
    let (addr, authority, path) = target(&args.url).await?;
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let tenants = if args.tenants == 1 {
        vec![quote(&args.tenant_prefix)]
    } else {
        (0..args.tenants)
            .map(|i| quote(&format!("{}{i}", args.tenant_prefix)))
            .collect()
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let start = Instant::now();
    let plan = Arc::new(Plan {
        addr,
        authority,
        path,
        kinds: args.scenario.kinds(),
        tenants,
        namespace: quote(&args.namespace),
        dedup_keys: args.dedup_keys,
        run: format!("load-{:x}", nanos as u64),
        budget: args.requests.map(std::sync::atomic::AtomicU64::new),
        deadline: start + args.duration,
        interval,
        concurrency: args.concurrency,
        authorization: args.bearer.as_ref().map(|t| format!("Bearer {t}")),
        start,
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|id| tokio::spawn(worker(plan.clone(), id)))
        .collect();
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await.map_err(|e| format!("worker failed: {e}"))?);
    }
    let elapsed = start.elapsed();
    print_report(args, &plan, &total, elapsed);
    Ok(total.errors.is_empty())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_tags() {
        assert_eq!(
            outcome_tag(br#"{"Executed":{"status":"success"}}"#),
            Some("Executed")
        );
        assert_eq!(outcome_tag(br#" "Deduplicated""#), Some("Deduplicated"));
        assert_eq!(
            outcome_tag(br#"{ "Throttled": {"retry_after": {"secs": 1, "nanos": 0}}}"#),
            Some("Throttled")
        );
        assert_eq!(outcome_tag(b"[]"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[tokio::test]
    async fn only_loopback() {
        assert!(target("http://127.0.0.1:1/").await.is_ok());
        assert!(target("http://[::1]:1").await.is_ok());
        assert_eq!(
            target("http://127.0.0.1:8080/gw/").await.unwrap().2,
            "/gw/v1/dispatch"
        );
        assert!(
            target("http://10.0.0.1:8080")
                .await
                .unwrap_err()
                .contains("not a loopback")
        );
        assert!(target("https://127.0.0.1:8080").await.is_err());
    }

    #[test]
    fn mixed_bodies_are_json() {
        let plan = Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            authority: "127.0.0.1:1".into(),
            path: "/v1/dispatch".into(),
            kinds: &MIXED,
            tenants: vec![r#""lo\"ad""#.into()],
            namespace: r#""bench""#.into(),
            dedup_keys: 4,
            run: "r".into(),
            budget: None,
            deadline: Instant::now(),
            interval: None,
            concurrency: 1,
            authorization: None,
            start: Instant::now(),
        };
        let mut buf = String::new();
        let mut types = Vec::new();
        for seq in 0..5 {
            body(&plan, 0, seq, &mut buf);
            let v: serde_json::Value = serde_json::from_str(&buf).unwrap();
            assert_eq!(v["tenant"], "lo\"ad");
            assert_eq!(v["id"], format!("r-0-{seq}"));
            assert_eq!(v.get("dedup_key").is_some(), v["action_type"] == "dedup");
            types.push(v["action_type"].as_str().unwrap().to_owned());
        }
        types.sort();
        assert_eq!(
            types,
            ["dedup", "executed", "rerouted", "suppressed", "throttled"]
        );
    }

    #[test]
    fn gated_dedup_keys_come_in_pairs() {
        let plan = Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            authority: "127.0.0.1:1".into(),
            path: "/v1/dispatch".into(),
            kinds: Scenario::GatedDedup.kinds(),
            tenants: vec![r#""load""#.into()],
            namespace: r#""bench""#.into(),
            dedup_keys: 4,
            run: "r".into(),
            budget: None,
            deadline: Instant::now(),
            interval: None,
            concurrency: 1,
            authorization: None,
            start: Instant::now(),
        };
        let mut buf = String::new();
        let mut keys = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for worker in 0..2 {
            for seq in 0..6 {
                body(&plan, worker, seq, &mut buf);
                let v: serde_json::Value = serde_json::from_str(&buf).unwrap();
                assert_eq!(v["action_type"], "gated");
                assert!(ids.insert(v["id"].as_str().unwrap().to_owned()));
                keys.push(v["dedup_key"].as_str().unwrap().to_owned());
            }
        }
        for pair in keys.chunks(2) {
            assert_eq!(pair[0], pair[1]);
        }
        keys.dedup();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 6);
    }
}
