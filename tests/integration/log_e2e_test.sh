#!/usr/bin/env bash
# forged's structured logs with the real binaries:
#   1. a bad --log-format / --log-level, or a negative --retention /
#      --memory-retention, exits 2 naming the flag;
#   2. --log-format json --log-level debug: every stderr line is a JSON object
#      with time, level and msg; a worker's connect and disconnect carry its
#      worker_id; the runner's spawn and exit lines (debug) carry graph_id,
#      task, attempt and pid; a process group killed after SIGTERM is a warn;
#   3. the same run at --log-level info has no debug line.
# Usage: log_e2e_test.sh BIN_DIR
set -euo pipefail
bin="$(cd "$1" && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log="$work/forged.log"
fail() { echo "FAIL: $*"; echo "--- forged log"; cat "$log" 2>/dev/null || true; exit 1; }
. "$(dirname "$0")/../lib/port_of.sh"

# --- 1. bad values -------------------------------------------------------------
for flag in --log-format --log-level; do
  set +e
  "$bin/forged" "$flag" loud --ephemeral --metrics-listen "" 2>"$work/bad.err"
  rc=$?
  set -e
  [ "$rc" -eq 2 ] || fail "$flag loud exited $rc, want 2"
  grep -q -- "$flag" "$work/bad.err" || fail "$flag loud: message does not name the flag: $(cat "$work/bad.err")"
done
echo "ok: bad --log-format / --log-level exit 2 naming the flag"
for flag in --retention --memory-retention; do
  set +e
  timeout 10 "$bin/forged" "$flag" -1s --listen 127.0.0.1:0 --ephemeral --metrics-listen "" 2>"$work/bad.err"
  rc=$?
  set -e
  [ "$rc" -eq 2 ] || fail "$flag -1s exited $rc, want 2"
  grep -q -- "$flag: must not be negative" "$work/bad.err" ||
    fail "$flag -1s: message does not name the flag: $(cat "$work/bad.err")"
done
echo "ok: a negative --retention / --memory-retention exits 2 naming the flag"

cat >"$work/forge.yaml" <<YAML
runner:
  work_root: $work/runs
  kill_grace: 200ms
profiles:
  cmd:
    command: [/bin/sh, -c, 'exit 0']
  stubborn:
    command: [/bin/sh, -c, 'trap "" TERM; sleep 30 & wait']
YAML
# w on the worker, then r on the runner; stuck ignores the SIGTERM that
# cancels it at its run timeout.
cat >"$work/graph.yaml" <<'YAML'
name: logs
tasks:
  - name: w
  - name: r
    queue: cmd
    depends_on: [w]
  - name: stuck
    queue: stubborn
    timeouts: {run: 300ms}
    retry: {max_attempts: 1}
YAML

# run LEVEL: forged (json, LEVEL), a worker, the graph, then both stopped.
run() {
  : >"$log"
  "$bin/forged" --listen 127.0.0.1:0 --metrics-listen "" --ephemeral --config "$work/forge.yaml" \
    --log-format json --log-level "$1" --shutdown-grace-seconds 1 2>"$log" &
  local forged_pid=$!
  pids+=("$forged_pid")
  local port
  port=$(port_of "$log" '.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*' "$forged_pid" forged) || exit 1
  export FORGE_SERVER="127.0.0.1:$port"
  "$bin/forge-worker" --queue default --slots 1 --name w-log 2>"$work/worker.log" &
  local worker_pid=$!
  pids+=("$worker_pid")
  set +e
  "$bin/forgectl" submit -f "$work/graph.yaml" --wait >"$work/submit.out" 2>&1
  local rc=$?
  set -e
  [ "$rc" -eq 1 ] || fail "graph: expected exit 1 (stuck FAILED), got $rc: $(cat "$work/submit.out")"
  kill -TERM "$worker_pid"
  wait "$worker_pid" 2>/dev/null || true
  # stuck FAILED at its timeout, which cancels its process: SIGKILL follows
  # after the 200 ms kill_grace.
  for _ in $(seq 1 100); do
    grep -q '"msg":"worker disconnected"' "$log" && grep -q '"level":"warn".*SIGKILL' "$log" && break
    sleep 0.05
  done
  kill -TERM "$forged_pid"
  wait "$forged_pid" || fail "forged exited $? on SIGTERM"
}

check() {
  python3 - "$log" "$1" <<'PY' || fail "log lines at --log-level $1 are not as expected"
import json, re, sys
path, level = sys.argv[1], sys.argv[2]
lines = open(path, encoding="utf-8").read().splitlines()
assert lines, "no log lines"
recs = []
for n, line in enumerate(lines, 1):
    try:
        r = json.loads(line)
    except ValueError as e:
        sys.exit(f"line {n} is not JSON ({e}): {line!r}")
    assert isinstance(r, dict), (n, line)
    for k in ("time", "level", "msg"):
        assert isinstance(r.get(k), str), (n, k, line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["time"]), line
    assert r["level"] in ("debug", "info", "warn", "error"), line
    recs.append(r)

def having(msg):
    return [r for r in recs if r["msg"] == msg]

assert recs[0]["msg"].startswith("listening on 127.0.0.1:"), recs[0]
assert recs[-1]["msg"] == "stopped", recs[-1]
(conn,) = having("worker connected")
assert conn["level"] == "info" and conn["worker_id"].startswith("w-log-"), conn
assert conn["slots"] == 1 and conn["queues"] == "default" and conn["name"] == "w-log", conn
(gone,) = having("worker disconnected")
assert gone["worker_id"] == conn["worker_id"] and gone["code"] == "OK", gone
kills = [r for r in recs if r["level"] == "warn" and "SIGKILL" in r["msg"]]
assert len(kills) == 1, kills
k = kills[0]
assert isinstance(k["graph_id"], str) and k["task"] == 2 and k["attempt"] == 1, k
assert isinstance(k["pid"], int) and k["reason"] == "CANCELLED", k
assert "timeout" in k["error"], k

debug = [r for r in recs if r["level"] == "debug"]
if level == "info":
    assert not debug, debug
else:
    spawned = {r["task_name"]: r for r in having("process spawned")}
    assert set(spawned) == {"r", "stuck"}, spawned
    exited = {r["task"]: r for r in having("process exited")}
    for name, task in (("r", 1), ("stuck", 2)):
        s = spawned[name]
        assert s["level"] == "debug" and s["task"] == task and s["attempt"] == 1, s
        assert s["graph_id"] == k["graph_id"] and isinstance(s["pid"], int), s
        assert exited[task]["pid"] == s["pid"], (exited, s)
    assert exited[1]["exit_code"] == 0 and exited[1]["stopped"] == "no", exited[1]
    assert exited[2]["signal"] == 9 and exited[2]["stopped"] == "CANCELLED", exited[2]
print(f"  {len(recs)} lines at --log-level {level}, {len(debug)} debug")
PY
}

# --- 2. json at debug ------------------------------------------------------------
run debug
check debug
echo "ok: --log-format json --log-level debug"

# --- 3. json at info: no debug lines ----------------------------------------------
run info
check info
echo "ok: --log-level info writes no debug line"
echo "log_e2e: all passed"
