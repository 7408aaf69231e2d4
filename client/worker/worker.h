// The C++ worker library: connects to forged's WorkerService, announces the
// queues it serves and its slots, runs each assignment through a user handler
// on a fixed pool of `slots` threads, and reports results, progress and
// heartbeats on the same stream.
//
// Example:
//
//   forge::client::WorkerOptions options;
//   options.server = "127.0.0.1:7070";
//   options.queues = {"thumbnails"};
//   options.slots = 4;
//   forge::client::Worker worker(options, [](forge::client::TaskContext& ctx) {
//     forge::client::TaskOutcome outcome;
//     for (int step = 0; step < 10; ++step) {
//       if (ctx.WaitCancelled(absl::Milliseconds(100))) break;  // stop early
//       ctx.ReportProgress(step + 1, 10, "resizing");
//     }
//     outcome.output = ctx.assignment().input();
//     return outcome;
//   });
//   RETURN_IF_ERROR(worker.Start());
//   ...
//   worker.Stop();
//
// Protocol duties handled here (see proto/forge/v1/worker.proto):
//   - hello first and alone; results echo the assignment's lease unchanged;
//   - at most one write in flight per stream: results, progress and the
//     heartbeat waiting for the wire are coalesced into one WorkerMessage;
//   - a heartbeat every `heartbeat_interval` listing the leases this worker
//     holds (assignments queued or running on the current stream);
//   - a cancel from the server sets the task's cancelled flag; the task still
//     reports a result (success=false, error code CANCELLED) so its credit
//     returns;
//   - when the stream ends, every lease it carried is lost: running handlers
//     are cancelled and their results discarded; with `reconnect` the worker
//     opens a new stream after a backoff (doubling up to
//     `max_reconnect_backoff`, reset once welcomed).
//
// Threads: one control thread (stream lifecycle, heartbeats, reconnects), one
// thread per slot for handlers, and gRPC's callback threads (which never
// block here).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "forge/v1/worker.pb.h"

namespace forge::client {

struct WorkerOptions {
  // gRPC target of forged's WorkerService.
  std::string server = "127.0.0.1:7070";
  // Display name; the server appends a unique suffix for the session id.
  std::string name = "worker";
  // Queues served (at least one).
  std::vector<std::string> queues;
  // Tasks run at once, 1..10000: the size of the handler pool and the credit
  // announced to the server.
  int slots = 1;
  // Free-form labels sent in the hello (host, version...).
  std::map<std::string, std::string> labels;
  // Period of heartbeats while a stream is up.
  absl::Duration heartbeat_interval = absl::Seconds(5);
  // Open a new stream when one ends unexpectedly. When false, the first
  // stream's end is final and Wait() returns its status.
  bool reconnect = true;
  // Delay before the first reconnect; doubles after each stream that ends
  // without a welcome, up to max_reconnect_backoff.
  absl::Duration reconnect_backoff = absl::Milliseconds(200);
  absl::Duration max_reconnect_backoff = absl::Seconds(10);
  // Optional. Called with the session id each time a stream is welcomed.
  // Runs on a gRPC callback thread: must be quick, must not block and must not
  // call Stop().
  std::function<void(const std::string& worker_id)> on_welcome;
  // Optional. Called on the control thread when a stream ends other than by
  // Stop(), with its status, before any reconnect. Must not call Stop().
  std::function<void(const absl::Status& status)> on_disconnect;
  // Tell the server when a handler begins an attempt (the "pickup" stage of
  // its metrics). A handler that returns within started_report_delay sends
  // its start with its result (one message); a longer one's start is sent
  // at that delay (or sooner, with any other message). Zero: at once.
  bool report_started = true;
  absl::Duration started_report_delay = absl::Milliseconds(1);
  // OTLP/HTTP collector (http://host:4318) for this worker's own spans: one
  // per attempt ("forge.worker.handle"), a child of the attempt's span from
  // the assignment's traceparent, so it joins the graph's trace. Empty: none.
  std::string otlp_endpoint;
};

namespace internal {
struct Task;
}  // namespace internal

// What a handler sees of one assignment. Owned by the worker; valid only
// during the handler call. Thread-safe.
class TaskContext {
 public:
  TaskContext(const TaskContext&) = delete;
  TaskContext& operator=(const TaskContext&) = delete;

  const forge::v1::Assignment& assignment() const;
  // The W3C traceparent of this attempt's handler span (a child of the
  // attempt's span), to pass on to whatever the handler calls. Empty when
  // the assignment carried no trace context.
  const std::string& traceparent() const;

  // True once the server cancelled the attempt, its stream was lost, or the
  // worker is stopping. Handlers should poll it (or use WaitCancelled) and
  // return early: Stop() waits for every handler to return.
  bool cancelled() const;

  // Waits until cancelled or until `d` has passed; returns cancelled(). Use it
  // instead of sleeping, so that a cancel interrupts the wait.
  bool WaitCancelled(absl::Duration d);

  // Queues a progress report. Reports waiting for the wire are coalesced: only
  // the latest one of a task is sent. Dropped once the task's stream is gone.
  void ReportProgress(int64_t step, int64_t total, std::string message);
  // Saves opaque state to resume from: if this attempt fails, the task's next
  // attempt receives the latest checkpoint in assignment().checkpoint().
  void Checkpoint(std::string checkpoint);

 private:
  friend struct internal::Task;
  explicit TaskContext(internal::Task* task) : task_(task) {}

  internal::Task* const task_;
};

// A handler's verdict on one attempt. Ignored (replaced by a CANCELLED
// failure) when the attempt was cancelled before the handler returned.
struct TaskOutcome {
  bool success = true;
  // Sent when success.
  std::string output;
  // Sent when !success.
  std::string error_code;
  std::string error_message;
  bool retryable = true;
  int exit_code = 0;
};

// Runs one attempt on a handler thread. May block (it owns its slot while it
// runs) but should honour cancellation. Must not call Worker::Stop(). An
// exception escaping it is reported as a retryable failure with error code
// HANDLER_EXCEPTION.
using Handler = std::function<TaskOutcome(TaskContext&)>;

// Counters, cumulative over the worker's life (all streams).
struct WorkerStats {
  // Handler runs finished (whether their result was sent or discarded).
  int64_t tasks_completed = 0;
  // Results dropped because their stream had ended (lease lost) or the
  // worker was stopping.
  int64_t results_discarded = 0;
  // Cancels received from the server (including ones for unknown leases).
  int64_t cancels_received = 0;
  // Result acks: accepted (code 0) and refused (non-zero, e.g. stale lease).
  int64_t acks_accepted = 0;
  int64_t acks_refused = 0;
  // Streams opened and streams welcomed.
  int64_t streams_opened = 0;
  int64_t welcomes = 0;
};

namespace internal {
class WorkerCore;
}  // namespace internal

// A worker process's connection to forged. Thread-safe; Stop() and the
// destructor must not be called from a handler or a callback of this worker.
class Worker {
 public:
  Worker(WorkerOptions options, Handler handler);
  // Stop()s.
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Validates the options and starts the first stream; does not wait for the
  // server (an unreachable server is retried per `reconnect`).
  // InvalidArgument for bad options; FailedPrecondition if already started or
  // stopped.
  absl::Status Start();

  // Cancels every task, closes the stream, and returns once the handler
  // threads have returned and the stream is finished. Idempotent; concurrent
  // callers all return after the first one has finished.
  void Stop();

  // Blocks until the worker has stopped serving for good: Stop() was called
  // (returns OK), or the stream ended with reconnect=false (returns the
  // stream's status). Call Stop() afterwards to release the threads.
  absl::Status Wait();

  // Session id from the current stream's welcome; empty until welcomed and
  // after the stream is lost.
  std::string worker_id() const;

  WorkerStats stats() const;

 private:
  std::unique_ptr<internal::WorkerCore> core_;
};

}  // namespace forge::client
