#!/usr/bin/env bash
# Installs what Forge needs (Debian 12), builds it, and runs the test suite.
# This is the README's test command. Extra arguments go to ctest
# (e.g. `deploy/test.sh -L unit`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

"$root/deploy/install-deps.sh"

build="${FORGE_BUILD_DIR:-$root/build}"
jobs="${FORGE_JOBS:-$(nproc)}"
start=$(date +%s)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${FORGE_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
built=$(date +%s)
echo "test.sh: build took $((built - start)) s"
ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 300 "$@"
echo "test.sh: tests took $(( $(date +%s) - built )) s"
