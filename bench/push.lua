-- wrk script for bench/compare.sh scenario 4: every request publishes a small JSON event,
-- shaped like pere-bench's own, to the URL's /push/<ch>.
wrk.method = "POST"
wrk.body = '{"t":0,"seq":0}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["device"] = "wrk"
