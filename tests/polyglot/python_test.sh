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

# --- an OTLP/HTTP receiver: each POST body to $tmp/otlp/NNNNN.json ----------
# forged and the worker send it their spans; checked once both have stopped.
mkdir "$tmp/otlp"
cat >"$tmp/otlp_receiver.py" <<'EOF'
import http.server, itertools, os, sys

out = sys.argv[1]
numbers = itertools.count()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        path = os.path.join(out, f"{next(numbers):05d}.json")
        with open(path + ".tmp", "wb") as f:
            f.write(body)
        os.rename(path + ".tmp", path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format, *args):
        print(format % args, file=sys.stderr, flush=True)

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"otlp receiver listening on 127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
EOF
start_otlp_receiver "$PY" "$tmp/otlp_receiver.py"

# --- forged on a free port --------------------------------------------------
start_forged "$FORGED" --otlp-endpoint "$otlp"

# --- the Python worker ------------------------------------------------------
"$PY" "$WORKER" --server "$server" --queue polyglot-py --queue other \
  --slots 2 --name pyworker --otlp-endpoint "$otlp" 2>"$tmp/worker.log" &
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
# join is on the worker's second queue; trace outputs the traceparent its
# handler was given (params traceparent=true).
cat >"$tmp/forgectl.yaml" <<'EOF'
name: py-forgectl
tasks:
  - {name: fetch, queue: polyglot-py, input: from forgectl}
  - {name: left, queue: polyglot-py, depends_on: [fetch]}
  - {name: join, queue: other, depends_on: [fetch, left], input: joined}
  - {name: trace, queue: polyglot-py, params: {traceparent: "true"}}
EOF
rc=0
"$FORGECTL" --server "$server" submit -f "$tmp/forgectl.yaml" --wait \
  >"$tmp/forgectl.out" 2>"$tmp/forgectl.err" || rc=$?
[[ $rc -eq 0 ]] || fail "forgectl submit --wait exited $rc"
ctl_id=$(sed -n 1p "$tmp/forgectl.out")
[[ $(sed -n 2p "$tmp/forgectl.out") == "$ctl_id SUCCEEDED succeeded=4" ]] ||
  fail "the forgectl graph did not end SUCCEEDED with 4 tasks"
"$FORGECTL" --server "$server" get "$ctl_id" -o json >"$tmp/forgectl.json" \
  2>"$tmp/forgectl-get.err" || fail "forgectl get failed"
"$PY" - "$tmp/forgectl.json" <<'EOF' || fail "forgectl get output is not as expected"
import base64, json, re, sys
from datetime import datetime, timezone

def ns(ts):
    """A proto JSON Timestamp (RFC 3339, Z) in Unix nanoseconds."""
    base, frac = re.fullmatch(r"(.*?:\d\d)(?:\.(\d+))?Z", ts).groups()
    seconds = datetime.fromisoformat(base).replace(tzinfo=timezone.utc).timestamp()
    return int(seconds) * 10**9 + int((frac or "").ljust(9, "0"))

graph = json.load(open(sys.argv[1]))
assert graph["state"] == "GRAPH_STATE_SUCCEEDED", graph["state"]
tasks = {t["spec"]["name"]: t for t in graph["tasks"]}
assert sorted(tasks) == ["fetch", "join", "left", "trace"], sorted(tasks)
for name, want in (("fetch", b"from forgectl"), ("left", b"left"),
                   ("join", b"joined")):
    task = tasks[name]
    assert task["state"] == "SUCCEEDED", (name, task["state"])
    got = base64.b64decode(task.get("output", ""))
    assert got == want, (name, got)
for name, task in tasks.items():
    assert [a["worker_id"][:9] for a in task["attempts"]] == ["pyworker-"], task
    # The worker reported when its handler began (WorkerMessage.started):
    # dispatched (started_at) <= picked up <= finished. forgectl prints proto
    # field names: picked_up_at (pickedUpAt in the camelCase mapping).
    a = task["attempts"][0]
    assert "picked_up_at" in a, (name, a)
    assert ns(a["started_at"]) <= ns(a["picked_up_at"]) <= ns(a["finished_at"]), a
# The handler's own traceparent: version 00, sampled.
tp = base64.b64decode(tasks["trace"]["output"]).decode()
assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp), tp
EOF

# --- a long task's pickup is reported while it runs, not with its result ----
cat >"$tmp/slow.yaml" <<'EOF'
name: py-slow
tasks:
  - {name: slow, queue: polyglot-py, params: {sleep_ms: "1500"}}
EOF
"$FORGECTL" --server "$server" submit -f "$tmp/slow.yaml" >"$tmp/slow.out" \
  2>"$tmp/slow.err" || fail "forgectl submit of the slow graph failed"
slow_id=$(sed -n 1p "$tmp/slow.out")
picked_up_running() {
  "$FORGECTL" --server "$server" task "$slow_id" slow -o json >"$tmp/slow.json" \
    2>/dev/null &&
    grep -q '"state": "RUNNING"' "$tmp/slow.json" && grep -q '"picked_up_at"' "$tmp/slow.json"
}
wait_until "the slow task is not shown picked up while RUNNING" picked_up_running
"$FORGECTL" --server "$server" wait "$slow_id" --timeout 10s >"$tmp/slowwait.out" \
  2>"$tmp/slowwait.err" || fail "the slow graph did not succeed"

# --- a failing task with no retry: exit 1 -----------------------------------
cat >"$tmp/fail.json" <<'EOF'
{"name": "py-fail", "tasks": [
  {"name": "boom", "queue": "polyglot-py", "params": {"fail": "true"},
   "retry": {"max_attempts": 1}}]}
EOF
rc=0
client submit "$tmp/fail.json" --wait >"$tmp/fail.out" 2>"$tmp/fail.err" || rc=$?
[[ $rc -eq 1 ]] || fail "submit --wait of a failing graph exited $rc, want 1"
fail_id=$(sed -n 1p "$tmp/fail.out")
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
rc=0
"$PY" "$WORKER" --server "$server" --queue q --otlp-endpoint 127.0.0.1:4318 \
  >/dev/null 2>"$tmp/badotlp.err" || rc=$?
[[ $rc -eq 2 ]] || fail "forge_worker.py --otlp-endpoint without http:// exited $rc, want 2"
grep -q 'is not an http:// or https:// URL' "$tmp/badotlp.err" ||
  fail "forge_worker.py does not say why the OTLP endpoint is refused"

# --- SIGTERM: the worker exits 0, then forged stops -------------------------
kill -TERM "$worker_pid"
wait_exit "$worker_pid" forge_worker
worker_pid=""
[[ $exit_rc -eq 0 ]] || fail "forge_worker exited $exit_rc on SIGTERM, want 0"
kill -TERM "$forged_pid"
wait_exit "$forged_pid" forged
forged_pid=""
[[ $exit_rc -eq 0 ]] || fail "forged exited $exit_rc on SIGTERM"

# --- traces: both flushed their spans when they stopped ---------------------
# Every task of the diamond, the forgectl graph and the failing graph has a
# "forge.task" span from forged and, its child in the same trace, a
# "forge.worker.handle" span from the Python worker.
"$PY" - "$tmp/otlp" "$graph_id" "$ctl_id" "$fail_id" "$tmp/forgectl.json" \
  <<'EOF' || fail "the exported spans are not as expected"
import base64, glob, json, sys

otlp_dir, diamond, ctl, failed, ctl_json = sys.argv[1:]

def value(v):
    (kind, x), = v.items()
    return int(x) if kind == "intValue" else x

spans = []  # (service.name, span), attributes also as a dict in "attrs"
for path in sorted(glob.glob(f"{otlp_dir}/*.json")):
    for rs in json.load(open(path))["resourceSpans"]:
        resource = {a["key"]: value(a["value"]) for a in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            assert ss["scope"]["name"] == "forge", ss["scope"]
            for s in ss["spans"]:
                s["attrs"] = {a["key"]: value(a["value"]) for a in s["attributes"]}
                spans.append((resource["service.name"], s))
assert spans, f"no spans received in {otlp_dir}"

def find(service, name, graph, task):
    found = [s for svc, s in spans
             if svc == service and s["name"] == name
             and s["attrs"].get("forge.graph.id") == graph
             and s["attrs"].get("forge.task.name") == task]
    assert len(found) == 1, (service, name, graph, task, len(found))
    return found[0]

graphs = {diamond: ("a", "b", "c", "d"),
          ctl: ("fetch", "left", "join", "trace"),
          failed: ("boom",)}
handles = {}
for graph, tasks in graphs.items():
    for task in tasks:
        parent = find("forged", "forge.task", graph, task)
        span = find("forge-worker:pyworker", "forge.worker.handle", graph, task)
        assert span["traceId"] == parent["traceId"], (task, span, parent)
        assert span["parentSpanId"] == parent["spanId"], (task, span, parent)
        assert span["spanId"] not in (parent["spanId"], "0" * 16), span
        assert span["kind"] == 5, span  # CONSUMER
        assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"]), span
        assert span["attrs"]["forge.task.attempt"] == 1, span
        assert span["attrs"]["forge.worker.id"] == parent["attrs"]["forge.worker.id"], span
        assert span["attrs"]["forge.worker.id"].startswith("pyworker-"), span
        assert span["attrs"]["forge.queue"] == parent["attrs"]["forge.queue"], span
        handles[graph, task] = span
    # One trace per graph.
    assert len({handles[graph, t]["traceId"] for t in tasks}) == 1, graph

for (graph, task), span in handles.items():
    if graph == failed:
        assert span["status"]["code"] == 2, span  # ERROR
        assert span["status"]["message"].startswith("boom: failure requested"), span
        assert span["attrs"]["error.type"] == "INJECTED", span
    else:
        assert span["status"] == {"code": 1}, span  # OK

# The traceparent the handler of `trace` was given names its own span.
tasks = {t["spec"]["name"]: t for t in json.load(open(ctl_json))["tasks"]}
tp = base64.b64decode(tasks["trace"]["output"]).decode()
span = handles[ctl, "trace"]
assert tp == f"00-{span['traceId']}-{span['spanId']}-01", (tp, span)
EOF
kill -TERM "$otlp_pid"
wait_exit "$otlp_pid" "the OTLP receiver"
otlp_pid=""

echo "python_client_and_worker: ok (${SECONDS}s)"
