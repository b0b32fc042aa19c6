#!/usr/bin/env bash
# Scenario d (issue 15): what one ccgate costs as agents grow. See bench/agents.py.
#   bench/agents.sh [--agents 1000,10000] [--binary PATH] [--env CCGATE__KEY=VALUE] [--json FILE]
# Installs what it needs (wrk, pyjwt, cryptography) like bench/run.sh; builds ccgate if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/agents.sh
. scripts/tools.sh
require_tools "deb:wrk=wrk" "deb:taskset=util-linux" "deb:ss=iproute2" "pip:jwt=pyjwt" "pip:cryptography=cryptography"
[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/agents.py "$@"
