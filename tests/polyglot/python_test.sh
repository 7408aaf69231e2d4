#!/usr/bin/env bash
# python_client_and_worker: forged + the Python example worker and client
# (client/python/), graphs submitted by the Python client and by forgectl.
# Usage:
#   PYTHONPATH=<build>/python python_test.sh FORGED CLIENT.py WORKER.py PYTHON3 FORGECTL
set -euo pipefail

FORGED=$1
CLIENT=$2
WORKER=$3
PY=$4
FORGECTL=$5

. "$(dirname "$0")/lib.sh"

client() { "$PY" "$CLIENT" --server "$server" "$@"; }

# --- forged on a free port --------------------------------------------------
start_forged "$FORGED"

# --- the Python worker ------------------------------------------------------
"$PY" "$WORKER" --server "$server" --queue polyglot-py --queue other \
  --slots 2 --name pyworker 2>"$tmp/worker.log" &
worker_pid=$!
wait_for_line "$tmp/worker.log" '^forge_worker: connected as pyworker' \
  "$worker_pid" forge_worker

# --- a diamond graph: a; b, c after a; d after b and c ----------------------
cat >"$tmp/diamond.json" <<'EOF'
{
  "name": "py-diamond",
  "labels": {"suite": "polyglot"},
  "tasks": [
    {"name": "a", "queue": "polyglot-py", "input": "aGVsbG8="},
    {"name": "b", "queue": "polyglot-py", "depends_on": ["a"]},
    {"name": "c", "queue": "polyglot-py", "depends_on": ["a"]},
    {"name": "d", "queue": "polyglot-py", "depends_on": ["b", "c"]}
  ]
}
EOF
rc=0
client submit "$tmp/diamond.json" --wait >"$tmp/diamond.out" 2>"$tmp/diamond.err" || rc=$?
[[ $rc -eq 0 ]] || fail "submit --wait of the diamond exited $rc"
graph_id=$(sed -n 1p "$tmp/diamond.out")
[[ $graph_id =~ ^[0-9A-Z]{26}$ ]] || fail "first line is not a graph id: '$graph_id'"
[[ $(sed -n 2p "$tmp/diamond.out") == SUCCEEDED ]] || fail "diamond did not print SUCCEEDED"

# Watch with replay: every event from seq 1, then the stream ends (terminal).
rc=0
timeout 10 "$PY" "$CLIENT" --server "$server" watch "$graph_id" \
  >"$tmp/watch.out" 2>"$tmp/watch.err" || rc=$?
[[ $rc -eq 0 ]] || fail "watch exited $rc"
for task in a b c d; do
  for type in TASK_READY TASK_STARTED TASK_SUCCEEDED; do
    grep -Eq "^seq=[0-9]+ $type task=$task " "$tmp/watch.out" ||
      fail "watch shows no $type for task $task"
  done
done
grep -Eq "^seq=[0-9]+ TASK_STARTED task=a attempt=1 worker=pyworker" "$tmp/watch.out" ||
  fail "TASK_STARTED of a does not name the Python worker"
grep -Eq "^seq=[0-9]+ GRAPH_SUCCEEDED" "$tmp/watch.out" || fail "no GRAPH_SUCCEEDED"

# get: d's attempt 1 ran on the Python worker; outputs are the echoes.
client get "$graph_id" >"$tmp/get.out" 2>"$tmp/get.err" || fail "get failed"
"$PY" - "$tmp/get.out" <<'EOF' || fail "get output is not as expected"
import base64, json, sys
graph = json.load(open(sys.argv[1]))
assert graph["state"] == "GRAPH_STATE_SUCCEEDED", graph["state"]
tasks = {t["spec"]["name"]: t for t in graph["tasks"]}
first = tasks["d"]["attempts"][0]
assert first["number"] == 1, first
assert first["worker_id"].startswith("pyworker"), first
for name, want in (("a", b"hello"), ("d", b"d")):
    got = base64.b64decode(tasks[name].get("output", ""))
    assert got == want, (name, got)
EOF

# --- a graph submitted with forgectl, run by the Python worker --------------
# join is on the worker's second queue.
cat >"$tmp/forgectl.yaml" <<'EOF'
name: py-forgectl
tasks:
  - {name: fetch, queue: polyglot-py, input: from forgectl}
  - {name: left, queue: polyglot-py, depends_on: [fetch]}
  - {name: join, queue: other, depends_on: [fetch, left], input: joined}
EOF
rc=0
"$FORGECTL" --server "$server" submit -f "$tmp/forgectl.yaml" --wait \
  >"$tmp/forgectl.out" 2>"$tmp/forgectl.err" || rc=$?
[[ $rc -eq 0 ]] || fail "forgectl submit --wait exited $rc"
ctl_id=$(sed -n 1p "$tmp/forgectl.out")
[[ $(sed -n 2p "$tmp/forgectl.out") == "$ctl_id SUCCEEDED succeeded=3" ]] ||
  fail "the forgectl graph did not end SUCCEEDED with 3 tasks"
"$FORGECTL" --server "$server" get "$ctl_id" -o json >"$tmp/forgectl.json" \
  2>"$tmp/forgectl-get.err" || fail "forgectl get failed"
"$PY" - "$tmp/forgectl.json" <<'EOF' || fail "forgectl get output is not as expected"
import base64, json, sys
graph = json.load(open(sys.argv[1]))
assert graph["state"] == "GRAPH_STATE_SUCCEEDED", graph["state"]
tasks = {t["spec"]["name"]: t for t in graph["tasks"]}
assert sorted(tasks) == ["fetch", "join", "left"], sorted(tasks)
for name, want in (("fetch", b"from forgectl"), ("left", b"left"),
                   ("join", b"joined")):
    task = tasks[name]
    assert task["state"] == "SUCCEEDED", (name, task["state"])
    assert [a["worker_id"][:9] for a in task["attempts"]] == ["pyworker-"], task
    got = base64.b64decode(task.get("output", ""))
    assert got == want, (name, got)
EOF

# --- a failing task with no retry: exit 1 -----------------------------------
cat >"$tmp/fail.json" <<'EOF'
{"name": "py-fail", "tasks": [
  {"name": "boom", "queue": "polyglot-py", "params": {"fail": "true"},
   "retry": {"max_attempts": 1}}]}
EOF
rc=0
client submit "$tmp/fail.json" --wait >"$tmp/fail.out" 2>"$tmp/fail.err" || rc=$?
[[ $rc -eq 1 ]] || fail "submit --wait of a failing graph exited $rc, want 1"
[[ $(sed -n 2p "$tmp/fail.out") == FAILED ]] || fail "failing graph did not print FAILED"
grep -q INJECTED "$tmp/fail.err" || fail "the INJECTED error is not reported"

# --- a cycle: INVALID_ARGUMENT naming the cycle, exit 2 ---------------------
cat >"$tmp/cycle.json" <<'EOF'
{"name": "py-cycle", "tasks": [
  {"name": "x", "queue": "polyglot-py", "depends_on": ["y"]},
  {"name": "y", "queue": "polyglot-py", "depends_on": ["x"]}]}
EOF
rc=0
client submit "$tmp/cycle.json" >"$tmp/cycle.out" 2>"$tmp/cycle.err" || rc=$?
[[ $rc -eq 2 ]] || fail "submit of a cyclic graph exited $rc, want 2"
grep -q '^forge_client: INVALID_ARGUMENT: ' "$tmp/cycle.err" || fail "no INVALID_ARGUMENT"
grep -q cycle "$tmp/cycle.err" || fail "the error does not mention the cycle"

# --- usage error: exit 2 ----------------------------------------------------
rc=0
client submit >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "usage error exited $rc, want 2"

# --- SIGTERM: the worker exits 0, then forged stops -------------------------
kill -TERM "$worker_pid"
wait_exit "$worker_pid" forge_worker
worker_pid=""
[[ $exit_rc -eq 0 ]] || fail "forge_worker exited $exit_rc on SIGTERM, want 0"
kill -TERM "$forged_pid"
wait_exit "$forged_pid" forged
forged_pid=""
[[ $exit_rc -eq 0 ]] || fail "forged exited $exit_rc on SIGTERM"

echo "python_client_and_worker: ok (${SECONDS}s)"
