#!/usr/bin/env bash
# The REST API by hand, against `cargo run --release -- demo` (or your ccgate: set URL, CA, TOKEN).
#   cargo run --release -- demo --json      # in another terminal; then, from its first line:
#   URL=<proxy_url> CA=<ca_file> TOKEN=<token> examples/curl.sh
# Each step prints the status and body; problems are RFC 9457 JSON with type, detail, instance.
set -euo pipefail
if [ -z "${TOKEN:-}" ] || [ -z "${CA:-}" ]; then
  echo "set URL, CA and TOKEN from the first line of 'ccgate demo --json':" >&2
  echo '  {"proxy_url": URL, "ca_file": CA, "token": TOKEN, ...}' >&2
  exit 2
fi
: "${URL:=https://127.0.0.1:8443}"
call() { # METHOD PATH [BODY]
  echo "== $1 $2 ${3:-}"
  curl -sS --cacert "$CA" -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    ${3:+-d "$3"} -w '\n-> %{http_code}\n' "$URL$2"
}
call POST /v1/session '{}'                      # 201: signed in (200 if it already was)
call GET /v1/session                            # the session as ccgate holds it
call POST /v1/conference '{"memberNum":3}'      # 201 chairperson (202 + Retry-After: look again)
call POST /v1/conference/announcement/stop      # 200 {"stopped":true}, RateLimit headers
for _ in 1 2 3 4 5 6; do call POST /v1/conference/announcement/stop; done  # past the burst: 429 + Retry-After
# Without Last-Event-ID a stream starts from now; 0 replays what the agent's buffer holds.
echo "== GET /v1/events for 2 s (Server-Sent Events, Last-Event-ID: 0)"
curl -sS --cacert "$CA" -N -H "Authorization: Bearer $TOKEN" -H 'Last-Event-ID: 0' --max-time 2 "$URL/v1/events" || true
call DELETE /v1/session                         # 204
