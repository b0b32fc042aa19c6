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
# --paired: the chairs of the second ccgate (the one the N agents are resident in).
PAIRED_AGENTS = [str(a) for a in range(221, 229)]
PROXY_B, ADMIN_B = PROXY + 10, ADMIN + 10


def write_configs(out, n, extra_ccgate, event_wait_ms):
    agents = bench.CCGATE_AGENTS
    (out / "sim.toml").write_text(f"""listen = "127.0.0.1:{SIM}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
auth_mode = "dynamic"         # rotating Guids, as production
guid_interval_ms = 60000
event_wait_ms = {event_wait_ms}         # 10000: the gateway's default long-poll wait
max_idle_ms = 86400000
record_requests = false
operation_events = false
default_password = "{bench.PASSWORD}"
""")
    creds = "".join(f'[agents."{a}"]\npassword = "{bench.PASSWORD}"\nphonenum = "8880{a}"\n'
                    for a in agents + PAIRED_AGENTS + [str(FIRST_AGENT + i) for i in range(n)])
    (out / "creds.toml").write_text(creds)
    os.chmod(out / "creds.toml", 0o600)
    # The same ccgate as scenarios a-c; sessions.max_agents is raised through the environment
    # when N passes it (run_one).
    (out / "ccgate.toml").write_text(bench.ccgate_toml(out) + extra_ccgate)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def user_ticks(pid):
    """utime alone (bench.cpu_ticks adds stime): tells ccgate's own code from the kernel's."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])


def gateway_connections(pid):
    """Established TCP connections from `pid` to the simulator's port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{SIM} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def metric(name):
    """The sum of every series whose name (and label prefix, if given) matches."""
    with open_admin() as r:
        text = r
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") or (name.endswith(",") and line.startswith(name)):
            m = re.match(r"^.* (\S+)$", line)
            if m:
                total += float(m.group(1))
    return total


# Every answered event poll, whatever its retcode.
POLLS = 'ccgate_upstream_responses_total{gateway="default",method="getAgentEvent",'



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


def sign_in_all(ctx, tokens, clients=16, port=PROXY):
    """POST /v1/session for every token, `clients` keep-alive connections at once."""
    chunks = [tokens[i::clients] for i in range(clients)]
    bad = []

    def worker(chunk):
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
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


PERF = os.environ.get("BENCH_PERF")  # a directory: `perf record` each measured scenario (a) run there


def scenario_a(out, seconds, pid=None, label="a", port=PROXY, tokens="tokens-8.txt"):
    """Scenario (a); with `pid`, also ccgate's CPU seconds per 10k requests: req/s alone mixes
    ccgate's cost with the load core's (wrk shares it with the simulator, which answers the
    resident agents' polls too)."""
    before = bench.cpu_ticks(pid) if pid else 0
    perf = None
    if PERF and pid:
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-g", "-p", str(pid),
                                 "-o", f"{PERF}/perf-{label}.data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = bench.wrk(f"https://127.0.0.1:{port}{bench.STOP_PATH}", out / tokens, seconds, 64, {})
    if perf:
        perf.send_signal(2)
        perf.wait()
    if pid and r["requests"]:
        r["cpu10k"] = (bench.cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / r["requests"] * 10_000
    return r


stop_all = bench.stop_all


def run_one(out, binary, key, n, seconds, idle_seconds, extra, env, clients, event_wait_ms):
    write_configs(out, n, extra, event_wait_ms)
    procs = {}
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))

    def start(name, cmd, core, port):
        logf = open(out / f"{name}.log", "w")
        procs[name] = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=logf, stderr=logf, cwd=out,
                                       start_new_session=True, env={**os.environ, **(env if name == "ccgate" else {})})
        bench.wait_port(port)

    # Room for the N agents and the 8 bench agents (the default cap is 10,000).
    env = {"CCGATE__SESSIONS__MAX_AGENTS": str(max(10_000, n + len(bench.CCGATE_AGENTS))), **env}
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
        a8 = scenario_a(out, seconds, pid, f"{n}-8")
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
        time.sleep(event_wait_ms / 1000 + 5)
        conns = gateway_connections(pid)
        before, user_before, polls_before = bench.cpu_ticks(pid), user_ticks(pid), metric(POLLS)
        t0 = time.time()
        time.sleep(idle_seconds)
        idle_cpu = (bench.cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / (time.time() - t0)
        idle_user = (user_ticks(pid) - user_before) / os.sysconf("SC_CLK_TCK") / (time.time() - t0)
        polls = metric(POLLS) - polls_before
        rss = rss_kib(pid)
        wait_sum, wait_count = metric("ccgate_signin_wait_seconds_sum"), metric("ccgate_signin_wait_seconds_count")
        active = metric('ccgate_sessions{gateway="default",state="active"}')
        scenario_a(out, 2)
        an = scenario_a(out, seconds, pid, f"{n}-{n}")
        res = {
            "n": n, "signin_s": took, "signin_wait_mean_ms": 1000 * wait_sum / wait_count if wait_count else 0,
            "active": active, "rss_base_kib": base_rss, "rss_kib": rss,
            "kib_per_agent": (rss - base_rss) / n, "gateway_conns": conns, "gateway_conns_base": base_conns,
            "idle_cpu_pct": 100 * idle_cpu, "idle_user_pct": 100 * idle_user, "idle_polls_per_s": polls / idle_seconds,
            "us_per_poll": 1e6 * idle_cpu * idle_seconds / polls if polls else 0, "a8_rps": a8["rps"], "an_rps": an["rps"],
            "a8_p99_ms": a8["p99"] / 1000, "an_p99_ms": an["p99"] / 1000,
            "a8_cpu10k": a8.get("cpu10k", 0), "an_cpu10k": an.get("cpu10k", 0),
            "errors": a8["errors"] + an["errors"],
        }
        bench.log(f"N={n}: {json.dumps(res)}")
        return res
    finally:
        stop_all(procs)


def pin(pid, core):
    """Moves every thread of `pid` to `core`."""
    subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], check=True, stdout=subprocess.DEVNULL)


def run_paired(out, binary, key, n, seconds, rounds, env, clients, event_wait_ms):
    """Scenario (a) with 8 agents vs with N resident, measured in alternating rounds on two
    ccgate processes that are identical but for the N agents signed into the second (B).
    Wall-clock drift on a shared VM moves over minutes, larger than the effect; rounds a few
    seconds apart cancel it. The measured process is on the proxy core, the other is moved to
    the load core for the round (B keeps polling its N agents there)."""
    write_configs(out, n, "", event_wait_ms)
    (out / "ccgate-b.toml").write_text((out / "ccgate.toml").read_text()
                                       .replace(f"127.0.0.1:{PROXY}", f"127.0.0.1:{PROXY_B}")
                                       .replace(f"127.0.0.1:{ADMIN}", f"127.0.0.1:{ADMIN_B}"))
    procs = {}
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    env = {"CCGATE__SESSIONS__MAX_AGENTS": str(max(10_000, n + 8)), **env}

    def start(name, cmd, core, port):
        logf = open(out / f"{name}.log", "w")
        procs[name] = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=logf, stderr=logf, cwd=out,
                                       start_new_session=True, env={**os.environ, **(env if name != "sim" else {})})
        bench.wait_port(port)

    try:
        start("sim", [str(binary), "sim", "--config", str(out / "sim.toml")], bench.LOAD_CORE, SIM)
        start("a", [str(binary), "serve", "--config", str(out / "ccgate.toml")], bench.PROXY_CORE, PROXY)
        start("b", [str(binary), "serve", "--config", str(out / "ccgate-b.toml")], bench.LOAD_CORE, PROXY_B)
        for port, agents, tf in [(PROXY, bench.CCGATE_AGENTS, "tokens-8.txt"), (PROXY_B, PAIRED_AGENTS, "tokens-8b.txt")]:
            for tok in bench.mint(key, agents, len(agents)):
                h = {"authorization": f"Bearer {tok}", "content-type": "application/json"}
                bench.https(ctx, "POST", f"https://127.0.0.1:{port}/v1/session", h)
                _, _, b = bench.https(ctx, "POST", f"https://127.0.0.1:{port}/v1/conference", h, b'{"memberNum":3}')
                assert json.loads(b)["chairperson"] is True, b
            (out / tf).write_text("\n".join(bench.mint(key, agents, 8)) + "\n")
        bench.log(f"paired N={n}: signing {n} agents in through B…")
        _, bad = sign_in_all(ctx, bench.mint(key, [str(FIRST_AGENT + i) for i in range(n)], n), clients, PROXY_B)
        if bad:
            sys.exit(f"{len(bad)} sign-ins failed: {sorted(set(bad))}")
        time.sleep(event_wait_ms / 1000 + 5)
        sides = {"a": (procs["a"].pid, PROXY, "tokens-8.txt"), "b": (procs["b"].pid, PROXY_B, "tokens-8b.txt")}
        res = {"a": [], "b": []}
        for r in range(rounds):
            for name in (["a", "b"] if r % 2 == 0 else ["b", "a"]):
                other = "b" if name == "a" else "a"
                pid, port, tf = sides[name]
                pin(sides[other][0], bench.LOAD_CORE)
                pin(pid, bench.PROXY_CORE)
                scenario_a(out, 1, port=port, tokens=tf)  # warm-up on the new core
                m = scenario_a(out, seconds, pid, f"paired-{name}-{r}", port=port, tokens=tf)
                res[name].append(m)
                bench.log(f"round {r} {name}: {m['rps']:.0f} req/s, {m.get('cpu10k', 0):.3f} CPU-s/10k, errors {m['errors']}")
        return res
    finally:
        stop_all(procs)


def median(v):
    v = sorted(v)
    return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="1000,10000")
    ap.add_argument("--seconds", type=int, default=10, help="each scenario (a) run")
    ap.add_argument("--idle-seconds", type=int, default=30, help="the idle CPU window")
    ap.add_argument("--ccgate-extra", default="", help="TOML appended to ccgate's config (before/after runs)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for ccgate (CCGATE__SESSIONS__SIGNIN_CONCURRENCY=64)")
    ap.add_argument("--binary", default=str(bench.ROOT / "target" / "release" / "ccgate"))
    ap.add_argument("--signin-clients", type=int, default=16, help="client connections signing agents in at once")
    ap.add_argument("--event-wait-ms", type=int, default=10_000,
                    help="the simulator's long-poll wait; shorter multiplies the polls, to measure their cost")
    ap.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                    help="scenario (a) only: 8 agents vs N resident in alternating rounds on two processes")
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
    # Tearing down should not sign 10,000 agents out one by one.
    env = {"CCGATE__SESSIONS__SIGN_OUT_ON_SHUTDOWN": "false", **dict(e.split("=", 1) for e in a.env)}
    if a.paired:
        n = int(a.agents.split(",")[-1])
        res = run_paired(out, Path(a.binary), key, n, a.seconds, a.paired, env, a.signin_clients, a.event_wait_ms)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2))
        rps = [b["rps"] / x["rps"] for x, b in zip(res["a"], res["b"])]
        cpu = [b["cpu10k"] / x["cpu10k"] for x, b in zip(res["a"], res["b"])]
        print(f"| agents resident | rounds | (a) req/s, 8 agents → N resident (median) | ratio per round | "
              f"ccgate CPU s / 10k req (median) | ratio per round |")
        print("|---|---|---|---|---|---|")
        print(f"| {n:,} | {a.paired} | {median([x['rps'] for x in res['a']]):.0f} → {median([x['rps'] for x in res['b']]):.0f} "
              f"(**{median(rps):.2f}x**) | {', '.join(f'{x:.2f}' for x in rps)} | "
              f"{median([x['cpu10k'] for x in res['a']]):.3f} → {median([x['cpu10k'] for x in res['b']]):.3f} "
              f"(**{median(cpu):.2f}x**) | {', '.join(f'{x:.2f}' for x in cpu)} |")
        if any(x["errors"] for side in res.values() for x in side):
            sys.exit("errors during the runs")
        return
    results = [run_one(out, Path(a.binary), key, int(n), a.seconds, a.idle_seconds, a.ccgate_extra, env, a.signin_clients,
                       a.event_wait_ms)
               for n in a.agents.split(",")]
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    print("| agents | sign-in of all (s) | mean wait for a turn (ms) | RSS before → after (MiB) | KiB per agent | "
          "gateway connections | idle CPU, of it user (% of a core) | polls/s, µs CPU per poll | (a) req/s, 8 agents → N resident | p99 ms | "
          "(a) ccgate CPU s / 10k req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['signin_s']:.1f} | {r['signin_wait_mean_ms']:.1f} | "
              f"{r['rss_base_kib'] / 1024:.1f} → {r['rss_kib'] / 1024:.1f} | {r['kib_per_agent']:.1f} | "
              f"{r['gateway_conns']:,} | {r['idle_cpu_pct']:.1f}, {r['idle_user_pct']:.1f} | {r['idle_polls_per_s']:.0f}, {r['us_per_poll']:.0f} | "
              f"{r['a8_rps']:.0f} → {r['an_rps']:.0f} "
              f"({r['an_rps'] / r['a8_rps']:.2f}x) | {r['a8_p99_ms']:.2f} → {r['an_p99_ms']:.2f} | "
              f"{r['a8_cpu10k']:.3f} → {r['an_cpu10k']:.3f} |")
    if any(r["errors"] for r in results):
        sys.exit("scenario (a) had errors")


if __name__ == "__main__":
    main()
