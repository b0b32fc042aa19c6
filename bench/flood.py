#!/usr/bin/env python3
"""A flood of distinct forged tokens (issue 23): what it costs ccgate, and what valid requests
see meanwhile. ccgate runs as in bench/run.sh (pinned to core 0, one worker, RS256); wrk floods
it from core 1 with tokens whose signatures are random (each one new to ccgate, so each costs
a signature check), while a prober on core 1 sends stop requests one at a time: with a token
ccgate verified before, and with a valid token it has never seen. Phases:

  quiet    the prober alone
  flood    the prober beside wrk's distinct forged tokens
  repeat   the prober beside wrk looping one forged token (refused from memory)

Prints one line per phase: ccgate's CPU (% of its core) and CPU per flood request, wrk's
request rate, and the prober's p50/p99 for known and for new tokens.
  bench/flood.sh [--seconds 10] [--connections 64] [--binary PATH]
"""

import argparse
import base64
import os
import random
import ssl
import sys
import threading
import time
import http.client
import shutil
from pathlib import Path

import bench as B
from agents import stop_all


def forge(token: str, rng: random.Random) -> str:
    head, payload, sig = token.split(".")
    raw = bytes(rng.getrandbits(8) for _ in range(len(base64.urlsafe_b64decode(sig + "=="))))
    return f"{head}.{payload}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"


def prober(ctx, known: str, fresh: list, stop: threading.Event, out: dict):
    """Stop requests one at a time on one keep-alive connection, alternating a known token and
    a new one; latencies in ms by kind."""
    conn = http.client.HTTPSConnection("127.0.0.1", B.PORTS["ccgate"], context=ctx, timeout=15)
    lat = {"known": [], "new": []}
    bad = 0
    i = 0
    while not stop.is_set() and i < len(fresh):
        for kind, tok in (("known", known), ("new", fresh[i])):
            t0 = time.perf_counter()
            try:
                conn.request("POST", B.STOP_PATH, body=b"{}", headers={"authorization": f"Bearer {tok}",
                                                                        "content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPSConnection("127.0.0.1", B.PORTS["ccgate"], context=ctx, timeout=15)
                status = 0
            lat[kind].append((time.perf_counter() - t0) * 1000)
            if status != 200:
                bad += 1
        i += 1
        time.sleep(0.01)
    out.update(lat=lat, bad=bad, total=2 * i)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))] if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--binary", default=str(B.ROOT / "target" / "release" / "ccgate"), help="the ccgate to measure")
    a = ap.parse_args()
    B.ensure_tools(["ccgate"])
    binary = Path(a.binary).resolve()
    out = B.BENCH / "out-flood"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "bench.lua").write_text(B.WRK_LUA)
    key, jwks = B.make_keys(out)
    B.write_configs(out, jwks, {B.ENVOY_AGENT: ("-", "-"), B.NGINX_AGENT: ("-", "-"), B.DIRECT_AGENT: ("-", "-")})
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    procs = {}

    def start(name, cmd, core, port):
        B.start_pinned(procs, out, name, cmd, core, port)

    try:
        start("sim", [str(binary), "sim", "--config", str(out / "sim.toml")], B.LOAD_CORE, B.PORTS["sim"])
        start("ccgate", [str(binary), "serve", "--config", str(out / "ccgate.toml")], B.PROXY_CORE, B.PORTS["ccgate"])
        agent = B.CCGATE_AGENTS[0]
        known = B.mint(key, [agent], 1)[0]
        h = {"authorization": f"Bearer {known}", "content-type": "application/json"}
        B.https(ctx, "POST", f"https://127.0.0.1:{B.PORTS['ccgate']}/v1/session", h)
        B.https(ctx, "POST", f"https://127.0.0.1:{B.PORTS['ccgate']}/v1/conference", h, b'{"memberNum":3}')
        rng = random.Random(23)
        B.log("minting tokens…")
        forged = [forge(t, rng) for t in B.mint(key, B.CCGATE_AGENTS, 20_000)]
        (out / "forged.txt").write_text("\n".join(forged) + "\n")
        (out / "forged-1.txt").write_text(forged[0] + "\n")
        per_phase = a.seconds * 110  # the prober's new tokens: ~100 a second at most
        url = f"https://127.0.0.1:{B.PORTS['ccgate']}{B.STOP_PATH}"
        pid = procs["ccgate"].pid
        tck = os.sysconf("SC_CLK_TCK")
        print(f"{'phase':8s} {'ccgate CPU':>10s} {'flood req/s':>11s} {'µs CPU/flood req':>16s} "
              f"{'known p50/p99 ms':>17s} {'new p50/p99 ms':>15s} {'prober errors':>13s}")
        for phase, tokens in (("quiet", None), ("flood", out / "forged.txt"), ("repeat", out / "forged-1.txt")):
            fresh = B.mint(key, [agent], per_phase)
            stop, res = threading.Event(), {}
            t = threading.Thread(target=prober, args=(ctx, known, fresh, stop, res))
            before, t0 = B.cpu_ticks(pid), time.time()
            t.start()
            w = None
            if tokens:
                w = B.wrk(url, tokens, a.seconds, a.connections, {})
            else:
                time.sleep(a.seconds)
            stop.set()
            t.join()
            elapsed = time.time() - t0
            cpu = (B.cpu_ticks(pid) - before) / tck
            lat = res["lat"]
            rps = w["rps"] if w else 0
            per = (cpu / (w["requests"]) * 1e6) if w and w["requests"] else float("nan")
            print(f"{phase:8s} {cpu / elapsed * 100:9.0f}% {rps:11.0f} {per:16.1f} "
                  f"{pct(lat['known'], 50):7.2f}/{pct(lat['known'], 99):<8.2f} "
                  f"{pct(lat['new'], 50):6.2f}/{pct(lat['new'], 99):<7.2f} {res['bad']:6d} of {res['total']}", flush=True)
    finally:
        stop_all(procs)

if __name__ == "__main__":
    sys.exit(main())
