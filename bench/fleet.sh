#!/usr/bin/env bash
# A fleet (issue 39): N agents over R replicas on one redis-server. See bench/fleet.py.
#   bench/fleet.sh [--agents 16000] [--replicas 4] [--lease-ms 10000] [--binary PATH] [--env K=V] [--json FILE]
# Installs what it needs (redis-server, pyjwt, cryptography) like bench/run.sh; builds ccgate if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/fleet.sh
. scripts/tools.sh
require_tools "deb:redis-server=redis-server" "deb:openssl=openssl" "pip:jwt=pyjwt" "pip:cryptography=cryptography"
[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/fleet.py "$@"
