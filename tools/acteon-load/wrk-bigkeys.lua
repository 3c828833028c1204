-- wrk script of soak.sh: every request carries a unique ~100 KB key, alternately as a
-- payload field rendered by a dedup rule's key template and as `dedup_key` itself.
local pad
local counter = 0
local run

function init(args)
  math.randomseed(os.time())
  run = string.format("%08x", math.random(0, 0x7fffffff))
  pad = string.rep("k", 100 * 1024)
end

function request()
  counter = counter + 1
  local key = string.format("%s-%d-%s", run, counter, pad)
  local body
  if counter % 2 == 0 then
    body = string.format('{"namespace":"soak","tenant":"t","provider":"noop",'
      .. '"action_type":"big_key","payload":{"key":"%s"}}', key)
  else
    body = string.format('{"namespace":"soak","tenant":"t","provider":"noop",'
      .. '"action_type":"big_dedup_key","dedup_key":"%s","payload":{}}', key)
  end
  return wrk.format("POST", "/v1/dispatch", { ["Content-Type"] = "application/json" }, body)
end
