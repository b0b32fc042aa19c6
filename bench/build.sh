#!/usr/bin/env bash
# What the test suite costs to build (issue 38), for one commit, from a fresh clone:
#   bench/build.sh [REV]   default HEAD; prints one `name value` line per figure
# - fresh_no_run_s, disk_bytes: a fresh `cargo test --no-run` as `.ci/run` does it
#   (CARGO_INCREMENTAL=0), and what it leaves in target/;
# - rebuild_after_lib_touch_s: `src/lib.rs` touched, then built again: the crate compiled
#   once more and every test binary linked again (the edit-build loop of a change in src/);
# - rebuild_after_test_touch_s: one integration-test file touched, then built again.
# Compare two commits by running it for each, on an otherwise idle machine.
set -euo pipefail
rev=${1:-HEAD}
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /tmp/ccgate-build-XXXXXX)
trap 'rm -rf "$dir"' EXIT
git clone -q "$repo" "$dir/src"
cd "$dir/src"
git checkout -q "$rev"
export CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$dir/target"
timed() {
  local s e
  s=$(date +%s.%N)
  cargo test --no-run --quiet >/dev/null 2>&1
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }'
}
echo "rev $(git rev-parse --short HEAD)"
echo "fresh_no_run_s $(timed)"
echo "disk_bytes $(du -sb "$dir/target" | cut -f1)"
touch src/lib.rs
echo "rebuild_after_lib_touch_s $(timed)"
if [ -d tests/it ]; then touch tests/it/flow.rs; else touch tests/flow.rs; fi
echo "rebuild_after_test_touch_s $(timed)"
