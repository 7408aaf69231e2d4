#!/bin/sh
# Fails (exit 3, a message on stderr) until attempt N, then succeeds.
#   fail_until.sh N
if [ "${FORGE_ATTEMPT}" -lt "$1" ]; then
  echo "transient failure on attempt ${FORGE_ATTEMPT}" >&2
  exit 3
fi
echo "ok on attempt ${FORGE_ATTEMPT}"
