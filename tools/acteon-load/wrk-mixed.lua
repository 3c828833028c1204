-- wrk script: the acteon-load `mixed` scenario (for tools/acteon-load/bench-rules.yaml).
--
--   wrk -t1 -c32 -d5s -s tools/acteon-load/wrk-mixed.lua http://127.0.0.1:18080
--
-- Every request is a POST /v1/dispatch with a fresh action id, cycling through the five
-- action types of tenant `load` in namespace `bench`: executed, dedup (dedup_key from a
-- pool of 16), throttled, suppressed, rerouted. At the end it prints how many answers of
-- each outcome (Executed, Deduplicated, Throttled, …) came back.
--
-- Counting outcomes makes wrk read every response body; pass `-- nocount` after the URL to
-- measure without it:  wrk ... -s wrk-mixed.lua http://127.0.0.1:18080 -- nocount
-- `-- ungated` sends only `executed` actions (no gates; see http-ceiling.sh).

local threads = {}
local next_tid = 0

-- Runs in the main Lua state, once per thread.
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local kinds = {
  { action_type = "executed",   provider = "noop-a", dedup = false },
  { action_type = "dedup",      provider = "noop-a", dedup = true },
  { action_type = "throttled",  provider = "noop-a", dedup = false },
  { action_type = "suppressed", provider = "noop-a", dedup = false },
  { action_type = "rerouted",   provider = "noop-a", dedup = false },
}
local DEDUP_KEYS = 16

-- From here on, each thread runs in its own Lua state (`tid` set by setup).
local run, counter
local path = "/v1/dispatch"
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  tid = tid or 0
  math.randomseed(os.time() * 1000 + tid * 7919)
  run = string.format("wrk-%08x%04x", math.random(0, 0x7fffffff), math.random(0, 0xffff))
  counter = 0
  outcomes = {}
  for _, a in ipairs(args) do
    if a == "nocount" then
      response = nil
    elseif a == "ungated" then
      -- Only `executed`: no dedup/throttle gate, so no state call (the HTTP ceiling).
      kinds = { kinds[1] }
    end
  end
end

function request()
  counter = counter + 1
  local k = kinds[(counter + tid) % #kinds + 1]
  local dedup = ""
  if k.dedup then
    dedup = string.format(',"dedup_key":"key-%d"', counter % DEDUP_KEYS)
  end
  local body = string.format(
    '{"id":"%s-%d-%d","namespace":"bench","tenant":"load","provider":"%s","action_type":"%s",'
      .. '"payload":{"severity":4,"message":"wrk","seq":%d}%s}',
    run, tid, counter, k.provider, k.action_type, counter, dedup)
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  local tag
  if status == 200 then
    tag = body:match('^%s*"(%w+)"') or body:match('^%s*{%s*"(%w+)"') or "(unparsed)"
  else
    tag = "HTTP " .. status
  end
  outcomes[tag] = (outcomes[tag] or 0) + 1
end

-- Runs in the main Lua state after the run.
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("outcomes")
    if counts then
      for tag, n in pairs(counts) do
        total[tag] = (total[tag] or 0) + n
      end
    end
  end
  local tags = {}
  for tag in pairs(total) do
    table.insert(tags, tag)
  end
  if #tags == 0 then
    return
  end
  table.sort(tags, function(a, b) return total[a] > total[b] end)
  io.write("Outcomes:\n")
  for _, tag in ipairs(tags) do
    io.write(string.format("  %-24s %d\n", tag, total[tag]))
  end
end
