#!/usr/bin/env bash
# The README's quick start, end to end with the real binaries: forged, two
# forge-worker processes, forgectl. Usage: cli_e2e_test.sh BIN_DIR EXAMPLES_DIR
set -euo pipefail
bin="$1"
examples="$2"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- forged log"; cat "$work/forged.log" || true; exit 1; }
. "$(dirname "$0")/../lib/port_of.sh"

"$bin/forged" --listen 127.0.0.1:0 --metrics-listen "" --data-dir "$work/data" --shutdown-grace-seconds 5 \
  2>"$work/forged.log" &
forged_pid=$!
pids+=("$forged_pid")
port=$(port_of "$work/forged.log" '.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*' "$forged_pid" forged) || exit 1
export FORGE_SERVER="127.0.0.1:$port"

"$bin/forge-worker" --queue default --slots 2 --name w-a 2>"$work/wa.log" & pids+=($!)
"$bin/forge-worker" --queue default --slots 2 --name w-b 2>"$work/wb.log" & pids+=($!)
"$bin/forge-worker" --queue slow --slots 1 --mode sleep:60000 --name w-slow 2>"$work/ws.log" & pids+=($!)

# 1. submit --wait prints the id and SUCCEEDED, exits 0.
out=$("$bin/forgectl" submit -f "$examples/diamond.yaml" --wait) || fail "submit --wait exited $?"
id=$(echo "$out" | head -1 | awk '{print $1}')
echo "$out" | grep -q "SUCCEEDED" || fail "no SUCCEEDED in: $out"
echo "ok: diamond $id SUCCEEDED"

# 2. watch shows every task's READY, STARTED, SUCCEEDED in dependency order.
"$bin/forgectl" watch "$id" >"$work/watch.txt" || fail "watch exited $?"
line() { grep -n "$1 $2\b" "$work/watch.txt" | head -1 | cut -d: -f1; }
tasks=$(grep -o 'TASK_READY [A-Za-z0-9_.:-]*' "$work/watch.txt" | awk '{print $2}')
[ "$(echo "$tasks" | wc -l)" -eq 4 ] || fail "expected 4 tasks, got: $tasks"
for t in $tasks; do
  r=$(line TASK_READY "$t"); s=$(line TASK_STARTED "$t"); d=$(line TASK_SUCCEEDED "$t")
  [ -n "$r" ] && [ -n "$s" ] && [ -n "$d" ] || fail "task $t lacks an event"
  [ "$r" -lt "$s" ] && [ "$s" -lt "$d" ] || fail "task $t events out of order"
done
# Dependencies: each task is READY only after its dependencies SUCCEEDED.
"$bin/forgectl" get "$id" -o json >"$work/get.json"
python3 - "$work/get.json" "$work/watch.txt" <<'PY' || fail "dependency order broken"
import json, re, sys
g = json.load(open(sys.argv[1]))
g = g.get("graph", g)
at = {}
for n, l in enumerate(open(sys.argv[2])):
    m = re.match(r"seq=\d+ (TASK_\w+) (\S+)", l)
    if m: at.setdefault((m.group(1), m.group(2)), n)
for t in g["tasks"]:
    name = t["spec"]["name"]
    for dep in t["spec"].get("dependsOn", t["spec"].get("depends_on", [])):
        assert at[("TASK_SUCCEEDED", dep)] < at[("TASK_READY", name)], (dep, name)
PY
grep -q "GRAPH_SUCCEEDED" "$work/watch.txt" || fail "no GRAPH_SUCCEEDED"
echo "ok: watch order"

# 3. A cyclic graph is refused with INVALID_ARGUMENT naming the cycle; exit 2.
set +e
"$bin/forgectl" submit -f "$examples/cycle.yaml" 2>"$work/cycle.err"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "cycle submit exited $rc"
grep -q "INVALID_ARGUMENT" "$work/cycle.err" || fail "no INVALID_ARGUMENT: $(cat "$work/cycle.err")"
grep -q "cycle .* -> " "$work/cycle.err" || fail "no cycle path: $(cat "$work/cycle.err")"
echo "ok: cycle refused: $(cat "$work/cycle.err")"

# 4. Cancelling a graph whose task is running ends that task CANCELLED at
#    once, not when its 60 s sleep would end. (The bound leaves room for two
#    forgectl starts on a loaded machine, under a sanitizer: it is a
#    correctness check, not a latency figure; forge-bench measures those.)
cat >"$work/slow.yaml" <<'YAML'
name: slow
tasks:
  - name: nap
    queue: slow
  - name: after
    queue: slow
    depends_on: [nap]
YAML
sid=$("$bin/forgectl" submit -f "$work/slow.yaml")
for _ in $(seq 1 100); do
  "$bin/forgectl" get "$sid" | grep -q "^nap .*RUNNING" && break
  sleep 0.05
done
"$bin/forgectl" get "$sid" | grep -q "^nap .*RUNNING" || fail "nap never ran"
start=$(date +%s%N)
"$bin/forgectl" cancel "$sid" >/dev/null
set +e
"$bin/forgectl" wait "$sid" --timeout 20s >/dev/null
rc=$?
set -e
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$rc" -eq 1 ] || fail "wait after cancel exited $rc"
"$bin/forgectl" get "$sid" | grep -q "^nap .*CANCELLED" || fail "nap not CANCELLED"
[ "$elapsed_ms" -lt 20000 ] || fail "cancel took ${elapsed_ms} ms"
echo "ok: running task CANCELLED in ${elapsed_ms} ms"

# 5. Operators see the workers and the queues.
"$bin/forgectl" workers >"$work/workers.txt"
for w in w-a w-b w-slow; do grep -q "^$w" "$work/workers.txt" || fail "no worker $w: $(cat "$work/workers.txt")"; done
"$bin/forgectl" queues >"$work/queues.txt"
grep -q "^default .*relaxed" "$work/queues.txt" || fail "no default queue: $(cat "$work/queues.txt")"
grep -q "^slow " "$work/queues.txt" || fail "no slow queue: $(cat "$work/queues.txt")"
echo "ok: workers and queues listed"

# 6. SIGTERM under load: forged stops intake, drains and exits 0 in the grace.
"$bin/forgectl" submit -f "$examples/fanout.yaml" >/dev/null
start=$(date +%s%N)
kill -TERM "${pids[0]}"
set +e
wait "${pids[0]}"
rc=$?
set -e
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$rc" -eq 0 ] || fail "forged exited $rc on SIGTERM"
grep -q " INFO stopped$" "$work/forged.log" || fail "forged did not stop cleanly"
[ "$elapsed_ms" -lt 6000 ] || fail "shutdown took ${elapsed_ms} ms"
echo "ok: SIGTERM under load: exit 0 in ${elapsed_ms} ms"
echo "cli_e2e: all passed"
