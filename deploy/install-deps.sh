#!/usr/bin/env bash
# Installs the Debian 12 packages Forge needs to build, test and run.
# Idempotent: packages already present are skipped; safe to run repeatedly.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev libyaml-cpp-dev librocksdb-dev libjemalloc-dev
  clang-14 libclang-rt-14-dev
  python3 python3-grpcio python3-protobuf
  libcurl4-openssl-dev prometheus curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Node.js and npm, for the Node example worker and its test (client/node/).
# A node already on PATH (nvm, NodeSource, a tarball) is kept as it is;
# otherwise Debian's nodejs (18, enough for @grpc/grpc-js) and npm. Debian
# ships npm apart from nodejs: it is added only next to a dpkg-owned node.
if ! command -v node >/dev/null 2>&1; then
  missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
  if dpkg -S "$(readlink -f "$(command -v node)")" >/dev/null 2>&1; then
    missing+=(npm)
  else
    echo "install-deps: npm not found next to $(command -v node);" \
         "install it for the Node polyglot test" >&2
  fi
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
