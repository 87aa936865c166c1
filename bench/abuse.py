#!/usr/bin/env python3
"""What one client can make a PERE server hold, measured: memory per fresh channel, per device
and per admin view, idle CPU by channel count, and what happens when feeds take every
connection. Drives a running server over loopback with the standard library only; reads the
server's memory and CPU from /proc. Every loop is bounded and the script stops by itself.

Usage: abuse.py SCENARIO URL PID [N]   (bench/abuse.sh starts the servers and runs them all)
"""
import http.client
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlparse

TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Client:
    def __init__(self, url):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                return response.status, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def open_stream(self, path, headers=""):
        """Opens an SSE stream, reads its head, and closes it."""
        s = socket.create_connection((self.host, self.port), timeout=10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        s.close()
        return head.split(b" ", 2)[1] if head else b"---"


def settle(pid, seconds=2.0):
    time.sleep(seconds)
    return rss_kib(pid)


def channels(url, pid, n):
    """Touches n fresh channels: follow receipts, follow presence, one small push."""
    c = Client(url)
    before = settle(pid)
    for i in range(n):
        c.open_stream(f"/receipts/fresh{i}")
        c.open_stream(f"/presence/fresh{i}")
        status, _ = c.request("POST", f"/push/fresh{i}", body=b'{"n":1}', headers={"content-type": "application/json"})
        assert status == 200, status
    after = settle(pid)
    return {"channels": n, "rss_before_kib": before, "rss_after_kib": after, "kib_per_channel": round((after - before) / n, 2)}


def devices(url, pid, n):
    """Makes n devices known on one channel (registered, one receipt each)."""
    c = Client(url)
    c.request("POST", "/push/devs", body=b"x")
    before = settle(pid)
    for i in range(n):
        status, _ = c.request("PUT", f"/devices/devs/dev{i:06}")
        assert status == 200, status
        status, _ = c.request("POST", "/feedback/devs", body=json.dumps({"device": f"dev{i:06}", "id": 1}).encode(),
                              headers={"content-type": "application/json"})
        assert status == 200, status
    after = settle(pid)
    return {"devices": n, "rss_before_kib": before, "rss_after_kib": after, "bytes_per_device": round((after - before) * 1024 / n)}


def admin_views(url, pid, n):
    """Six concurrent GET /admin/devices/C of a channel with n devices; the peak RSS growth."""
    c = Client(url)
    c.request("POST", "/push/views", body=b"x")
    for i in range(n):
        c.request("PUT", f"/devices/views/dev{i:06}")
    before = settle(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.005)

    def view():
        status, body = Client(url).request("GET", "/admin/devices/views")
        assert status == 200 and len(body) > 0, status

    sampler = threading.Thread(target=sample)
    sampler.start()
    viewers = [threading.Thread(target=view) for _ in range(6)]
    for t in viewers:
        t.start()
    for t in viewers:
        t.join()
    done.set()
    sampler.join()
    return {"devices": n, "concurrent_views": 6, "rss_before_kib": before, "peak_growth_mib": round((peak[0] - before) / 1024, 1)}


def idle_cpu(url, pid, n):
    """n channels with one event each, then the server's CPU over 10 idle seconds."""
    c = Client(url)
    for i in range(n):
        c.request("POST", f"/push/idle{i}", body=b"x")
    time.sleep(3)
    start = cpu_s(pid)
    time.sleep(10)
    used = cpu_s(pid) - start
    return {"channels": n, "idle_cpu_percent_of_a_core": round(used * 10, 2)}


def descriptors(url, pid, n):
    """Opens feeds until the server refuses them (at most n), then checks that short requests
    are still served and that the refusal is a 503 with Retry-After."""
    u = urlparse(url)
    held, refused = [], None
    for i in range(n):
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall(f"GET /feed/fd HTTP/1.1\r\nHost: 127.0.0.1\r\ndevice: fd{i}\r\n\r\n".encode())
        head = s.recv(4096)
        if not head.startswith(b"HTTP/1.1 200"):
            refused = head.decode(errors="replace")
            s.close()
            break
        held.append(s)
    c = Client(url)
    health, _ = c.request("GET", "/health")
    push, _ = c.request("POST", "/push/fd", body=b"x")
    result = {"feeds_held": len(held), "refused_with": refused.split("\r\n")[0] if refused else None,
              "retry_after": bool(refused and "retry-after" in refused.lower()),
              "health_status": health, "push_status": push, "server_rss_kib": rss_kib(pid)}
    for s in held:
        s.close()
    return result


SCENARIOS = {"channels": channels, "devices": devices, "admin_views": admin_views,
             "idle_cpu": idle_cpu, "descriptors": descriptors}

if __name__ == "__main__":
    scenario, url, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    print(json.dumps({"scenario": scenario, **SCENARIOS[scenario](url, pid, n)}))
