#!/usr/bin/env bash
# Webhooks (issue 36): 1,000 events/s delivered to one endpoint, with the memory store and
# with Redis. See bench/webhooks.py.
#   bench/webhooks.sh [--rate 1000] [--seconds 30] [--agents 50] [--store memory,redis] [--binary PATH] [--json FILE]
# Installs what it needs (redis-server, openssl, pyjwt, cryptography) like bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/webhooks.sh
. scripts/tools.sh
require_tools "deb:taskset=util-linux" "deb:openssl=openssl" "deb:redis-server=redis-server" \
  "pip:jwt=pyjwt" "pip:cryptography=cryptography"
[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/webhooks.py "$@"
