"""Interop: Python's httpx-sse (pinned in requirements.txt) reading a feed.

The opening must give no message, keep-alive comments none either, and a resume with
Last-Event-ID must start after it. httpx-sse hands the application every block that holds a
field, even without data, so an empty message here is a real client's spurious message.
Prints each message as `MSG {...}` and PASS, or FAIL and exits 1.

Usage: python httpx_sse_client.py SERVER_URL CHANNEL DEVICE
"""
import json
import sys
import time

import httpx
from httpx_sse import connect_sse

base, channel, device = sys.argv[1:4]


def push(client, body):
    answer = client.post(f"{base}/push/{channel}", content=body, headers={"device": "P-test"})
    answer.raise_for_status()


def read(client, headers, count, between=None):
    """Reads `count` messages from a new stream; calls `between` after the first."""
    got = []
    url = f"{base}/feed/{channel}"
    with connect_sse(client, "GET", url, params={"device": device}, headers=headers) as source:
        for sse in source.iter_sse():
            message = {"id": sse.id, "event": sse.event, "data": sse.data}
            print("MSG " + json.dumps(message), flush=True)
            got.append(message)
            if len(got) == count:
                return got
            if between is not None and len(got) == 1:
                between()
    return got


def idle_then(client, body):
    def run():
        # Longer than the server's keep-alive interval (1 s in this test): comments pass, no message.
        time.sleep(1.5)
        push(client, body)
    return run


def main():
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        push(client, "one")
        first = read(client, {}, 2, idle_then(client, "two"))
        expected = [{"id": "1", "event": "message", "data": "one"}, {"id": "2", "event": "message", "data": "two"}]
        if first != expected:
            raise AssertionError(f"first stream: {first}")
        resumed = read(client, {"Last-Event-ID": "1"}, 2, idle_then(client, "three"))
        expected = [{"id": "2", "event": "message", "data": "two"}, {"id": "3", "event": "message", "data": "three"}]
        if resumed != expected:
            raise AssertionError(f"resumed stream: {resumed}")
    print("PASS", flush=True)


try:
    main()
except Exception as err:  # the test reads the reason from stdout
    print(f"FAIL: {err!r}", flush=True)
    sys.exit(1)
