#!/usr/bin/env bash
# Installs what Forge needs (Debian 12), builds it, and starts forged on its
# default store in the foreground (Ctrl-C or SIGTERM stops it). Extra
# arguments go to forged (e.g. `deploy/run.sh --listen 0.0.0.0:7070`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

"$root/deploy/install-deps.sh"

build="${FORGE_BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j "$(nproc)" --target forged forgectl forge-worker
exec "$build/bin/forged" "$@"
