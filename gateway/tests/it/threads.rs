//! `messageMode`: a group's later notifications and an event's later moves update or
//! thread the first message instead of posting a new one, against local peers that keep
//! messages as Slack and Discord do (ids they handed out; `chat.update` by channel id and
//! `ts`, replies by `thread_ts`, webhook edits by `PATCH …/messages/{id}`; unknown ids
//! refused with their real errors) and a real SMTP server (aiosmtpd). The notifications
//! are sent by in-process workers; across replicas, two gateways share one Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acteon_gateway::outcome::ActionOutcome;
use acteon_gateway::pipeline::Gateway;
use acteon_gateway::state::{RedisStore, StateStore};
use acteon_gateway::worker::{self, WorkerHandle, WorkerOptions};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{action, redis_url};
use crate::providers::{Smtp, gateway_with_secrets};

const SLACK_TOKEN: &str = "xoxb-threads-t0ken";
const DISCORD_SECRET: &str = "d1sc0rdHookT0ken";
/// The channel id the Slack peer answers for every channel name.
const CHANNEL_ID: &str = "C0THREADS1";
/// How long a test waits for the worker to deliver.
const PATIENCE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// A peer speaking Slack's Web API and Discord's webhooks, keeping the messages it posted

#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
    /// The id of the message this request posted.
    posted: Option<String>,
}

#[derive(Clone, Default)]
struct Chat {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Ids of the messages the peer has (Slack `ts`, Discord ids).
    messages: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
    base: String,
}

impl Chat {
    async fn start() -> Chat {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let chat = Chat {
            base: format!("http://{}", listener.local_addr().expect("addr")),
            ..Chat::default()
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(chat.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        chat
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// Waits until the peer has seen `n` requests, and answers them.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the peer saw {} requests, not {n}: {seen:#?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A new message id (Slack-like `ts` or a Discord snowflake), remembered.
    fn post(&self, slack: bool) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = if slack {
            format!("1700000000.{n:06}")
        } else {
            format!("11880000000000{n:05}")
        };
        self.messages.lock().push(id.clone());
        id
    }

    fn knows(&self, id: &str) -> bool {
        self.messages.lock().iter().any(|m| m == id)
    }

    /// Every message deleted at the peer.
    fn forget_all(&self) {
        self.messages.lock().clear();
    }
}

async fn answer(
    State(chat): State<Chat>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (response, posted) = if uri.path().starts_with("/api/webhooks/") {
        discord(&chat, &method, &uri, &body)
    } else {
        slack(&chat, uri.path(), &headers, &body)
    };
    chat.seen.lock().push(Seen {
        method,
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        body,
        posted,
    });
    response
}

/// An answer, and the id of the message it posted.
type Answered = (Response, Option<String>);

/// Slack's Web API: `chat.postMessage` (a channel name or id; `thread_ts` must be a
/// message of the channel) and `chat.update` (a channel id only, and a known `ts`).
fn slack(chat: &Chat, path: &str, headers: &HeaderMap, body: &Value) -> Answered {
    let fail = |code: &str| {
        (
            axum::Json(json!({"ok": false, "error": code})).into_response(),
            None,
        )
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {SLACK_TOKEN}")) {
        return fail("invalid_auth");
    }
    let channel = body.get("channel").and_then(Value::as_str);
    let text = body.get("text").and_then(Value::as_str);
    let (Some(channel), Some(text)) = (channel, text) else {
        return fail("invalid_arguments");
    };
    match path {
        "/api/chat.postMessage" => {
            if let Some(root) = body.get("thread_ts").and_then(Value::as_str)
                && !(channel == CHANNEL_ID && chat.knows(root))
            {
                return fail("thread_not_found");
            }
            let ts = chat.post(true);
            let answer = json!({"ok": true, "channel": CHANNEL_ID, "ts": ts,
                                "message": {"type": "message", "text": text, "ts": ts}});
            (axum::Json(answer).into_response(), Some(ts))
        }
        "/api/chat.update" => {
            if channel != CHANNEL_ID {
                return fail("channel_not_found");
            }
            let ts = body.get("ts").and_then(Value::as_str).unwrap_or_default();
            if !chat.knows(ts) {
                return fail("message_not_found");
            }
            let answer = json!({"ok": true, "channel": CHANNEL_ID, "ts": ts, "text": text});
            (axum::Json(answer).into_response(), None)
        }
        _ => (
            (StatusCode::NOT_FOUND, "unknown method").into_response(),
            None,
        ),
    }
}

/// Discord's webhook: `POST …?wait=true` answers the message; `PATCH …/messages/{id}`
/// edits one the webhook sent, 404 `Unknown Message` otherwise.
fn discord(chat: &Chat, method: &Method, uri: &Uri, body: &Value) -> Answered {
    let hook = format!("/api/webhooks/1234/{DISCORD_SECRET}");
    let unknown = |what: &str, code: u32| {
        let body = axum::Json(json!({"message": what, "code": code}));
        ((StatusCode::NOT_FOUND, body).into_response(), None)
    };
    let content = body.get("content").and_then(Value::as_str).unwrap_or("");
    if *method == Method::POST && uri.path() == hook {
        if !uri.query().unwrap_or("").contains("wait=true") {
            return (StatusCode::NO_CONTENT.into_response(), None);
        }
        let id = chat.post(false);
        let answer = json!({"id": id, "channel_id": "1100", "content": content});
        return (axum::Json(answer).into_response(), Some(id));
    }
    let Some(id) = uri
        .path()
        .strip_prefix(&format!("{hook}/messages/"))
        .filter(|_| *method == Method::PATCH)
    else {
        return unknown("Unknown Webhook", 10015);
    };
    if !chat.knows(id) {
        return unknown("Unknown Message", 10008);
    }
    let answer = json!({"id": id, "channel_id": "1100", "content": content});
    (axum::Json(answer).into_response(), None)
}

// ---------------------------------------------------------------------------------------
// Gateways

/// Providers `slack-update`, `slack-thread`, `discord` (update) and `slack-new`; a group
/// rule for `firing` (by `payload.alertname`) and a state machine for `page` (by
/// `payload.id`: open → paged → resolved, both moves notifying).
fn config(chat: &Chat) -> String {
    let slack = |name: &str, mode: &str| {
        format!(
            "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  type: slack\n  slack: {{tokenSecretRef: {{name: slack, key: token}}, apiUrl: \"{}/api\", channel: \"#alerts\"}}\n  messageMode: {mode}\n  retry: {{maxAttempts: 1}}\n",
            chat.base
        )
    };
    [
        slack("slack-update", "update"),
        slack("slack-thread", "thread"),
        slack("slack-new", "new"),
        "---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: discord, namespace: ns}\nspec:\n  type: discord\n  discord: {webhookUrlSecretRef: {name: discord, key: url}}\n  messageMode: update\n  retry: {maxAttempts: 1}\n".to_owned(),
        machine_and_rules(),
    ]
    .concat()
}

fn machine_and_rules() -> String {
    "---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: grouped, namespace: ns}\nspec:\n  priority: 1\n  condition: {field: action.action_type, eq: firing}\n  action: {type: group, groupBy: [payload.alertname], groupWaitSeconds: 1, groupIntervalSeconds: 1}\n\
---\napiVersion: acteon.dev/v1alpha1\nkind: Rule\nmetadata: {name: paging, namespace: ns}\nspec:\n  priority: 2\n  condition: {field: action.action_type, eq: page}\n  action: {type: stateMachine, stateMachine: pages, fingerprintFields: [payload.id]}\n\
---\napiVersion: acteon.dev/v1alpha1\nkind: StateMachine\nmetadata: {name: pages, namespace: ns}\nspec:\n  states: [open, paged, resolved]\n  initialState: open\n  terminalStates: [resolved]\n  transitions:\n    - {from: open, to: paged, notify: true}\n    - {from: paged, to: resolved, notify: true}\n".to_owned()
}

fn chat_gateway(chat: &Chat) -> Gateway {
    gateway_with_secrets(
        &config(chat),
        &[
            ("slack", "token", SLACK_TOKEN),
            (
                "discord",
                "url",
                &format!("{}/api/webhooks/1234/{DISCORD_SECRET}", chat.base),
            ),
        ],
    )
}

fn start_worker(gw: &Arc<Gateway>) -> WorkerHandle {
    worker::spawn(
        gw.clone(),
        WorkerOptions {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    )
}

/// An alert of the group `alertname`, for `provider`.
fn firing(provider: &str, alertname: &str, n: u32) -> acteon_gateway::action::Action {
    action(json!({
        "namespace": "ns", "tenant": "t", "provider": provider, "action_type": "firing",
        "payload": {"alertname": alertname, "n": n}
    }))
}

/// A move of the event `id` to `status`, notifying `provider`.
fn page(provider: &str, id: u32, status: &str) -> acteon_gateway::action::Action {
    action(json!({
        "namespace": "ns", "tenant": "t", "provider": provider, "action_type": "page",
        "status": status, "payload": {"id": id, "text": format!("page {id}: {status}")}
    }))
}

async fn send(gw: &Gateway, a: acteon_gateway::action::Action) -> ActionOutcome {
    gw.dispatch(a, false).await.expect("dispatch answers")
}

async fn grouped(gw: &Gateway, a: acteon_gateway::action::Action) {
    let outcome = send(gw, a).await;
    assert!(
        matches!(outcome, ActionOutcome::Grouped { .. }),
        "{outcome:?}"
    );
}

async fn moved(gw: &Gateway, a: acteon_gateway::action::Action) {
    let outcome = send(gw, a).await;
    assert!(
        matches!(outcome, ActionOutcome::StateChanged { .. }),
        "{outcome:?}"
    );
}

fn text<'a>(seen: &'a Seen, key: &str) -> &'a str {
    seen.body
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Slack

/// `update`: the group's second notification is a `chat.update` of the first message (its
/// channel id and `ts`); another group, and a dispatch that merely names the group in its
/// payload, post new messages; a first message deleted at Slack (`message_not_found`)
/// makes the notification a new message, updated from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_update_replaces_the_groups_first_message() {
    let chat = Chat::start().await;
    let gw = Arc::new(chat_gateway(&chat));
    let worker = start_worker(&gw);
    grouped(&gw, firing("slack-update", "disk", 1)).await;
    let first = chat.wait_for(1).await.remove(0);
    assert_eq!(first.path, "/api/chat.postMessage");
    assert_eq!(text(&first, "channel"), "#alerts");
    assert!(first.body.get("ts").is_none() && first.body.get("thread_ts").is_none());
    let first_ts = first.posted.expect("posted");

    grouped(&gw, firing("slack-update", "disk", 2)).await;
    let second = chat.wait_for(2).await.remove(1);
    assert_eq!(second.path, "/api/chat.update", "{second:?}");
    assert_eq!(
        text(&second, "channel"),
        CHANNEL_ID,
        "the channel id answered"
    );
    assert_eq!(text(&second, "ts"), first_ts, "the first message");
    assert!(text(&second, "text").contains("\"n\":2"), "{second:?}");

    // Another group is another conversation.
    grouped(&gw, firing("slack-update", "cpu", 1)).await;
    let other = chat.wait_for(3).await.remove(2);
    assert_eq!(other.path, "/api/chat.postMessage");

    // A client cannot join a conversation: a dispatch is always a new message, whatever
    // its payload says.
    let forged = action(json!({
        "namespace": "ns", "tenant": "t", "provider": "slack-update", "action_type": "direct",
        "payload": {"text": "forged", "group_key": "g:ns:t:ns/grouped:disk", "group_id": "x"}
    }));
    assert!(matches!(
        send(&gw, forged).await,
        ActionOutcome::Executed(_)
    ));
    let direct = chat.wait_for(4).await.remove(3);
    assert_eq!(
        (direct.path.as_str(), text(&direct, "text")),
        ("/api/chat.postMessage", "forged")
    );

    // The message is deleted at Slack.
    chat.forget_all();
    grouped(&gw, firing("slack-update", "disk", 3)).await;
    let seen = chat.wait_for(6).await;
    assert_eq!(
        (seen[4].path.as_str(), text(&seen[4], "ts")),
        ("/api/chat.update", first_ts.as_str())
    );
    assert_eq!(seen[5].path, "/api/chat.postMessage", "then posted anew");
    let renewed = seen[5].posted.clone().expect("posted");
    grouped(&gw, firing("slack-update", "disk", 4)).await;
    let seen = chat.wait_for(7).await;
    assert_eq!(
        (seen[6].path.as_str(), text(&seen[6], "ts")),
        ("/api/chat.update", renewed.as_str())
    );
    worker.stop().await;
}

/// `thread`: an event's later notifications reply in the first message's thread, in its
/// channel; a root deleted at Slack (`thread_not_found`) makes the notification a new
/// message, the new root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_thread_replies_to_the_first_message_and_survives_its_deletion() {
    let chat = Chat::start().await;
    let gw = Arc::new(chat_gateway(&chat));
    let worker = start_worker(&gw);
    moved(&gw, page("slack-thread", 7, "paged")).await;
    let root = chat.wait_for(1).await.remove(0);
    assert!(root.body.get("thread_ts").is_none(), "{root:?}");
    assert_eq!(text(&root, "text"), "page 7: paged");
    moved(&gw, page("slack-thread", 7, "resolved")).await;
    let reply = chat.wait_for(2).await.remove(1);
    assert_eq!(reply.path, "/api/chat.postMessage");
    assert_eq!(Some(text(&reply, "thread_ts")), root.posted.as_deref());
    assert_eq!(text(&reply, "channel"), CHANNEL_ID);
    assert_eq!(text(&reply, "text"), "page 7: resolved");

    // A group in thread mode: its root is deleted after the first reply.
    grouped(&gw, firing("slack-thread", "disk", 1)).await;
    let root = chat.wait_for(3).await.remove(2).posted.expect("posted");
    grouped(&gw, firing("slack-thread", "disk", 2)).await;
    assert_eq!(text(&chat.wait_for(4).await[3], "thread_ts"), root);
    chat.forget_all();
    grouped(&gw, firing("slack-thread", "disk", 3)).await;
    let seen = chat.wait_for(6).await;
    assert_eq!(
        text(&seen[4], "thread_ts"),
        root,
        "refused: thread_not_found"
    );
    assert!(seen[5].body.get("thread_ts").is_none(), "then posted anew");
    let new_root = seen[5].posted.clone().expect("posted");
    grouped(&gw, firing("slack-thread", "disk", 4)).await;
    assert_eq!(text(&chat.wait_for(7).await[6], "thread_ts"), new_root);
    worker.stop().await;
}

// ---------------------------------------------------------------------------------------
// Discord

/// `update`: `PATCH <webhook>/messages/{id}` of the first message; a deleted message (404
/// `Unknown Message`) makes the notification a new message, updated from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_update_patches_the_first_message_and_survives_its_deletion() {
    let chat = Chat::start().await;
    let gw = Arc::new(chat_gateway(&chat));
    let worker = start_worker(&gw);
    let hook = format!("/api/webhooks/1234/{DISCORD_SECRET}");
    grouped(&gw, firing("discord", "disk", 1)).await;
    let first = chat.wait_for(1).await.remove(0);
    assert_eq!(
        (first.method.clone(), first.path.as_str()),
        (Method::POST, hook.as_str())
    );
    assert!(first.query.contains("wait=true"));

    grouped(&gw, firing("discord", "disk", 2)).await;
    let second = chat.wait_for(2).await.remove(1);
    assert_eq!(second.method, Method::PATCH, "{second:?}");
    assert_eq!(second.path, format!("{hook}/messages/1188000000000000001"));
    assert!(!second.query.contains("wait"), "{second:?}");
    assert!(
        second.body["content"]
            .as_str()
            .unwrap_or("")
            .contains("\"n\":2")
    );

    chat.forget_all();
    grouped(&gw, firing("discord", "disk", 3)).await;
    let seen = chat.wait_for(4).await;
    assert_eq!(seen[2].method, Method::PATCH);
    assert_eq!(
        (seen[3].method.clone(), seen[3].path.as_str()),
        (Method::POST, hook.as_str()),
        "404, then posted anew"
    );
    grouped(&gw, firing("discord", "disk", 4)).await;
    let seen = chat.wait_for(5).await;
    assert_eq!(seen[4].method, Method::PATCH);
    assert_eq!(seen[4].path, format!("{hook}/messages/1188000000000000002"));
    worker.stop().await;
}

// ---------------------------------------------------------------------------------------
// Email

/// `thread`: the second mail of an event answers the first (`In-Reply-To` and
/// `References` name its `Message-ID`); another event's mail starts its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_thread_replies_to_the_first_mail() {
    let smtp = Smtp::start(false);
    let yaml = format!(
        "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {{name: mail, namespace: ns}}\nspec:\n  type: email\n  email: {{smtpHost: 127.0.0.1, smtpPort: {}, from: \"Acteon <acteon@example.com>\", to: [oncall@example.com], tls: none}}\n  messageMode: thread\n  timeoutSeconds: 5\n  retry: {{maxAttempts: 1}}\n{}",
        smtp.port,
        machine_and_rules()
    );
    let gw = Arc::new(gateway_with_secrets(&yaml, &[]));
    let worker = start_worker(&gw);
    let header = |n: usize, name: &str| {
        let data = smtp.message(n)["data"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        data.split("\r\n")
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    let received = |n: usize| {
        let file = smtp.dir.join(format!("msg-{n}.json"));
        async move {
            let deadline = Instant::now() + PATIENCE;
            while !file.exists() {
                assert!(Instant::now() < deadline, "mail {n} never arrived");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    moved(&gw, page("mail", 1, "paged")).await;
    received(1).await;
    let first_id = header(1, "Message-ID").expect("the first mail has a Message-ID");
    assert_eq!(header(1, "In-Reply-To"), None);

    moved(&gw, page("mail", 1, "resolved")).await;
    received(2).await;
    assert_eq!(header(2, "In-Reply-To").as_deref(), Some(first_id.as_str()));
    assert_eq!(header(2, "References").as_deref(), Some(first_id.as_str()));
    assert_ne!(header(2, "Message-ID").as_deref(), Some(first_id.as_str()));

    moved(&gw, page("mail", 2, "paged")).await;
    received(3).await;
    assert_eq!(
        header(3, "In-Reply-To"),
        None,
        "another event, another thread"
    );
    worker.stop().await;
}

// ---------------------------------------------------------------------------------------
// Across replicas

/// Two gateways on one Redis: the first notifications are sent by one gateway's worker,
/// the next ones by the other's, which still update (Slack, a group) and thread (Slack, an
/// event) the first messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_follows_the_first_message() {
    let chat = Chat::start().await;
    let prefix = format!("acteon-threads-{}", uuid::Uuid::new_v4().simple());
    let url = redis_url();
    let store: Arc<dyn StateStore> = Arc::new(
        RedisStore::connect(&url, &prefix, Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is needed (ACTEON_TEST_REDIS_URL): {e}")),
    );
    let replica = |store: &Arc<dyn StateStore>| {
        let mut gw = chat_gateway(&chat);
        gw.state = store.clone();
        Arc::new(gw)
    };
    let (a, b) = (replica(&store), replica(&store));

    let worker_a = start_worker(&a);
    grouped(&a, firing("slack-update", "disk", 1)).await;
    moved(&a, page("slack-thread", 3, "paged")).await;
    chat.wait_for(2).await;
    worker_a.stop().await;

    let worker_b = start_worker(&b);
    grouped(&a, firing("slack-update", "disk", 2)).await;
    moved(&a, page("slack-thread", 3, "resolved")).await;
    let seen = chat.wait_for(4).await;
    worker_b.stop().await;

    let first_of = |pred: &dyn Fn(&Seen) -> bool| {
        seen[..2]
            .iter()
            .find(|s| pred(s))
            .and_then(|s| s.posted.clone())
            .expect("first messages")
    };
    let group_first = first_of(&|s| text(s, "text").contains("disk"));
    let event_first = first_of(&|s| text(s, "text").starts_with("page 3"));
    let update = seen[2..]
        .iter()
        .find(|s| s.path == "/api/chat.update")
        .expect("the group's message is updated by the other replica");
    assert_eq!(text(update, "ts"), group_first);
    assert_eq!(text(update, "channel"), CHANNEL_ID);
    let reply = seen[2..]
        .iter()
        .find(|s| text(s, "text") == "page 3: resolved")
        .expect("the event's second notification");
    assert_eq!(text(reply, "thread_ts"), event_first);
}
