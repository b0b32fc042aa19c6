#!/usr/bin/env python3
"""The connection attacks of issue 37 against a release build, each measured: what the attack
holds, the resident memory it costs ccgate (sampled every 50 ms; the peak over the phase), and
what a client making requests meanwhile sees. ccgate runs as in bench/run.sh (one worker,
default server limits: 512 connections, 32 KiB heads, 8 streams per agent).

  idle     530 TCP sockets that connect and send nothing, each reopened as soon as ccgate
           closes it; a client makes requests on a new TLS connection each (success ratio)
  heads    400 TLS connections each sending a 390 KiB request head slowly (2 KiB every 20 ms)
           and never finishing it
  streams  one valid token opens 600 event streams (`GET /v1/events`, HTTP/1.1, one per
           connection) and holds them
  onebyte  as idle, but each socket sends one byte (a TLS record's first) and then nothing;
           from 127.0.0.2, an address of its own (a remote attacker)
  onebyte1 the same from 127.0.0.1, the client's own address (a sidecar's neighbour)
  refused  530 TLS connections that each send one request without a token (401) and then
           idle, kept alive, reopened when closed

  bench/attacks.sh [--binary PATH] [--seconds 10]
"""

import argparse
import asyncio
import shutil
import ssl
import sys
import threading
import time
import http.client
from pathlib import Path

import bench as B
from agents import stop_all

PORT = B.PORTS["ccgate"]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """The peak of VmRSS while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.05)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.t.join()


def client_requests(ctx, token, seconds, out):
    """GET /v1/session on a new TLS connection each, one at a time."""
    ok = total = 0
    failures = {}
    end = time.time() + seconds
    while time.time() < end:
        total += 1
        try:
            c = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx, timeout=5)
            c.request("GET", "/v1/session", headers={"authorization": f"Bearer {token}", "connection": "close"})
            r = c.getresponse()
            r.read()
            ok += r.status == 200
            if r.status != 200:
                failures[r.status] = failures.get(r.status, 0) + 1
            c.close()
        except (OSError, http.client.HTTPException) as e:
            failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
        time.sleep(0.02)
    out.update(ok=ok, total=total, failures=failures)


async def idle_sockets(n, seconds, first=b"", source=None):
    """n sockets that send `first` and then nothing, each reopened when closed (from address
    `source`, another loopback address than the client's, if given); how many times ccgate
    closed one."""
    closed = 0
    end = time.time() + seconds

    async def one():
        nonlocal closed
        while time.time() < end:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", PORT,
                                                     local_addr=(source, 0) if source else None)
                if first:
                    w.write(first)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            try:
                await asyncio.wait_for(r.read(1), timeout=max(0.01, end - time.time()))
                closed += 1
            except (asyncio.TimeoutError, OSError):
                pass
            w.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return closed


async def refused_holders(ctx, n, seconds):
    """n TLS connections that each get one 401 and idle, reopened when closed; reopenings."""
    reopened = 0
    end = time.time() + seconds

    async def one():
        nonlocal reopened
        while time.time() < end:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", PORT, ssl=ctx, server_hostname="localhost")
                w.write(b"GET /v1/session HTTP/1.1\r\nhost: localhost\r\n\r\n")
                await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout=5)
                await asyncio.wait_for(r.read(), timeout=max(0.01, end - time.time()))
                reopened += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                await asyncio.sleep(0.01)
                continue
            w.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return reopened


async def big_heads(ctx, n, head_kib, seconds):
    """n TLS connections each trickling a head of head_kib KiB; the statuses they got."""
    statuses = {}
    end = time.time() + seconds

    async def one():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", PORT, ssl=ctx, server_hostname="localhost")
        except OSError:
            statuses["connect failed"] = statuses.get("connect failed", 0) + 1
            return
        status = "no answer"
        try:
            w.write(b"GET /v1/session HTTP/1.1\r\nhost: localhost\r\n")
            sent = 0
            chunk = b"x-filler: " + b"a" * 2036 + b"\r\n"
            try:
                while sent < head_kib * 1024 and time.time() < end:
                    w.write(chunk)
                    await w.drain()
                    sent += len(chunk)
                    await asyncio.sleep(0.02)
            except (OSError, ConnectionError):
                pass  # refused mid-head: the answer may be waiting
            line = await asyncio.wait_for(r.readline(), timeout=max(0.1, end - time.time()))
            status = line.decode(errors="replace").split(" ")[1] if line else "closed"
        except (OSError, asyncio.TimeoutError, IndexError, ConnectionError):
            status = "closed"
        statuses[status] = statuses.get(status, 0) + 1
        w.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return statuses


async def streams(ctx, token, n, seconds):
    """n event streams with one token, held; the statuses they got."""
    statuses, writers = {}, []

    async def one():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", PORT, ssl=ctx, server_hostname="localhost")
            w.write(f"GET /v1/events HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n".encode())
            line = await asyncio.wait_for(r.readline(), timeout=10)
            status = line.decode().split(" ")[1] if line else "closed"
            writers.append(w)
        except (OSError, asyncio.TimeoutError, IndexError):
            status = "failed"
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(seconds)
    for w in writers:
        w.close()
    return statuses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(B.ROOT / "target" / "release" / "ccgate"), help="the ccgate to attack")
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    B.ensure_tools(["ccgate"], load="openssl")
    binary = Path(a.binary).resolve()
    out = B.BENCH / "out-attacks"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    key, jwks = B.make_keys(out)
    B.write_configs(out, jwks, {B.ENVOY_AGENT: ("-", "-"), B.NGINX_AGENT: ("-", "-"), B.DIRECT_AGENT: ("-", "-")})
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    ctx.check_hostname = False
    procs = {}
    try:
        B.start_pinned(procs, out, "sim", [str(binary), "sim", "--config", str(out / "sim.toml")], B.LOAD_CORE,
                       B.PORTS["sim"])
        B.start_pinned(procs, out, "ccgate", [str(binary), "serve", "--config", str(out / "ccgate.toml")],
                       B.PROXY_CORE, PORT)
        pid = procs["ccgate"].pid
        token = B.mint(key, [B.CCGATE_AGENTS[0]], 1)[0]
        h = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        B.https(ctx, "POST", f"https://127.0.0.1:{PORT}/v1/session", h)
        print(f"{'attack':8s} {'RSS before':>10s} {'peak':>9s} {'what the attack got':40s} {'client served':>14s}")

        def counters():
            import urllib.request
            text = urllib.request.urlopen(f"http://127.0.0.1:{B.PORTS['ccgate_admin']}/metrics", timeout=5).read().decode()
            want = ("ccgate_connections_shed_total", "ccgate_connections_refused_total")
            return {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l.split(" ")[0] in want}

        def phase(name, attack):
            time.sleep(1)
            before = rss_kib(pid)
            c0 = counters()
            res = {}
            cl = threading.Thread(target=client_requests, args=(ctx, token, a.seconds, res))
            with Sampler(pid) as s:
                cl.start()
                got = asyncio.run(attack())
                cl.join()
            c1 = counters()
            shed, refused = (int(c1.get(k, 0) - c0.get(k, 0)) for k in ("ccgate_connections_shed_total", "ccgate_connections_refused_total"))
            res["failures"]["ccgate shed/refused"] = f"{shed}/{refused}"
            served = f"{res['ok']}/{res['total']}"
            print(f"{name:8s} {before / 1024:8.1f} MiB {s.peak / 1024:6.1f} MiB {str(got):40s} {served:>14s}"
                  f"  {res['failures'] or ''}", flush=True)

        phase("idle", lambda: idle_sockets(530, a.seconds))
        phase("heads", lambda: big_heads(ctx, 400, 390, a.seconds))
        phase("streams", lambda: streams(ctx, token, 600, a.seconds))
        phase("onebyte", lambda: idle_sockets(530, a.seconds, first=b"\x16", source="127.0.0.2"))
        phase("onebyte1", lambda: idle_sockets(530, a.seconds, first=b"\x16"))
        phase("refused", lambda: refused_holders(ctx, 530, a.seconds))
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
