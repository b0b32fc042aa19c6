#!/usr/bin/env python3
"""A fleet (issue 39): N agents over R ccgate replicas on one redis-server, measured.

One simulator, one redis-server and R ccgate release builds (one worker each), all on the
machine's cores as the kernel places them. In order:

1. **Sign-in storm**: N agents sign in, spread over the replicas (`--signin-clients` client
   connections per replica); `signin_s` until all N answered, then until the simulator has
   seen a poll for each.
2. **Idle**: one long-poll wait to settle, then an idle window: Redis commands per agent per
   second (`INFO commandstats`, every command including those scripts run, by command), Redis
   memory per agent (`used_memory` against before the storm), each replica's CPU and RSS.
3. **Takeover**: a trickle of requests (pass-through `queryConfInfos` with the agent's JWT, so
   each one uses the agent's Guid at the gateway) over every agent and every live replica runs
   from here on. The replica holding the most leases is taken out of the trickle and killed
   (SIGKILL); its agents are read from Redis's lease keys before. `takeover_s` runs from the
   kill until the simulator has seen a new poll for every one of them (the simulator's own
   clock: `GET /ccgate-sim/agents`); `takeover_failed_requests` counts the trickle's 5xx for
   those agents meanwhile. The replica is then started again.
4. **Rolling restart**: each replica in turn leaves the trickle (as a load balancer's
   readiness does), gets SIGTERM, hands its agents over, is started again and rejoins once
   `/readyz` answers; the next one goes when every agent the stopped one held has been polled
   again. `restart_s` is the whole restart; `restart_failed_requests` the trickle's 5xx.
5. `extra_signins`, `signouts`: sign-ins beyond the first N and sign-outs, as the simulator
   counted them.

Prints a Markdown table; `--json FILE` keeps the object (bench/RESULTS.md, issue 39).
"""

import argparse
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (keys, tokens, process accounting)

SIM = bench.PORTS["sim"]
REDIS = bench.PORTS["redis"]
PORT, ADMIN = bench.PORTS["replica"], bench.PORTS["replica_admin"]
FIRST_AGENT = 10_000
PREFIX = "ccgate:"
TICK = os.sysconf("SC_CLK_TCK")


# --- a minimal RESP client: INFO, SCAN, MGET are all the benchmark asks --------------------

class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def call(self, *args):
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.s.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def info(self, section):
        out = {}
        for line in self.call("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def commands(self):
        """calls per command since start (commandstats counts the commands scripts run too)."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                fields = dict(x.split("=", 1) for x in v.split(","))
                out[k[len("cmdstat_"):]] = int(fields["calls"])
        return out

    def leases(self):
        """agent → the replica holding its lease."""
        keys, cursor = [], "0"
        while True:
            cursor, batch = self.call("SCAN", cursor, "MATCH", PREFIX + "{a:*}:lease", "COUNT", 1000)
            keys += batch
            if cursor == "0":
                break
        out = {}
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            for k, v in zip(chunk, self.call("MGET", *chunk)):
                if v:
                    out[k[len(PREFIX) + 3:].split("}", 1)[0]] = v.split(" ", 1)[0]
        return out


# --- the processes ---------------------------------------------------------------------------

def write_configs(out, n, replicas, lease_ms, event_wait_ms):
    (out / "sim.toml").write_text(f"""listen = "127.0.0.1:{SIM}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
auth_mode = "dynamic"         # rotating Guids, as production
guid_interval_ms = 60000
event_wait_ms = {event_wait_ms}
max_idle_ms = 86400000
record_requests = false
operation_events = false
default_password = "{bench.PASSWORD}"
""")
    (out / "creds.toml").write_text("".join(
        f'[agents."{FIRST_AGENT + i}"]\npassword = "{bench.PASSWORD}"\nphonenum = "8{FIRST_AGENT + i}"\n'
        for i in range(n)))
    os.chmod(out / "creds.toml", 0o600)
    for r in range(replicas):
        toml = (bench.ccgate_toml(out)
                .replace(f"127.0.0.1:{bench.PORTS['ccgate']}", f"127.0.0.1:{PORT + r}")
                .replace(f"127.0.0.1:{bench.PORTS['ccgate_admin']}", f"127.0.0.1:{ADMIN + r}"))
        toml += f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{REDIS}/0"\nlease_ttl_ms = {lease_ms}\n'
        (out / f"replica-{r}.toml").write_text(toml)


class Fleet:
    def __init__(self, out, binary, replicas, env):
        self.out, self.binary, self.env = out, binary, env
        self.procs = {}
        self.replicas = replicas

    def start(self, name, cmd, port, env=None):
        logf = open(self.out / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(cmd, stdout=logf, stderr=logf, cwd=self.out, start_new_session=True,
                                            env={**os.environ, **(env or {})})
        bench.wait_port(port, timeout=60)

    def start_replica(self, r):
        self.start(f"replica-{r}", [str(self.binary), "serve", "--config", str(self.out / f"replica-{r}.toml")],
                   PORT + r, self.env)
        end = time.time() + 60
        while time.time() < end:
            try:
                if admin_get(r, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"replica {r} not ready")

    def pid(self, r):
        return self.procs[f"replica-{r}"].pid

    def kill(self, r, sig):
        p = self.procs.pop(f"replica-{r}")
        os.killpg(p.pid, sig)
        p.wait(timeout=120)

    def stop(self):
        # SIGKILL: tearing down should not hand 16,000 agents around or sign them out.
        for p in reversed(list(self.procs.values())):
            try:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass


def admin_get(r, path):
    c = http.client.HTTPConnection("127.0.0.1", ADMIN + r, timeout=10)
    try:
        c.request("GET", path)
        resp = c.getresponse()
        return resp.status, resp.read().decode()
    finally:
        c.close()


def metric(r, name):
    total = 0.0
    for line in admin_get(r, "/metrics")[1].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def replica_name(r):
    for line in admin_get(r, "/metrics")[1].splitlines():
        if line.startswith("ccgate_replica_info{"):
            return line.split('replica="', 1)[1].split('"', 1)[0]
    sys.exit(f"replica {r}: no ccgate_replica_info")


def sim_view(ctx):
    c = http.client.HTTPSConnection("127.0.0.1", SIM, context=ctx, timeout=30)
    try:
        c.request("GET", "/ccgate-sim/agents")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def proc_cpu_s(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- load ------------------------------------------------------------------------------------

def sign_in_all(ctx, tokens, replicas, clients):
    """POST /v1/session for every token, spread round-robin over the replicas, `clients`
    keep-alive connections per replica at once (scenario d's storm, on each replica)."""
    import agents  # bench/agents.py
    results = [None] * replicas

    def replica(r):
        results[r] = agents.sign_in_all(ctx, tokens[r::replicas], clients, PORT + r)

    started = time.time()
    threads = [threading.Thread(target=replica, args=(r,)) for r in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - started, [s for _, bad in results for s in bad]


class Trickle:
    """Requests at a steady rate over every agent, each to a live replica picked at random
    (a load balancer's view: a replica leaves the set before it is stopped)."""

    def __init__(self, ctx, agents, tokens, replicas, rate, threads=4):
        self.ctx, self.agents, self.tokens = ctx, agents, tokens
        self.live = set(range(replicas))
        self.rate, self.threads = rate, threads
        self.results = []  # (time, agent, replica, status); status 0: no answer
        self.failures = []  # the first 50 failed requests, with what they answered
        self.generation = {}  # replica → times it left the set
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.workers = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for w in self.workers:
            w.start()

    def stop(self):
        self.stopped.set()
        for w in self.workers:
            w.join()

    def leave(self, r):
        with self.lock:
            self.live.discard(r)
            # A load balancer closes its idle connections to an endpoint it removed; one kept
            # would meet the stopped process's close on its next request.
            self.generation[r] = self.generation.get(r, 0) + 1

    def join(self, r):
        with self.lock:
            self.live.add(r)

    def run(self, i):
        rng = random.Random(i)
        conns = {}
        period = self.threads / self.rate
        next_at = time.time() + rng.random() * period
        while not self.stopped.is_set():
            time.sleep(max(0.0, next_at - time.time()))
            next_at += period
            with self.lock:
                live = sorted(self.live)
                gen = dict(self.generation)
            r = rng.choice(live)
            k = rng.randrange(len(self.agents))
            agent = self.agents[k]
            status, t0 = 0, time.time()
            try:
                c, g = conns.get(r, (None, None))
                if c is None or g != gen.get(r, 0):
                    c = http.client.HTTPSConnection("127.0.0.1", PORT + r, context=self.ctx, timeout=30)
                conns[r] = (c, gen.get(r, 0))
                c.request("POST", f"/agentgateway/resource/agentconf/{agent}/queryconfinfos", body=b"{}",
                          headers={"authorization": f"Bearer {self.tokens[k]}", "content-type": "application/json"})
                resp = c.getresponse()
                body = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                conns.pop(r, None)
                body = repr(e).encode()
            with self.lock:
                self.results.append((t0, agent, r, status))
                if (status >= 500 or status == 0) and len(self.failures) < 50:
                    self.failures.append({"at": t0, "agent": agent, "replica": r, "status": status,
                                          "body": body[:300].decode(errors="replace")})

    def failed(self, since, until, agents=None):
        with self.lock:
            rows = [x for x in self.results if since <= x[0] < until and (agents is None or x[1] in agents)]
        return sum(1 for x in rows if x[3] >= 500 or x[3] == 0), len(rows)


def wait_polled(ctx, agents, after_ms, timeout):
    """Until the simulator has seen a poll for every agent in `agents` that arrived after
    `after_ms`; returns the latest of those arrivals (ms) and the agents still waiting."""
    end = time.time() + timeout
    while True:
        polls = sim_view(ctx)["last_poll_ms"]
        waiting = [a for a in agents if polls.get(a, 0) <= after_ms]
        if not waiting or time.time() > end:
            latest = max((polls.get(a, 0) for a in agents if a not in waiting), default=after_ms)
            return latest, waiting
        time.sleep(0.2)


# --- the run ---------------------------------------------------------------------------------

def run(a):
    out = bench.BENCH / "out-fleet"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    key, _ = bench.make_keys(out)
    write_configs(out, a.agents, a.replicas, a.lease_ms, a.event_wait_ms)
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    env = {
        "CCGATE__SESSIONS__MAX_AGENTS": str(max(10_000, a.agents)),
        # The bench's end kills everything; it never signs 16,000 agents out.
        "CCGATE__SESSIONS__SIGN_OUT_ON_SHUTDOWN": "false",
        **dict(e.split("=", 1) for e in a.env),
    }
    fleet = Fleet(out, Path(a.binary), a.replicas, env)
    res = {"agents": a.agents, "replicas": a.replicas, "lease_ms": a.lease_ms}
    try:
        fleet.start("redis", ["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], REDIS)
        rds = Redis(REDIS)
        fleet.start("sim", [str(a.sim_binary or a.binary), "sim", "--config", str(out / "sim.toml")], SIM)
        for r in range(a.replicas):
            fleet.start_replica(r)
        agents = [str(FIRST_AGENT + i) for i in range(a.agents)]
        bench.log(f"minting {a.agents} tokens…")
        tokens = bench.mint(key, agents, a.agents)
        time.sleep(2)
        mem0 = int(rds.info("memory")["used_memory"])
        rss0 = {r: rss_kib(fleet.pid(r)) for r in range(a.replicas)}

        # 1. The storm.
        bench.log(f"signing {a.agents} agents in through {a.replicas} replicas…")
        storm = time.time()
        took, bad = sign_in_all(ctx, tokens, a.replicas, a.signin_clients)
        if bad:
            sys.exit(f"{len(bad)} sign-ins failed: {sorted(set(bad))}")
        _, waiting = wait_polled(ctx, agents, 0, 120)
        res["signin_s"] = took
        res["signin_polled_s"] = time.time() - storm if not waiting else None
        bench.log(f"all signed in after {took:.1f} s ({len(waiting)} not polled yet)")
        res["signin_commands"] = sum(rds.commands().values())

        # 2. Idle.
        time.sleep(a.event_wait_ms / 1000 + 5)
        pids = {r: fleet.pid(r) for r in range(a.replicas)}
        cmd0, cpu0 = rds.commands(), {r: proc_cpu_s(p) for r, p in pids.items()}
        rcpu0 = rds.info("cpu")
        t0 = time.time()
        time.sleep(a.idle_seconds)
        dt = time.time() - t0
        cmd1, cpu1 = rds.commands(), {r: proc_cpu_s(p) for r, p in pids.items()}
        rcpu1 = rds.info("cpu")
        per_cmd = {k: (cmd1[k] - cmd0.get(k, 0)) / dt for k in cmd1 if cmd1[k] - cmd0.get(k, 0) > 0}
        res["idle_redis_ops_per_s"] = sum(per_cmd.values())
        res["idle_redis_ops_per_agent_s"] = res["idle_redis_ops_per_s"] / a.agents
        res["idle_redis_ops_per_agent_lease"] = res["idle_redis_ops_per_agent_s"] * a.lease_ms / 1000
        res["idle_redis_commands"] = dict(sorted(((k, round(v, 1)) for k, v in per_cmd.items()), key=lambda x: -x[1]))
        rc = sum(float(rcpu1[k]) - float(rcpu0[k]) for k in ("used_cpu_sys", "used_cpu_user"))
        res["idle_redis_cpu_pct"] = 100 * rc / dt
        res["redis_bytes_per_agent"] = (int(rds.info("memory")["used_memory"]) - mem0) / a.agents
        cpu = [100 * (cpu1[r] - cpu0[r]) / dt for r in range(a.replicas)]
        res["idle_cpu_pct_replicas"] = cpu
        res["idle_cpu_pct_per_replica"] = sum(cpu) / len(cpu)
        res["idle_cpu_pct_per_1000_agents"] = sum(cpu) / a.agents * 1000
        res["rss_kib_per_agent"] = sum(rss_kib(pids[r]) - rss0[r] for r in range(a.replicas)) / a.agents
        res["leases"] = [int(metric(r, "ccgate_leases")) for r in range(a.replicas)]
        bench.log(f"idle: {json.dumps({k: v for k, v in res.items() if k != 'idle_redis_commands'})}")
        bench.log(f"idle Redis commands/s: {res['idle_redis_commands']}")

        # 3. Takeover.
        trickle = Trickle(ctx, agents, tokens, a.replicas, a.trickle_rate)
        trickle.start()
        time.sleep(3)
        victim = max(range(a.replicas), key=lambda r: res["leases"][r])
        name = replica_name(victim)
        held = {ag for ag, holder in rds.leases().items() if holder == name}
        bench.log(f"killing replica {victim} ({name}), polling {len(held)} agents…")
        trickle.leave(victim)
        time.sleep(0.5)  # requests already sent to it finish
        killed = time.time()
        fleet.kill(victim, signal.SIGKILL)
        latest, waiting = wait_polled(ctx, held, killed * 1000, 20 * a.lease_ms / 1000)
        res["takeover_agents"] = len(held)
        res["takeover_s"] = (latest / 1000 - killed) if not waiting else None
        res["takeover_unpolled"] = len(waiting)
        time.sleep(2)
        res["takeover_failed_requests"], res["takeover_requests"] = trickle.failed(killed, time.time(), held)
        res["takeover_failed_requests_all"], _ = trickle.failed(killed, time.time())
        bench.log(f"takeover: {len(held)} agents in {res['takeover_s']} s, "
                  f"{res['takeover_failed_requests']} of {res['takeover_requests']} requests failed")
        fleet.start_replica(victim)
        trickle.join(victim)

        # 4. Rolling restart.
        started = time.time()
        steps = []
        for r in range(a.replicas):
            name = replica_name(r)
            held = {ag for ag, holder in rds.leases().items() if holder == name}
            trickle.leave(r)
            time.sleep(0.5)
            t = time.time()
            fleet.kill(r, signal.SIGTERM)
            stopped = time.time()
            fleet.start_replica(r)
            trickle.join(r)
            latest, waiting = wait_polled(ctx, held, t * 1000, 20 * a.lease_ms / 1000)
            steps.append({"replica": r, "agents": len(held), "stop_s": stopped - t,
                          "handover_s": (latest / 1000 - t) if not waiting else None, "unpolled": len(waiting)})
            bench.log(f"restart {r}: {steps[-1]}")
        time.sleep(2)
        res["restart_s"] = time.time() - started
        res["restart_steps"] = steps
        res["restart_failed_requests"], res["restart_requests"] = trickle.failed(started, time.time())
        trickle.stop()
        res["failures"] = trickle.failures
        for x in trickle.failures[:10]:
            bench.log(f"failed: {x}")
        bench.log(f"rolling restart: {res['restart_s']:.1f} s, {res['restart_failed_requests']} of "
                  f"{res['restart_requests']} requests failed")

        # 5. What the gateway saw.
        counts = sim_view(ctx)["counts"]
        res["extra_signins"] = counts.get("login", 0) + counts.get("forceLogin", 0) - a.agents
        res["signouts"] = counts.get("logout", 0) + counts.get("forceLogout", 0)
        res["redis_used_memory"] = int(rds.info("memory")["used_memory"])
        return res
    finally:
        fleet.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=16_000)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--lease-ms", type=int, default=10_000, help="store.lease_ttl_ms (ccgate's default: 10,000)")
    ap.add_argument("--idle-seconds", type=int, default=60, help="the idle window: 60 s holds each agent's Guid rotation once")
    ap.add_argument("--event-wait-ms", type=int, default=10_000, help="the simulator's long-poll wait")
    ap.add_argument("--signin-clients", type=int, default=8, help="client connections per replica in the storm")
    ap.add_argument("--trickle-rate", type=float, default=40.0, help="requests per second over every agent")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every replica")
    ap.add_argument("--binary", default=str(bench.ROOT / "target" / "release" / "ccgate"))
    ap.add_argument("--sim-binary", help="the simulator's build (default --binary): a build before the "
                    "simulator's own view (GET /ccgate-sim/agents) is measured with a newer simulator")
    ap.add_argument("--json")
    a = ap.parse_args()
    for tool in ("redis-server", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool} (bench/fleet.sh installs it)")
    # A connection per agent at the simulator, and the replicas' share each.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.agents + 1_000 > hard:
        sys.exit(f"{a.agents} agents need more than the open-file limit ({hard}) at the simulator")
    res = run(a)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print("| agents | replicas | lease | sign-in of all | Redis cmds / agent / s idle (per lease) | Redis bytes / agent | "
          "Redis CPU idle | idle CPU per replica | RSS KiB / agent | takeover (agents) | failed | restart | failed | "
          "extra sign-ins, sign-outs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v, fmt="{:.1f}": "n/a" if v is None else fmt.format(v)  # noqa: E731
    print(f"| {res['agents']:,} | {res['replicas']} | {res['lease_ms'] / 1000:g} s | {f(res['signin_s'])} s | "
          f"{res['idle_redis_ops_per_agent_s']:.3f} ({res['idle_redis_ops_per_agent_lease']:.2f}) | "
          f"{res['redis_bytes_per_agent']:.0f} | {res['idle_redis_cpu_pct']:.1f} % | {res['idle_cpu_pct_per_replica']:.1f} % | "
          f"{res['rss_kib_per_agent']:.1f} | {f(res['takeover_s'])} s ({res['takeover_agents']:,}) | "
          f"{res['takeover_failed_requests']} / {res['takeover_requests']} | {res['restart_s']:.1f} s | "
          f"{res['restart_failed_requests']} / {res['restart_requests']} | {res['extra_signins']}, {res['signouts']} |")


if __name__ == "__main__":
    main()
