#!/usr/bin/env bash
# The command runner with the real binaries (forged --config, forgectl):
#   1. the seed watcher's scenario done right: 30 tasks of a fake agent CLI
#      taking 1 s each, across 3 agents (ordering_key) in a per_key queue with
#      5 slots: each agent's tasks start in submission order, one at a time,
#      the agents in parallel (about 10 s instead of 30);
#   2. a hung CLI (ignores SIGTERM, has a child) is killed with its child at
#      its run timeout and retried with the configured backoff, visible in
#      `forgectl watch`;
#   3. `forgectl logs -f` follows a run live; `forgectl logs` shows the kept
#      output afterwards;
#   4. SIGTERM with a runner task running: forged exits 0, no process left.
# Usage: runner_e2e_test.sh BIN_DIR FAKE_CLI_DIR
set -euo pipefail
bin="$(cd "$1" && pwd)"
cli="$(cd "$2" && pwd)"
work="$(mktemp -d)"
forged_pid=""
cleanup() {
  [ -n "$forged_pid" ] && kill -KILL "$forged_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- forged log"; cat "$work/forged.log" || true; exit 1; }
. "$(dirname "$0")/../lib/port_of.sh"
ctl() { "$bin/forgectl" "$@"; }

# alive PID: running and not a zombie.
alive() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat"; }
# gone PID: waits up to 5 s for it to die (SIGKILL is asynchronous).
gone() { for _ in $(seq 1 100); do alive "$1" || return 0; sleep 0.05; done; return 1; }

cat >"$work/forge.yaml" <<YAML
queues:
  agents: {concurrency: 5, ordering: per_key}
runner:
  work_root: $work/runs
  kill_grace: 500ms
profiles:
  agent:
    queues: [agents]
    command: [/bin/sh, $cli/fake_agent.sh, "{secs}"]
    env_allow: [PATH]
    slots: 5
  hang:
    command: [/bin/sh, $cli/hang.sh, "$work/hang.{attempt}"]
    env_allow: [PATH]
  ticker:
    command: [/bin/sh, -c, 'for i in 1 2 3 4 5; do echo tick \$i; sleep 0.3; done; echo err-line >&2']
    env_allow: [PATH]
YAML

"$bin/forged" --listen 127.0.0.1:0 --metrics-listen "" --ephemeral \
  --config "$work/forge.yaml" --shutdown-grace-seconds 1 2>"$work/forged.log" &
forged_pid=$!
port=$(port_of "$work/forged.log" '.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*' "$forged_pid" forged) || exit 1
export FORGE_SERVER="127.0.0.1:$port"

# --- 1. 30 agent tasks, 3 agents, per_key, 5 slots --------------------------
{
  echo "name: agents"
  echo "tasks:"
  for i in $(seq 0 29); do
    agent=$(echo "claude gemini cursor" | cut -d' ' -f$((i % 3 + 1)))
    echo "  - {name: $agent-$i, queue: agents, ordering_key: $agent, input: \"prompt $i\", params: {secs: \"1\"}}"
  done
} >"$work/agents.yaml"
start=$(date +%s.%N)
out=$(ctl submit -f "$work/agents.yaml" --wait) || fail "agents graph did not succeed: $out"
end=$(date +%s.%N)
id=$(echo "$out" | head -1 | awk '{print $1}')
ctl watch "$id" -o json >"$work/agents.jsonl" || fail "watch exited $?"
python3 - "$work/agents.jsonl" <<'PY' || fail "per-agent order or parallelism broken"
import json, sys
started, running, peak, par = {}, {}, 0, 0
for line in open(sys.argv[1]):
    e = json.loads(line)
    t, task = e.get("type"), e.get("task", "")
    if not task: continue
    key = task.split("-")[0]
    if t == "TASK_STARTED":
        started.setdefault(key, []).append(int(task.split("-")[1]))
        running[key] = running.get(key, 0) + 1
        assert running[key] == 1, f"two {key} tasks at once"
        par += 1; peak = max(peak, par)
    elif t == "TASK_SUCCEEDED":
        running[key] -= 1; par -= 1
for key, seq in started.items():
    assert seq == sorted(seq) and len(seq) == 10, (key, seq)
assert len(started) == 3 and peak == 3, (started.keys(), peak)
PY
ctl task "$id" claude-27 | grep -q "agent claude-27 attempt 1: prompt 27" \
  || fail "task output is not the CLI's stdout"
echo "ok: 30 tasks x 1 s on 3 agents (per_key, 5 slots) in $(awk "BEGIN { printf \"%.1f\", $end - $start }") s," \
     "each agent in submission order"

# --- 2. a hung CLI is killed at its timeout, with its child, and retried ------
cat >"$work/hang.yaml" <<'YAML'
name: hung
tasks:
  - name: stuck
    queue: hang
    timeouts: {run: 1s}
    retry: {max_attempts: 2, initial_backoff: 1s, jitter: 0}
YAML
set +e
hout=$(ctl submit -f "$work/hang.yaml" --wait)
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "hung graph: expected exit 1 (FAILED), got $rc: $hout"
hid=$(echo "$hout" | head -1 | awk '{print $1}')
ctl watch "$hid" >"$work/hang.txt"
grep -q "TASK_RETRY_SCHEDULED stuck attempt=1 .*error=TIMEOUT.*retry_at=" "$work/hang.txt" \
  || fail "no TIMEOUT retry in watch: $(cat "$work/hang.txt")"
grep -q "TASK_FAILED stuck attempt=2 .*error=TIMEOUT" "$work/hang.txt" \
  || fail "second attempt did not time out: $(cat "$work/hang.txt")"
for a in 1 2; do
  read -r shell_pid child_pid <"$work/hang.$a"
  gone "$shell_pid" || fail "attempt $a: hung shell $shell_pid survived"
  gone "$child_pid" || fail "attempt $a: its child $child_pid survived"
done
echo "ok: hung CLI killed with its child at the 1 s timeout, retried after 1 s backoff:"
grep -E "TASK_(STARTED|RETRY_SCHEDULED|FAILED) stuck" "$work/hang.txt" | sed 's/^/    /'

# --- 3. logs -f follows a run; logs shows it afterwards ------------------------
echo '{name: ticker, tasks: [{name: t, queue: ticker}]}' >"$work/ticker.yaml"
tid=$(ctl submit -f "$work/ticker.yaml" | awk '{print $1}')
ctl logs "$tid" t -f >"$work/follow.out" 2>"$work/follow.err" || fail "logs -f exited $?"
[ "$(cat "$work/follow.out")" = "$(printf 'tick %s\n' 1 2 3 4 5)" ] \
  || fail "logs -f stdout: $(cat "$work/follow.out")"
grep -qx "err-line" "$work/follow.err" || fail "logs -f stderr: $(cat "$work/follow.err")"
ctl wait "$tid" >/dev/null || fail "ticker did not succeed"
ctl logs "$tid" t >"$work/logs.out" 2>/dev/null || fail "logs exited $?"
cmp -s "$work/follow.out" "$work/logs.out" || fail "logs differ from logs -f"
set +e
ctl logs "$tid" nope 2>"$work/nope.err"; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q NOT_FOUND "$work/nope.err" || fail "logs of an unknown task: $rc"
echo "ok: logs -f followed the run to its end; logs shows the same kept output"

# --- 4. SIGTERM with a runner task running ---------------------------------------
rm -f "$work"/hang.*
echo '{name: stuck-at-shutdown, tasks: [{name: s, queue: hang}]}' >"$work/stuck.yaml"
sid=$(ctl submit -f "$work/stuck.yaml" | awk '{print $1}')
for _ in $(seq 1 100); do
  ctl logs "$sid" s 2>/dev/null | grep -q hanging && break
  sleep 0.05
done
[ -s "$work/hang.1" ] || fail "the stuck task did not start"
read -r shell_pid child_pid <"$work/hang.1"
kill -TERM "$forged_pid"
set +e
wait "$forged_pid"; rc=$?
set -e
forged_pid=""
[ "$rc" -eq 0 ] || fail "forged exited $rc on SIGTERM"
gone "$shell_pid" && gone "$child_pid" || fail "a runner process survived forged"
echo "ok: SIGTERM with a runner task running: exit 0, its processes gone"
