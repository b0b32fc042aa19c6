"""Instructions ccgate executes per stopVoiceToConf request, counted by valgrind's callgrind:
repeatable for the same binary and inputs, whatever else the machine is doing (wall-clock
numbers on a shared 2-vCPU VM move by ±10%). Run by bench/icount.sh; see bench/README.md.

For each N it starts the simulator and `ccgate serve` under callgrind (bench/out's config
from a previous bench run), signs one agent in, creates its conference, sends N stops over
one keep-alive TLS connection, and stops ccgate. The slope between two N is the cost of one
request; start-up, sign-in and shutdown cancel out.

`--polls`: the cost of one idle event poll instead (what a signed-in agent costs while
nothing happens, scenario d). The 8 bench agents sign in against a simulator whose long-poll
wait is 20 ms instead of 10 s, so ccgate polls as in production (pause included) but often
enough to count; it idles for two lengths of time, and the slope between the two is divided
by the difference in polls answered (read from ccgate's metrics).
"""
import http.client, json, os, re, signal, socket, ssl, subprocess, sys, time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SIM, PROXY, ADMIN = 18043, 18443, 19464


def wait_port(port, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def drive(n, token):
    ctx = ssl.create_default_context(cafile=str(OUT / "ca.pem"))
    c = http.client.HTTPSConnection("127.0.0.1", PROXY, context=ctx, timeout=300)
    h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

    def req(method, path, body=None):
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        r.read()
        return r.status

    assert req("POST", "/v1/session") in (200, 201)
    assert req("POST", "/v1/conference", json.dumps({"memberNum": 3})) == 201
    bad = sum(req("POST", "/v1/conference/announcement/stop") != 200 for _ in range(n))
    if bad:
        sys.exit(f"{bad} of {n} stops failed")


POLLS = 'ccgate_upstream_responses_total{gateway="default",method="getAgentEvent",'


def idle(seconds, tokens):
    """Signs the agents in, lets them poll for `seconds`, returns the polls answered."""
    ctx = ssl.create_default_context(cafile=str(OUT / "ca.pem"))
    for t in tokens:
        c = http.client.HTTPSConnection("127.0.0.1", PROXY, context=ctx, timeout=300)
        c.request("POST", "/v1/session", headers={"Authorization": "Bearer " + t})
        r = c.getresponse()
        r.read()
        assert r.status in (200, 201), r.status
        c.close()
    time.sleep(seconds)
    c = http.client.HTTPConnection("127.0.0.1", ADMIN, timeout=300)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(POLLS))


def instructions(binary, n, token, polls=None):
    cg = OUT / f"callgrind-{n}.out"
    logs = open(OUT / "icount.log", "a")
    sim_toml = "sim.toml"
    if polls is not None:
        sim_toml = "sim-polls.toml"
        text = (OUT / "sim.toml").read_text()
        (OUT / sim_toml).write_text(re.sub(r"(?m)^event_wait_ms = .*$", "event_wait_ms = 20", text))
    sim = subprocess.Popen([binary, "sim", "--config", sim_toml], cwd=OUT, stdout=logs, stderr=logs)
    answered = 0
    try:
        wait_port(SIM)
        proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", binary, "serve",
                                  "--config", "ccgate.toml"], cwd=OUT, stdout=logs, stderr=logs,
                                 env={**os.environ, "CCGATE__SESSIONS__SIGN_OUT_ON_SHUTDOWN": "false"})
        try:
            wait_port(PROXY, 300)
            if polls is None:
                drive(n, token)
            else:
                answered = idle(n, polls)
        finally:
            proxy.send_signal(signal.SIGINT)
            proxy.wait(300)
    finally:
        sim.terminate()
        sim.wait()
    for line in cg.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]), answered
    sys.exit(f"no summary in {cg}")


def main():
    args = [a for a in sys.argv[1:] if a != "--polls"]
    binary = os.path.abspath(args[0])
    # Fresh tokens for bench/out's key: the saved ones expire an hour after the bench run.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key((OUT / "jwt-key.pem").read_bytes(), None)
    tokens = bench.mint(key, bench.CCGATE_AGENTS, 8)
    if "--polls" in sys.argv:
        lo, hi = (int(args[1]), int(args[2])) if len(args) > 2 else (10, 30)
        (a, pa), (b, pb) = instructions(binary, lo, None, tokens), instructions(binary, hi, None, tokens)
        print(f"{binary}: {a:,} instructions and {pa:.0f} polls in {lo} s, {b:,} and {pb:.0f} in {hi} s: "
              f"{(b - a) / (pb - pa):,.0f} per idle poll")
        return
    lo, hi = (int(args[1]), int(args[2])) if len(args) > 2 else (500, 2500)
    a, _ = instructions(binary, lo, tokens[0])
    b, _ = instructions(binary, hi, tokens[0])
    print(f"{binary}: {a:,} instructions for {lo} requests, {b:,} for {hi}: "
          f"{(b - a) / (hi - lo):,.0f} per request")


if __name__ == "__main__":
    main()
