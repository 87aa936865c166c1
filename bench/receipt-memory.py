#!/usr/bin/env python3
"""Server memory of receipting devices: DEVICES identified devices each hold a feed on one
channel; EVENTS ~100-byte JSON events are pushed; in the second run each device also posts a
receipt per event on a keep-alive connection of its own (opened at its first receipt, kept open),
as the original subscribers do. Prints the server's RSS three seconds after the last answer, for
both runs, and their ratio.

    ulimit -n 20000; python3 bench/receipt-memory.py target/release/pere-server [memory|sqlite]
"""
import asyncio, json, os, random, shutil, subprocess, sys, tempfile

SERVER = sys.argv[1]
STORE = sys.argv[2] if len(sys.argv) > 2 else "memory"
DEVICES = int(os.environ.get("DEVICES", "4000"))
EVENTS = int(os.environ.get("EVENTS", "2"))

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

async def feed(port, chan, dev, got, want):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /feed/{chan}?device={dev} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    buf = b""
    while True:
        data = await r.read(65536)
        if not data:
            return
        buf += data
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if line.startswith(b"id:"):
                    await got.put((dev, int(line[3:].strip())))

async def main(mode):
    port = random.randint(20000, 40000)
    data_dir = tempfile.mkdtemp(prefix="pere-receipt-memory-")
    args = [SERVER, "-o", "127.0.0.1", "-p", str(port), "--store", STORE, "-q"]
    if STORE == "sqlite":
        args += ["--data-dir", data_dir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port); w.close(); break
            except OSError:
                await asyncio.sleep(0.1)
        chan = "R"
        got = asyncio.Queue()
        devs = [f"H{i:010d}" for i in range(DEVICES)]
        tasks = []
        for d in devs:
            tasks.append(asyncio.create_task(feed(port, chan, d, got, EVENTS)))
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0.05)
        conns = {}
        await asyncio.sleep(2)
        base = rss(proc.pid)
        # publish
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for n in range(EVENTS):
            body = json.dumps({"order": n, "sku": "A-1042", "qty": 3, "note": "x" * 50}).encode()
            w.write(b"POST /push/R HTTP/1.1\r\nHost: 127.0.0.1\r\ndevice: P1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            cl = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            await r.readexactly(cl)
        w.close()
        delivered = 0
        acked = 0
        async def ack(dev, eid):
            if dev not in conns:
                conns[dev] = await asyncio.open_connection("127.0.0.1", port)
            rr, ww = conns[dev]
            body = b"status=rx+ok"
            ww.write(b"POST /feedback/R HTTP/1.1\r\nHost: 127.0.0.1\r\ndevice: %s\r\nlast_event_id: %d\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % (dev.encode(), eid, len(body)) + body)
            await ww.drain()
            head = await rr.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            cl = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            await rr.readexactly(cl)
        locks = {d: asyncio.Lock() for d in devs}
        async def ack_locked(dev, eid):
            async with locks[dev]:
                await ack(dev, eid)
        acks = []
        while delivered < DEVICES * EVENTS:
            dev, eid = await asyncio.wait_for(got.get(), 60)
            delivered += 1
            if mode == "receipts":
                acks.append(asyncio.create_task(ack_locked(dev, eid)))
        await asyncio.gather(*acks)
        await asyncio.sleep(3)
        after = rss(proc.pid)
        print(f"{mode:9s} {STORE:7s} devices={DEVICES} events={EVENTS} rss_before_push={base} KiB rss_after={after} KiB per_device={after*1024/DEVICES/1024:.1f} KiB")
        for t in tasks: t.cancel()
        return after
    finally:
        proc.kill(); proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)

feeds = asyncio.run(main("feeds"))
rec = asyncio.run(main("receipts"))
print(f"ratio receipts/feeds = {rec/feeds:.2f}")
