//! Redis state: every compound operation is one Lua script, so it is atomic on the server
//! and costs one round trip. Time comes from the server (`TIME`), so replicas agree.
//!
//! Keys live under `<prefix>:` and a kind (`g:d:` dedup, `g:t:` windows, `g:q:` quotas,
//! `kv:`, `lock:`, `tm:` timers, `gh:`/`ge:`/`gf:`/`gl:` groups, `sm:` state-machine events,
//! `as:` active sets, `gx:`/`gy:`/`sx:`/`sy:` their indexes), so installations and key
//! spaces never collide. One multiplexed connection (`ConnectionManager`) carries all
//! traffic and pipelines the requests of concurrent dispatches; it reconnects on its own
//! after an outage.
//!
//! Timers: a sorted set (`tm:due`) scores each timer by when it may next be claimed (its
//! due time, or the end of its claim's lease), and a hash per timer (`tm:p:<id>`) holds its
//! payload (`p`), due time (`d`) and current claim (`c`). A poll reads only what it claims
//! (`ZRANGEBYSCORE … LIMIT`), however many timers are pending.
//!
//! Groups and events are listed by key prefix through a sorted set of their keys with one
//! score (`gx:`, `sx:`) read with `ZRANGEBYLEX`, so user text never becomes a pattern. A
//! second sorted set (`gy:`, `sy:`) scores each key by when to look at it again: every
//! write of groups (or events) removes a few keys whose record expired, so the indexes stay
//! bounded without scanning; listings skip (and drop) what expired since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use acteon_channel::backend::{redis_client, redis_manager_config};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation, Value};

mod batch;

use batch::{DedupBatcher, Probe};

use super::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, EventInfo, Gate, GateBatchCounts, GateMode,
    GateResult, GateStop, GroupAppend, GroupBatch, GroupInfo, ListedTimer, StateAnswers,
    StateError, StateRead, StateStore, Transition, TransitionResult, Versioned,
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

/// Applies every gate (after `check_gates_lua` found that all pass). A dedup gate's first
/// parameter is the TTL the mark is set with (the in-flight lease when shorter than the
/// rule's TTL).
macro_rules! apply_gates_lua {
    () => {
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
"
    };
}

/// Checks every gate, then applies them all only if all pass. Returns `{-1}` or the
/// first gate that stops (see `check_gates_lua`).
const APPLY_GATES: &str = concat!(check_gates_lua!(), apply_gates_lua!(), "return {-1}\n");

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

/// KEYS: next free slot (Unix µs, server clock). ARGV: interval µs, max wait µs.
/// Answers the wait in µs, or -1 (nothing reserved) when it would exceed the max wait.
/// Numbers stay below 2^53, so Lua's doubles hold them exactly; `%.0f` writes them whole.
const RESERVE_SLOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = tonumber(redis.call('GET', KEYS[1]) or '0')
if next < now then next = now end
local wait = next - now
if wait > tonumber(ARGV[2]) then return -1 end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', next + interval), 'PX',
  string.format('%.0f', math.floor((wait + interval) / 1000) + 60000))
return wait
";

const TRY_LOCK: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// `now` in Unix ms on the server's clock.
macro_rules! now_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Functions over timers, groups and events, for scripts that define `P` (the store's key
/// prefix with its `:`) and `now` first.
macro_rules! parked_lua {
    () => {
        r"
local TZ, TX = P .. 'tm:due', P .. 'tm:x'
-- Most fingerprints a repeating group remembers (MAX_GROUP_FINGERPRINTS).
local MAX_FPS = 1000
local GX, GY, SX, SY = P .. 'gx:', P .. 'gy:', P .. 'sx:', P .. 'sy:'
local function th(id) return P .. 'tm:p:' .. id end
local function pk(kind, key) return P .. kind .. ':' .. key end

-- Registers or replaces a timer (a claim on the old one ends).
local function timer_put(id, due, payload)
  local h = th(id)
  redis.call('DEL', h)
  redis.call('HSET', h, 'p', payload, 'd', due)
  redis.call('ZADD', TZ, due, id)
  redis.call('ZADD', TX, 0, id)
end
-- Moves a timer to `due`, unclaimed, payload kept.
local function timer_rearm(id, due)
  local h = th(id)
  redis.call('HDEL', h, 'c')
  redis.call('HSET', h, 'd', due)
  redis.call('ZADD', TZ, due, id)
end
local function timer_del(id)
  redis.call('ZREM', TZ, id)
  redis.call('ZREM', TX, id)
  redis.call('DEL', th(id))
end

-- A group is armed while its flush timer exists; it never expires while armed.
local function group_armed(h)
  local f = redis.call('HMGET', h, 'at', 'tid')
  return f[1] ~= false and f[2] ~= false and redis.call('ZSCORE', TZ, f[2]) ~= false
end
local function group_live(key)
  local h = pk('gh', key)
  local ex = redis.call('HGET', h, 'ex')
  if not ex then return false end
  return tonumber(ex) > now or group_armed(h)
end
local function group_keys(key)
  return pk('gh', key), pk('ge', key), pk('gf', key), pk('gl', key), pk('gs', key)
end
local function group_drop(key)
  redis.call('DEL', group_keys(key))
  redis.call('ZREM', GX, key)
  redis.call('ZREM', GY, key)
end
local function group_info(key)
  local h = pk('gh', key)
  local f = redis.call('HMGET', h, 'id', 'm', 'n', 'at', 'lf', 'le')
  local at = ''
  if group_armed(h) then at = f[4] end
  return {key, f[1], f[2], f[3], at, f[5] or '', f[6]}
end

local function event_live(key)
  local ex = redis.call('HGET', pk('sm', key), 'ex')
  return ex ~= false and tonumber(ex) > now
end
local function event_info(key)
  local f = redis.call('HMGET', pk('sm', key), 'f', 's', 'r', 'c', 'ti', 'td')
  return {key, f[1], f[2], f[3], f[4], f[5] or '', f[6] or ''}
end
"
    };
}

/// KEYS: timer set, timer hash, timer id index. ARGV: id, due, payload.
const SCHEDULE_TIMER: &str = r"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'p', ARGV[3], 'd', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
";

/// KEYS: timer set. ARGV: now, max, lease ms, hash prefix, claim token base. Returns
/// (id, claim, payload, due ms) per timer. Claimed timers are scored at the end of their lease, so the next poll skips them by index.
const CLAIM_TIMERS: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[3])
local out = {}
for i, id in ipairs(ids) do
  local h = ARGV[4] .. id
  local claim = ARGV[5] .. ':' .. i
  redis.call('HSET', h, 'c', claim)
  redis.call('ZADD', KEYS[1], until_ms, id)
  out[#out + 1] = id
  out[#out + 1] = claim
  local f = redis.call('HMGET', h, 'p', 'd')
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or '0'
end
return out
";

/// KEYS: timer set, timer hash, timer id index. ARGV: id, claim.
const COMPLETE_TIMER: &str = r"
if redis.call('HGET', KEYS[2], 'c') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: timer set, timer hash. ARGV: id, claim, due, payload, lease end ('' = none). The
/// claimed timer gets the new due time and payload, unclaimed; or, with a lease end, still
/// claimed and scored at that end (claimable by others only then).
const ADVANCE_TIMER: &str = r"
if redis.call('HGET', KEYS[2], 'c') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'p', ARGV[4], 'd', ARGV[3])
if ARGV[5] == '' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'c', ARGV[2])
  redis.call('ZADD', KEYS[1], math.max(tonumber(ARGV[3]), tonumber(ARGV[5])), ARGV[1])
end
return 1
";

/// KEYS: timer set. ARGV: hash prefix, then (id, claim) pairs. Each held claim ends and
/// its timer is scored at its due time again (claimable at once: it was due when claimed).
const RELEASE_TIMERS: &str = r"
local n = 0
for i = 2, #ARGV, 2 do
  local id, h = ARGV[i], ARGV[1] .. ARGV[i]
  if redis.call('HGET', h, 'c') == ARGV[i + 1] then
    redis.call('HDEL', h, 'c')
    redis.call('ZADD', KEYS[1], redis.call('HGET', h, 'd') or 0, id)
    n = n + 1
  end
end
return n
";

/// KEYS: timer set, timer hash, timer id index. ARGV: id. Returns 1 if the timer existed.
const DELETE_TIMER: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[2])
";

/// KEYS: timer id index. ARGV: timer hash prefix, lex min, lex max, limit. Returns (id,
/// due ms, payload) per live timer in the range, in id order; index entries whose timer is
/// gone are dropped on the way.
const LIST_TIMERS: &str = r"
local min, max, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local out, found = {}, 0
while found < limit do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], min, max, 'LIMIT', 0, limit - found)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', ARGV[1] .. id, 'p', 'd')
    if f[1] then
      out[#out + 1] = id
      out[#out + 1] = f[2] or '0'
      out[#out + 1] = f[1]
      found = found + 1
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
  min = '(' .. ids[#ids]
end
return out
";

/// Gates and deferrals in one step: the gates of `run_gates` (KEYS and four ARGV each),
/// then ARGV: mode (`a` apply, `c` check), the key prefix, the deferral count and the
/// deferrals (see `RedisStore::push_deferral`). Returns the first gate that stops (as
/// `APPLY_GATES`), else `{-1, result…}` with one result per deferral.
const DEFER: &str = concat!(
    check_gates_lua!(),
    r"
local pos = 4 * n + 1
-- The next `k` arguments, in order.
local function take(k)
  local out = {}
  for i = 1, k do out[i] = ARGV[pos + i - 1] end
  pos = pos + k
  return unpack(out)
end
local mode, P = take(2)
if mode == 'a' then
",
    apply_gates_lua!(),
    r"
end
",
    parked_lua!(),
    r"
-- Looks at up to 16 keys of an expiry index whose time came: drops what expired, else
-- scores it at its next look.
local function prune_groups()
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', GY, '-inf', now, 'LIMIT', 0, 16)) do
    local h = pk('gh', key)
    local f = redis.call('HMGET', h, 'ex', 'it')
    if not f[1] then
      group_drop(key)
    elseif group_armed(h) then
      redis.call('ZADD', GY, now + math.max(tonumber(f[2]), 60000), key)
    elseif tonumber(f[1]) > now then
      redis.call('ZADD', GY, f[1], key)
    else
      group_drop(key)
    end
  end
end
local function prune_events()
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', SY, '-inf', now, 'LIMIT', 0, 16)) do
    local ex = redis.call('HGET', pk('sm', key), 'ex')
    if ex and tonumber(ex) > now then
      redis.call('ZADD', SY, ex, key)
    else
      redis.call('DEL', pk('sm', key))
      redis.call('ZREM', SX, key)
      redis.call('ZREM', SY, key)
    end
  end
end

local function group_append()
  local key, gid, meta, event, max_events, wait, interval, idle, tid, tpayload, fp, rep = take(12)
  wait, interval, idle = tonumber(wait), tonumber(interval), tonumber(idle)
  local h, pending, _, _, seen = group_keys(key)
  if not group_live(key) then
    group_drop(key)
    redis.call('HSET', h, 'id', gid, 'm', meta, 'n', 0)
    redis.call('ZADD', GX, 0, key)
  end
  local function arm(due)
    timer_put(tid, due, tpayload)
    redis.call('HSET', h, 'tid', tid, 'at', due)
    for _, k in ipairs({group_keys(key)}) do redis.call('PERSIST', k) end
    return due
  end
  local last = redis.call('HGET', h, 'lf')
  local armed = group_armed(h)
  local at
  if armed then at = tonumber(redis.call('HGET', h, 'at')) end
  -- A repeating group's known event is a refresh: the group is still active.
  local known = false
  if fp ~= '' then
    known = redis.call('SISMEMBER', seen, fp) == 1
    if not known and redis.call('SCARD', seen) < MAX_FPS then redis.call('SADD', seen, fp) end
  end
  if known then
    redis.call('HSET', h, 'rf', 1)
    if not armed then
      if last then at = arm(math.max(now, tonumber(last) + tonumber(rep))) else at = arm(now + wait) end
    end
  else
    local due
    if last then due = math.max(now, tonumber(last) + interval) else due = now + wait end
    if not armed then
      at = arm(due)
    elseif last and at > due and redis.call('HEXISTS', h, 'fn') == 0
        and redis.call('HEXISTS', th(redis.call('HGET', h, 'tid')), 'c') == 0 then
      -- Waiting for a repeat: news go out after `interval`.
      timer_rearm(redis.call('HGET', h, 'tid'), due)
      redis.call('HSET', h, 'at', due)
      at = due
    end
    redis.call('RPUSH', pending, event)
    redis.call('LTRIM', pending, -tonumber(max_events), -1)
    redis.call('HINCRBY', h, 'n', 1)
  end
  local size = redis.call('HGET', h, 'n')
  redis.call('HSET', h, 'le', now, 'it', idle, 'ex', now + idle)
  redis.call('ZADD', GY, now + idle, key)
  return {'G', redis.call('HGET', h, 'id'), tonumber(size), at}
end

local function take_list()
  return {take(tonumber(take(1)))}
end

local function transition()
  local key, fp, initial, has_to, to = take(5)
  local allowed = take_list()
  local has_req, req, has_timeout, tid, tdue, tpayload, terminal = take(7)
  local sets = take_list()
  local finals = take_list()
  local record, ttl = take(2)
  local notify_from = take_list()
  local nid, ndue, npayload = take(3)
  has_to, has_req, has_timeout, terminal = has_to == '1', has_req == '1', has_timeout == '1', terminal == '1'
  ttl = tonumber(ttl)
  local h = pk('sm', key)
  local f = redis.call('HMGET', h, 's', 'ti')
  local stored = event_live(key)
  -- An event in a terminal state is finished: a move starts a new lifecycle.
  local live = stored
  if live then
    for _, s in ipairs(finals) do if s == f[1] then live = false end end
  end
  local current = initial
  if live then current = f[1] end
  if not has_to then return {'S', 'u', current} end
  if has_req and (not live or f[2] ~= req) then return {'S', 'u', current} end
  if to == current then
    -- Recorded in the initial state only when it has no record (or a finished one).
    if live then return {'S', 'u', current} end
  else
    local ok = false
    for _, s in ipairs(allowed) do if s == current then ok = true end end
    if not ok then return {'S', 'r', current} end
  end
  -- The timer that fired (require_timer) is its claimant's to complete.
  if stored and f[2] and not has_req then timer_del(f[2]) end
  local ex = now + ttl
  redis.call('DEL', h)
  redis.call('HSET', h, 'f', fp, 's', to, 'r', record, 'c', now, 'ex', ex)
  if has_timeout then
    timer_put(tid, tdue, tpayload)
    redis.call('HSET', h, 'ti', tid, 'td', tdue)
  end
  if to ~= current then
    for _, s in ipairs(notify_from) do
      if s == current then timer_put(nid, ndue, npayload) end
    end
  end
  redis.call('PEXPIREAT', h, ex)
  redis.call('ZADD', SX, 0, key)
  redis.call('ZADD', SY, ex, key)
  for _, set in ipairs(sets) do
    local sk = pk('as', set)
    -- Members are event keys (fingerprints may repeat across tenants).
    if terminal then
      redis.call('ZREM', sk, key)
    else
      -- Members are scored by their event's expiry; the set lives as long as its last.
      redis.call('ZREMRANGEBYSCORE', sk, '-inf', now)
      redis.call('ZADD', sk, ex, key)
      local last = redis.call('ZRANGE', sk, -1, -1, 'WITHSCORES')
      redis.call('PEXPIREAT', sk, last[2])
    end
  end
  return {'S', 'c', current}
end

local out = {-1}
local pruned_groups, pruned_events = false, false
for _ = 1, tonumber(take(1)) do
  local kind = take(1)
  if kind == 'T' then
    timer_put(take(3))
    out[#out + 1] = {'T'}
  elseif kind == 'G' then
    if not pruned_groups then prune_groups(); pruned_groups = true end
    out[#out + 1] = group_append()
  else
    if not pruned_events then prune_events(); pruned_events = true end
    out[#out + 1] = transition()
  end
end
return out
"
);

/// ARGV: key prefix, group key. Returns `{}`, or `{group id, meta, count, repeat,
/// last event ms, event…}`.
const FLUSH_BEGIN: &str = concat!(
    "local P = ARGV[1]\n",
    now_lua!(),
    parked_lua!(),
    r"
local key = ARGV[2]
if not group_live(key) then return {} end
local h, pending, flight, last = group_keys(key)
local f = redis.call('HMGET', h, 'id', 'm', 'n', 'fn', 'ln')
local function batch(list, count, last_event, rep)
  local out = {f[1], f[2], count, rep, last_event}
  for _, e in ipairs(redis.call('LRANGE', list, 0, -1)) do out[#out + 1] = e end
  return out
end
if f[4] then
  return batch(flight, f[4], redis.call('HGET', h, 'fl'), 0)
end
if tonumber(f[3]) > 0 then
  -- The pending events become the batch being sent, until group_flush_end.
  local le = redis.call('HGET', h, 'le')
  redis.call('DEL', flight)
  if redis.call('EXISTS', pending) == 1 then redis.call('RENAME', pending, flight) end
  redis.call('HSET', h, 'fn', f[3], 'fl', le, 'n', 0)
  return batch(flight, f[3], le, 0)
end
-- A repeat only while the group is still active: refreshed since its last flush.
if f[5] and redis.call('HEXISTS', h, 'rf') == 1 then
  return batch(last, f[5], redis.call('HGET', h, 'll'), 1)
end
return {}
"
);

/// ARGV: key prefix, group key, timer id, claim, interval ms, repeat_at ms ('' = none).
/// Returns 1, or 0 (nothing changed) when the claim was lost.
const FLUSH_END: &str = concat!(
    "local P = ARGV[1]\n",
    now_lua!(),
    parked_lua!(),
    r"
local key, tid, claim, interval, repeat_at = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
if redis.call('HGET', th(tid), 'c') ~= claim then return 0 end
if not group_live(key) then
  timer_del(tid)
  return 1
end
local h, pending, flight, last = group_keys(key)
if repeat_at == '' then
  redis.call('DEL', flight, last)
  redis.call('HDEL', h, 'fn', 'fl', 'ln', 'll')
elseif redis.call('HEXISTS', h, 'fn') == 1 then
  -- The batch sent is kept as the last notification, to repeat.
  local f = redis.call('HMGET', h, 'fn', 'fl')
  redis.call('DEL', last)
  if redis.call('EXISTS', flight) == 1 then redis.call('RENAME', flight, last) end
  redis.call('HSET', h, 'ln', f[1], 'll', f[2])
  redis.call('HDEL', h, 'fn', 'fl')
end
redis.call('HSET', h, 'lf', now, 'tid', tid)
redis.call('HDEL', h, 'rf')
local next_at
if tonumber(redis.call('HGET', h, 'n')) > 0 then
  next_at = now + interval
elseif repeat_at ~= '' then
  next_at = repeat_at
end
if next_at then
  timer_rearm(tid, next_at)
  redis.call('HSET', h, 'at', next_at)
  return 1
end
-- Idle: the group expires idle_ttl after this flush unless an event arrives.
timer_del(tid)
redis.call('HDEL', h, 'at')
local ex = now + tonumber(redis.call('HGET', h, 'it'))
redis.call('HSET', h, 'ex', ex)
for _, k in ipairs({group_keys(key)}) do redis.call('PEXPIREAT', k, ex) end
redis.call('ZADD', GY, ex, key)
return 1
"
);

/// ARGV: key prefix, kind (`g` groups, `e` events), lex min, lex max, limit. Lists the
/// live records whose key is in the range, in key order; index entries whose record is
/// gone are dropped on the way.
const LIST_PARKED: &str = concat!(
    "local P = ARGV[1]\n",
    now_lua!(),
    parked_lua!(),
    r"
local groups = ARGV[2] == 'g'
local index, record = SX, 'sm'
if groups then index, record = GX, 'gh' end
local min, max, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
while #out < limit do
  local keys = redis.call('ZRANGEBYLEX', index, min, max, 'LIMIT', 0, limit - #out)
  if #keys == 0 then break end
  for _, key in ipairs(keys) do
    local live
    if groups then live = group_live(key) else live = event_live(key) end
    if live then
      if groups then out[#out + 1] = group_info(key) else out[#out + 1] = event_info(key) end
    elseif redis.call('EXISTS', pk(record, key)) == 0 then
      redis.call('ZREM', index, key)
    end
  end
  min = '(' .. keys[#keys]
end
return out
"
);

/// ARGV: key prefix, kind (`g`, `e`), key. Returns `{}` or the record (as `LIST_PARKED`).
const GET_PARKED: &str = concat!(
    "local P = ARGV[1]\n",
    now_lua!(),
    parked_lua!(),
    r"
local key = ARGV[3]
if ARGV[2] == 'g' then
  if group_live(key) then return group_info(key) end
elseif event_live(key) then
  return event_info(key)
end
return {}
"
);

/// KEYS: one per read. ARGV: per read, its kind (`s` set, `d` dedup, `w` window) and
/// window ms. Returns one number per read.
const READ_STATE: &str = concat!(
    now_lua!(),
    r"
local out = {}
for i = 1, #KEYS do
  local kind = ARGV[i * 2 - 1]
  if kind == 's' then
    out[i] = math.min(redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf'), 1)
  elseif kind == 'd' then
    out[i] = redis.call('EXISTS', KEYS[i])
  elseif kind == 'D' then
    -- Set within the window, by the time its token carries (none: just set).
    local token = redis.call('GET', KEYS[i])
    out[i] = 0
    if token then
      local set = tonumber(string.match(token, '^(%d+):'))
      if not set or set + tonumber(ARGV[i * 2]) > now then out[i] = 1 end
    end
  elseif kind == 'e' then
    local f = redis.call('HMGET', KEYS[i], 's', 'ex')
    out[i] = 0
    if f[1] == ARGV[i * 2] and f[2] and tonumber(f[2]) > now then out[i] = 1 end
  else
    out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. (now - tonumber(ARGV[i * 2])), '+inf')
  end
end
return out
"
);

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
    reserve_slot: Script,
    schedule_timer: Script,
    claim_timers: Script,
    complete_timer: Script,
    advance_timer: Script,
    release_timers: Script,
    defer: Script,
    flush_begin: Script,
    flush_end: Script,
    list_parked: Script,
    list_timers: Script,
    delete_timer: Script,
    get_parked: Script,
    read_state: Script,
}

/// The Redis [`StateStore`].
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
    /// Makes throttle members and timer claims unique across replicas and calls.
    instance: String,
    seq: AtomicU64,
    /// Lone dedup gates of concurrent dispatches, pipelined together.
    dedup: DedupBatcher,
}

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

/// Longest span of the parked state (a century): sums with now stay exact in Lua's doubles.
const MAX_SPAN_MS: u64 = 100 * 365 * 86_400_000;

/// A wait, interval or TTL of the parked state in whole ms (zero stays zero).
fn span_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(MAX_SPAN_MS)) as u64
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

/// The least string above every string that starts with `prefix` (`None`: no bound), for
/// a `ZRANGEBYLEX` range that holds exactly the keys with that prefix.
fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn bad_reply(what: &str) -> StateError {
    StateError::Unavailable(format!("redis: unexpected reply to {what}"))
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
            conn: conn.clone(),
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
                reserve_slot: Script::new(RESERVE_SLOT),
                schedule_timer: Script::new(SCHEDULE_TIMER),
                claim_timers: Script::new(CLAIM_TIMERS),
                complete_timer: Script::new(COMPLETE_TIMER),
                advance_timer: Script::new(ADVANCE_TIMER),
                release_timers: Script::new(RELEASE_TIMERS),
                defer: Script::new(DEFER),
                flush_begin: Script::new(FLUSH_BEGIN),
                flush_end: Script::new(FLUSH_END),
                list_parked: Script::new(LIST_PARKED),
                list_timers: Script::new(LIST_TIMERS),
                delete_timer: Script::new(DELETE_TIMER),
                get_parked: Script::new(GET_PARKED),
                read_state: Script::new(READ_STATE),
            },
            instance: uuid::Uuid::new_v4().simple().to_string(),
            seq: AtomicU64::new(0),
            dedup: DedupBatcher::start(conn),
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

    /// The prefix of every key, for scripts that build keys of the parked state.
    fn parked_prefix(&self) -> String {
        format!("{}:", self.prefix)
    }

    /// A lone dedup gate needs no script: `SET NX PX` checks and writes the mark in one
    /// native command, `EXISTS` checks it — the same answers as `APPLY_GATES` /
    /// `CHECK_GATES` at a fraction of a script's cost on the server (the most common gated
    /// dispatch carries exactly this gate). Concurrent ones go out in one pipeline
    /// ([`batch`]).
    async fn run_dedup_gate(
        &self,
        key: &str,
        ttl: Duration,
        token: &str,
        mode: GateMode,
    ) -> Result<GateResult, StateError> {
        let probe = match mode {
            GateMode::Apply { .. } => Probe::Mark {
                token: token.to_owned(),
                ttl_ms: ms(mode.mark_ttl(ttl)),
            },
            GateMode::Check => Probe::Exists,
        };
        let duplicate = self.dedup.run(self.key("g:d", key), probe).await?;
        Ok(if duplicate {
            GateResult::Stopped {
                index: 0,
                reason: GateStop::Duplicate,
            }
        } else {
            GateResult::Passed
        })
    }

    /// Adds the gates to a call of `APPLY_GATES`, `CHECK_GATES` or `DEFER`.
    fn push_gates(&self, inv: &mut ScriptInvocation<'_>, gates: &[Gate], mode: GateMode) {
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
    }

    async fn get_parked(&self, kind: &str, key: &str) -> Result<Vec<Value>, StateError> {
        self.scripts
            .get_parked
            .arg(self.parked_prefix())
            .arg(kind)
            .arg(key)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn list_parked(
        &self,
        kind: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<Value>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut min = b"[".to_vec();
        min.extend_from_slice(prefix.as_bytes());
        let max = match prefix_end(prefix) {
            Some(end) => [b"(".as_slice(), &end].concat(),
            None => b"+".to_vec(),
        };
        self.scripts
            .list_parked
            .arg(self.parked_prefix())
            .arg(kind)
            .arg(min)
            .arg(max)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)
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

    fn gate_batch_counts(&self) -> Option<GateBatchCounts> {
        Some(self.dedup.counts())
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
        if let [Gate::Dedup { key, ttl, token }] = gates {
            return self.run_dedup_gate(key, *ttl, token, mode).await;
        }
        let script = match mode {
            GateMode::Apply { .. } => &self.scripts.apply_gates,
            GateMode::Check => &self.scripts.check_gates,
        };
        let mut inv = script.prepare_invoke();
        self.push_gates(&mut inv, gates, mode);
        let reply: Vec<Value> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(gate_result(reply))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(gates = gates.len(), deferrals = deferrals.len()))]
    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        if deferrals.is_empty() {
            return Ok((self.run_gates(gates, mode).await?, Vec::new()));
        }
        let mut inv = self.scripts.defer.prepare_invoke();
        self.push_gates(&mut inv, gates, mode);
        inv.arg(if mode == GateMode::Check { "c" } else { "a" })
            .arg(self.parked_prefix())
            .arg(deferrals.len());
        for deferral in deferrals {
            push_deferral(&mut inv, deferral);
        }
        let reply: Vec<Value> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if reply.first().map_or(-1, int) >= 0 {
            return Ok((gate_result(reply), Vec::new()));
        }
        let results = reply
            .into_iter()
            .skip(1)
            .map(defer_result)
            .collect::<Result<Vec<_>, _>>()?;
        if results.len() != deferrals.len() {
            return Err(bad_reply("run_gates_and_defer"));
        }
        Ok((GateResult::Passed, results))
    }

    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        let reply: Vec<Value> = self
            .scripts
            .flush_begin
            .arg(self.parked_prefix())
            .arg(key)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(group_batch(reply))
    }

    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .flush_end
            .arg(self.parked_prefix())
            .arg(key)
            .arg(timer_id)
            .arg(claim)
            .arg(span_ms(interval))
            .arg(repeat_at_ms.map(|at| at.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        let reply = self.get_parked("g", key).await?;
        Ok((!reply.is_empty()).then(|| group_info(reply)))
    }

    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        let reply = self.list_parked("g", prefix, limit).await?;
        Ok(reply.into_iter().map(|v| group_info(items(v))).collect())
    }

    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        let reply = self.get_parked("e", key).await?;
        Ok((!reply.is_empty()).then(|| event_info(reply)))
    }

    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        let reply = self.list_parked("e", prefix, limit).await?;
        Ok(reply.into_iter().map(|v| event_info(items(v))).collect())
    }

    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.read_state.prepare_invoke();
        for read in reads {
            match read {
                StateRead::SetNotEmpty { key } => inv.key(self.key("as", key)).arg("s").arg(0),
                StateRead::DedupSeen { key } => inv.key(self.key("g:d", key)).arg("d").arg(0),
                StateRead::DedupSeenWithin { key, within } => {
                    inv.key(self.key("g:d", key)).arg("D").arg(ms(*within))
                }
                StateRead::WindowCount { key, window } => {
                    inv.key(self.key("g:t", key)).arg("w").arg(ms(*window))
                }
                StateRead::EventInState { key, state } => {
                    inv.key(self.key("sm", key)).arg("e").arg(state.as_str())
                }
            };
        }
        let reply: Vec<i64> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(reply.into_iter().map(|n| n.max(0) as u64).collect())
    }

    async fn pending_timers(&self) -> Result<u64, StateError> {
        let n: i64 = redis::cmd("ZCARD")
            .arg(self.key("tm", "due"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }

    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.release_timers.prepare_invoke();
        inv.key(self.key("tm", "due")).arg(self.key("tm:p", ""));
        for (id, claim) in claims {
            inv.arg(id.as_str()).arg(claim.as_str());
        }
        let n: i64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as usize)
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

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET")
                .arg(self.key("kv", key))
                .arg("v")
                .arg("ver");
        }
        let rows: Vec<(Option<Vec<u8>>, Option<u64>)> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| match row {
                (Some(value), Some(version)) => Some(Versioned { value, version }),
                _ => None,
            })
            .collect())
    }

    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        let wait: i64 = self
            .scripts
            .reserve_slot
            .key(self.key("rate", key))
            .arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
            .arg(u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok((wait >= 0).then(|| Duration::from_micros(wait as u64)))
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
            .key(self.key("tm", "x"))
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
        if max == 0 {
            return Ok(Vec::new());
        }
        let reply: Vec<Value> = self
            .scripts
            .claim_timers
            .key(self.key("tm", "due"))
            .arg(now_unix_ms)
            .arg(max)
            .arg(ms(lease))
            .arg(self.key("tm:p", ""))
            .arg(self.unique())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(reply.len() / 4);
        let mut it = reply.into_iter();
        while let (Some(id), Some(claim), Some(payload), Some(due)) =
            (it.next(), it.next(), it.next(), it.next())
        {
            out.push(ClaimedTimer {
                id: text(&id),
                claim: text(&claim),
                payload: bytes(payload),
                due_ms: text(&due).parse().unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let (payload, due): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key("tm:p", id))
            .arg("p")
            .arg("d")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(payload.map(|p| (due.unwrap_or(0), p)))
    }

    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .delete_timer
            .key(self.key("tm", "due"))
            .key(self.key("tm:p", id))
            .key(self.key("tm", "x"))
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListedTimer>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let min = match after.filter(|a| *a >= prefix) {
            Some(after) => format!("({after}").into_bytes(),
            None => [b"[".as_slice(), prefix.as_bytes()].concat(),
        };
        let max = match prefix_end(prefix) {
            Some(end) => [b"(".as_slice(), &end].concat(),
            None => b"+".to_vec(),
        };
        let reply: Vec<Value> = self
            .scripts
            .list_timers
            .key(self.key("tm", "x"))
            .arg(self.key("tm:p", ""))
            .arg(min)
            .arg(max)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(reply.len() / 3);
        let mut fields = reply.into_iter();
        while let (Some(id), Some(due), Some(payload)) =
            (fields.next(), fields.next(), fields.next())
        {
            out.push(ListedTimer {
                id: text(&id),
                due_ms: int(&due).max(0) as u64,
                payload: bytes(payload),
            });
        }
        Ok(out)
    }

    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        let until = hold.map(|lease| (super::unix_ms() + ms(lease)).to_string());
        let n: i64 = self
            .scripts
            .advance_timer
            .key(self.key("tm", "due"))
            .key(self.key("tm:p", id))
            .arg(id)
            .arg(claim)
            .arg(due_unix_ms)
            .arg(payload)
            .arg(until.unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        let n: i64 = self
            .scripts
            .complete_timer
            .key(self.key("tm", "due"))
            .key(self.key("tm:p", id))
            .key(self.key("tm", "x"))
            .arg(id)
            .arg(claim)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }
}

/// Adds one deferral to a `DEFER` call (the argument layout its Lua reads).
fn push_deferral(inv: &mut ScriptInvocation<'_>, deferral: &Deferral) {
    match deferral {
        Deferral::Timer(t) => {
            inv.arg("T")
                .arg(t.id.as_str())
                .arg(t.due_unix_ms)
                .arg(t.payload.as_slice());
        }
        Deferral::GroupAppend(a) => push_append(inv, a),
        Deferral::Transition(t) => push_transition(inv, t),
    }
}

fn push_append(inv: &mut ScriptInvocation<'_>, a: &GroupAppend) {
    inv.arg("G")
        .arg(a.key.as_str())
        .arg(a.group_id.as_str())
        .arg(a.meta.as_slice())
        .arg(a.event.as_slice())
        .arg(a.max_events.max(1))
        .arg(span_ms(a.wait))
        .arg(span_ms(a.interval))
        .arg(span_ms(a.idle_ttl))
        .arg(a.timer_id.as_str())
        .arg(a.timer_payload.as_slice())
        .arg(a.identity().unwrap_or(""))
        .arg(a.repeat.map(span_ms).unwrap_or_default());
}

fn push_transition(inv: &mut ScriptInvocation<'_>, t: &Transition) {
    inv.arg("S")
        .arg(t.key.as_str())
        .arg(t.fingerprint.as_str())
        .arg(t.initial.as_str())
        .arg(flag(t.to.is_some()))
        .arg(t.to.as_deref().unwrap_or(""))
        .arg(t.allowed_from.len());
    for state in &t.allowed_from {
        inv.arg(state.as_str());
    }
    inv.arg(flag(t.require_timer.is_some()))
        .arg(t.require_timer.as_deref().unwrap_or(""));
    match &t.timeout {
        Some(w) => inv
            .arg("1")
            .arg(w.id.as_str())
            .arg(w.due_unix_ms)
            .arg(w.payload.as_slice()),
        None => inv.arg("0").arg("").arg(0).arg(""),
    };
    inv.arg(flag(t.to_terminal)).arg(t.active_sets.len());
    for set in &t.active_sets {
        inv.arg(set.as_str());
    }
    inv.arg(t.terminal.len());
    for state in &t.terminal {
        inv.arg(state.as_str());
    }
    inv.arg(t.record.as_slice()).arg(span_ms(t.ttl));
    match &t.notice {
        Some(n) => {
            inv.arg(n.from.len());
            for state in &n.from {
                inv.arg(state.as_str());
            }
            inv.arg(n.timer.id.as_str())
                .arg(n.timer.due_unix_ms)
                .arg(n.timer.payload.as_slice());
        }
        None => {
            inv.arg(0).arg("").arg(0).arg("");
        }
    }
}

/// The elements of an array reply (anything else reads as empty).
fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// A number field that may be empty (`None`).
fn opt_ms(v: &Value) -> Option<u64> {
    let t = text(v);
    (!t.is_empty()).then(|| int(v).max(0) as u64)
}

fn defer_result(v: Value) -> Result<DeferResult, StateError> {
    let f = items(v);
    let at = |i: usize| f.get(i).map(text).unwrap_or_default();
    let num = |i: usize| f.get(i).map_or(0, int).max(0) as u64;
    Ok(match at(0).as_str() {
        "T" => DeferResult::Timer,
        "G" => DeferResult::Grouped {
            group_id: at(1),
            size: num(2),
            notify_at_ms: num(3),
        },
        "S" => {
            let current = at(2);
            DeferResult::Transition(match at(1).as_str() {
                "c" => TransitionResult::Changed { previous: current },
                "u" => TransitionResult::Unchanged { current },
                "r" => TransitionResult::Refused { current },
                _ => return Err(bad_reply("a transition")),
            })
        }
        _ => return Err(bad_reply("a deferral")),
    })
}

/// `{group id, meta, count, repeat, last event ms, event…}` or `{}`.
fn group_batch(reply: Vec<Value>) -> Option<GroupBatch> {
    if reply.len() < 5 {
        return None;
    }
    let mut it = reply.into_iter();
    let (group_id, meta, count, repeat, last) = (
        it.next().map(|v| text(&v)).unwrap_or_default(),
        it.next().map(bytes).unwrap_or_default(),
        it.next().map_or(0, |v| int(&v)),
        it.next().map_or(0, |v| int(&v)),
        it.next().map_or(0, |v| int(&v)),
    );
    Some(GroupBatch {
        group_id,
        meta,
        events: it.map(bytes).collect(),
        event_count: count.max(0) as u64,
        repeat: repeat == 1,
        last_event_ms: last.max(0) as u64,
    })
}

/// `{key, group id, meta, pending, notify_at or '', last flush or '', last event}`.
fn group_info(f: Vec<Value>) -> GroupInfo {
    let get = |i: usize| f.get(i).cloned().unwrap_or(Value::Nil);
    GroupInfo {
        key: text(&get(0)),
        group_id: text(&get(1)),
        meta: bytes(get(2)),
        pending: int(&get(3)).max(0) as u64,
        notify_at_ms: opt_ms(&get(4)),
        last_flush_ms: opt_ms(&get(5)),
        last_event_ms: int(&get(6)).max(0) as u64,
    }
}

/// `{key, fingerprint, state, record, changed ms, timeout id or '', timeout due or ''}`.
fn event_info(f: Vec<Value>) -> EventInfo {
    let get = |i: usize| f.get(i).cloned().unwrap_or(Value::Nil);
    let timeout_id = text(&get(5));
    EventInfo {
        key: text(&get(0)),
        fingerprint: text(&get(1)),
        state: text(&get(2)),
        record: bytes(get(3)),
        changed_ms: int(&get(4)).max(0) as u64,
        timeout: (!timeout_id.is_empty()).then(|| (timeout_id, opt_ms(&get(6)).unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MAX_GROUP_FINGERPRINTS;

    #[test]
    fn scripts_bound_group_fingerprints_like_the_other_backends() {
        let line = format!("local MAX_FPS = {MAX_GROUP_FINGERPRINTS}\n");
        assert!(DEFER.contains(&line), "DEFER must declare {line:?}");
    }
}
