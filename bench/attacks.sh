#!/usr/bin/env bash
# The connection attacks of issue 37 (idle sockets, huge heads, streams per token): what each
# costs ccgate and what a client sees meanwhile (bench/attacks.py). Installs what it runs when
# missing (scripts/tools.sh).
#   bench/attacks.sh [--binary PATH] [--seconds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/attacks.sh
. scripts/tools.sh
require_tools "deb:openssl=openssl" "deb:taskset=util-linux" "deb:ps=procps" \
  "pip:jwt=pyjwt" "pip:cryptography=cryptography"
[ -x target/release/ccgate ] || cargo build --release --quiet
# 530 sockets and 600 streams need more than a default soft limit of 1,024 descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/attacks.py "$@"
