#!/usr/bin/env python3
"""Scenario d: what one ccgate costs as agents grow (issue 15).

For each N (default 1,000 and 10,000) on a fresh simulator and ccgate (ccgate pinned to core 0
with one worker, the simulator and the load on core 1, as bench.py does):

1. 8 bench agents are signed in and made chair; scenario (a) runs (keep-alive, 64
   connections, stopVoiceToConf): the 8-agent figure.
2. N more agents sign in through ccgate (`--signin-clients` connections at once, 16 by
   default: a storm; ccgate paces the gateway sign-ins itself); the time until all N answered
   and the mean wait for a turn at the gateway are measured.
3. Once every poller is at the gateway: ccgate's RSS (VmRSS) against step 1's, connections
   ccgate holds to the gateway, and ccgate's CPU over an idle window (the simulator's default
   10 s long-poll wait and 60 s Guid rotation, so each agent polls as in production).
4. Scenario (a) again with N resident.

Writes a Markdown table to stdout; `--json FILE` keeps the raw numbers.
"""

import argparse
import http.client
import json
import os
import re
import resource
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: keys, tokens, wrk, process accounting)

SIM, PROXY, ADMIN = bench.PORTS["sim"], bench.PORTS["ccgate"], bench.PORTS["ccgate_admin"]
FIRST_AGENT = 10_000  # agents 10000.. (the bench agents are 201..208)


def write_configs(out, n, extra_ccgate):
    agents = bench.CCGATE_AGENTS
    (out / "sim.toml").write_text(f"""listen = "127.0.0.1:{SIM}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
auth_mode = "dynamic"         # rotating Guids, as production
guid_interval_ms = 60000
event_wait_ms = 10000         # the gateway's default long-poll wait
max_idle_ms = 86400000
record_requests = false
operation_events = false
default_password = "{bench.PASSWORD}"
""")
    creds = "".join(f'[agents."{a}"]\npassword = "{bench.PASSWORD}"\nphonenum = "8880{a}"\n'
                    for a in agents + [str(FIRST_AGENT + i) for i in range(n)])
    (out / "creds.toml").write_text(creds)
    os.chmod(out / "creds.toml", 0o600)
    (out / "ccgate.toml").write_text(f"""[server]
listen = "127.0.0.1:{PROXY}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
worker_threads = 1
drain_delay_ms = 0
[admin]
listen = "127.0.0.1:{ADMIN}"
[gateway]
url = "https://127.0.0.1:{SIM}"
ca_file = "{out}/ca.pem"
[auth]
jwks_file = "{out}/jwks.json"
issuer = "{bench.ISSUER}"
audience = "{bench.AUDIENCE}"
algorithms = ["RS256"]
[credentials]
file = "{out}/creds.toml"
[sessions]
idle_timeout_ms = 0
sign_out_on_shutdown = false
[log]
level = "warn"
[rate_limits]
[[rate_limits.limit]]
method = "stopVoiceToConf"
scope = "agent"
rate = 1000000.0
burst = 1000000
""" + extra_ccgate)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gateway_connections(pid):
    """Established TCP connections from `pid` to the simulator's port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{SIM} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def metric(name):
    with open_admin() as r:
        text = r
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            m = re.match(r"^\S+ (\S+)$", line)
            if m:
                return float(m.group(1))
    return 0.0


def open_admin():
    class Ctx:
        def __enter__(self):
            c = http.client.HTTPConnection("127.0.0.1", ADMIN, timeout=10)
            c.request("GET", "/metrics")
            self.text = c.getresponse().read().decode()
            c.close()
            return self.text

        def __exit__(self, *a):
            return False
    return Ctx()


def sign_in_all(ctx, tokens, clients=16):
    """POST /v1/session for every token, `clients` keep-alive connections at once."""
    chunks = [tokens[i::clients] for i in range(clients)]
    bad = []

    def worker(chunk):
        c = http.client.HTTPSConnection("127.0.0.1", PROXY, context=ctx, timeout=120)
        for t in chunk:
            c.request("POST", "/v1/session", headers={"authorization": f"Bearer {t}"})
            r = c.getresponse()
            r.read()
            if r.status not in (200, 201):
                bad.append(r.status)
        c.close()

    started = time.time()
    threads = [threading.Thread(target=worker, args=(ch,)) for ch in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - started, bad


def scenario_a(out, seconds, pid=None):
    """Scenario (a); with `pid`, also ccgate's CPU seconds per 10k requests: req/s alone mixes
    ccgate's cost with the load core's (wrk shares it with the simulator, which answers the
    resident agents' polls too)."""
    before = bench.cpu_ticks(pid) if pid else 0
    r = bench.wrk(f"https://127.0.0.1:{PROXY}{bench.STOP_PATH}", out / "tokens-8.txt", seconds, 64, {})
    if pid and r["requests"]:
        r["cpu10k"] = (bench.cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / r["requests"] * 10_000
    return r


def run_one(out, binary, key, n, seconds, idle_seconds, extra, env, clients):
    write_configs(out, n, extra)
    procs = {}
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))

    def start(name, cmd, core, port):
        logf = open(out / f"{name}.log", "w")
        procs[name] = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=logf, stderr=logf, cwd=out,
                                       start_new_session=True, env={**os.environ, **(env if name == "ccgate" else {})})
        bench.wait_port(port)

    try:
        start("sim", [str(binary), "sim", "--config", str(out / "sim.toml")], bench.LOAD_CORE, SIM)
        start("ccgate", [str(binary), "serve", "--config", str(out / "ccgate.toml")], bench.PROXY_CORE, PROXY)
        pid = procs["ccgate"].pid
        for agent, tok in zip(bench.CCGATE_AGENTS, bench.mint(key, bench.CCGATE_AGENTS, len(bench.CCGATE_AGENTS))):
            h = {"authorization": f"Bearer {tok}", "content-type": "application/json"}
            bench.https(ctx, "POST", f"https://127.0.0.1:{PROXY}/v1/session", h)
            _, _, b = bench.https(ctx, "POST", f"https://127.0.0.1:{PROXY}/v1/conference", h, b'{"memberNum":3}')
            assert json.loads(b)["chairperson"] is True, b
        (out / "tokens-8.txt").write_text("\n".join(bench.mint(key, bench.CCGATE_AGENTS, 8)) + "\n")
        scenario_a(out, 2)  # warm-up
        a8 = scenario_a(out, seconds, pid)
        bench.log(f"N={n}: scenario a with 8 agents: {a8['rps']:.0f} req/s, p99 {a8['p99'] / 1000:.2f} ms")
        time.sleep(2)
        base_rss = rss_kib(pid)
        base_conns = gateway_connections(pid)

        agents = [str(FIRST_AGENT + i) for i in range(n)]
        bench.log(f"N={n}: minting {n} tokens…")
        tokens = bench.mint(key, agents, n)
        bench.log(f"N={n}: signing {n} agents in…")
        took, bad = sign_in_all(ctx, tokens, clients)
        if bad:
            sys.exit(f"{len(bad)} sign-ins failed: {sorted(set(bad))}")
        bench.log(f"N={n}: all signed in after {took:.1f} s")
        # Every poller at the gateway: one poll round (the long-poll wait) and a margin.
        time.sleep(15)
        conns = gateway_connections(pid)
        before = bench.cpu_ticks(pid)
        t0 = time.time()
        time.sleep(idle_seconds)
        idle_cpu = (bench.cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / (time.time() - t0)
        rss = rss_kib(pid)
        wait_sum, wait_count = metric("ccgate_signin_wait_seconds_sum"), metric("ccgate_signin_wait_seconds_count")
        active = metric('ccgate_sessions{state="active"}')
        scenario_a(out, 2)
        an = scenario_a(out, seconds, pid)
        res = {
            "n": n, "signin_s": took, "signin_wait_mean_ms": 1000 * wait_sum / wait_count if wait_count else 0,
            "active": active, "rss_base_kib": base_rss, "rss_kib": rss,
            "kib_per_agent": (rss - base_rss) / n, "gateway_conns": conns, "gateway_conns_base": base_conns,
            "idle_cpu_pct": 100 * idle_cpu, "a8_rps": a8["rps"], "an_rps": an["rps"],
            "a8_p99_ms": a8["p99"] / 1000, "an_p99_ms": an["p99"] / 1000,
            "a8_cpu10k": a8.get("cpu10k", 0), "an_cpu10k": an.get("cpu10k", 0),
            "errors": a8["errors"] + an["errors"],
        }
        bench.log(f"N={n}: {json.dumps(res)}")
        return res
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="1000,10000")
    ap.add_argument("--seconds", type=int, default=10, help="each scenario (a) run")
    ap.add_argument("--idle-seconds", type=int, default=30, help="the idle CPU window")
    ap.add_argument("--ccgate-extra", default="", help="TOML appended to ccgate's config (before/after runs)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for ccgate (CCGATE__SESSIONS__MAX_AGENTS=20000)")
    ap.add_argument("--binary", default=str(bench.ROOT / "target" / "release" / "ccgate"))
    ap.add_argument("--signin-clients", type=int, default=16, help="client connections signing agents in at once")
    ap.add_argument("--json")
    a = ap.parse_args()
    bench.ensure_tools(["ccgate"], "wrk")
    # 10,000 agents: a gateway connection each, in ccgate and in the simulator.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = bench.BENCH / "out-agents"
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "bench.lua").write_text(bench.WRK_LUA)
    key, _ = bench.make_keys(out)
    env = dict(e.split("=", 1) for e in a.env)
    results = [run_one(out, Path(a.binary), key, int(n), a.seconds, a.idle_seconds, a.ccgate_extra, env, a.signin_clients)
               for n in a.agents.split(",")]
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    print("| agents | sign-in of all (s) | mean wait for a turn (ms) | RSS before → after (MiB) | KiB per agent | "
          "gateway connections | idle CPU (% of a core) | (a) req/s, 8 agents → N resident | p99 ms | "
          "(a) ccgate CPU s / 10k req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['signin_s']:.1f} | {r['signin_wait_mean_ms']:.1f} | "
              f"{r['rss_base_kib'] / 1024:.1f} → {r['rss_kib'] / 1024:.1f} | {r['kib_per_agent']:.1f} | "
              f"{r['gateway_conns']:,} | {r['idle_cpu_pct']:.1f} | {r['a8_rps']:.0f} → {r['an_rps']:.0f} "
              f"({r['an_rps'] / r['a8_rps']:.2f}x) | {r['a8_p99_ms']:.2f} → {r['an_p99_ms']:.2f} | "
              f"{r['a8_cpu10k']:.3f} → {r['an_cpu10k']:.3f} |")
    if any(r["errors"] for r in results):
        sys.exit("scenario (a) had errors")


if __name__ == "__main__":
    main()
