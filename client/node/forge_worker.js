#!/usr/bin/env node
// Forge example worker for Node.js: serves queues over WorkerService.Connect.
//
//   node forge_worker.js [--server HOST:PORT] --queue Q [--queue Q2]
//                        [--slots N] [--name NAME] [--mode echo|upper|fail]
//                        [--heartbeat-ms MS] [--proto-dir DIR]
//                        [--otlp-endpoint URL]
//
// The protocol, in short (see proto/forge/v1/worker.proto):
//   1. open the Connect stream and send WorkerMessage{hello{name, queues, slots}};
//   2. the server answers ServerMessage{welcome{worker_id}}, then sends
//      assignments (never more outstanding than `slots`), cancels and acks;
//   3. when a handler begins an assignment send WorkerMessage{started: [lease]}
//      (the server's "pickup": dispatched -> started); when it is done send
//      WorkerMessage{results: [TaskResult{lease, ...}]}, echoing the
//      assignment's lease unchanged; while tasks run, send heartbeats listing
//      their leases.
//
// The protos are loaded at run time with @grpc/proto-loader (no generated
// code). Modes: echo returns the input (or the task name if it is empty);
// upper returns it upper-cased followed by the upstream outputs, e.g.
// "D(b=B(a=HELLO),c=C(a=HELLO))"; fail fails every attempt (NODE_FAIL). In
// every mode the params sleep_ms=N wait N ms first (a cancel cuts the wait
// short) and fail=true fail the attempt with code INJECTED; in echo and upper
// modes traceparent=true returns the handler's ctx.traceparent. Pass your own
// async handler(assignment, signal, ctx) to Worker to do real work: signal is
// an AbortSignal aborted on cancel, ctx is {signal, traceparent}; throw
// TaskFailure to fail an attempt.
//
// Tracing: each assignment carries the W3C traceparent of its attempt's span
// ("00-<trace id>-<span id>-<flags>"). The worker gives each attempt a span of
// its own (random span id, child of the attempt's span); ctx.traceparent is
// "00-<same trace id>-<own span id>-<same flags>" for the handler to pass on
// ('' when the assignment had no valid traceparent). With --otlp-endpoint (or
// FORGE_OTLP_ENDPOINT, e.g. http://127.0.0.1:4318; Worker's otlpEndpoint) the
// worker exports that span, "forge.worker.handle", from service
// "forge-worker:<name>", as OTLP/HTTP JSON to <endpoint>/v1/traces, like the
// C++ worker library: batched from a bounded queue (overflow is dropped and
// counted), never in the way of handling, flushed (briefly) when it stops.
//
// SIGTERM or SIGINT ends the stream and exits 0 (the server retries whatever
// was running here elsewhere, as for a lost lease). The stream failing exits 1;
// usage errors exit 2.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const https = require('node:https');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Well under the default heartbeat timeout (30 s).
const DEFAULT_HEARTBEAT_MS = 10000;
// After SIGTERM, how long the server gets to finish the stream we ended.
const CLOSE_GRACE_MS = 2000;
// When the stream has ended, how long queued spans get to reach the collector.
const SPAN_FLUSH_MS = 2000;

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
  async echo(assignment, signal, ctx) {
    await paramSleep(assignment, signal);
    if (assignment.params.traceparent === 'true') return Buffer.from(ctx.traceparent);
    return assignment.input.length ? assignment.input : Buffer.from(assignment.task);
  },
  // Shows that the worker computed the output and that data flowed along
  // the edges: "NAME(dep1=OUT1,dep2=OUT2)", dependencies by name.
  async upper(assignment, signal, ctx) {
    await paramSleep(assignment, signal);
    if (assignment.params.traceparent === 'true') return Buffer.from(ctx.traceparent);
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

// --- W3C trace context -------------------------------------------------------

/**
 * {traceId, spanId, flags} of a traceparent header, or null unless it is
 * valid (a later version's is read by the version-00 rules, as the spec asks).
 */
function parseTraceparent(header) {
  const parts = String(header || '').trim().split('-');
  if (parts.length < 4) return null;
  const [version, traceId, spanId, flags] = parts;
  if (!/^[0-9a-f]{2}$/.test(version) || version === 'ff') return null;
  if (version === '00' && parts.length !== 4) return null;
  if (!/^[0-9a-f]{32}$/.test(traceId) || /^0+$/.test(traceId)) return null;
  if (!/^[0-9a-f]{16}$/.test(spanId) || /^0+$/.test(spanId)) return null;
  if (!/^[0-9a-f]{2}$/.test(flags)) return null;
  return { traceId, spanId, flags };
}

/** A random span id: 16 hex digits, never all zero. */
function newSpanId() {
  for (;;) {
    const id = crypto.randomBytes(8).toString('hex');
    if (id !== '0000000000000000') return id;
  }
}

// Unix time in nanoseconds (a decimal string): the wall clock at start-up
// plus the monotonic clock since.
const EPOCH_NS = BigInt(Date.now()) * 1000000n - process.hrtime.bigint();
function nowNanos() {
  return (EPOCH_NS + process.hrtime.bigint()).toString();
}

// --- OTLP/HTTP JSON export (https://opentelemetry.io/docs/specs/otlp/) -------

const SPAN_KIND_CONSUMER = 5;
const STATUS_OK = 1;
const STATUS_ERROR = 2;

function otlpAttributes(attributes) {
  return attributes.map(([key, v]) => {
    let value;
    if (typeof v === 'boolean') value = { boolValue: v };
    else if (typeof v === 'bigint' || Number.isInteger(v)) value = { intValue: String(v) };
    else if (typeof v === 'number') value = { doubleValue: v };
    else value = { stringValue: String(v) };
    return { key, value };
  });
}

/**
 * One ExportTraceServiceRequest in OTLP/JSON: one resource, one scope
 * ("forge"), the spans ({traceId, spanId, parentSpanId, name, kind, startNs,
 * endNs, attributes: [[key, value]...], status, statusMessage}). The same
 * encoding as common/otlp.cc.
 */
function encodeSpans(spans, resource) {
  return JSON.stringify({
    resourceSpans: [{
      resource: { attributes: otlpAttributes(resource) },
      scopeSpans: [{
        scope: { name: 'forge' },
        spans: spans.map((s) => ({
          traceId: s.traceId,
          spanId: s.spanId,
          ...(s.parentSpanId ? { parentSpanId: s.parentSpanId } : {}),
          name: s.name,
          kind: s.kind,
          startTimeUnixNano: s.startNs,
          endTimeUnixNano: s.endNs,
          attributes: otlpAttributes(s.attributes),
          status: { code: s.status, ...(s.statusMessage ? { message: s.statusMessage } : {}) },
        })),
      }],
    }],
  });
}

/**
 * The traces URL of an OTLP/HTTP endpoint ("/v1/traces" appended unless it is
 * there); throws for anything but an http:// or https:// URL.
 */
function otlpTracesUrl(endpoint) {
  if (!/^https?:\/\//.test(endpoint)) {
    throw new Error(`otlp endpoint: "${endpoint}" is not an http:// or https:// URL ` +
                    '(OTLP/HTTP, e.g. http://127.0.0.1:4318)');
  }
  let url = endpoint.replace(/\/+$/, '');
  if (!url.endsWith('/v1/traces')) url += '/v1/traces';
  return new URL(url);
}

/**
 * Sends finished spans to an OTLP/HTTP collector. export() only queues (at
 * most maxQueue spans; beyond that they are dropped, counted); one request
 * at a time carries a batch once maxBatch spans are queued or the oldest has
 * waited flushMs. Its timers never keep the process alive.
 */
class SpanExporter {
  constructor(endpoint, serviceName,
    { maxQueue = 4096, maxBatch = 512, flushMs = 1000, timeoutMs = 5000 } = {}) {
    this.url = otlpTracesUrl(endpoint);
    this.transport = this.url.protocol === 'https:' ? https : http;
    this.resource = [['service.name', serviceName]];
    Object.assign(this, { maxQueue, maxBatch, flushMs, timeoutMs });
    this.queue = []; // [Date.now() when queued, span]
    this.timer = null; // the flush of a partial batch
    this.abortRequest = null; // set while a request is in flight
    this.stopping = false;
    this.onIdle = null; // close() waiting for the queue to drain
    this.stats = { exported: 0, dropped: 0, failed: 0, requests: 0 };
  }

  /** Queues a finished span; drops it (counted) if full or closed. */
  export(span) {
    if (this.stopping || this.queue.length >= this.maxQueue) {
      this.stats.dropped++;
      return;
    }
    this.queue.push([Date.now(), span]);
    this.schedule();
  }

  /** Sends what is queued, for at most timeoutMs; resolves when done. */
  close(timeoutMs = SPAN_FLUSH_MS) {
    this.stopping = true;
    return new Promise((resolve) => {
      const deadline = setTimeout(() => {
        // Gives up on the request: its batch and the rest of the queue are
        // counted as failed.
        if (this.abortRequest) this.abortRequest();
        resolve();
      }, timeoutMs);
      this.onIdle = () => {
        clearTimeout(deadline);
        resolve();
      };
      this.schedule();
    });
  }

  schedule() {
    if (this.abortRequest) return; // its end schedules again
    if (this.queue.length === 0) {
      if (this.onIdle) this.onIdle();
      return;
    }
    if (this.stopping || this.queue.length >= this.maxBatch) {
      this.send();
    } else if (!this.timer) {
      const wait = Math.max(0, this.queue[0][0] + this.flushMs - Date.now());
      this.timer = setTimeout(() => this.send(), wait).unref();
    }
  }

  send() {
    clearTimeout(this.timer);
    this.timer = null;
    const batch = this.queue.splice(0, this.maxBatch).map(([, span]) => span);
    this.post(Buffer.from(encodeSpans(batch, this.resource)), (ok) => {
      this.abortRequest = null;
      this.stats.requests++;
      if (ok) {
        this.stats.exported += batch.length;
      } else {
        this.stats.failed += batch.length;
        if (this.stopping) {
          // Shutting down and the collector is not answering: the rest
          // would only wait for their timeouts too.
          this.stats.failed += this.queue.length;
          this.queue = [];
        }
      }
      this.schedule();
    });
  }

  post(body, done) {
    let settled = false;
    const settle = (ok) => {
      if (!settled) {
        settled = true;
        done(ok);
      }
    };
    const req = this.transport.request(this.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': body.length },
      timeout: this.timeoutMs,
    }, (res) => {
      res.resume(); // the body is not needed
      res.on('end', () => settle(res.statusCode >= 200 && res.statusCode < 300));
      res.on('error', () => settle(false));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => settle(false));
    req.on('close', () => settle(false)); // after 'end' when it succeeded
    this.abortRequest = () => {
      req.destroy();
      settle(false);
    };
    req.end(body);
  }
}

// --- The worker ----------------------------------------------------------------

/**
 * Serves `queues` with at most `slots` handlers running. otlpEndpoint: the
 * OTLP/HTTP collector for this worker's spans (undefined reads
 * FORGE_OTLP_ENDPOINT, '' exports none; a malformed one throws).
 */
class Worker {
  constructor({ server, name, queues, slots, handler, heartbeatMs, protoDir, otlpEndpoint }) {
    const endpoint = otlpEndpoint ?? process.env.FORGE_OTLP_ENDPOINT ?? '';
    this.spans = endpoint ? new SpanExporter(endpoint, `forge-worker:${name}`) : null;
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
    const code = this.error ? 1 : 0;
    if (!this.spans) {
      this.resolveDone(code);
      return;
    }
    this.spans.close(SPAN_FLUSH_MS).then(() => {
      const { dropped, failed } = this.spans.stats;
      if (dropped || failed) {
        log(`otlp: ${dropped} spans dropped, ${failed} not accepted by ${this.spans.url}`);
      }
      this.resolveDone(code);
    });
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
    // The attempt's span (from the assignment) and this worker's own.
    job.parent = parseTraceparent(assignment.traceparent);
    job.spanId = job.parent ? newSpanId() : '';
    job.ctx = {
      signal: job.controller.signal,
      traceparent: job.parent ? `00-${job.parent.traceId}-${job.spanId}-${job.parent.flags}` : '',
    };
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
    const startNs = nowNanos();
    try {
      // May have been cancelled while it waited for a slot.
      if (signal.aborted) throw new TaskFailure('CANCELLED', job.reason);
      this.send({ started: [assignment.lease] }); // picked up: reported now
      const output = await this.handler(assignment, signal, job.ctx);
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
    // Not sampled (bit 0 of the trace flags clear): the span is not recorded.
    const sampled = job.parent && (parseInt(job.parent.flags, 16) & 1) === 1;
    if (this.spans && sampled) this.spans.export(this.span(job, result, startNs));
    this.send({ results: [result] });
  }

  /** This worker's span of one attempt (a child of the attempt's span). */
  span(job, result, startNs) {
    const { assignment, parent } = job;
    const attributes = [
      ['forge.graph.id', assignment.lease.graph_id],
      ['forge.task.name', assignment.task],
      ['forge.task.attempt', assignment.lease.attempt],
      ['forge.queue', assignment.queue],
      ['forge.worker.id', this.workerId || ''],
    ];
    if (!result.success && result.error.code) attributes.push(['error.type', result.error.code]);
    return {
      traceId: parent.traceId,
      spanId: job.spanId,
      parentSpanId: parent.spanId,
      name: 'forge.worker.handle',
      kind: SPAN_KIND_CONSUMER,
      startNs,
      endNs: nowNanos(),
      attributes,
      status: result.success ? STATUS_OK : STATUS_ERROR,
      statusMessage: result.success ? '' : result.error.message,
    };
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
                       [--proto-dir DIR] [--otlp-endpoint URL]`;

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
        'otlp-endpoint': { type: 'string', default: process.env.FORGE_OTLP_ENDPOINT || '' },
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
  try {
    if (values['otlp-endpoint']) otlpTracesUrl(values['otlp-endpoint']);
  } catch (err) {
    usageError(err.message);
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
      otlpEndpoint: values['otlp-endpoint'],
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

module.exports = {
  Worker, TaskFailure, HANDLERS, loadForge, SpanExporter, encodeSpans, parseTraceparent,
};
