#!/bin/sh
# A fake agent CLI (like `claude --print`): reads its prompt on stdin, works
# for SECONDS, prints an answer on stdout and a note on stderr, exits CODE.
#   fake_agent.sh SECONDS [CODE]
prompt=$(cat)
sleep "$1"
echo "agent ${FORGE_TASK} attempt ${FORGE_ATTEMPT}: ${prompt}"
echo "worked in $(pwd)" >&2
exit "${2:-0}"
