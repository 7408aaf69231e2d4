#!/usr/bin/env python3
"""Forge example worker: serves queues over WorkerService.Connect.

    forge_worker.py [--server HOST:PORT] --queue Q [--queue Q2] [--slots N]
                    [--name NAME]

The protocol, in short (see proto/forge/v1/worker.proto):
  1. open the Connect stream and send WorkerMessage{hello{name, queues, slots}};
  2. the server answers ServerMessage{welcome{worker_id}}, then sends
     assignments (never more outstanding than `slots`), cancels and acks;
  3. for each assignment send WorkerMessage{results[TaskResult{lease, ...}]},
     echoing the assignment's lease unchanged; while tasks run, send
     heartbeats listing their leases.

Outgoing messages go through a queue.Queue that feeds the request iterator, so
any thread may send. Tasks run in a pool of `slots` threads.

The default handler echoes the task's input (or its name if the input is
empty). Params: fail=true fails the attempt with code INJECTED; sleep_ms=N
waits N ms first (a cancel cuts the wait short). Replace it by passing your own
handler(assignment, cancelled) -> bytes to Worker; raise TaskFailure to fail.

SIGTERM or SIGINT closes the stream and exits 0 (the server retries whatever
was running here elsewhere, as for a lost lease). The stream failing exits 1.
"""

import argparse
import os
import queue
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from forge.v1 import worker_pb2 as wk
from forge.v1 import worker_pb2_grpc as wk_grpc

HEARTBEAT_SECONDS = 10  # well under the default heartbeat timeout (30 s)


class TaskFailure(Exception):
    """Raised by a handler to fail the attempt with a TaskError."""

    def __init__(self, code, message="", non_retryable=False):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.non_retryable = code, message, non_retryable


def echo_handler(assignment, cancelled):
    """Default handler. `cancelled` is a threading.Event set on cancel."""
    sleep_ms = int(assignment.params.get("sleep_ms") or 0)
    if sleep_ms and cancelled.wait(sleep_ms / 1000):
        return b""  # cancelled: the worker reports CANCELLED
    if assignment.params.get("fail") == "true":
        raise TaskFailure("INJECTED", f"{assignment.task}: failure requested "
                          "by params (fail=true)")
    return assignment.input or assignment.task.encode()


def lease_key(lease):
    return (lease.graph_id, lease.task_index, lease.attempt, lease.epoch)


class _Job:
    """One assignment being run (or waiting for a pool thread)."""

    def __init__(self, assignment):
        self.assignment = assignment
        self.cancelled = threading.Event()
        self.reason = ""


class Worker:
    def __init__(self, target, name, queues, slots, handler=echo_handler):
        self._channel = grpc.insecure_channel(target)
        self._stub = wk_grpc.WorkerServiceStub(self._channel)
        self._hello = wk.WorkerHello(name=name, queues=queues, slots=slots)
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=slots,
                                        thread_name_prefix="forge-task")
        self._outbox = queue.Queue()  # WorkerMessage to send; None = close
        self._lock = threading.Lock()
        self._running = {}  # lease_key -> _Job
        self._cancel_reports = set()  # lease_keys reported CANCELLED, unacked
        self._stopping = threading.Event()
        self._call = None
        self.worker_id = None
        self.done = threading.Event()  # set when the stream has ended
        self.error = None  # why the stream ended, unless stop() ended it

    def start(self):
        self._call = self._stub.Connect(self._requests())
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._heartbeats, daemon=True).start()

    def stop(self):
        """Closes the stream; running handlers see their cancel flag set."""
        self._stopping.set()
        with self._lock:
            for job in self._running.values():
                job.cancelled.set()
        self._outbox.put(None)
        if self._call is not None:
            self._call.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._channel.close()

    def _send(self, msg):
        if not self._stopping.is_set():
            self._outbox.put(msg)

    def _requests(self):
        yield wk.WorkerMessage(hello=self._hello)
        while (msg := self._outbox.get()) is not None:
            yield msg

    def _read(self):
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
                        job.cancelled.set()
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

    def _assign(self, assignment):
        job = _Job(assignment)
        with self._lock:
            self._running[lease_key(assignment.lease)] = job
        self._pool.submit(self._run, job)

    def _run(self, job):
        assignment = job.assignment
        result = wk.TaskResult(lease=assignment.lease)
        try:
            if not job.cancelled.is_set():  # may be cancelled while queued
                output = self._handler(assignment, job.cancelled)
            if job.cancelled.is_set():
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
        self._send(wk.WorkerMessage(results=[result]))

    def _heartbeats(self):
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            with self._lock:
                leases = [job.assignment.lease for job in self._running.values()]
            if leases:
                self._send(wk.WorkerMessage(heartbeat=wk.Heartbeat(leases=leases)))


class _Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise _Interrupted()


def main(argv=None):
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
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be at least 1")

    # Signals interrupt the main thread's wait below; the stream and the
    # tasks run on other threads.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    worker = Worker(args.server, args.name, args.queue, args.slots)
    try:
        worker.start()
        worker.done.wait()
    except _Interrupted:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker.stop()
    if worker.error:
        print(f"forge_worker: {worker.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
