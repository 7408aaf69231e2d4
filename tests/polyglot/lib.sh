# Shared by the polyglot tests (source it): a temporary directory, cleanup of
# every process the test started, failure reports, bounded waits, and forged
# on a free port.
#
# Every process a test starts goes in a variable named *_pid; on exit,
# whatever such variable is still set is killed (set it to "" once the
# process has been stopped and waited for).

tmp=$(mktemp -d)
cleanup() {
  local v
  for v in $(compgen -v | grep '_pid$'); do
    [[ -n ${!v} ]] && kill -KILL "${!v}" 2>/dev/null
  done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# fail MESSAGE: prints it and every log of the test, exits 1.
fail() {
  echo "FAIL: $*" >&2
  for f in "$tmp"/*.log "$tmp"/*.out "$tmp"/*.err; do
    [[ -f $f ]] && { echo "--- $f" >&2; cat "$f" >&2; }
  done
  exit 1
}

. "$(dirname "$0")/../lib/port_of.sh"

# wait_for_line FILE REGEX PID WHAT: up to ~10 s for REGEX to appear in FILE
# while PID is alive.
wait_for_line() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -Eqs "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || fail "$4 exited before it was ready"
    sleep 0.1
  done
  fail "$4 not ready within 10 s"
}

# wait_until WHAT CMD...: up to ~10 s for CMD to succeed.
wait_until() {
  local what=$1 i
  shift
  for ((i = 0; i < 100; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  fail "$what within 10 s"
}

# wait_exit PID WHAT: up to ~5 s for PID to exit; sets exit_rc.
wait_exit() {
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$1" 2>/dev/null && fail "$2 still running 5 s after SIGTERM"
  exit_rc=0
  wait "$1" || exit_rc=$?
}

# start_otlp_receiver INTERPRETER SCRIPT: the test's OTLP/HTTP receiver
# (SCRIPT writes each request under $tmp/otlp and prints "otlp receiver
# listening on HOST:PORT"); sets otlp_pid and otlp (its URL).
start_otlp_receiver() {
  "$1" "$2" "$tmp/otlp" >"$tmp/otlp.out" 2>"$tmp/otlp.err" &
  otlp_pid=$!
  wait_for_line "$tmp/otlp.out" '^otlp receiver listening on ' "$otlp_pid" "the OTLP receiver"
  otlp=http://$(sed -n 's/^otlp receiver listening on //p' "$tmp/otlp.out")
}

# start_forged FORGED [FLAG...]: forged (ephemeral, no metrics) on a free
# port, with the extra flags; sets forged_pid and server (HOST:PORT).
start_forged() {
  local forged=$1
  shift
  "$forged" --listen 127.0.0.1:0 --metrics-listen "" --ephemeral "$@" \
    2>"$tmp/forged.log" &
  forged_pid=$!
  local port
  port=$(port_of "$tmp/forged.log" '.*listening on [^ ]*:\([0-9][0-9]*\).*' "$forged_pid" forged) || exit 1
  server=127.0.0.1:$port
}
