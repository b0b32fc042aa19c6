"""Instructions ccgate executes per stopVoiceToConf request, counted by valgrind's callgrind:
repeatable for the same binary and inputs, whatever else the machine is doing (wall-clock
numbers on a shared 2-vCPU VM move by ±10%). Run by bench/icount.sh; see bench/README.md.

For each N it starts the simulator and `ccgate serve` under callgrind (bench/out's config
from a previous bench run), signs one agent in, creates its conference, sends N stops over
one keep-alive TLS connection, and stops ccgate. The slope between two N is the cost of one
request; start-up, sign-in and shutdown cancel out.
"""
import http.client, json, os, signal, socket, ssl, subprocess, sys, time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SIM, PROXY = 18043, 18443


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


def instructions(binary, n, token):
    cg = OUT / f"callgrind-{n}.out"
    logs = open(OUT / "icount.log", "a")
    sim = subprocess.Popen([binary, "sim", "--config", "sim.toml"], cwd=OUT, stdout=logs, stderr=logs)
    try:
        wait_port(SIM)
        proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", binary, "serve",
                                  "--config", "ccgate.toml"], cwd=OUT, stdout=logs, stderr=logs)
        try:
            wait_port(PROXY, 300)
            drive(n, token)
        finally:
            proxy.send_signal(signal.SIGINT)
            proxy.wait(300)
    finally:
        sim.terminate()
        sim.wait()
    for line in cg.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    sys.exit(f"no summary in {cg}")


def main():
    binary = os.path.abspath(sys.argv[1])
    lo, hi = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (500, 2500)
    token = (OUT / "tokens-8.txt").read_text().split()[0]
    a, b = instructions(binary, lo, token), instructions(binary, hi, token)
    print(f"{binary}: {a:,} instructions for {lo} requests, {b:,} for {hi}: "
          f"{(b - a) / (hi - lo):,.0f} per request")


if __name__ == "__main__":
    main()
