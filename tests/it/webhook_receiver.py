"""A webhook receiver for tests/it/webhooks.rs: verifies every delivery with the Standard
Webhooks reference library (PyPI `standardwebhooks`), answers as its plan says, and prints
one JSON line per delivery on stdout (the first line is {"port": N}).

Plans (--plan), per message id (its attempts counted here):
  ok          2xx at once
  fail-twice  500, 500, then 204
  throttle    429 with Retry-After: 1 on the first attempt, then 200
  gone        410 to everything while the file --gone-file exists, else 200
  hang        the first attempt waits 3 s before answering (past ccgate's timeout), then 200
  fail-while  500 to everything while the file --gone-file exists, else 200
"""

import argparse
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

p = argparse.ArgumentParser()
p.add_argument("--secret", required=True)
p.add_argument("--plan", default="ok")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--gone-file")
args = p.parse_args()

verifier = Webhook(args.secret)
attempts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = verifier.verify(body, headers)
            verified = True
        except WebhookVerificationError as e:
            payload, verified = {}, False
        msg_id = headers.get("webhook-id", "")
        with lock:
            attempts[msg_id] = attempts.get(msg_id, 0) + 1
            n = attempts[msg_id]
        status, extra = 200, {}
        if args.plan == "fail-twice" and n <= 2:
            status = 500
        elif args.plan == "fail-twice":
            status = 204
        elif args.plan == "throttle" and n == 1:
            status, extra = 429, {"Retry-After": "1"}
        elif args.plan == "gone" and args.gone_file and os.path.exists(args.gone_file):
            status = 410
        elif args.plan == "fail-while" and os.path.exists(args.gone_file):
            status = 500
        elif args.plan == "hang" and n == 1:
            time.sleep(3)
        data = payload.get("data", {}) if isinstance(payload, dict) else {}
        line = {
            "id": msg_id,
            "attempt": n,
            "status": status,
            "verified": verified,
            "at": time.monotonic(),
            "type": payload.get("type") if isinstance(payload, dict) else None,
            "agent": data.get("agent"),
            "gateway": data.get("gateway"),
            "seq": data.get("seq"),
            "event": data.get("event"),
            "signatures": len(headers.get("webhook-signature", "").split(" ")),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        out = b"" if status == 204 else b"{}"
        try:
            self.send_response(status)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except (BrokenPipeError, ConnectionResetError):
            pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
if args.cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
sys.stdout.flush()
server.serve_forever()
