-- wrk script for bench/keys.sh: like push.lua, and with WRK_KEYED=1 every request carries a
-- fresh Idempotency-Key, as pere-pub and the client library send them (unique per thread and
-- request, so no request is a replay).
local body = os.getenv("WRK_BODY")
if body == nil or body == "" then
  body = '{"t":0,"seq":0}'
end
local keyed = os.getenv("WRK_KEYED") == "1"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
function request()
  local headers = { ["Content-Type"] = "application/json", ["device"] = "wrk" }
  if keyed then
    counter = counter + 1
    headers["Idempotency-Key"] = string.format("t%d-%d-%d", tid, os.time(), counter)
  end
  return wrk.format("POST", nil, headers, body)
end
