-- wrk script: POST the body in $WRK_BODY with the content type in $WRK_TYPE.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or "x"
wrk.headers["Content-Type"] = os.getenv("WRK_TYPE") or "text/plain"
wrk.headers["device"] = "BENCH1"
