//! Redis state: every compound operation is one Lua script, so it is atomic on the server
//! and costs one round trip. Time comes from the server (`TIME`), so replicas agree.
//!
//! Keys live under `<prefix>:` and a kind (`g:d:` dedup, `g:t:` windows, `g:q:` quotas,
//! `kv:`, `lock:`, `tm:` timers), so installations and key spaces never collide. One
//! multiplexed connection (`ConnectionManager`) carries all traffic and pipelines the
//! requests of concurrent dispatches; it reconnects on its own after an outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use acteon_channel::backend::{redis_client, redis_manager_config};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::{
    ClaimedTimer, DedupConfirm, Gate, GateMode, GateResult, GateStop, StateError, StateStore,
    Versioned,
};

/// The check loop shared by [`APPLY_GATES`] and [`CHECK_GATES`]. Four ARGV per gate:
/// kind (`d`, `t`, `q`) and three parameters. Returns `{index, kind, millis, used}` for
/// the first gate that stops.
macro_rules! check_gates_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
for i = 1, n do
  local kind, a, b = ARGV[i*4-3], tonumber(ARGV[i*4-2]), ARGV[i*4-1]
  local key = KEYS[i]
  if kind == 'd' then
    if redis.call('EXISTS', key) == 1 then return {i - 1, 'd', 0, 0} end
  elseif kind == 't' then
    local window = tonumber(b)
    if a == 0 then return {i - 1, 't', window, 0} end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    if count >= a then
      local freeing = redis.call('ZRANGE', key, count - a, count - a, 'WITHSCORES')
      return {i - 1, 't', tonumber(freeing[2]) + window - now, 0}
    end
  else
    local window = tonumber(b)
    local start = now - (now % window)
    local used = tonumber(redis.call('GET', key .. ':' .. start) or '0')
    if used >= a then return {i - 1, 'q', start + window - now, used} end
  end
end
"
    };
}

/// Checks every gate, then applies them all only if all pass. Returns `{-1}` or the
/// first gate that stops (see `check_gates_lua`). A dedup gate's first parameter is the
/// TTL the mark is set with (the in-flight lease when shorter than the rule's TTL).
const APPLY_GATES: &str = concat!(
    check_gates_lua!(),
    r"
for i = 1, n do
  local kind, a, b, c = ARGV[i*4-3], ARGV[i*4-2], ARGV[i*4-1], ARGV[i*4]
  local key = KEYS[i]
  if kind == 'd' then
    redis.call('SET', key, b, 'PX', a)
  elseif kind == 't' then
    redis.call('ZADD', key, now, c)
    redis.call('PEXPIRE', key, b)
  else
    local window = tonumber(b)
    local start = now - (now % window)
    local qk = key .. ':' .. start
    redis.call('INCR', qk)
    redis.call('PEXPIRE', qk, start + window - now + 1000)
  end
end
return {-1}
"
);

/// Checks every gate and applies nothing (an action that a later rule stops). Pruning a
/// window of passes that left it changes nothing observable.
const CHECK_GATES: &str = concat!(check_gates_lua!(), "return {-1}\n");

/// Extends the marks of confirmed deliveries. KEYS: marks; ARGV: per mark, token and
/// extension ms. A mark extends only if the token still owns it (so an expired mark, or
/// one another dispatch set since, is left alone). Returns the number extended.
const CONFIRM_DEDUP: &str = r"
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i*2-1] then
    local left = redis.call('PTTL', KEYS[i])
    if left > 0 then
      redis.call('PEXPIRE', KEYS[i], left + tonumber(ARGV[i*2]))
      n = n + 1
    end
  end
end
return n
";

const RELEASE_IF_OWNER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

const WINDOW_COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
";

const QUOTA_USAGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
return tonumber(redis.call('GET', KEYS[1] .. ':' .. (now - (now % window))) or '0')
";

/// KEYS: value hash, version counter. ARGV: expected version ('' = absent), value, ttl ms ('' = none).
const COMPARE_AND_SWAP: &str = r"
local cur = redis.call('HGET', KEYS[1], 'ver')
local expected = ARGV[1]
if expected == '' then
  if cur then return -1 end
elseif cur ~= expected then
  return -1
end
local ver = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ver', ver)
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return ver
";

const TRY_LOCK: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// KEYS: timer set, timer hash, claim key. ARGV: id, due, payload.
const SCHEDULE_TIMER: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'p', ARGV[3])
redis.call('DEL', KEYS[3])
return 1
";

/// KEYS: timer set. ARGV: now, max, lease ms, hash prefix, claim prefix, claim token base.
const CLAIM_TIMERS: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out = {}
local max = tonumber(ARGV[2])
local taken = 0
for _, id in ipairs(ids) do
  if taken >= max then break end
  local ck = ARGV[5] .. id
  if redis.call('EXISTS', ck) == 0 then
    local claim = ARGV[6] .. ':' .. taken
    redis.call('SET', ck, claim, 'PX', ARGV[3])
    local payload = redis.call('HGET', ARGV[4] .. id, 'p') or ''
    out[#out + 1] = id
    out[#out + 1] = claim
    out[#out + 1] = payload
    taken = taken + 1
  end
end
return out
";

/// KEYS: timer set, timer hash, claim key. ARGV: id, claim.
const COMPLETE_TIMER: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
";

/// Scripts compiled (hashed) once.
struct Scripts {
    apply_gates: Script,
    check_gates: Script,
    confirm_dedup: Script,
    release: Script,
    window_count: Script,
    quota_usage: Script,
    cas: Script,
    try_lock: Script,
    schedule_timer: Script,
    claim_timers: Script,
    complete_timer: Script,
}

/// The Redis [`StateStore`].
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
    /// Makes throttle members and timer claims unique across replicas and calls.
    instance: String,
    seq: AtomicU64,
}

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

impl RedisStore {
    /// Connects (failing within `timeout` if the server does not answer).
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisStore, StateError> {
        let client = redis_client(url).map_err(unavailable)?;
        let conn = tokio::time::timeout(
            timeout,
            client.get_connection_manager_with_config(redis_manager_config(timeout)),
        )
        .await
        .map_err(|_| StateError::Timeout(timeout))?
        .map_err(unavailable)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            scripts: Scripts {
                apply_gates: Script::new(APPLY_GATES),
                check_gates: Script::new(CHECK_GATES),
                confirm_dedup: Script::new(CONFIRM_DEDUP),
                release: Script::new(RELEASE_IF_OWNER),
                window_count: Script::new(WINDOW_COUNT),
                quota_usage: Script::new(QUOTA_USAGE),
                cas: Script::new(COMPARE_AND_SWAP),
                try_lock: Script::new(TRY_LOCK),
                schedule_timer: Script::new(SCHEDULE_TIMER),
                claim_timers: Script::new(CLAIM_TIMERS),
                complete_timer: Script::new(COMPLETE_TIMER),
            },
            instance: uuid::Uuid::new_v4().simple().to_string(),
            seq: AtomicU64::new(0),
        })
    }

    fn key(&self, kind: &str, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + key.len() + 2);
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(kind);
        k.push(':');
        k.push_str(key);
        k
    }

    fn unique(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        _ => Vec::new(),
    }
}

/// Reads the script's answer for `apply_gates`.
fn gate_result(reply: Vec<Value>) -> GateResult {
    let index = reply.first().map_or(-1, int);
    if index < 0 {
        return GateResult::Passed;
    }
    let millis = reply.get(2).map_or(0, int).max(0) as u64;
    let reason = match reply.get(1).map(text).as_deref() {
        Some("d") => GateStop::Duplicate,
        Some("t") => GateStop::Throttled {
            retry_after: Duration::from_millis(millis),
        },
        _ => GateStop::QuotaExceeded {
            used: reply.get(3).map_or(0, int).max(0) as u64,
            resets_in: Duration::from_millis(millis),
        },
    };
    GateResult::Stopped {
        index: index as usize,
        reason,
    }
}

#[async_trait]
impl StateStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StateError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        self.run_gates(gates, GateMode::APPLY).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(gates = gates.len()))]
    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        let script = match mode {
            GateMode::Apply { .. } => &self.scripts.apply_gates,
            GateMode::Check => &self.scripts.check_gates,
        };
        let mut inv = script.prepare_invoke();
        for gate in gates {
            match gate {
                Gate::Dedup { key, ttl, token } => {
                    inv.key(self.key("g:d", key))
                        .arg("d")
                        .arg(ms(mode.mark_ttl(*ttl)))
                        .arg(token.as_str())
                        .arg("");
                }
                Gate::Throttle { key, limit, window } => {
                    inv.key(self.key("g:t", key))
                        .arg("t")
                        .arg(*limit)
                        .arg(ms(*window));
                    // The member only matters when the pass is recorded.
                    match mode {
                        GateMode::Check => inv.arg(""),
                        GateMode::Apply { .. } => inv.arg(self.unique()),
                    };
                }
                Gate::Quota { key, limit, window } => {
                    inv.key(self.key("g:q", key))
                        .arg("q")
                        .arg(*limit)
                        .arg(ms(*window))
                        .arg("");
                }
            }
        }
        let reply: Vec<Value> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(gate_result(reply))
    }

    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        if marks.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.confirm_dedup.prepare_invoke();
        for mark in marks {
            inv.key(self.key("g:d", &mark.key))
                .arg(mark.token.as_str())
                .arg(ms(mark.extend));
        }
        let n: i64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as usize)
    }

    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .release
            .key(self.key("g:d", key))
            .arg(token)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.key("g:d", key))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let n: i64 = self
            .scripts
            .window_count
            .key(self.key("g:t", key))
            .arg(ms(window))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }

    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let n: i64 = self
            .scripts
            .quota_usage
            .key(self.key("g:q", key))
            .arg(ms(window))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key("kv", key))
            .arg("v")
            .arg("ver")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(match (value, version) {
            (Some(value), Some(version)) => Some(Versioned { value, version }),
            _ => None,
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        let version: i64 = self
            .scripts
            .cas
            .key(self.key("kv", key))
            .key(self.key("kv-version", ""))
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(value)
            .arg(ttl.map(|t| ms(t).to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok((version >= 0).then_some(version as u64))
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let n: i64 = redis::cmd("DEL")
            .arg(self.key("kv", key))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .try_lock
            .key(self.key("lock", key))
            .arg(owner)
            .arg(ms(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .release
            .key(self.key("lock", key))
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        let _: i64 = self
            .scripts
            .schedule_timer
            .key(self.key("tm", "due"))
            .key(self.key("tm:p", id))
            .key(self.key("tm:c", id))
            .arg(id)
            .arg(due_unix_ms)
            .arg(payload)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        let reply: Vec<Value> = self
            .scripts
            .claim_timers
            .key(self.key("tm", "due"))
            .arg(now_unix_ms)
            .arg(max)
            .arg(ms(lease))
            .arg(self.key("tm:p", ""))
            .arg(self.key("tm:c", ""))
            .arg(self.unique())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(reply.len() / 3);
        let mut it = reply.into_iter();
        while let (Some(id), Some(claim), Some(payload)) = (it.next(), it.next(), it.next()) {
            out.push(ClaimedTimer {
                id: text(&id),
                claim: text(&claim),
                payload: bytes(payload),
            });
        }
        Ok(out)
    }

    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .complete_timer
            .key(self.key("tm", "due"))
            .key(self.key("tm:p", id))
            .key(self.key("tm:c", id))
            .arg(id)
            .arg(claim)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }
}
