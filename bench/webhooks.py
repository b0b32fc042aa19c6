#!/usr/bin/env python3
"""Webhooks (issue 36): what delivering the agents' events to one endpoint costs.

For each store (memory, then Redis):
1. a simulator and ccgate (release build, one worker, pinned to core 0 as in bench.py; the
   simulator, redis-server, the load and the receiver on core 1), one `[[webhooks]]` endpoint
   (`max_in_flight` 4, plain HTTP to a receiver on loopback) taking every event;
2. `--agents` agents signed in; `--rate` events a second queued at the simulator
   (`POST /ccgate-sim/events`, in batches every 10 ms, round robin over the agents), each
   carrying the time it was queued;
3. a warm-up, then `--seconds` measured: ccgate's CPU (utime + stime), the deliveries, and
   each event's latency from its queueing at the simulator to its arrival at the receiver
   (ccgate's poll, the hand-over, the backlog, the signed POST);
4. the load stops and every event must arrive (none lost; a repeat counted as a duplicate).

The receiver answers 204 at once over kept-alive connections (asyncio, raw HTTP/1.1), so the
figures are ccgate's. Writes a Markdown table; `--json FILE` keeps the numbers.
"""

import argparse
import asyncio
import base64
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

SIM, PROXY, ADMIN, REDIS = bench.PORTS["sim"], bench.PORTS["ccgate"], bench.PORTS["ccgate_admin"], bench.PORTS["redis"]
RECEIVER = 18480
FIRST_AGENT = 30_000


class Receiver:
    """Records (arrival ns, queued ns, event number) per delivery; answers 204."""

    def __init__(self):
        self.got = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", RECEIVER))
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.time_ns()
                content = json.loads(body)["data"]["event"].get("content") or {}
                if "t" in content:  # the bench's own events (not a session's end at shutdown)
                    self.got.append((now, content["t"], content["i"]))
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def write_configs(out, agents, store):
    (out / "sim.toml").write_text(f"""listen = "127.0.0.1:{SIM}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
auth_mode = "dynamic"
guid_interval_ms = 60000
event_wait_ms = 10000
max_idle_ms = 86400000
record_requests = false
operation_events = false
default_password = "{bench.PASSWORD}"
""")
    creds = "".join(f'[agents."{a}"]\npassword = "{bench.PASSWORD}"\nphonenum = "8880{a}"\n' for a in agents)
    (out / "creds.toml").write_text(creds)
    os.chmod(out / "creds.toml", 0o600)
    secret = out / "bench.whsec"
    secret.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(secret, 0o600)
    extra = f"""
[[webhooks]]
name = "bench"
url = "http://127.0.0.1:{RECEIVER}/hook"
secret_file = "{secret}"
events = ["*"]
allow_private = true
"""
    if store == "redis":
        extra += f"""
[store]
backend = "redis"
url = "redis://127.0.0.1:{REDIS}/0"
"""
    (out / "ccgate.toml").write_text(bench.ccgate_toml(out) + extra)


def inject(ctx, agents, rate, stop, counter):
    """`rate` events a second at the simulator, in batches every 10 ms."""
    conn = http.client.HTTPSConnection("127.0.0.1", SIM, context=ctx, timeout=10)
    per_batch = max(1, rate // 100)
    next_at = time.time()
    k = 0
    while not stop.is_set():
        batch = []
        now = time.time_ns()
        for _ in range(per_batch):
            batch.append({"agent": agents[k % len(agents)], "type": "AgentEvent_Bench",
                          "content": {"t": now, "i": counter[0]}})
            counter[0] += 1
            k += 1
        conn.request("POST", "/ccgate-sim/events", body=json.dumps(batch),
                     headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        next_at += 0.01
        time.sleep(max(0.0, next_at - time.time()))
    conn.close()


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else 0


def run(out, binary, key, receiver, store, agents_n, rate, seconds, warmup):
    agents = [str(FIRST_AGENT + i) for i in range(agents_n)]
    write_configs(out, agents, store)
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    procs = {}
    receiver.got = []
    try:
        if store == "redis":
            bench.start_pinned(procs, out, "redis-server", ["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1",
                                                             "--save", "", "--appendonly", "no"], bench.LOAD_CORE, REDIS)
        bench.start_pinned(procs, out, "sim", [str(binary), "sim", "--config", str(out / "sim.toml")], bench.LOAD_CORE, SIM)
        bench.start_pinned(procs, out, "ccgate", [str(binary), "serve", "--config", str(out / "ccgate.toml")],
                           bench.PROXY_CORE, PROXY)
        pid = procs["ccgate"].pid
        for tok in bench.mint(key, agents, len(agents)):
            bench.https(ctx, "POST", f"https://127.0.0.1:{PROXY}/v1/session", {"authorization": f"Bearer {tok}"})
        stop, counter = threading.Event(), [0]
        t = threading.Thread(target=inject, args=(ctx, agents, rate, stop, counter))
        t.start()
        time.sleep(warmup)
        first_i, got_from = counter[0], len(receiver.got)
        redis_pid = procs["redis-server"].pid if "redis-server" in procs else None
        redis_ticks = bench.cpu_ticks(redis_pid) if redis_pid else 0
        ticks, t0 = bench.cpu_ticks(pid), time.time()
        time.sleep(seconds)
        elapsed = time.time() - t0
        cpu_s = (bench.cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK")
        redis_s = (bench.cpu_ticks(redis_pid) - redis_ticks) / os.sysconf("SC_CLK_TCK") if redis_pid else 0
        window = receiver.got[got_from:]
        last_i = counter[0]
        stop.set()
        t.join()
        sent = counter[0]
        deadline = time.time() + 30
        while time.time() < deadline and len({i for _, _, i in receiver.got}) < sent:
            time.sleep(0.2)
        seen = [i for _, _, i in receiver.got]
        unique = set(seen)
        lat = [(now - queued) / 1e6 for now, queued, i in receiver.got if first_i <= i < last_i]
        rss = bench.peak_rss_kib(pid)
        res = {
            "store": store, "agents": agents_n, "offered_per_s": rate, "delivered_per_s": len(window) / elapsed,
            "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99), "max_ms": max(lat) if lat else 0,
            "cpu_pct": 100 * cpu_s / elapsed, "cpu_us_per_delivery": 1e6 * cpu_s / max(1, len(window)),
            "redis_cpu_pct": 100 * redis_s / elapsed, "redis_us_per_delivery": 1e6 * redis_s / max(1, len(window)),
            "sent": sent, "lost": sent - len(unique), "duplicates": len(seen) - len(unique), "peak_rss_mib": rss / 1024,
        }
        bench.log(f"{store}: {json.dumps(res)}")
        return res
    finally:
        bench.stop_all(procs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--store", default="memory,redis")
    ap.add_argument("--binary", default=str(bench.ROOT / "target/release/ccgate"))
    ap.add_argument("--json")
    a = ap.parse_args()
    out = bench.BENCH / "out-webhooks"
    out.mkdir(exist_ok=True)
    key, _ = bench.make_keys(out)
    os.sched_setaffinity(0, {int(bench.LOAD_CORE)})
    receiver = Receiver()
    results = [run(out, Path(a.binary), key, receiver, s, a.agents, a.rate, a.seconds, a.warmup)
               for s in a.store.split(",")]
    print(f"\n{a.rate} events/s offered over {a.agents} agents, {a.seconds} s measured, one endpoint\n")
    print("| store | delivered/s | p50 ms | p99 ms | max ms | ccgate CPU | µs CPU / delivery | Redis µs / delivery "
          "| lost | duplicates | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        redis = f"{r['redis_us_per_delivery']:.0f}" if r["store"] == "redis" else "-"
        print(f"| {r['store']} | {r['delivered_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} "
              f"| {r['cpu_pct']:.1f} % | {r['cpu_us_per_delivery']:.0f} | {redis} | {r['lost']} of {r['sent']} "
              f"| {r['duplicates']} | {r['peak_rss_mib']:.0f} MiB |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
