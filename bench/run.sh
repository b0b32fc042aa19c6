#!/usr/bin/env bash
# Benchmark ccgate beside Envoy and nginx on loopback. See bench/README.md.
#   bench/run.sh            full comparison (direct, ccgate, envoy, nginx; scenarios a, b, c)
#   bench/run.sh --smoke    ccgate and direct only, a few seconds, fails on any error (CI)
# Other flags go to bench/bench.py (--seconds, --rounds, --systems, --scenarios, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import jwt, cryptography' 2>/dev/null \
  || python3 -m pip install -q pyjwt cryptography \
  || { echo "install pyjwt and cryptography (Debian: apt-get install python3-jwt python3-cryptography)" >&2; exit 1; }
[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/bench.py "$@"
