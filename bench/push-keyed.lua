-- wrk script for bench/keys.sh: like push.lua, and every request carries a fresh random key,
-- made as pere-pub and the client library make them, unique per thread and request (never a
-- replay). With WRK_KEYED=1 it is the request's Idempotency-Key; without, the same key goes in
-- an `X-Request-Id` header the server ignores, so both runs cost wrk the same and send requests
-- of the same size: the ratio of the two is the server's cost of the key alone.
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
  counter = counter + 1
  local key = string.format("%08x%08x-%d-%d", math.random(0, 0x7fffffff),
    math.random(0, 0x7fffffff), tid, counter)
  if keyed then
    headers["Idempotency-Key"] = key
  else
    headers["X-Request-Id"] = key
  end
  return wrk.format("POST", nil, headers, body)
end
