#!/usr/bin/env bash
# forged's /metrics through a real Prometheus, and the Grafana dashboard
# against what forged exports:
#   1. forged (durable, temporary data dir), two forge-worker processes and a
#      Prometheus scraping forged every second;
#   2. a graph on queues alpha and beta with one task that fails (the worker
#      of queue "faulty" runs --mode fail:1) and one it leaves SKIPPED; once
#      Prometheus has scraped after the graph ended, its HTTP API must show
#      the stage histograms per queue, the finished-task counts by outcome,
#      the queues, the workers, the RPC counts and the journal's syncs;
#   3. every metric name in deploy/grafana/forge.json is one forged exports
#      (histograms: their _bucket/_sum/_count), and every expression of the
#      dashboard evaluates in Prometheus;
#   4. the number of series on /metrics does not grow with the work: the same
#      before and after a graph of 2,000 more tasks on the same queues.
# Checks of steps 2-4 are all run and reported; the test fails if any did.
# Needs /usr/bin/prometheus (Debian's prometheus package: run
# deploy/install-deps.sh), curl and python3.
# Usage: prometheus_test.sh BIN_DIR SOURCE_DIR
set -euo pipefail
bin="$(cd "$1" && pwd)"
src="$(cd "$2" && pwd)"
prometheus="${PROMETHEUS:-/usr/bin/prometheus}"
dashboard="$src/deploy/grafana/forge.json"

if [ ! -x "$prometheus" ]; then
  echo "FAIL: $prometheus not found: run deploy/install-deps.sh (installs Debian's prometheus package)"
  exit 1
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: no $tool: run deploy/install-deps.sh"; exit 1; }
done
# The interpreter itself, not a wrapper script (pyenv's shim costs ~0.1 s a call).
py=$(python3 -c 'import sys; print(sys.executable)')

work="$(mktemp -d)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# fail MESSAGE: a broken set-up; prints the logs and stops (on stderr: it
# may run inside a command substitution).
fail() {
  echo "FAIL: $*" >&2
  local f
  for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; } >&2; done
  exit 1
}
. "$(dirname "$0")/../lib/port_of.sh"
# check WHAT CMD...: one assertion; a failure is reported and counted, and
# the test goes on.
failures=()
check() {
  local what="$1"
  shift
  local out
  if out=$("$@" 2>&1); then
    echo "ok: $what${out:+ ($out)}"
  else
    echo "FAIL: $what${out:+: $out}"
    failures+=("$what")
  fi
}

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. forged, the workers, Prometheus.
# Port 0: forged picks free ports and logs them (no race with other tests).
"$bin/forged" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" \
  --shutdown-grace-seconds 1 2>"$work/forged.log" &
forged_pid=$!
pids+=("$forged_pid")
port=$(port_of "$work/forged.log" '.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*' "$forged_pid" forged) || exit 1
mport=$(port_of "$work/forged.log" '.*metrics on port \([0-9][0-9]*\).*' "$forged_pid" "forged's metrics") || exit 1
server="127.0.0.1:$port"
metrics_url="http://127.0.0.1:$mport/metrics"
ctl() { "$bin/forgectl" --server "$server" "$@"; }

"$bin/forge-worker" --server "$server" --queue alpha --queue beta --slots 4 --name w-ab \
  2>"$work/worker-ab.log" &
pids+=($!)
"$bin/forge-worker" --server "$server" --queue faulty --slots 1 --mode fail:1 --name w-faulty \
  2>"$work/worker-faulty.log" &
pids+=($!)

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: forge
    static_configs:
      - targets: ['127.0.0.1:$mport']
YAML
# A free port can be taken between the probe and Prometheus's bind: retry.
pport=""
for _ in 1 2 3; do
  candidate=$(free_port)
  "$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$candidate" --log.level=warn \
    >"$work/prometheus.log" 2>&1 &
  prom_pid=$!
  for _ in $(seq 1 100); do
    kill -0 "$prom_pid" 2>/dev/null || break
    curl -sf "http://127.0.0.1:$candidate/-/ready" >/dev/null 2>&1 && { pport=$candidate; break; }
    sleep 0.1
  done
  if [ -n "$pport" ]; then pids+=("$prom_pid"); break; fi
  kill -KILL "$prom_pid" 2>/dev/null || true
  wait "$prom_pid" 2>/dev/null || true
  grep -q "address already in use" "$work/prometheus.log" || fail "Prometheus did not start"
done
[ -n "$pport" ] || fail "Prometheus found no free port in 3 tries"
prom="http://127.0.0.1:$pport"
echo "ok: forged on $server (metrics $mport), Prometheus on $pport"

# is QUERY OP NUMBER: Prometheus answers QUERY (an instant query) with one
# series whose value compares so; prints the value ("no series" fails).
cat >"$work/is.py" <<'PY'
import json, operator, sys
op, want = sys.argv[1:]
try:
    answer = json.load(sys.stdin)
except ValueError:
    sys.exit("no answer from Prometheus")
if answer["status"] != "success": sys.exit("query failed: %s" % answer)
result = answer["data"]["result"]
if not result: sys.exit("no series")
if len(result) > 1: sys.exit("%d series: %s" % (len(result), result))
value = float(result[0]["value"][1])
ops = {"==": operator.eq, ">": operator.gt, ">=": operator.ge, "<": operator.lt}
print(result[0]["value"][1])
sys.exit(0 if ops[op](value, float(want)) else 1)
PY
is() {
  curl -s "$prom/api/v1/query" --data-urlencode "query=$1" | "$py" "$work/is.py" "$2" "$3"
}
# scraped_after EPOCH: Prometheus has a scrape of forged that started after
# EPOCH. (Of the selector itself: timestamp(up == 1) would be the query's
# time, not the scrape's.)
scraped_after() { is 'timestamp(up{job="forge"})' '>' "$1" >/dev/null 2>&1; }
wait_scraped_after() {
  for _ in $(seq 1 100); do
    scraped_after "$1" && return 0
    sleep 0.1
  done
  fail "no successful scrape of forged by Prometheus within 10 s (up: $(curl -s "$prom/api/v1/query" --data-urlencode 'query=up' || true))"
}

# Both workers connected before the graph.
for _ in $(seq 1 100); do
  curl -sf "$metrics_url" | grep -q '^forge_workers_connected 2$' && break
  sleep 0.1
done

# --- 2. A graph with a failure, read back through Prometheus.
{
  echo "name: prom-mixed"
  echo "tasks:"
  echo "  - {name: fetch, queue: alpha}"
  deps=""
  for i in 0 1 2 3 4 5 6 7; do
    echo "  - {name: a-$i, queue: alpha, depends_on: [fetch]}"
    echo "  - {name: b-$i, queue: beta, depends_on: [fetch]}"
    deps="$deps a-$i, b-$i,"
  done
  echo "  - {name: join, queue: alpha, depends_on: [${deps%,}]}"
  # Fails twice (the worker of "faulty" fails everything): one retry.
  echo "  - {name: boom, queue: faulty, retry: {max_attempts: 2, initial_backoff: 100ms}}"
  echo "  - {name: after-boom, queue: beta, depends_on: [boom]}"  # SKIPPED
} >"$work/mixed.yaml"
set +e
ctl submit -f "$work/mixed.yaml" --wait >"$work/mixed.out" 2>"$work/mixed.err"
rc=$?
set -e
finished=$(date +%s.%N)
[ "$rc" -eq 1 ] || fail "submit --wait of the mixed graph exited $rc (want 1: FAILED): $(cat "$work/mixed.out" "$work/mixed.err")"
gid=$(head -1 "$work/mixed.out" | awk '{print $1}')
ctl -o json get "$gid" >"$work/mixed.json" || fail "get $gid"
read -r succeeded failed skipped < <("$py" - "$work/mixed.json" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
g = g.get("graph", g)
states = [t.get("state", "") for t in g["tasks"]]
print(*(sum(s.endswith(x) for s in states) for x in ("SUCCEEDED", "FAILED", "SKIPPED")))
PY
)
[ "$succeeded $failed $skipped" = "18 1 1" ] ||
  fail "mixed graph: $succeeded succeeded, $failed failed, $skipped skipped (want 18, 1, 1)"
echo "ok: mixed graph $gid FAILED: $succeeded succeeded, $failed failed, $skipped skipped"

wait_scraped_after "$finished"
echo "ok: Prometheus scraped forged after the graph ended"
sel='job="forge"'
check "up == 1" is "up{$sel}" == 1
check "forge_graphs_submitted_total == 1" is "forge_graphs_submitted_total{$sel}" == 1
check "forge_tasks_submitted_total == 20" is "forge_tasks_submitted_total{$sel}" == 20
check "forge_tasks_dispatched_total == 20 (18 + boom twice)" is "forge_tasks_dispatched_total{$sel}" == 20
check "forge_task_run_seconds_count{queue=alpha} > 0" \
  is "sum(forge_task_run_seconds_count{$sel,queue=\"alpha\"})" '>' 0
for h in dependency_wait queue_wait pickup run; do
  for q in alpha beta; do
    check "forge_task_${h}_seconds has a series for queue $q" \
      is "count(forge_task_${h}_seconds_count{$sel,queue=\"$q\"})" '>=' 1
  done
done
check "forge_tasks_finished_total{outcome=succeeded} == $succeeded" \
  is "sum(forge_tasks_finished_total{$sel,outcome=\"succeeded\"})" == "$succeeded"
check "forge_tasks_finished_total{outcome=failed} >= 1" \
  is "sum(forge_tasks_finished_total{$sel,outcome=\"failed\"})" '>=' 1
check "forge_task_retries_total{queue=faulty} >= 1" \
  is "sum(forge_task_retries_total{$sel,queue=\"faulty\"})" '>=' 1
for q in alpha beta faulty; do
  check "forge_queue_depth has a series for queue $q" \
    is "count(forge_queue_depth{$sel,queue=\"$q\"})" == 1
done
check "forge_workers_connected == 2" is "forge_workers_connected{$sel}" == 2
check "forge_rpc_requests_total has SubmitGraph with code OK" \
  is "sum(forge_rpc_requests_total{$sel,method=\"SubmitGraph\",code=\"OK\"})" '>=' 1
check "forge_journal_sync_seconds_count > 0" \
  is "sum(forge_journal_sync_seconds_count{$sel})" '>' 0

# --- 3. The dashboard against what forged exports and what Prometheus runs.
curl -sf "$metrics_url" >"$work/metrics.txt" || fail "cannot read $metrics_url"
# Runner metrics exist only when the config has runner profiles (and a
# profile counts as a connected worker), trace metrics only with an OTLP
# endpoint: a second forged, with both, for their names. Nothing listens at
# its endpoint (a closed loopback port): spans fail, counted.
cat >"$work/probe.yaml" <<YAML
runner:
  work_root: $work/runs
profiles:
  probe:
    queues: [probe]
    command: [/bin/true]
YAML
probe_flags=(--otlp-endpoint "http://127.0.0.1:$(free_port)")
"$bin/forged" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --ephemeral \
  --shutdown-grace-seconds 0 --config "$work/probe.yaml" "${probe_flags[@]}" 2>"$work/forged-probe.log" &
probe_pid=$!
pids+=("$probe_pid")
pmport=$(port_of "$work/forged-probe.log" '.*metrics on port \([0-9][0-9]*\).*' "$probe_pid" "forged (runner, OTLP)") || exit 1
curl -sf "http://127.0.0.1:$pmport/metrics" >"$work/metrics-probe.txt" || fail "cannot read the second forged's metrics"
kill -TERM "$probe_pid" 2>/dev/null || true  # stops while the test goes on

dashboard_names() {
  "$py" - "$dashboard" "$work/metrics.txt" "$work/metrics-probe.txt" <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
exprs = []
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("expr", "definition") and isinstance(v, str): exprs.append(v)
            elif k == "query" and isinstance(v, str): exprs.append(v)
            else: walk(v)
    elif isinstance(o, list):
        for v in o: walk(v)
walk(dash)
used = set()
for e in exprs:
    used.update(re.findall(r"\bforge_[A-Za-z0-9_]+", e))
kinds, samples = {}, set()
for path in sys.argv[2:]:
    for line in open(path):
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m: kinds[m.group(1)] = m.group(2)
        elif line.strip() and not line.startswith("#"):
            samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
def exported(n):
    if n in samples or (n in kinds and kinds[n] in ("counter", "gauge", "untyped")):
        return True
    for suffix, ok in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                       ("_count", ("histogram", "summary"))):
        if n.endswith(suffix) and kinds.get(n[: -len(suffix)]) in ok:
            return True
    return False
missing = sorted(n for n in used if not exported(n))
if not used: sys.exit("no forge_ metric in the dashboard")
if missing:
    sys.exit("%d of %d names not exported by forged: %s" % (len(missing), len(used), " ".join(missing)))
print("%d names, %d expressions" % (len(used), len(exprs)))
PY
}
check "every metric of the dashboard is exported by forged" dashboard_names

dashboard_queries() {
  "$py" - "$dashboard" "$prom" <<'PY'
import json, sys, urllib.parse, urllib.request
dash, prom = json.load(open(sys.argv[1])), sys.argv[2]
exprs = []
def walk(o):
    if isinstance(o, dict):
        if isinstance(o.get("expr"), str): exprs.append(o["expr"])
        for v in o.values(): walk(v)
    elif isinstance(o, list):
        for v in o: walk(v)
walk(dash)
bad = []
for e in exprs:
    q = e.replace("$__rate_interval", "1m").replace("$queue", ".*")
    try:
        with urllib.request.urlopen(prom + "/api/v1/query?" + urllib.parse.urlencode({"query": q})) as r:
            ok = json.load(r)["status"] == "success"
    except Exception:  # HTTP 400: a bad expression
        ok = False
    if not ok: bad.append(e)
if bad: sys.exit("Prometheus refused: " + " | ".join(bad))
print("%d expressions" % len(exprs))
PY
}
check "every expression of the dashboard evaluates in Prometheus" dashboard_queries
check "the dashboard's queue variable lists alpha and beta" \
  is "count(count by (queue) (forge_queue_depth{$sel,queue=~\"alpha|beta\"}))" == 2

# --- 4. The series count does not grow with the work. A first graph of
# successes (graphs_finished{outcome="succeeded"} and the like exist from
# then on), then the count, 2,000 more tasks of the same kinds, the count.
"$py" - "$work" <<'PY'
import json, sys
def graph(name, n):
    return {"name": name, "tasks": [{"name": "t-%04d" % i, "queue": ("alpha", "beta")[i % 2]}
                                    for i in range(n)]}
json.dump(graph("prom-warmup", 20), open(sys.argv[1] + "/warmup.json", "w"))
json.dump(graph("prom-bulk", 2000), open(sys.argv[1] + "/bulk.json", "w"))
PY
series() { curl -sf "$metrics_url" | grep -v '^#' | grep -c .; }
ctl submit -f "$work/warmup.json" --wait >"$work/warmup.out" 2>&1 || fail "warm-up graph: $(cat "$work/warmup.out")"
before=$(series)
start=$(date +%s%N)
ctl submit -f "$work/bulk.json" --wait >"$work/bulk.out" 2>&1 || fail "2,000-task graph: $(cat "$work/bulk.out")"
bulk_ms=$(( ($(date +%s%N) - start) / 1000000 ))
finished=$(date +%s.%N)
after=$(series)
grep -q "SUCCEEDED" "$work/bulk.out" || fail "2,000-task graph did not succeed: $(cat "$work/bulk.out")"
echo "ok: 2,000-task graph SUCCEEDED in $bulk_ms ms"
same_series() {
  echo "$before before, $after after"
  [ "$before" -eq "$after" ]
}
check "series on /metrics unchanged by 2,000 more tasks" same_series
wait_scraped_after "$finished"
check "Prometheus sees the 2,000 tasks: forge_tasks_submitted_total == 2040" \
  is "forge_tasks_submitted_total{$sel}" == 2040
check "forge_tasks_finished_total{outcome=succeeded} == $((succeeded + 2020))" \
  is "sum(forge_tasks_finished_total{$sel,outcome=\"succeeded\"})" == $((succeeded + 2020))

if [ ${#failures[@]} -gt 0 ]; then
  echo "prometheus_test: ${#failures[@]} check(s) failed:"
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
echo "prometheus_test: all passed"
