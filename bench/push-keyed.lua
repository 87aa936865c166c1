-- wrk script for bench/keys.sh: like push.lua, and with WRK_KEYED=1 every request carries a
-- fresh Idempotency-Key, random as pere-pub and the client library make them (so keys land all
-- over the store's index, as real ones do), and unique per thread and request (never a replay).
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
    headers["Idempotency-Key"] = string.format("%08x%08x-%d-%d", math.random(0, 0x7fffffff),
      math.random(0, 0x7fffffff), tid, counter)
  end
  return wrk.format("POST", nil, headers, body)
end
