#!/usr/bin/env node
// Forge example worker for Node.js: serves queues over WorkerService.Connect.
//
//   node forge_worker.js [--server HOST:PORT] --queue Q [--queue Q2]
//                        [--slots N] [--name NAME] [--mode echo|upper|fail]
//                        [--heartbeat-ms MS] [--proto-dir DIR]
//
// The protocol, in short (see proto/forge/v1/worker.proto):
//   1. open the Connect stream and send WorkerMessage{hello{name, queues, slots}};
//   2. the server answers ServerMessage{welcome{worker_id}}, then sends
//      assignments (never more outstanding than `slots`), cancels and acks;
//   3. for each assignment send WorkerMessage{results: [TaskResult{lease, ...}]},
//      echoing the assignment's lease unchanged; while tasks run, send
//      heartbeats listing their leases.
//
// The protos are loaded at run time with @grpc/proto-loader (no generated
// code). Modes: echo returns the input (or the task name if it is empty);
// upper returns it upper-cased followed by the upstream outputs, e.g.
// "D(b=B(a=HELLO),c=C(a=HELLO))"; fail fails every attempt (NODE_FAIL). In
// every mode the params sleep_ms=N wait N ms first (a cancel cuts the wait
// short) and fail=true fail the attempt with code INJECTED. Pass your own
// async handler(assignment, signal) to Worker to do real work; throw
// TaskFailure to fail an attempt.
//
// SIGTERM or SIGINT ends the stream and exits 0 (the server retries whatever
// was running here elsewhere, as for a lost lease). The stream failing exits 1;
// usage errors exit 2.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Well under the default heartbeat timeout (30 s).
const DEFAULT_HEARTBEAT_MS = 10000;
// After SIGTERM, how long the server gets to finish the stream we ended.
const CLOSE_GRACE_MS = 2000;

/** Thrown by a handler to fail the attempt with a TaskError. */
class TaskFailure extends Error {
  constructor(code, message = '', nonRetryable = false) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
    this.nonRetryable = nonRetryable;
  }
}

/** Loads forge.v1 from the .proto files under protoDir. */
function loadForge(protoDir) {
  const definition = protoLoader.loadSync('forge/v1/worker.proto', {
    includeDirs: [protoDir],
    keepCase: true, // field names as in the .proto: graph_id, task_index...
    longs: String, // Lease.epoch (uint64) stays exact and is echoed as is
    enums: String,
    defaults: true, // absent maps and bytes read as {} and empty Buffers
  });
  return grpc.loadPackageDefinition(definition).forge.v1;
}

/** Resolves after ms, or rejects when signal aborts (a cancel). */
async function paramSleep(assignment, signal) {
  const ms = Number(assignment.params.sleep_ms || 0);
  if (ms > 0) await sleep(ms, undefined, { signal });
  if (assignment.params.fail === 'true') {
    throw new TaskFailure('INJECTED',
      `${assignment.task}: failure requested by params (fail=true)`);
  }
}

function text(assignment) {
  return assignment.input.length ? assignment.input.toString('utf8') : assignment.task;
}

const HANDLERS = {
  async echo(assignment, signal) {
    await paramSleep(assignment, signal);
    return assignment.input.length ? assignment.input : Buffer.from(assignment.task);
  },
  // Shows that the worker computed the output and that data flowed along
  // the edges: "NAME(dep1=OUT1,dep2=OUT2)", dependencies by name.
  async upper(assignment, signal) {
    await paramSleep(assignment, signal);
    const up = Object.keys(assignment.upstream_outputs).sort()
      .map((name) => `${name}=${assignment.upstream_outputs[name].toString('utf8')}`);
    const own = text(assignment).toUpperCase();
    return Buffer.from(up.length ? `${own}(${up.join(',')})` : own);
  },
  async fail(assignment, signal) {
    await paramSleep(assignment, signal);
    throw new TaskFailure('NODE_FAIL', `${assignment.task}: the worker runs in fail mode`);
  },
};

function leaseKey(lease) {
  return `${lease.graph_id}/${lease.task_index}/${lease.attempt}/${lease.epoch}`;
}

function log(message) {
  process.stderr.write(`forge_worker: ${message}\n`);
}

class Worker {
  constructor({ server, name, queues, slots, handler, heartbeatMs, protoDir }) {
    const forge = loadForge(protoDir);
    this.client = new forge.WorkerService(server, grpc.credentials.createInsecure());
    this.hello = { name, queues, slots };
    this.slots = slots;
    this.handler = handler;
    this.heartbeatMs = heartbeatMs;
    this.jobs = new Map(); // leaseKey -> job, from assignment to its result
    this.waiting = []; // jobs assigned but not started (all slots busy)
    this.active = 0; // jobs whose handler is running
    this.cancelReports = new Set(); // leaseKeys reported CANCELLED, unacked
    this.stopping = false;
    this.workerId = null;
    this.error = null; // why the stream ended, unless stop() ended it
    // Resolves with the exit code once the stream has ended.
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  start() {
    this.call = this.client.Connect();
    this.call.on('data', (msg) => this.onMessage(msg));
    this.call.on('error', (err) => {
      if (!this.stopping) this.error = `${grpc.status[err.code]}: ${err.details}`;
    });
    // 'status' comes once, when the call has ended (after 'error' if it
    // failed), whoever ended it.
    this.call.on('status', () => this.finish());
    this.call.write({ hello: this.hello });
    this.heartbeat = setInterval(() => this.sendHeartbeat(), this.heartbeatMs);
  }

  /** Ends the stream; running handlers see their signal aborted. */
  stop() {
    if (this.stopping) return;
    this.stopping = true;
    for (const job of this.jobs.values()) job.controller.abort();
    this.call.end(); // half-close: the server finishes the call with OK
    setTimeout(() => this.call.cancel(), CLOSE_GRACE_MS).unref();
  }

  finish() {
    clearInterval(this.heartbeat);
    if (!this.stopping && !this.error) this.error = 'the server closed the stream';
    this.stopping = true;
    for (const job of this.jobs.values()) job.controller.abort();
    this.client.close();
    this.resolveDone(this.error ? 1 : 0);
  }

  send(msg) {
    if (!this.stopping) this.call.write(msg);
  }

  onMessage(msg) {
    if (this.stopping) return; // the leases are lost with the stream anyway
    if (msg.welcome) {
      this.workerId = msg.welcome.worker_id;
      log(`connected as ${this.workerId}`);
    }
    for (const assignment of msg.assignments) this.assign(assignment);
    for (const cancel of msg.cancels) {
      const job = this.jobs.get(leaseKey(cancel.lease));
      if (!job) continue; // already reported
      job.reason = cancel.reason || 'cancelled';
      log(`cancel ${job.assignment.task} of ${cancel.lease.graph_id} ` +
          `attempt ${cancel.lease.attempt}: ${job.reason}`);
      job.controller.abort();
    }
    for (const ack of msg.acks) {
      const key = leaseKey(ack.lease);
      const wasCancelled = this.cancelReports.delete(key);
      // A cancelled attempt is already over on the server, so its CANCELLED
      // result may be refused (ABORTED): expected, nothing to do.
      if (ack.code !== 0 && !wasCancelled) {
        log(`result for ${ack.lease.graph_id} task #${ack.lease.task_index} ` +
            `attempt ${ack.lease.attempt} refused (${grpc.status[ack.code]}): ${ack.message}`);
      }
    }
  }

  assign(assignment) {
    const job = { assignment, controller: new AbortController(), reason: '' };
    this.jobs.set(leaseKey(assignment.lease), job);
    this.waiting.push(job);
    this.pump();
  }

  // Starts waiting jobs while slots are free: never more than `slots` run,
  // even if the server sent more.
  pump() {
    while (this.active < this.slots && this.waiting.length > 0) {
      const job = this.waiting.shift();
      this.active++;
      this.run(job).finally(() => {
        this.active--;
        this.pump();
      });
    }
  }

  async run(job) {
    const { assignment, controller } = job;
    const { signal } = controller;
    const result = { lease: assignment.lease, success: false };
    try {
      // May have been cancelled while it waited for a slot.
      const output = signal.aborted ? null : await this.handler(assignment, signal);
      if (signal.aborted) throw new TaskFailure('CANCELLED', job.reason);
      result.success = true;
      result.output = Buffer.isBuffer(output) ? output : Buffer.from(String(output ?? ''));
    } catch (err) {
      if (signal.aborted) {
        result.error = { code: 'CANCELLED', message: job.reason };
      } else if (err instanceof TaskFailure) {
        result.error = { code: err.code, message: err.detail, non_retryable: err.nonRetryable };
      } else { // a handler bug fails the attempt, not the worker
        result.error = { code: 'EXCEPTION', message: String(err && err.stack || err) };
      }
    }
    const key = leaseKey(assignment.lease);
    this.jobs.delete(key);
    if (!result.success && result.error.code === 'CANCELLED') this.cancelReports.add(key);
    this.send({ results: [result] });
  }

  sendHeartbeat() {
    // Every lease held, started or waiting for a slot: the server counts
    // them all as running.
    const leases = [...this.jobs.values()].map((job) => job.assignment.lease);
    if (leases.length > 0) this.send({ heartbeat: { leases } });
  }
}

const USAGE = `Usage: forge_worker.js [--server HOST:PORT] --queue Q [--queue Q2] [--slots N]
                       [--name NAME] [--mode echo|upper|fail] [--heartbeat-ms MS]
                       [--proto-dir DIR]`;

function usageError(message) {
  process.stderr.write(`forge_worker: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function positiveInt(flag, value, max) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    usageError(`--${flag}: expected an integer in 1..${max}, got "${value}"`);
  }
  return n;
}

function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        server: { type: 'string', default: process.env.FORGE_SERVER || '127.0.0.1:7070' },
        queue: { type: 'string', multiple: true },
        slots: { type: 'string', default: '4' },
        name: { type: 'string', default: 'node-worker' },
        mode: { type: 'string', default: 'echo' },
        'heartbeat-ms': { type: 'string', default: String(DEFAULT_HEARTBEAT_MS) },
        'proto-dir': {
          type: 'string',
          default: process.env.FORGE_PROTO_DIR || path.join(__dirname, '..', '..', 'proto'),
        },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    usageError(err.message);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (!values.queue) usageError('at least one --queue');
  if (!Object.hasOwn(HANDLERS, values.mode)) {
    usageError(`--mode: expected ${Object.keys(HANDLERS).join(', ')}, got "${values.mode}"`);
  }
  let worker;
  try {
    worker = new Worker({
      server: values.server,
      name: values.name,
      queues: values.queue,
      slots: positiveInt('slots', values.slots, 10000),
      handler: HANDLERS[values.mode],
      heartbeatMs: positiveInt('heartbeat-ms', values['heartbeat-ms'], 3600000),
      protoDir: values['proto-dir'],
    });
  } catch (err) {
    log(`cannot load the protos from ${values['proto-dir']}: ${err.message}`);
    process.exit(2);
  }
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => worker.stop());
  worker.start();
  worker.done.then((code) => {
    if (worker.error) log(worker.error);
    process.exitCode = code;
  });
}

if (require.main === module) main();

module.exports = { Worker, TaskFailure, HANDLERS, loadForge };
