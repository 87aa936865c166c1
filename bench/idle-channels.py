#!/usr/bin/env python3
"""What idle channels cost a server: touch N channels with one push each, wait until the hub has
unloaded them, and read the server's resident memory (VmRSS) before and after; then restart it
on the same data directory and time its first answer to /health. Driven by
bench/idle-channels.sh; prints one Markdown table row per server.

Each server given is a `pere-server` binary, run on 127.0.0.1 port 0 with a fresh SQLite data
directory. Only the processes this script starts are stopped, by their PID."""

import argparse
import http.client
import json
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

# What one push carries: about 100 bytes of JSON.
PAD = "x" * 72


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Server:
    """One pere-server process on a data directory."""

    def __init__(self, binary, data_dir, flags):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "-o", "127.0.0.1", "-p", "0", "--data-dir", data_dir, "--quiet"] + flags,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # The first stdout line is the bound address.
        first = self.proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", first)
        if not match:
            self.stop()
            raise RuntimeError(f"no address in {first!r}")
        self.port = int(match.group(1))

    def health(self):
        """Polls /health until it answers 200; returns the seconds since the process started."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError("no answer from /health")

    def rss(self):
        return rss_kib(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def push_all(port, n, threads):
    """One push into each of `n` channels, from `threads` keep-alive connections."""
    failures = []

    def worker(start):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(start, n, threads):
            body = json.dumps({"n": i, "pad": PAD})
            conn.request("POST", f"/push/idle-{i:07d}", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                failures.append(answer.status)
                return

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise RuntimeError(f"pushes failed: {failures[:5]}")


def settled_rss(server, wait):
    """RSS after `wait` seconds, then once two readings a second apart agree within 0.5%."""
    time.sleep(wait)
    before = server.rss()
    for _ in range(30):
        time.sleep(1)
        now = server.rss()
        if abs(now - before) <= before * 0.005:
            return now
        before = now
    return before


def measure(label, binary, n, idle, threads, extra):
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    flags = list(extra)
    if "--idle-channel" in help_text:
        flags += ["--idle-channel", f"{idle}s"]
        idle_wait = idle
    else:
        # Older builds unload after the default minute.
        idle_wait = 60
    data_dir = tempfile.mkdtemp(prefix="pere-idle-channels.")
    try:
        server = Server(binary, data_dir, flags)
        try:
            server.health()
            time.sleep(1)
            before = server.rss()
            started = time.monotonic()
            push_all(server.port, n, threads)
            pushed_in = time.monotonic() - started
            loaded = server.rss()
            # The hub's reaper looks every quarter of the idle time: unloaded within 1.25 of it.
            idle_rss = settled_rss(server, idle_wait * 1.25 + 2)
        finally:
            server.stop()
        server = Server(binary, data_dir, flags)
        try:
            first_answer = server.health()
            restarted = server.rss()
        finally:
            server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    per = lambda kib: (kib - before) * 1024 / n / 1024
    print(
        f"| {label} | {n:,} | {before / 1024:.1f} | {loaded / 1024:.1f} ({per(loaded):.2f}) "
        f"| {idle_rss / 1024:.1f} | **{per(idle_rss):.3f}** | {restarted / 1024:.1f} "
        f"| {first_answer:.3f} | {n / pushed_in:,.0f} |",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("servers", nargs="+", help="LABEL=PATH of a pere-server binary")
    parser.add_argument("--n", type=int, default=100_000, help="channels touched")
    parser.add_argument("--idle", type=int, default=5, help="--idle-channel seconds, where known")
    parser.add_argument("--threads", type=int, default=4, help="pushing connections")
    parser.add_argument("--flag", action="append", default=[], help="another server flag")
    args = parser.parse_args()
    print(
        "| server | channels | RSS before (MiB) | after the pushes (MiB; KiB/channel) "
        "| idle (MiB) | idle KiB/channel | after a restart (MiB) | restart to first /health (s) "
        "| pushes/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for spec in args.servers:
        label, binary = spec.split("=", 1)
        measure(label, binary, args.n, args.idle, args.threads, args.flag)


if __name__ == "__main__":
    main()
