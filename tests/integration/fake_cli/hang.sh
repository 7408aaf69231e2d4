#!/bin/sh
# A hung CLI: ignores SIGTERM (so only SIGKILL ends it) and has a child that
# hangs too. Writes "SHELL_PID CHILD_PID" to PIDFILE first.
#   hang.sh PIDFILE
trap '' TERM
sleep 1000 &
echo "$$ $!" > "$1"
echo "hanging"
wait
