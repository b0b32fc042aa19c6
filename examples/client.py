#!/usr/bin/env python3
"""A small ccgate client: Python's standard library only.

What an app does with ccgate: sign its agent in, start a conference, stop its announcement
(handling 429 with Retry-After), follow the agent's events and resume them with
Last-Event-ID after a disconnect, sign out.

    python3 examples/client.py --url https://127.0.0.1:8443 --ca ca.pem --token "$TOKEN"

With `ccgate demo --json` running, `--demo-json LINE` takes the URL, CA and token from its
first line. Exits 0 when every step did what the API promises, 1 otherwise (tests/it/examples.rs
runs it against the demo).
"""
import argparse
import http.client
import json
import queue
import ssl
import sys
import threading
import time
import urllib.parse


class Problem(Exception):
    """An RFC 9457 problem answered by ccgate."""

    def __init__(self, status, body, headers):
        self.status, self.body, self.headers = status, body, headers
        super().__init__(f"{status} {body.get('type')}: {body.get('detail')}")


class Ccgate:
    def __init__(self, url, token, ca=None, timeout=30):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout
        self.retried_after = 0  # answers waited out by their Retry-After
        self.conn = self._connect()

    def _connect(self):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)

    def request(self, method, path, body=None, retries=5):
        """One call; a 429 or a 503 with Retry-After is waited out and retried."""
        for _ in range(retries + 1):
            headers = dict(self.auth)
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
            except (http.client.HTTPException, OSError):
                # The keep-alive connection went away (idle timeout, restart): once more on a new one.
                self.conn.close()
                self.conn = self._connect()
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
            raw = r.read()
            payload = json.loads(raw) if raw else None
            if r.status < 400:
                return r.status, payload, r.headers
            wait = r.headers.get("Retry-After")
            if r.status in (429, 503) and wait is not None:
                print(f"  {r.status} {payload.get('type')}: waiting {wait} s as Retry-After says")
                self.retried_after += 1
                time.sleep(float(wait))
                continue
            raise Problem(r.status, payload or {}, r.headers)
        raise Problem(r.status, payload or {}, r.headers)

    def sign_in(self):
        return self.request("POST", "/v1/session", {})

    def conference(self, members=3):
        status, body, headers = self.request("POST", "/v1/conference", {"memberNum": members})
        # 202: the gateway has not confirmed yet; look again after Retry-After.
        while status == 202:
            time.sleep(float(headers.get("Retry-After", "1")))
            status, body, headers = self.request("GET", "/v1/session")
            if body.get("chairperson"):
                break
        return body

    def stop_announcement(self):
        return self.request("POST", "/v1/conference/announcement/stop")

    def sign_out(self):
        return self.request("DELETE", "/v1/session")

    def events(self, last_event_id=None):
        """Yields (id, event, data) from GET /v1/events; comments are skipped."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)
        headers = dict(self.auth)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        conn.request("GET", "/v1/events", headers=headers)
        r = conn.getresponse()
        if r.status != 200:
            raise Problem(r.status, json.loads(r.read() or b"{}"), r.headers)
        ev = {}
        try:
            while True:
                line = r.fp.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if not line:
                    if "event" in ev:
                        yield ev.get("id"), ev["event"], json.loads(ev.get("data", "null"))
                    ev = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    ev[field] = value.lstrip(" ")
        finally:
            conn.close()


def follow(client, out, stop, last_event_id=None):
    """Reads events into `out` until `stop` is set (checked between events)."""
    for eid, kind, data in client.events(last_event_id):
        out.put((int(eid) if eid else None, kind, data))
        if stop.is_set() or kind == "ccgate.session_ended":
            return


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--ca")
    ap.add_argument("--token")
    ap.add_argument("--demo-json", help="the first line `ccgate demo --json` printed")
    ap.add_argument("--stops", type=int, default=7, help="stops in a row (past the per-agent burst of 5)")
    a = ap.parse_args()
    if a.demo_json:
        d = json.loads(a.demo_json)
        a.url, a.ca, a.token = d["proxy_url"], d["ca_file"], d["token"]
    if not (a.url and a.token):
        ap.error("--url and --token (or --demo-json) are required")
    c = Ccgate(a.url, a.token, a.ca)

    status, session, _ = c.sign_in()
    print(f"signed in: {status} {session}")

    # Follow the agent's events from now on, in the background.
    seen, stop = queue.Queue(), threading.Event()
    reader = threading.Thread(target=follow, args=(c, seen, stop), daemon=True)
    reader.start()
    time.sleep(0.2)  # let the stream open before the events it should see

    conf = c.conference()
    print(f"conference: {conf}")
    assert conf.get("chairperson") is True, conf

    for i in range(a.stops):
        status, body, headers = c.stop_announcement()
        print(f"stop {i + 1}: {status} {body}  (RateLimit: {headers.get('RateLimit')})")

    # Read a few events, then drop the stream as a flaky network would.
    got = [seen.get(timeout=10) for _ in range(3)]
    stop.set()
    last = got[-1][0]
    print(f"events before the disconnect: {[(i, k) for i, k, _ in got]}")

    # Resume after the last event seen: nothing missed, nothing repeated.
    resumed = queue.Queue()
    stop2 = threading.Event()
    threading.Thread(target=follow, args=(c, resumed, stop2, last), daemon=True).start()
    first_id, first_kind, _ = resumed.get(timeout=10)
    stop2.set()
    print(f"resumed after {last}: next event {first_id} {first_kind}")
    assert first_id > last, (first_id, last)

    status, _, _ = c.sign_out()
    print(f"signed out: {status}")
    assert status == 204
    if a.stops > 5:
        assert c.retried_after >= 1, "expected at least one 429 past the per-agent burst"
        print(f"429s waited out: {c.retried_after}")
    print("OK")


if __name__ == "__main__":
    try:
        main()
    except (Problem, AssertionError, queue.Empty) as e:
        print(f"FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
