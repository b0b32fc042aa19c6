#!/usr/bin/env python3
"""ccgate beside Envoy and nginx on the same work, on loopback.

Systems (each proxy pinned to core 0 with one worker; wrk and the simulator on core 1):
  direct  wrk -> simulator stopvoicetoconf with a Guid (the physical limit)
  ccgate  wrk -> ccgate POST /v1/conference/announcement/stop, RS256 JWTs, limits on but high
  envoy   wrk -> Envoy jwt_authn + local_ratelimit + fixed Guid header -> simulator (TLS)
  nginx   wrk -> nginx TLS in, TLS out, keep-alive upstream, no auth (the floor of proxy cost)
  redis   wrk -> one of three ccgate replicas sharing agents through redis-server (issue 11):
          the same work as ccgate, its limits' buckets and session records in Redis. The
          other two replicas and Redis run on the load core.

Scenarios: (a) keep-alive, 64 connections, one token per agent; (b) a new TLS connection per
request (Connection: close); (c) token churn, 10k distinct tokens. Rounds are paired and
alternate the order (A B C D, then D C B A, ...), so drift and position hit all alike; the
report gives each figure's median over the rounds with its spread (min-max), and each ratio
as the median of the per-round ratios, since only same-round comparisons hold still on a
shared VM. See bench/README.md.
"""

import argparse
import json
import os
import shutil
import signal
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
import ssl
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ISSUER = "https://idp.bench.invalid"
AUDIENCE = "ccgate-bench"
PASSWORD = "bench-cti-password"
CCGATE_AGENTS = [str(a) for a in range(201, 209)]  # signed in through ccgate
REDIS_AGENTS = [str(a) for a in range(211, 219)]  # signed in through the replicas on Redis
ENVOY_AGENT, NGINX_AGENT, DIRECT_AGENT = "299", "298", "297"  # signed in directly at the sim
PORTS = {"sim": 18043, "ccgate": 18443, "ccgate_admin": 19464, "envoy": 18444, "envoy_admin": 19901, "nginx": 18445,
         "redis": 16379, "replica": 18450, "replica_admin": 19470}
REPLICAS = 3
PROXY_CORE, LOAD_CORE = "0", "1"
STOP_PATH = "/v1/conference/announcement/stop"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


# --- set-up -------------------------------------------------------------------------------

def ensure_tools(systems, load="wrk"):
    need = [load, "openssl", "taskset"]
    if "nginx" in systems:
        need.append("nginx")
    if "envoy" in systems:
        need.append("envoy")
    missing = [t for t in need if not shutil.which(t)]
    if missing:
        sys.exit(f"missing tools: {missing} (bench/run.sh installs wrk, nginx and envoy when missing; oha: cargo install oha)")
    try:
        import jwt  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError:
        sys.exit("missing Python packages: pip install pyjwt cryptography")


def make_keys(out: Path):
    """CA + server cert for 127.0.0.1 (openssl), and an RS256 key (cryptography)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives import serialization
    import base64

    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=bench CA", "-keyout", str(out / "ca-key.pem"), "-out", str(out / "ca.pem"),
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(out / "server-key.pem"), "-out", str(out / "server.csr")])
    (out / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(out / "server.csr"), "-CA", str(out / "ca.pem"), "-CAkey",
         str(out / "ca-key.pem"), "-CAcreateserial", "-days", "2", "-out", str(out / "server.pem"),
         "-extfile", str(out / "ext.cnf")])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (out / "jwt-key.pem").write_bytes(pem)
    n = key.public_key().public_numbers().n
    b64 = lambda i: base64.urlsafe_b64encode(i.to_bytes((i.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "bench-rs256", "n": b64(n), "e": "AQAB"}]}
    (out / "jwks.json").write_text(json.dumps(jwks))
    return key, jwks


def mint(key, agents, count):
    """`count` RS256 tokens spread over `agents` (distinct by jti)."""
    import jwt
    now = int(time.time())
    toks = []
    for i in range(count):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "agent_id": agents[i % len(agents)], "iat": now, "nbf": now,
                  "exp": now + 3600, "jti": f"bench-{i}"}
        toks.append(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench-rs256"}))
    return toks


def ccgate_toml(out: Path):
    """ccgate's config for every scenario: one worker, RS256 tokens, limits on but never
    refusing. Scenario d (bench/agents.py) runs the same config."""
    return f"""[server]
listen = "127.0.0.1:{PORTS['ccgate']}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
worker_threads = 1
drain_delay_ms = 0
[admin]
listen = "127.0.0.1:{PORTS['ccgate_admin']}"
[gateway]
url = "https://127.0.0.1:{PORTS['sim']}"
ca_file = "{out}/ca.pem"
[auth]
jwks_file = "{out}/jwks.json"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
algorithms = ["RS256"]
[credentials]
file = "{out}/creds.toml"
[sessions]
idle_timeout_ms = 0
[log]
level = "warn,ccgate::audit=off"   # no per-request access or audit line, as Envoy and nginx run without access logs
[rate_limits]
# On, with the same headroom Envoy's local_ratelimit gets: nothing is refused.
[[rate_limits.limit]]
method = "stopVoiceToConf"
scope = "agent"
rate = 1000000.0
burst = 1000000
[[rate_limits.limit]]
method = "stopVoiceToConf"
scope = "global"
rate = 1000000.0
burst = 1000000
"""


def write_configs(out: Path, jwks, direct_sessions):
    agents = {a: PASSWORD for a in CCGATE_AGENTS + REDIS_AGENTS + [ENVOY_AGENT, NGINX_AGENT, DIRECT_AGENT]}
    sim = f"""listen = "127.0.0.1:{PORTS['sim']}"
tls_cert = "{out}/server.pem"
tls_key = "{out}/server-key.pem"
auth_mode = "static"          # Envoy and nginx inject a fixed Guid: they cannot follow rotation
max_idle_ms = 86400000
event_wait_ms = 10000
record_requests = false
operation_events = false      # "events off or cheap": no AgentConf_StopVoice per request
[agents]
""" + "".join(f'"{a}" = "{p}"\n' for a, p in agents.items())
    (out / "sim.toml").write_text(sim)
    creds = "".join(f'[agents."{a}"]\npassword = "{PASSWORD}"\nphonenum = "8880{a}"\n' for a in CCGATE_AGENTS)
    (out / "creds.toml").write_text(creds)
    os.chmod(out / "creds.toml", 0o600)
    ccgate = ccgate_toml(out)
    (out / "ccgate.toml").write_text(ccgate)
    rcreds = "".join(f'[agents."{a}"]\npassword = "{PASSWORD}"\nphonenum = "8880{a}"\n' for a in REDIS_AGENTS)
    (out / "creds-redis.toml").write_text(rcreds)
    os.chmod(out / "creds-redis.toml", 0o600)
    for i in range(REPLICAS):
        replica = (ccgate
                   .replace(f"127.0.0.1:{PORTS['ccgate']}", f"127.0.0.1:{PORTS['replica'] + i}")
                   .replace(f"127.0.0.1:{PORTS['ccgate_admin']}", f"127.0.0.1:{PORTS['replica_admin'] + i}")
                   .replace(f"{out}/creds.toml", f"{out}/creds-redis.toml"))
        replica += f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{PORTS["redis"]}/0"\n'
        (out / f"replica-{i}.toml").write_text(replica)
    eg, ec = direct_sessions[ENVOY_AGENT]
    envoy = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": PORTS["envoy_admin"]}}},
        "static_resources": {
            "listeners": [{
                "name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": PORTS["envoy"]}},
                "filter_chains": [{
                    "transport_socket": {"name": "tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [{
                            "certificate_chain": {"filename": f"{out}/server.pem"},
                            "private_key": {"filename": f"{out}/server-key.pem"}}]}}},
                    "filters": [{"name": "hcm", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "in", "codec_type": "AUTO",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                            "match": {"path": STOP_PATH},
                            "route": {"cluster": "sim", "regex_rewrite": {"pattern": {"regex": ".*"},
                                      "substitution": f"/agentgateway/resource/agentconf/{ENVOY_AGENT}/stopvoicetoconf"}},
                            "request_headers_to_add": [
                                {"header": {"key": "guid", "value": eg}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                                {"header": {"key": "cookie", "value": ec}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                            "request_headers_to_remove": ["authorization"]}]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.jwt_authn", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                                "providers": {"app": {"issuer": ISSUER, "audiences": [AUDIENCE],
                                                      # The same cache size ccgate gets (auth.cache_size).
                                                      "jwt_cache_config": {"jwt_cache_size": 10000},
                                                      "local_jwks": {"inline_string": json.dumps(jwks)}}},
                                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "app"}}]}},
                            {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                                "stat_prefix": "rl",
                                "token_bucket": {"max_tokens": 1000000, "tokens_per_fill": 1000000, "fill_interval": "1s"},
                                "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
                                "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"}}},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [{
                "name": "sim", "type": "STATIC", "connect_timeout": "3s",
                "load_assignment": {"cluster_name": "sim", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": PORTS["sim"]}}}}]}]},
                "transport_socket": {"name": "tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "127.0.0.1",
                    "common_tls_context": {"validation_context": {"trusted_ca": {"filename": f"{out}/ca.pem"}}}}}}]}}
    (out / "envoy.json").write_text(json.dumps(envoy))
    ng, nc = direct_sessions[NGINX_AGENT]
    nginx = f"""daemon off;
worker_processes 1;
error_log {out}/nginx-error.log warn;
pid {out}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {out}/nginx-tmp;
  proxy_temp_path {out}/nginx-tmp;
  upstream sim {{ server 127.0.0.1:{PORTS['sim']}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl;
    ssl_certificate {out}/server.pem;
    ssl_certificate_key {out}/server-key.pem;
    # nginx before 1.23.4 leaves TLS 1.3 out of its defaults; every system must handshake alike.
    ssl_protocols TLSv1.2 TLSv1.3;
    location = {STOP_PATH} {{
      proxy_pass https://sim/agentgateway/resource/agentconf/{NGINX_AGENT}/stopvoicetoconf;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_set_header Guid "{ng}";
      proxy_set_header Cookie "{nc}";
      proxy_ssl_trusted_certificate {out}/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }}
  }}
}}
"""
    (out / "nginx-tmp").mkdir(exist_ok=True)
    (out / "nginx.conf").write_text(nginx)


def https(ctx, method, url, headers=None, body=None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
        return r.status, r.headers, r.read()


def start_pinned(procs, out, name, cmd, core, port):
    """Starts `cmd` pinned to `core` in a process group of its own, its output in
    out/NAME.log, and waits until it listens on `port`."""
    logf = open(out / f"{name}.log", "w")
    procs[name] = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=logf, stderr=logf, cwd=out,
                                   start_new_session=True)
    wait_port(port)


def wait_port(port, timeout=20):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def direct_session(ctx, agent):
    """Signs `agent` in at the simulator and makes it chair; returns (guid, cookie)."""
    base = f"https://127.0.0.1:{PORTS['sim']}/agentgateway/resource"
    body = json.dumps({"password": PASSWORD, "phonenum": "1"}).encode()
    _, h, b = https(ctx, "PUT", f"{base}/onlineagent/{agent}", {"content-type": "application/json"}, body)
    assert json.loads(b)["retcode"] == "0", b
    guid = h.get("set-guid").split("=", 1)[1]
    cookie = h.get("set-cookie").split(";", 1)[0]
    hdr = {"content-type": "application/json", "guid": guid, "cookie": cookie}
    https(ctx, "POST", f"{base}/agentconf/{agent}/requestagentconf", hdr, b'{"memberNum":3}')
    for _ in range(2):  # deliver SelfJoinResult and RequestSuccess: the conference is then ready
        https(ctx, "GET", f"{base}/agentevent/{agent}", hdr)
    return guid, cookie


# --- processes and measurement ---------------------------------------------------------------

def children(pid):
    try:
        out = run(["ps", "-o", "pid=", "--ppid", str(pid)]).stdout.split()
    except subprocess.CalledProcessError:
        return []
    kids = [int(p) for p in out]
    return kids + [g for k in kids for g in children(k)]


def cpu_ticks(pid):
    total = 0
    for p in [pid] + children(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime + stime
        except (FileNotFoundError, IndexError):
            pass
    return total


def peak_rss_kib(pid):
    total = 0
    for p in [pid] + children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


WRK_LUA = r"""
-- Every request is formatted once, up front: wrk shares the load core with the simulator, and
-- that core sets req/s in (a) and (c), so wrk's own cost per request is kept small.
local reqs, idx = {}, 0
function init(args)
  local extra = {}
  for i = 2, #args, 2 do extra[args[i]] = args[i + 1] end
  for line in io.lines(args[1]) do
    local h = { ["Authorization"] = "Bearer " .. line, ["Content-Type"] = "application/json" }
    for k, v in pairs(extra) do h[k] = v end
    reqs[#reqs + 1] = wrk.format("POST", wrk.path, h, nil)
  end
end
function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end
-- No response() callback: wrk would build a Lua table of every response's headers for it.
-- wrk counts statuses >= 400 itself (summary.errors.status).
function done(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50":%d,"p99":%d,"p999":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk(url, tokens_file, seconds, conns, extra_headers):
    args = []
    for k, v in extra_headers.items():
        args += [k, v]
    # The script is bench.py's own; written here too, so scenario d runs on a checkout where
    # bench/run.sh never ran.
    lua = BENCH / "out" / "bench.lua"
    if not lua.exists():
        lua.parent.mkdir(parents=True, exist_ok=True)
        lua.write_text(WRK_LUA)
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(lua), url, "--", str(tokens_file)] + args
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((l for l in p.stderr.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"wrk failed: {p.stdout}\n{p.stderr}")
    r = json.loads(line[8:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    r["load_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return r


def oha(url, tokens_file, seconds, conns, extra_headers):
    """The same run with oha, a rustls client, to check whether a scenario's ceiling is wrk's own
    (in (b) it is not: on 2 cores oha fills the load core at about the same rate). oha sends
    one token (the file's first); `Connection: close` becomes --disable-keepalive. Its latency
    includes connect and handshake, unlike wrk's."""
    token = Path(tokens_file).read_text().split("\n", 1)[0]
    cmd = ["taskset", "-c", LOAD_CORE, "oha", "--no-tui", "--output-format", "json", "--worker-threads", "1",
           f"-z{seconds}s", f"-c{conns}", "-m", "POST", "--cacert", str(BENCH / "out" / "ca.pem"),
           "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
    for k, v in extra_headers.items():
        if k.lower() == "connection" and v.lower() == "close":
            cmd.append("--disable-keepalive")
        else:
            cmd += ["-H", f"{k}: {v}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd + [url], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        d = json.loads(p.stdout)
    except json.JSONDecodeError:
        sys.exit(f"oha failed: {p.stdout}\n{p.stderr}")
    codes = {int(k): v for k, v in d["statusCodeDistribution"].items()}
    # A request cut off by the deadline is how every timed run ends, not a failure.
    errs = sum(v for k, v in d["errorDistribution"].items() if k != "aborted due to deadline")
    pct = d["latencyPercentiles"]
    us = lambda v: int((v or 0) * 1e6)
    return {"requests": sum(codes.values()), "rps": codes.get(200, 0) / d["summary"]["total"],
            "p50": us(pct["p50"]), "p99": us(pct["p99"]), "p999": us(pct["p99.9"]),
            "status": sum(v for k, v in codes.items() if k != 200), "errors": errs + sum(v for k, v in codes.items() if k != 200),
            "load_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


# --- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="ccgate and direct, scenario a, 2 s: fail on any error")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds, order alternating (medians over them)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--systems", default="direct,ccgate,envoy,nginx",
                    help="any of direct,ccgate,envoy,nginx,redis")
    ap.add_argument("--scenarios", default="a,b,c")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--load", choices=["wrk", "oha"], default="wrk",
                    help="load generator (oha: a rustls client, to cross-check wrk)")
    a = ap.parse_args()
    if a.smoke:
        a.systems, a.scenarios, a.seconds, a.rounds = "direct,ccgate", "a", 2, 1
    systems = a.systems.split(",")
    scenarios = a.scenarios.split(",")
    ensure_tools(systems, a.load)
    load = oha if a.load == "oha" else wrk
    binary = ROOT / "target" / "release" / "ccgate"
    if not binary.exists():
        log("building ccgate (release)…")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    out = BENCH / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "bench.lua").write_text(WRK_LUA)
    key, jwks = make_keys(out)
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))

    procs = {}

    def start(name, cmd, core, port):
        start_pinned(procs, out, name, cmd, core, port)

    try:
        # The simulator first (its config names no Guids), then the direct sessions.
        write_configs(out, jwks, {ENVOY_AGENT: ("-", "-"), NGINX_AGENT: ("-", "-")})
        start("sim", [str(binary), "sim", "--config", str(out / "sim.toml")], LOAD_CORE, PORTS["sim"])
        sessions = {a: direct_session(ctx, a) for a in [ENVOY_AGENT, NGINX_AGENT, DIRECT_AGENT]}
        write_configs(out, jwks, sessions)
        if "ccgate" in systems:
            start("ccgate", [str(binary), "serve", "--config", str(out / "ccgate.toml")], PROXY_CORE, PORTS["ccgate"])
            for agent, tok in zip(CCGATE_AGENTS, mint(key, CCGATE_AGENTS, len(CCGATE_AGENTS))):
                h = {"authorization": f"Bearer {tok}", "content-type": "application/json"}
                https(ctx, "POST", f"https://127.0.0.1:{PORTS['ccgate']}/v1/session", h)
                _, _, b = https(ctx, "POST", f"https://127.0.0.1:{PORTS['ccgate']}/v1/conference", h, b'{"memberNum":3}')
                assert json.loads(b)["chairperson"] is True, b
        if "redis" in systems:
            start("redis-server", ["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], LOAD_CORE, PORTS["redis"])
            for i in range(REPLICAS):
                # The measured replica on the proxy core; the others beside the load.
                start(f"replica-{i}", [str(binary), "serve", "--config", str(out / f"replica-{i}.toml")],
                      PROXY_CORE if i == 0 else LOAD_CORE, PORTS["replica"] + i)
            # Signed in through one replica, made chair through another: shared from the start.
            for agent, tok in zip(REDIS_AGENTS, mint(key, REDIS_AGENTS, len(REDIS_AGENTS))):
                h = {"authorization": f"Bearer {tok}", "content-type": "application/json"}
                https(ctx, "POST", f"https://127.0.0.1:{PORTS['replica'] + 1}/v1/session", h)
                _, _, b = https(ctx, "POST", f"https://127.0.0.1:{PORTS['replica'] + 2}/v1/conference", h, b'{"memberNum":3}')
                assert json.loads(b)["chairperson"] is True, b
        if "envoy" in systems:
            start("envoy", ["envoy", "-c", str(out / "envoy.json"), "--concurrency", "1", "--log-level", "warn",
                            "--disable-hot-restart"], PROXY_CORE, PORTS["envoy"])
        if "nginx" in systems:
            start("nginx", ["nginx", "-c", str(out / "nginx.conf"), "-p", str(out)], PROXY_CORE, PORTS["nginx"])

        few = out / "tokens-8.txt"
        few.write_text("\n".join(mint(key, CCGATE_AGENTS, len(CCGATE_AGENTS))) + "\n")
        few_redis = out / "tokens-8-redis.txt"
        few_redis.write_text("\n".join(mint(key, REDIS_AGENTS, len(REDIS_AGENTS))) + "\n")
        churn = None
        if "c" in scenarios:
            log("minting 10000 tokens…")
            churn = out / "tokens-10k.txt"
            churn.write_text("\n".join(mint(key, CCGATE_AGENTS, 10_000)) + "\n")
        dg, dc = sessions[DIRECT_AGENT]
        targets = {
            "direct": (f"https://127.0.0.1:{PORTS['sim']}/agentgateway/resource/agentconf/{DIRECT_AGENT}/stopvoicetoconf",
                       {"Guid": dg, "Cookie": dc}, None),
            "ccgate": (f"https://127.0.0.1:{PORTS['ccgate']}{STOP_PATH}", {}, "ccgate"),
            "envoy": (f"https://127.0.0.1:{PORTS['envoy']}{STOP_PATH}", {}, "envoy"),
            "nginx": (f"https://127.0.0.1:{PORTS['nginx']}{STOP_PATH}", {}, "nginx"),
            "redis": (f"https://127.0.0.1:{PORTS['replica']}{STOP_PATH}", {}, "replica-0"),
        }
        # The replicas on Redis serve agents of their own (the sim holds each agent once).
        own_tokens = {"redis": {"a": few_redis}}
        scen = {
            "a": ("keep-alive, 64 connections", few, {}),
            "b": ("new TLS connection per request", few, {"Connection": "close"}),
            "c": ("token churn, 10k distinct tokens", churn, {}),
        }
        results = {}
        for s in scenarios:
            label, tokens, extra = scen[s]
            log(f"scenario {s}: {label}")
            names = [n for n in systems if n not in own_tokens or s in own_tokens[n]]
            for name in names:  # warm-up
                url, hdrs, _ = targets[name]
                load(url, own_tokens.get(name, {}).get(s, tokens), 2 if not a.smoke else 1, a.connections, {**hdrs, **extra})
            for rnd in range(a.rounds):
                # Paired rounds: every system once per round, the order reversed every other
                # round, so no system always runs first (cold) or last (after the others).
                for name in (names if rnd % 2 == 0 else names[::-1]):
                    url, hdrs, proc = targets[name]
                    pid = procs[proc].pid if proc else None
                    before = cpu_ticks(pid) if pid else 0
                    sim_before = cpu_ticks(procs["sim"].pid)
                    r = load(url, own_tokens.get(name, {}).get(s, tokens), a.seconds, a.connections, {**hdrs, **extra})
                    ticks = (cpu_ticks(pid) - before) if pid else 0
                    r["cpu_s"] = ticks / os.sysconf("SC_CLK_TCK")
                    # The simulator's share of the load core (load() measures its own): when the
                    # proxy core idles part of the time, req/s is the load core's.
                    r["sim_cpu_s"] = (cpu_ticks(procs["sim"].pid) - sim_before) / os.sysconf("SC_CLK_TCK")
                    r["rss_kib"] = peak_rss_kib(pid) if pid else 0
                    results.setdefault(s, {}).setdefault(name, []).append(r)
                    log(f"  round {rnd + 1} {name:7s} {r['rps']:9.0f} req/s  p99 {r['p99'] / 1000:.2f} ms  errors {r['errors']}")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))
        print(report(results, scenarios, systems, scen))
        bad = [(s, n) for s in results for n, rs in results[s].items() if any(r["errors"] or not r["requests"] for r in rs)]
        if bad:
            sys.exit(f"errors in {bad}")
    finally:
        stop_all(procs)


def stop_all(procs, timeout=30):
    """SIGTERM to each process group in the reverse order of their start, each gone (or
    SIGKILLed after `timeout` s) before the next is signalled: ccgate signs its agents out at
    the simulator as it stops, which takes the simulator still up (stopped together, the
    sign-outs were retried for seconds against a closed port)."""
    for p in reversed(list(procs.values())):
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def med(xs):
    return statistics.median(xs) if xs else 0.0


def spread(xs, fmt="{:.0f}"):
    """The median and the range of the rounds, e.g. `41,203 (39,870-42,011)`."""
    if len(xs) < 2:
        return fmt.format(med(xs))
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def per_round(r):
    """One round's figures: req/s, latencies in ms, proxy CPU-s per 10k requests, RSS MiB."""
    return {"rps": r["rps"], "p50": r["p50"] / 1000, "p99": r["p99"] / 1000, "p999": r["p999"] / 1000,
            "cpu10k": per10k(r, "cpu_s"), "sim10k": per10k(r, "sim_cpu_s"), "wrk10k": per10k(r, "load_cpu_s"),
            "rss": r["rss_kib"] / 1024}


def per10k(r, key):
    return r.get(key, 0.0) / r["requests"] * 10_000 if r["requests"] else 0.0


def report(results, scenarios, systems, scen):
    """Medians over the paired rounds with their spread; ratios are medians of the per-round
    ratios (system X and Y measured in the same round, seconds apart)."""
    lines = []
    for s in scenarios:
        present = [n for n in systems if n in results[s]]
        rounds = {n: [per_round(r) for r in results[s][n]] for n in present}
        col = lambda n, k: [x[k] for x in rounds[n]]
        k = min(len(v) for v in rounds.values())
        lines.append(f"\n### Scenario {s}: {scen[s][0]} ({k} paired rounds; median (min-max))\n")
        lines.append("| system | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 10k req | peak RSS MiB "
                     "| load core: simulator + wrk CPU s / 10k req |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for n in present:
            proxy = n != "direct"
            cpu = spread(col(n, "cpu10k"), "{:.3f}") if proxy else "-"
            rss = f"{max(col(n, 'rss')):.1f}" if proxy else "-"
            lines.append(f"| {n} | {spread(col(n, 'rps'))} | {med(col(n, 'p50')):.2f} | {spread(col(n, 'p99'), '{:.2f}')} "
                         f"| {med(col(n, 'p999')):.2f} | {cpu} | {rss} "
                         f"| {med(col(n, 'sim10k')):.3f} + {med(col(n, 'wrk10k')):.3f} |")
        ratio_rows = []

        def ratio(label, a, b, key, invert=False, diff=False):
            if a not in rounds or b not in rounds:
                return
            xs = [(x[key] - y[key]) if diff else (x[key] / y[key] if y[key] else 0.0)
                  for x, y in zip(rounds[a], rounds[b])]
            fmt = "{:+.2f} ms" if diff else "{:.2f}x"
            ratio_rows.append(f"| {label} | {spread(xs, fmt)} |")

        ratio("ccgate / envoy, req/s", "ccgate", "envoy", "rps")
        ratio("ccgate / nginx, req/s", "ccgate", "nginx", "rps")
        ratio("ccgate / direct, req/s", "ccgate", "direct", "rps")
        ratio("ccgate / nginx, CPU per request", "ccgate", "nginx", "cpu10k")
        ratio("ccgate / envoy, CPU per request", "ccgate", "envoy", "cpu10k")
        ratio("ccgate / envoy, peak RSS", "ccgate", "envoy", "rss")
        ratio("ccgate / envoy, p99", "ccgate", "envoy", "p99")
        ratio("redis (1 of 3 replicas) / ccgate, req/s", "redis", "ccgate", "rps")
        ratio("redis - ccgate, p99", "redis", "ccgate", "p99", diff=True)
        ratio("redis / ccgate, CPU per request", "redis", "ccgate", "cpu10k")
        if ratio_rows:
            lines.append("\n| paired ratio | median (min-max) |")
            lines.append("|---|---|")
            lines.extend(ratio_rows)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
