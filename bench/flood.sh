#!/usr/bin/env bash
# A flood of distinct forged tokens: what it costs ccgate and what valid requests see
# meanwhile (bench/flood.py). Installs what it runs when missing (scripts/tools.sh).
#   bench/flood.sh [--seconds 10] [--connections 64] [--binary PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/flood.sh
. scripts/tools.sh
require_tools "deb:wrk=wrk" "deb:openssl=openssl" "deb:taskset=util-linux" "deb:ps=procps" \
  "pip:jwt=pyjwt" "pip:cryptography=cryptography"
[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/flood.py "$@"
