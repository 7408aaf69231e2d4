#!/usr/bin/env python3
"""Forge example worker: serves queues over WorkerService.Connect.

    forge_worker.py [--server HOST:PORT] --queue Q [--queue Q2] [--slots N]
                    [--name NAME] [--otlp-endpoint URL]

The protocol, in short (see proto/forge/v1/worker.proto):
  1. open the Connect stream and send WorkerMessage{hello{name, queues, slots}};
  2. the server answers ServerMessage{welcome{worker_id}}, then sends
     assignments (never more outstanding than `slots`), cancels and acks;
  3. when a handler begins an assignment, send WorkerMessage{started[lease]}
     (the server's "pickup": dispatched -> started); when it is done send
     WorkerMessage{results[TaskResult{lease, ...}]}, echoing the assignment's
     lease unchanged; while tasks run, send heartbeats listing their leases.

Outgoing messages go through a queue.Queue that feeds the request iterator, so
any thread may send. Tasks run in a pool of `slots` threads.

Handlers. A handler is handler(assignment, ctx) -> bytes, passed to Worker:
`assignment` is the forge.v1.Assignment, `ctx` a TaskContext. TaskContext is a
threading.Event, set when the attempt is cancelled (so handlers written for
the older handler(assignment, cancelled) form keep working: ctx.wait(s),
ctx.is_set()), with `ctx.traceparent` on top. Raise TaskFailure to fail the
attempt; any other exception fails it with code EXCEPTION.

The default handler echoes the task's input (or its name if the input is
empty). Params: fail=true fails the attempt with code INJECTED; sleep_ms=N
waits N ms first (a cancel cuts the wait short); traceparent=true returns the
handler's ctx.traceparent instead of the echo.

Tracing. Each assignment carries the W3C traceparent of its attempt's span in
the graph's trace ("00-<trace id>-<span id>-<flags>"). The worker continues
it: each attempt gets a span of its own (a random span id, child of the
attempt's span), and ctx.traceparent is "00-<same trace id>-<own span id>-
<same flags>", for the handler to pass on to whatever it calls (empty when the
assignment carried no valid traceparent). With an OTLP endpoint (--otlp-endpoint
or FORGE_OTLP_ENDPOINT, e.g. http://127.0.0.1:4318; Worker(otlp_endpoint=...))
the worker exports that span, "forge.worker.handle" (kind CONSUMER; attributes
forge.graph.id, forge.task.name, forge.task.attempt, forge.queue,
forge.worker.id; status OK or ERROR with the error message), from service
"forge-worker:<name>", as OTLP/HTTP JSON to <endpoint>/v1/traces, like the C++
worker library. Export never blocks handling: spans wait in a bounded queue
(beyond it they are dropped and counted) and one daemon thread POSTs them in
batches; what is queued when the worker stops is flushed, within a short
timeout.

SIGTERM or SIGINT closes the stream and exits 0 (the server retries whatever
was running here elsewhere, as for a lost lease). The stream failing exits 1.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import http.client
import json
import os
import queue
import secrets
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from concurrent.futures import ThreadPoolExecutor

import grpc

from forge.v1 import worker_pb2 as wk
from forge.v1 import worker_pb2_grpc as wk_grpc

HEARTBEAT_SECONDS = 10  # well under the default heartbeat timeout (30 s)
# How long stop() lets the span exporter send what is queued.
SPAN_FLUSH_SECONDS = 2.0

LeaseKey = tuple[str, int, int, int]


class TaskFailure(Exception):
    """Raised by a handler to fail the attempt with a TaskError."""

    def __init__(self, code: str, message: str = "",
                 non_retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.non_retryable = code, message, non_retryable


class TaskContext(threading.Event):
    """What a handler gets besides its assignment.

    The event is set when the attempt is cancelled (by the server, or because
    the worker is stopping): wait on it instead of sleeping. `traceparent` is
    the W3C traceparent of this attempt's span on the worker, to pass on to
    whatever the handler calls ("" when the assignment had no trace context).
    """

    def __init__(self, traceparent: str = "") -> None:
        super().__init__()
        self.traceparent = traceparent


Handler = Callable[[wk.Assignment, TaskContext], bytes]


def echo_handler(assignment: wk.Assignment, ctx: TaskContext) -> bytes:
    """Default handler (see the module docstring for its params)."""
    sleep_ms = int(assignment.params.get("sleep_ms") or 0)
    if sleep_ms and ctx.wait(sleep_ms / 1000):
        return b""  # cancelled: the worker reports CANCELLED
    if assignment.params.get("fail") == "true":
        raise TaskFailure("INJECTED", f"{assignment.task}: failure requested "
                          "by params (fail=true)")
    if assignment.params.get("traceparent") == "true":
        return ctx.traceparent.encode()
    return assignment.input or assignment.task.encode()


def lease_key(lease: wk.Lease) -> LeaseKey:
    return (lease.graph_id, lease.task_index, lease.attempt, lease.epoch)


# ---------------------------------------------------------------------------
# W3C trace context

_HEX = frozenset("0123456789abcdef")


def _is_hex(s: str, size: int) -> bool:
    return len(s) == size and all(c in _HEX for c in s)


@dataclasses.dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str   # 16 lowercase hex digits, not all zero
    flags: str = "01"  # 2 hex digits; bit 0 = sampled

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(header: str) -> TraceContext | None:
    """The context of a traceparent header; None unless it is valid (a later
    version's is read by the version-00 rules, as the spec asks)."""
    parts = header.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[:4]
    if not _is_hex(version, 2) or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    if not _is_hex(trace_id, 32) or trace_id == "0" * 32:
        return None
    if not _is_hex(span_id, 16) or span_id == "0" * 16:
        return None
    if not _is_hex(flags, 2):
        return None
    return TraceContext(trace_id, span_id, flags)


def new_span_id() -> str:
    """A random span id: 16 hex digits, never all zero."""
    while (span_id := secrets.token_hex(8)) == "0" * 16:
        pass
    return span_id


# ---------------------------------------------------------------------------
# OTLP/HTTP JSON export (https://opentelemetry.io/docs/specs/otlp/)

AttributeValue = str | bool | int | float

SPAN_KIND_CONSUMER = 5
STATUS_OK = 1
STATUS_ERROR = 2


@dataclasses.dataclass
class Span:
    """One finished span, as OTLP has it."""
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int
    start_ns: int  # Unix time, nanoseconds
    end_ns: int
    attributes: list[tuple[str, AttributeValue]]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str = ""


def _attributes_json(attributes: Sequence[tuple[str, AttributeValue]]
                     ) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for key, value in attributes:
        if isinstance(value, bool):  # before int: bool is an int
            v: dict[str, object] = {"boolValue": value}
        elif isinstance(value, int):
            v = {"intValue": str(value)}  # int64 in proto3 JSON: a string
        elif isinstance(value, float):
            v = {"doubleValue": value}
        else:
            v = {"stringValue": value}
        out.append({"key": key, "value": v})
    return out


def encode_spans(spans: Sequence[Span],
                 resource: Sequence[tuple[str, AttributeValue]]) -> bytes:
    """One ExportTraceServiceRequest in OTLP/JSON: one resource, one scope
    ("forge"), the spans. The same encoding as common/otlp.cc."""
    encoded = []
    for s in spans:
        span: dict[str, object] = {"traceId": s.trace_id, "spanId": s.span_id}
        if s.parent_span_id:
            span["parentSpanId"] = s.parent_span_id
        status: dict[str, object] = {"code": s.status_code}
        if s.status_message:
            status["message"] = s.status_message
        span.update({
            "name": s.name,
            "kind": s.kind,
            # fixed64 in proto3 JSON: decimal strings.
            "startTimeUnixNano": str(s.start_ns),
            "endTimeUnixNano": str(s.end_ns),
            "attributes": _attributes_json(s.attributes),
            "status": status,
        })
        encoded.append(span)
    request = {"resourceSpans": [{
        "resource": {"attributes": _attributes_json(resource)},
        "scopeSpans": [{"scope": {"name": "forge"}, "spans": encoded}],
    }]}
    return json.dumps(request, separators=(",", ":")).encode()


class SpanExporter:
    """Sends finished spans to an OTLP/HTTP collector, from a thread of its own.

    export() never blocks: spans wait in a queue of at most `max_queue`
    (beyond it they are dropped, counted in `dropped`). The thread sleeps
    while nothing is queued, and otherwise POSTs a batch once `max_batch`
    spans are queued or the oldest has waited `flush_interval` seconds.
    Counters (read them after close()): exported (the collector answered
    2xx), dropped, failed (refused or unreachable), requests.
    """

    def __init__(self, endpoint: str, service_name: str, *,
                 max_queue: int = 4096, max_batch: int = 512,
                 flush_interval: float = 1.0,
                 request_timeout: float = 5.0) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f'otlp endpoint: "{endpoint}" is not an http:// or https:// URL '
                "(OTLP/HTTP, e.g. http://127.0.0.1:4318)")
        if max_queue < 1 or max_batch < 1:
            raise ValueError("otlp: max_queue and max_batch must be positive")
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self.url = url
        self._resource: list[tuple[str, AttributeValue]] = [
            ("service.name", service_name)]
        self._max_queue, self._max_batch = max_queue, max_batch
        self._flush_interval = flush_interval
        self._request_timeout = request_timeout
        self._cond = threading.Condition()
        # (time.monotonic() when queued, span)
        self._queue: collections.deque[tuple[float, Span]] = collections.deque()
        self._stopping = False
        self._deadline = 0.0  # monotonic; set by close()
        self._in_flight = 0  # spans in the request being sent
        self._abandoned = False  # close() gave up waiting for the thread
        self.exported = self.dropped = self.failed = self.requests = 0
        self._thread = threading.Thread(target=self._loop, name="forge-otlp",
                                        daemon=True)
        self._thread.start()

    def export(self, span: Span) -> None:
        """Queues a finished span; drops it (counted) if the queue is full or
        the exporter is closed."""
        with self._cond:
            if self._stopping or len(self._queue) >= self._max_queue:
                self.dropped += 1
                return
            self._queue.append((time.monotonic(), span))
            # The thread waits for the first span, then for a full batch.
            if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                self._cond.notify()

    def close(self, timeout: float = SPAN_FLUSH_SECONDS) -> None:
        """Sends what is queued, for at most `timeout` seconds, then stops.
        Spans not sent by then are counted as failed (the daemon thread may
        still be waiting for the collector)."""
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._cond:
            if self._thread.is_alive() and not self._abandoned:
                self._abandoned = True
                self.failed += self._in_flight + len(self._queue)
                self._queue.clear()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        if self._stopping:
                            return
                        self._cond.wait()
                        continue
                    if self._stopping or len(self._queue) >= self._max_batch:
                        break
                    due = self._queue[0][0] + self._flush_interval
                    now = time.monotonic()
                    if now >= due:
                        break
                    self._cond.wait(due - now)
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft()[1] for _ in range(n)]
                self._in_flight = n
                timeout = self._request_timeout
                if self._stopping:
                    timeout = min(timeout, max(0.1, self._deadline - time.monotonic()))
            ok = self._post(encode_spans(batch, self._resource), timeout)
            with self._cond:
                self._in_flight = 0
                if self._abandoned:  # close() counted them already
                    return
                self.requests += 1
                if ok:
                    self.exported += len(batch)
                else:
                    self.failed += len(batch)
                    if self._stopping:
                        # Shutting down and the collector is not answering:
                        # the rest would only wait for their timeouts too.
                        self.failed += len(self._queue)
                        self._queue.clear()

    def _post(self, body: bytes, timeout: float) -> bool:
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return 200 <= response.status < 300
        except (OSError, ValueError, http.client.HTTPException):
            # urllib.error.HTTPError (non-2xx) and URLError are OSErrors.
            return False


# ---------------------------------------------------------------------------
# The worker

class _Job:
    """One assignment being run (or waiting for a pool thread)."""

    def __init__(self, assignment: wk.Assignment) -> None:
        self.assignment = assignment
        # The attempt's span (from the assignment) and this worker's own.
        self.parent = parse_traceparent(assignment.traceparent)
        self.span_id = new_span_id() if self.parent else ""
        traceparent = ""
        if self.parent:
            traceparent = dataclasses.replace(
                self.parent, span_id=self.span_id).traceparent()
        self.ctx = TaskContext(traceparent)
        self.reason = ""


class Worker:
    """Serves `queues` with `slots` handler threads; start() connects.

    otlp_endpoint: OTLP/HTTP collector for the workers' spans (see the module
    docstring); None reads FORGE_OTLP_ENDPOINT, "" exports nothing. A
    malformed endpoint raises ValueError.
    """

    def __init__(self, target: str, name: str, queues: Sequence[str],
                 slots: int, handler: Handler = echo_handler,
                 otlp_endpoint: str | None = None) -> None:
        if otlp_endpoint is None:
            otlp_endpoint = os.environ.get("FORGE_OTLP_ENDPOINT", "")
        self._spans = (SpanExporter(otlp_endpoint, f"forge-worker:{name}")
                       if otlp_endpoint else None)
        self._channel = grpc.insecure_channel(target)
        self._stub = wk_grpc.WorkerServiceStub(self._channel)
        self._hello = wk.WorkerHello(name=name, queues=queues, slots=slots)
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=slots,
                                        thread_name_prefix="forge-task")
        # WorkerMessage to send; None = close
        self._outbox: queue.Queue[wk.WorkerMessage | None] = queue.Queue()
        self._lock = threading.Lock()
        self._running: dict[LeaseKey, _Job] = {}
        self._cancel_reports: set[LeaseKey] = set()  # reported CANCELLED, unacked
        self._stopping = threading.Event()
        # The Connect call: an iterator of ServerMessage and a grpc.Call.
        self._call: Any = None
        self.worker_id: str | None = None
        self.done = threading.Event()  # set when the stream has ended
        self.error: str | None = None  # why the stream ended, unless stop() ended it

    @property
    def span_exporter(self) -> SpanExporter | None:
        """The exporter of this worker's spans (for its counters), if any."""
        return self._spans

    def start(self) -> None:
        self._call = self._stub.Connect(self._requests())
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._heartbeats, daemon=True).start()

    def stop(self) -> None:
        """Closes the stream; running handlers see their ctx set. Then sends
        the spans that are queued (at most SPAN_FLUSH_SECONDS)."""
        self._stopping.set()
        with self._lock:
            for job in self._running.values():
                job.reason = job.reason or "worker stopping"
                job.ctx.set()
        self._outbox.put(None)
        if self._call is not None:
            self._call.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._channel.close()
        if self._spans is not None:
            self._spans.close()

    def _send(self, msg: wk.WorkerMessage) -> None:
        if not self._stopping.is_set():
            self._outbox.put(msg)

    def _requests(self) -> Iterator[wk.WorkerMessage]:
        yield wk.WorkerMessage(hello=self._hello)
        while (msg := self._outbox.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for msg in self._call:
                if msg.HasField("welcome"):
                    self.worker_id = msg.welcome.worker_id
                    print(f"forge_worker: connected as {self.worker_id}",
                          file=sys.stderr, flush=True)
                for assignment in msg.assignments:
                    self._assign(assignment)
                for cancel in msg.cancels:
                    with self._lock:
                        job = self._running.get(lease_key(cancel.lease))
                    if job:
                        job.reason = cancel.reason or "cancelled"
                        job.ctx.set()
                for ack in msg.acks:
                    with self._lock:
                        key = lease_key(ack.lease)
                        was_cancelled = key in self._cancel_reports
                        self._cancel_reports.discard(key)
                    # A cancelled attempt is already over on the server, so
                    # its CANCELLED result is refused (ABORTED): expected.
                    if ack.code != 0 and not was_cancelled:
                        print(f"forge_worker: result for {ack.lease.graph_id} "
                              f"task #{ack.lease.task_index} attempt "
                              f"{ack.lease.attempt} refused: {ack.message}",
                              file=sys.stderr, flush=True)
            if not self._stopping.is_set():
                self.error = "the server closed the stream"
        except grpc.RpcError as e:
            if not self._stopping.is_set():
                self.error = f"{e.code().name}: {e.details()}"
        finally:
            self.done.set()

    def _assign(self, assignment: wk.Assignment) -> None:
        job = _Job(assignment)
        with self._lock:
            self._running[lease_key(assignment.lease)] = job
        self._pool.submit(self._run, job)

    def _run(self, job: _Job) -> None:
        assignment, ctx = job.assignment, job.ctx
        result = wk.TaskResult(lease=assignment.lease)
        start_ns = time.time_ns()
        try:
            if ctx.is_set():  # cancelled while it waited for a thread
                raise TaskFailure("CANCELLED", job.reason)
            # A message of its own, so that a long task's pickup is reported
            # now rather than with its result.
            self._send(wk.WorkerMessage(started=[assignment.lease]))
            output = self._handler(assignment, ctx)
            if ctx.is_set():
                raise TaskFailure("CANCELLED", job.reason)
            result.success = True
            result.output = output
        except TaskFailure as f:
            result.error.code = f.code
            result.error.message = f.message
            result.error.non_retryable = f.non_retryable
        except Exception as e:  # a handler bug fails the attempt, not the worker
            result.error.code = "EXCEPTION"
            result.error.message = f"{type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._running.pop(lease_key(assignment.lease), None)
                if result.error.code == "CANCELLED":
                    self._cancel_reports.add(lease_key(assignment.lease))
        # Not sampled (bit 0 of the trace flags clear): the span is not recorded.
        if (self._spans is not None and job.parent is not None
                and int(job.parent.flags, 16) & 1):
            self._spans.export(self._span(job, result, start_ns))
        self._send(wk.WorkerMessage(results=[result]))

    def _span(self, job: _Job, result: wk.TaskResult, start_ns: int) -> Span:
        """This worker's span of one attempt (a child of the attempt's)."""
        assert job.parent is not None
        a = job.assignment
        attributes: list[tuple[str, AttributeValue]] = [
            ("forge.graph.id", a.lease.graph_id),
            ("forge.task.name", a.task),
            ("forge.task.attempt", a.lease.attempt),
            ("forge.queue", a.queue),
            ("forge.worker.id", self.worker_id or ""),
        ]
        if result.success:
            status, message = STATUS_OK, ""
        else:
            status, message = STATUS_ERROR, result.error.message
            if result.error.code:
                attributes.append(("error.type", result.error.code))
        return Span(trace_id=job.parent.trace_id, span_id=job.span_id,
                    parent_span_id=job.parent.span_id,
                    name="forge.worker.handle", kind=SPAN_KIND_CONSUMER,
                    start_ns=start_ns, end_ns=time.time_ns(),
                    attributes=attributes, status_code=status,
                    status_message=message)

    def _heartbeats(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            with self._lock:
                leases = [job.assignment.lease for job in self._running.values()]
            if leases:
                self._send(wk.WorkerMessage(heartbeat=wk.Heartbeat(leases=leases)))


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge_worker",
                                     description="Forge example worker")
    parser.add_argument("--server",
                        default=os.environ.get("FORGE_SERVER", "127.0.0.1:7070"),
                        help="HOST:PORT of forged (env FORGE_SERVER)")
    parser.add_argument("--queue", action="append", required=True,
                        help="queue to serve (repeatable)")
    parser.add_argument("--slots", type=int, default=4,
                        help="tasks run at once (default 4)")
    parser.add_argument("--name", default="python-worker",
                        help="worker name; the server adds a unique suffix")
    parser.add_argument("--otlp-endpoint",
                        default=os.environ.get("FORGE_OTLP_ENDPOINT", ""),
                        help="OTLP/HTTP collector for this worker's spans, e.g. "
                             "http://127.0.0.1:4318 (env FORGE_OTLP_ENDPOINT; "
                             "default none)")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be at least 1")

    try:
        worker = Worker(args.server, args.name, args.queue, args.slots,
                        otlp_endpoint=args.otlp_endpoint)
    except ValueError as e:
        parser.error(str(e))
    # Signals interrupt the main thread's wait below; the stream and the
    # tasks run on other threads.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        worker.start()
        worker.done.wait()
    except _Interrupted:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker.stop()
    spans = worker.span_exporter
    if spans is not None and (spans.dropped or spans.failed):
        print(f"forge_worker: otlp: {spans.dropped} spans dropped, "
              f"{spans.failed} not accepted by {spans.url}", file=sys.stderr)
    if worker.error:
        print(f"forge_worker: {worker.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
