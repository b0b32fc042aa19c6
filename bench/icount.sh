#!/usr/bin/env bash
# Instructions per request, counted by callgrind (repeatable where wall-clock numbers are not).
#   bench/icount.sh [BINARY [N1 N2]]   default target/release/ccgate, 500 and 2500 requests
#   bench/icount.sh BINARY --polls [S1 S2]   one idle event poll instead (8 agents idle S1 and S2 s)
# Compare two builds by running it for each. Uses bench/out from a bench run (made here with
# `bench/run.sh --smoke` if missing). Takes about a minute per binary.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/icount.sh
. scripts/tools.sh
require_tools "deb:valgrind=valgrind" "pip:jwt=pyjwt" "pip:cryptography=cryptography"
[ -f bench/out/tokens-8.txt ] || bench/run.sh --smoke >/dev/null
[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/icount.py "${1:-target/release/ccgate}" "${@:2}"
