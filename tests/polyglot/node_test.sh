#!/usr/bin/env bash
# node_worker: forged + the Node.js example worker (client/node/), graphs
# submitted with forgectl. Usage:
#   NODE_PATH=<dir>/node_modules node_test.sh FORGED FORGECTL WORKER.js [NODE]
# NODE_PATH is where `npm ci` put @grpc/grpc-js and @grpc/proto-loader.
set -euo pipefail

FORGED=$1
FORGECTL=$2
WORKER=$3
NODE=${4:-node}

. "$(dirname "$0")/lib.sh"

ctl() { "$FORGECTL" --server "$server" "$@"; }

# check_json FILE WHAT <<'EOF' ... EOF: runs the JavaScript on stdin with
# `doc` = FILE parsed and helpers: out(task) decodes a task's output,
# byName(graph) maps task names to tasks, ns(timestamp) is nanoseconds.
check_json() {
  local file=$1 what=$2
  { cat <<'EOF'
const assert = require('node:assert/strict');
const doc = JSON.parse(require('node:fs').readFileSync(process.argv[2], 'utf8'));
const out = (t) => Buffer.from(t.output || '', 'base64').toString('utf8');
const byName = (g) => Object.fromEntries(g.tasks.map((t) => [t.spec.name, t]));
const ns = (ts) => {
  const [, base, frac = ''] = ts.match(/^(.*?:\d\d)(?:\.(\d+))?Z$/);
  return BigInt(Date.parse(`${base}Z`)) * 1000000n + BigInt(frac.padEnd(9, '0'));
};
EOF
    cat
  } >"$tmp/check.js"
  "$NODE" "$tmp/check.js" "$file" >"$tmp/check.err" 2>&1 ||
    fail "$what: $(cat "$tmp/check.err")"
}

# --- an OTLP/HTTP receiver: each POST body to $tmp/otlp/NNNNN.json ----------
# forged and nodeworker send it their spans; checked once both have stopped.
mkdir "$tmp/otlp"
cat >"$tmp/otlp_receiver.js" <<'EOF'
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const dir = process.argv[2];
let n = 0;
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    if (req.method !== 'POST' || req.url !== '/v1/traces') {
      res.writeHead(404).end();
      return;
    }
    const file = path.join(dir, `${String(n++).padStart(5, '0')}.json`);
    fs.writeFileSync(`${file}.tmp`, Buffer.concat(chunks));
    fs.renameSync(`${file}.tmp`, file);
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
});
server.listen(0, '127.0.0.1', () => {
  console.log(`otlp receiver listening on 127.0.0.1:${server.address().port}`);
});
EOF
start_otlp_receiver "$NODE" "$tmp/otlp_receiver.js"

# --- forged on a free port --------------------------------------------------
start_forged "$FORGED" --otlp-endpoint "$otlp"

# --- usage errors: exit 2 ---------------------------------------------------
rc=0
"$NODE" "$WORKER" --server "$server" --queue q --slots 0 >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "forge_worker.js --slots 0 exited $rc, want 2"
rc=0
"$NODE" "$WORKER" --server "$server" --queue q --mode nope >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "forge_worker.js --mode nope exited $rc, want 2"
rc=0
"$NODE" "$WORKER" --server "$server" --queue q --otlp-endpoint 127.0.0.1:4318 \
  >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "forge_worker.js --otlp-endpoint without http:// exited $rc, want 2"

# --- the Node workers -------------------------------------------------------
# nodeworker computes "NAME(dep=OUTPUT,...)" from the upper-cased input and
# the upstream outputs; it heartbeats every 200 ms so tasks whose heartbeat
# timeout is 1 s survive only if its heartbeats arrive, and exports its spans.
# nodefail fails everything it runs.
"$NODE" "$WORKER" --server "$server" --queue polyglot-node --queue other-node \
  --slots 2 --name nodeworker --mode upper --heartbeat-ms 200 \
  --otlp-endpoint "$otlp" 2>"$tmp/worker.log" &
worker_pid=$!
"$NODE" "$WORKER" --server "$server" --queue polyglot-node-fail \
  --slots 1 --name nodefail --mode fail 2>"$tmp/failer.log" &
failer_pid=$!
wait_for_line "$tmp/worker.log" '^forge_worker: connected as nodeworker-' \
  "$worker_pid" "forge_worker.js (nodeworker)"
wait_for_line "$tmp/failer.log" '^forge_worker: connected as nodefail-' \
  "$failer_pid" "forge_worker.js (nodefail)"

# --- a diamond submitted with forgectl: a; b, c after a; d after b and c ----
# c is on the worker's second queue; tp (on its own) outputs the traceparent
# its handler was given.
cat >"$tmp/diamond.yaml" <<'EOF'
name: node-diamond
labels: {suite: polyglot}
tasks:
  - {name: a, queue: polyglot-node, input: hello}
  - {name: b, queue: polyglot-node, depends_on: [a]}
  - {name: c, queue: other-node, depends_on: [a], input: see}
  - {name: d, queue: polyglot-node, depends_on: [b, c]}
  - {name: tp, queue: polyglot-node, params: {traceparent: "true"}}
EOF
rc=0
ctl submit -f "$tmp/diamond.yaml" --wait >"$tmp/diamond.out" 2>"$tmp/diamond.err" || rc=$?
[[ $rc -eq 0 ]] || fail "forgectl submit --wait of the diamond exited $rc"
graph_id=$(sed -n 1p "$tmp/diamond.out")
[[ $graph_id =~ ^[0-9A-Z]{26}$ ]] || fail "first line is not a graph id: '$graph_id'"
[[ $(sed -n 2p "$tmp/diamond.out") == "$graph_id SUCCEEDED succeeded=5" ]] ||
  fail "the diamond did not end SUCCEEDED with 5 tasks"

ctl get "$graph_id" -o json >"$tmp/diamond.json" 2>"$tmp/get.err" || fail "forgectl get failed"
check_json "$tmp/diamond.json" "diamond" <<'EOF'
assert.equal(doc.state, 'GRAPH_STATE_SUCCEEDED');
const t = byName(doc);
assert.deepEqual(Object.keys(t).sort(), ['a', 'b', 'c', 'd', 'tp']);
for (const task of doc.tasks) {
  assert.equal(task.state, 'SUCCEEDED', task.spec.name);
  assert.equal(task.attempts.length, 1, task.spec.name);
  const [a] = task.attempts;
  assert.match(a.worker_id, /^nodeworker-/, task.spec.name);
  // The worker reported when its handler began (WorkerMessage.started):
  // dispatched (started_at) <= picked up <= finished. forgectl prints proto
  // field names: picked_up_at (pickedUpAt in the camelCase mapping).
  assert.ok(a.picked_up_at, `${task.spec.name}: no picked_up_at`);
  assert.ok(ns(a.started_at) <= ns(a.picked_up_at), task.spec.name);
  assert.ok(ns(a.picked_up_at) <= ns(a.finished_at), task.spec.name);
}
// The handler's own traceparent: version 00, sampled.
assert.match(out(t.tp), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
// Outputs the Node worker computed, with the data of every edge in them.
assert.equal(out(t.a), 'HELLO');
assert.equal(out(t.b), 'B(a=HELLO)');
assert.equal(out(t.c), 'SEE(a=HELLO)');
assert.equal(out(t.d), 'D(b=B(a=HELLO),c=SEE(a=HELLO))');
EOF

# --- slots and heartbeats: 4 tasks of 1.5 s, heartbeat timeout 1 s ----------
cat >"$tmp/fanout.yaml" <<'EOF'
name: node-fanout
tasks:
EOF
for i in 1 2 3 4; do
  cat >>"$tmp/fanout.yaml" <<EOF
  - name: s$i
    queue: polyglot-node
    params: {sleep_ms: "1500"}
    timeouts: {heartbeat: 1s}
    retry: {max_attempts: 1}
EOF
done
rc=0
ctl submit -f "$tmp/fanout.yaml" --wait >"$tmp/fanout.out" 2>"$tmp/fanout.err" || rc=$?
[[ $rc -eq 0 ]] || fail "the fan-out exited $rc (leases lost without heartbeats?)"
fanout_id=$(sed -n 1p "$tmp/fanout.out")
ctl get "$fanout_id" -o json >"$tmp/fanout.json" 2>"$tmp/get.err" || fail "forgectl get failed"
check_json "$tmp/fanout.json" "fan-out" <<'EOF'
assert.equal(doc.state, 'GRAPH_STATE_SUCCEEDED');
const spans = [];
for (const task of doc.tasks) {
  assert.equal(task.state, 'SUCCEEDED', task.spec.name);
  assert.equal(out(task), task.spec.name.toUpperCase());
  const [a] = task.attempts;
  assert.equal(task.attempts.length, 1, task.spec.name);
  spans.push([ns(a.started_at), 1], [ns(a.finished_at), -1]);
}
// Most attempts running at once on the 2-slot worker: exactly 2.
spans.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] - y[1]));
let now = 0, most = 0;
for (const [, d] of spans) most = Math.max(most, (now += d));
assert.equal(most, 2, 'tasks running at once');
EOF

# --- failures: retried, then FAILED; triggers follow ------------------------
# boom fails by params on nodeworker (2 attempts), doomed runs on the
# fail-mode worker; rescue (ONE_FAILED) runs, after (ALL_SUCCESS) is skipped.
cat >"$tmp/fail.yaml" <<'EOF'
name: node-fail
tasks:
  - name: boom
    queue: polyglot-node
    params: {fail: "true"}
    retry: {max_attempts: 2, initial_backoff: 100ms}
  - {name: doomed, queue: polyglot-node-fail, retry: {max_attempts: 1}}
  - {name: rescue, queue: polyglot-node, depends_on: [boom], trigger: ONE_FAILED, input: rescued}
  - {name: after, queue: polyglot-node, depends_on: [boom]}
EOF
rc=0
ctl submit -f "$tmp/fail.yaml" --wait >"$tmp/fail.out" 2>"$tmp/fail.err" || rc=$?
[[ $rc -eq 1 ]] || fail "submit --wait of a failing graph exited $rc, want 1"
fail_id=$(sed -n 1p "$tmp/fail.out")
grep -q "^$fail_id FAILED " "$tmp/fail.out" || fail "the failing graph did not end FAILED"
grep -q '^  boom: FAILED attempt=2 INJECTED ' "$tmp/fail.out" ||
  fail "boom is not reported FAILED after 2 attempts with INJECTED"
ctl get "$fail_id" -o json >"$tmp/fail.json" 2>"$tmp/get.err" || fail "forgectl get failed"
check_json "$tmp/fail.json" "failing graph" <<'EOF'
assert.equal(doc.state, 'GRAPH_STATE_FAILED');
const t = byName(doc);
assert.equal(t.boom.state, 'FAILED');
assert.equal(t.boom.attempts.length, 2);
for (const a of t.boom.attempts) {
  assert.equal(a.state, 'FAILED');
  assert.match(a.worker_id, /^nodeworker-/);
}
assert.equal(t.boom.error.code, 'INJECTED');
assert.match(t.boom.error.message, /^boom: failure requested by params/);
assert.equal(out(t.boom), '');
assert.equal(t.doomed.state, 'FAILED');
assert.equal(t.doomed.error.code, 'NODE_FAIL');
assert.match(t.doomed.attempts[0].worker_id, /^nodefail-/);
assert.equal(t.rescue.state, 'SUCCEEDED');
assert.equal(out(t.rescue), 'RESCUED');  // boom's output is not passed on
assert.equal(t.after.state, 'SKIPPED');
assert.equal(t.after.attempts, undefined);
EOF

# --- cancel: reaches the running task on the worker, which reports it -------
cat >"$tmp/slow.yaml" <<'EOF'
name: node-slow
tasks:
  - {name: slow, queue: polyglot-node, params: {sleep_ms: "60000"}}
EOF
ctl submit -f "$tmp/slow.yaml" >"$tmp/slow.out" 2>"$tmp/slow.err" || fail "submit of slow failed"
slow_id=$(sed -n 1p "$tmp/slow.out")
task_running() {
  ctl task "$1" slow -o json 2>/dev/null | grep -q '"state": "RUNNING"'
}
wait_until "slow is not RUNNING" task_running "$slow_id"
# Its pickup (WorkerMessage.started) is reported while it runs, not with its
# result.
picked_up() {
  ctl task "$1" slow -o json 2>/dev/null | grep -q '"picked_up_at"'
}
wait_until "slow is not shown picked up while it runs" picked_up "$slow_id"
ctl cancel "$slow_id" --reason "node test cancel" >"$tmp/cancel.out" 2>"$tmp/cancel.err" ||
  fail "forgectl cancel failed"
wait_for_line "$tmp/worker.log" \
  "^forge_worker: cancel slow of $slow_id attempt 1: node test cancel\$" \
  "$worker_pid" "the cancel on nodeworker"
rc=0
ctl wait "$slow_id" --timeout 10s >"$tmp/wait.out" 2>"$tmp/wait.err" || rc=$?
[[ $rc -eq 1 ]] || fail "forgectl wait of the cancelled graph exited $rc, want 1"
grep -q "^$slow_id CANCELLED " "$tmp/wait.out" || fail "the slow graph is not CANCELLED"
# The server frees the slot when the worker reports the cancelled attempt.
worker_idle() {
  ctl workers -o json >"$tmp/workers.json" 2>/dev/null &&
    "$NODE" -e '
      const {workers} = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
      const w = workers.find((w) => w.worker_id.startsWith("nodeworker-"));
      process.exit(w && !w.in_flight ? 0 : 1);' "$tmp/workers.json"
}
wait_until "nodeworker still holds the cancelled attempt" worker_idle
ctl task "$slow_id" slow -o json >"$tmp/slow.json" 2>"$tmp/get.err" || fail "forgectl task failed"
check_json "$tmp/slow.json" "cancelled task" <<'EOF'
assert.equal(doc.state, 'CANCELLED');
assert.equal(doc.attempts.length, 1);
assert.equal(doc.attempts[0].state, 'CANCELLED');
assert.match(doc.attempts[0].worker_id, /^nodeworker-/);
assert.equal(out(doc), '');
EOF
# No result of this worker was refused (a cancelled attempt's is expected).
grep -q refused "$tmp/worker.log" && fail "nodeworker had a result refused"

# --- SIGTERM with a task running: exit 0, the stream ends, the lease is lost -
sed -e 's/node-slow/node-term/' -e 's/}}$/}, retry: {max_attempts: 1}}/' \
  "$tmp/slow.yaml" >"$tmp/term.yaml"
ctl submit -f "$tmp/term.yaml" >"$tmp/term.out" 2>"$tmp/term.err" || fail "submit of term failed"
term_id=$(sed -n 1p "$tmp/term.out")
wait_until "term's task is not RUNNING" task_running "$term_id"
kill -TERM "$worker_pid"
wait_exit "$worker_pid" "forge_worker.js (nodeworker)"
worker_pid=""
[[ $exit_rc -eq 0 ]] || fail "forge_worker.js exited $exit_rc on SIGTERM, want 0"
rc=0
ctl wait "$term_id" --timeout 10s >"$tmp/termwait.out" 2>"$tmp/termwait.err" || rc=$?
[[ $rc -eq 1 ]] || fail "forgectl wait after SIGTERM exited $rc, want 1"
grep -Eq '^  slow: FAILED attempt=1 LEASE_LOST .*disconnected' "$tmp/termwait.out" ||
  fail "the running task did not lose its lease when the worker left"

kill -TERM "$failer_pid"
wait_exit "$failer_pid" "forge_worker.js (nodefail)"
failer_pid=""
[[ $exit_rc -eq 0 ]] || fail "forge_worker.js (nodefail) exited $exit_rc on SIGTERM, want 0"
kill -TERM "$forged_pid"
wait_exit "$forged_pid" forged
forged_pid=""
[[ $exit_rc -eq 0 ]] || fail "forged exited $exit_rc on SIGTERM"

# --- traces: forged and nodeworker flushed their spans when they stopped ----
# Each attempt nodeworker ran (the diamond's, boom's two, rescue's) has a
# "forge.task" span from forged and, its child in the same trace, a
# "forge.worker.handle" span from the Node worker.
# One document for check_json: the OTLP requests, the diamond, the graph ids.
"$NODE" -e '
  const fs = require("node:fs");
  const dir = process.argv[1];
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort();
  const requests = files.map((f) => JSON.parse(fs.readFileSync(`${dir}/${f}`, "utf8")));
  fs.writeFileSync(process.argv[2], JSON.stringify({
    requests,
    diamond: JSON.parse(fs.readFileSync(process.argv[3], "utf8")),
    ids: { diamond: process.argv[4], fail: process.argv[5] },
  }));' "$tmp/otlp" "$tmp/traces.json" "$tmp/diamond.json" "$graph_id" "$fail_id" ||
  fail "cannot read the received spans"
check_json "$tmp/traces.json" "exported spans" <<'EOF'
const value = (v) => {
  const [[kind, x]] = Object.entries(v);
  return kind === 'intValue' ? Number(x) : x;
};
const spans = [];
for (const request of doc.requests) {
  for (const rs of request.resourceSpans) {
    const resource = Object.fromEntries(rs.resource.attributes.map((a) => [a.key, value(a.value)]));
    for (const ss of rs.scopeSpans) {
      assert.equal(ss.scope.name, 'forge');
      for (const s of ss.spans) {
        s.attrs = Object.fromEntries(s.attributes.map((a) => [a.key, value(a.value)]));
        spans.push([resource['service.name'], s]);
      }
    }
  }
}
assert.ok(spans.length > 0, 'no spans received');
const find = (service, name, graph, task, attempt) => {
  const found = spans.filter(([svc, s]) => svc === service && s.name === name &&
    s.attrs['forge.graph.id'] === graph && s.attrs['forge.task.name'] === task &&
    s.attrs['forge.task.attempt'] === attempt).map(([, s]) => s);
  assert.equal(found.length, 1, `${service} ${name} ${task} attempt ${attempt}`);
  return found[0];
};
const { diamond, fail } = doc.ids;
const handles = {};
for (const [graph, task, attempt, ok] of [
  [diamond, 'a', 1, true], [diamond, 'b', 1, true], [diamond, 'c', 1, true],
  [diamond, 'd', 1, true], [diamond, 'tp', 1, true],
  [fail, 'boom', 1, false], [fail, 'boom', 2, false], [fail, 'rescue', 1, true]]) {
  const parent = find('forged', 'forge.task', graph, task, attempt);
  const span = find('forge-worker:nodeworker', 'forge.worker.handle', graph, task, attempt);
  const what = `${task} attempt ${attempt}`;
  assert.equal(span.traceId, parent.traceId, what);
  assert.equal(span.parentSpanId, parent.spanId, what);
  assert.match(span.spanId, /^[0-9a-f]{16}$/, what);
  assert.notEqual(span.spanId, parent.spanId, what);
  assert.equal(span.kind, 5, what); // CONSUMER
  assert.ok(BigInt(span.startTimeUnixNano) <= BigInt(span.endTimeUnixNano), what);
  assert.equal(span.attrs['forge.worker.id'], parent.attrs['forge.worker.id'], what);
  assert.match(span.attrs['forge.worker.id'], /^nodeworker-/, what);
  assert.equal(span.attrs['forge.queue'], parent.attrs['forge.queue'], what);
  if (ok) {
    assert.deepEqual(span.status, { code: 1 }, what);
  } else {
    assert.equal(span.status.code, 2, what);
    assert.match(span.status.message, /^boom: failure requested/, what);
    assert.equal(span.attrs['error.type'], 'INJECTED', what);
  }
  handles[`${task}/${attempt}`] = span;
}
// The traceparent tp's handler was given names its own span.
const tp = handles['tp/1'];
assert.equal(out(byName(doc.diamond).tp), `00-${tp.traceId}-${tp.spanId}-01`);
EOF
kill -TERM "$otlp_pid"
wait_exit "$otlp_pid" "the OTLP receiver"
otlp_pid=""

echo "node_worker: ok (${SECONDS}s)"
