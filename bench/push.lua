-- wrk script for bench/compare.sh's push scenarios: every request publishes one JSON event to the
-- URL's /push/<ch>, with a `device` header. The body is $WRK_BODY when set and not empty
-- (push-100: a realistic 100-byte event), else a 15-byte one shaped like pere-bench's own (push).
local body = os.getenv("WRK_BODY")
if body == nil or body == "" then
  body = '{"t":0,"seq":0}'
end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["device"] = "wrk"
