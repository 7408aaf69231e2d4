// The event bus: per-graph event logs with dense sequence numbers, one global
// stream with resume tokens, and subscribers that are cursors into them.
//
// This is the contract the gRPC Watch handlers are built on (SPEC.md, "Events
// and Watch").
//
// Per-graph logs
//   CreateGraph(id, labels) makes a graph's log; the labels are kept for the
//   label filter of global subscriptions. Publish(id, events) hands the bus
//   events whose seqs the store assigned densely (1, 2, 3...) under its lock.
//   The events of one call need not be contiguous with other calls: publishers
//   race after the store unlocks, so calls for one graph may arrive out of
//   order from different threads. The log holds early events in a small
//   reorder buffer and makes visible only the contiguous prefix 1..watermark.
//   Only visible events are ever delivered. An event whose seq is <= the
//   watermark or already buffered is a duplicate and is ignored (counted).
//   A graph is terminal once a GRAPH_SUCCEEDED, GRAPH_FAILED or
//   GRAPH_CANCELLED event is visible; a graph subscription ends cleanly
//   (Batch::end) right after delivering it. Events published after the
//   terminal one are kept but never delivered to graph subscribers.
//   DropGraph(id) forgets a graph (retention) and frees its events; its
//   subscribers that had not reached the terminal event get NOT_FOUND.
//   ForgetGraph(id) forgets it but lets its subscribers read on.
//
// Reorder buffer overflow
//   More than BusOptions::max_reorder_per_graph buffered (not yet contiguous)
//   events means a seq was lost upstream (a publisher that never published):
//   the missing events cannot come back, and waiting forever would grow
//   without bound. The graph's log is then marked broken: the buffered events
//   are discarded (counted in reorder_overflows()/events_discarded()), that
//   Publish and every later one return DATA_LOSS, and each subscriber still
//   receives the valid contiguous prefix, then Next() reports DATA_LOSS (a
//   watcher re-reads the graph). No gap is ever delivered.
//
// Global stream
//   Every event that becomes visible is appended, in its graph's order, to ONE
//   ring of BusOptions::global_capacity events, at a global position (1, 2,
//   ...). PublishGlobal(event) appends an event of no graph (WORKER_CONNECTED,
//   WORKER_LOST, ...). A resume token is a position plus a random epoch drawn
//   per EventBus (one per server process): a token of another instance is
//   OUT_OF_RANGE, a token whose events the ring has overwritten is
//   OUT_OF_RANGE (the client re-lists, as with Kubernetes list+watch),
//   an unparsable one INVALID_ARGUMENT.
//
// Subscriptions are cursors, not copies
//   A subscription holds a position (a seq in a graph log, a global position
//   in the ring) and reads the shared log; an event is stored once (a
//   shared_ptr<const Event> held by the graph log and the ring) whatever the
//   number of subscribers, and Next() copies out only the batch it returns.
//   Subscribers never slow publishers: a publisher does O(subscribers of that
//   log) constant work per call and never waits for a reader.
//
// Notify: edge-triggered, called with no bus lock held
//   notify is called when the subscription goes from "nothing to take" to
//   "something to take" (new events it may take became visible while its
//   cursor was at the end of what was visible), once when it becomes
//   Overflowed(), and once when its graph is dropped or its log breaks. It is
//   NOT called for events that were already visible when the subscription was
//   made, nor again while events remain untaken. So the consumer:
//     - calls Next() once right after subscribing (to drain any backlog);
//     - keeps calling Next() until a batch comes back with no events (or end /
//       error) before it relies on notify again; a notify that arrives while
//       it is busy (a write in flight) may be ignored, provided it calls
//       Next() again when the write completes.
//   notify may be called concurrently from several publisher threads, and a
//   call may arrive after the events were already taken (spurious wake-ups
//   are possible, lost ones are not): it must be cheap, thread-safe and must
//   not block. A notify callback may call Next(), Lag(), Overflowed() and
//   Close() of its subscription (no bus lock is held while it runs).
//
// Slow subscribers
//   Lag() counts events the subscriber may take that became visible AFTER it
//   subscribed and that it has not taken (the backlog replayed from after_seq
//   or a token is not a sign of a slow reader and is not counted; for a global
//   subscription only events passing its filter count). Once Lag() exceeds
//   BusOptions::max_subscriber_lag the subscription is cut off for good:
//   notify is called once, Overflowed() is true, and Next() returns no events
//   and error RESOURCE_EXHAUSTED whose message ends with its resume point,
//   "resume after_seq=N" (graph) or "resume token=T" (global). A global
//   subscription whose next event the ring overwrote gets OUT_OF_RANGE.
//   Other subscribers of the same log are unaffected.
//
// Global filters (GlobalFilter; all given criteria must hold)
//   labels: the event's graph carries every one of these labels (key and
//           value); an event of no graph passes only if no label is asked for.
//   queues: events of a queue (task events, BACKPRESSURE) pass only if their
//           `queue` is listed; graph events (GRAPH_*) and worker events
//           (WORKER_*) always pass.
//   types:  the event's type is listed.
//
// Thread safety: EventBus and Subscription are thread-safe. Subscriptions
// may outlive the bus (they keep what they read alive); after the bus is
// destroyed they simply receive nothing new.
//
// Lock order (acquire left to right, never the reverse):
//     EventBus::graphs_mu_          (alone: released before any other lock)
//     GraphLog::mu -> GlobalLog::mu (a publisher appends a graph's newly
//                                    visible events to the ring while holding
//                                    the graph's lock, which is what keeps
//                                    each graph's order in the global stream)
//     Notifier::mu                  (leaf; never held while notify runs)
//   No bus lock is ever held while a notify callback runs: publishers collect
//   the notifiers under the locks and call them after releasing everything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "forge/v1/types.pb.h"

namespace forge::events {

struct BusOptions {
  // Events held by the global ring; older positions are OUT_OF_RANGE.
  size_t global_capacity = 100000;
  // A subscriber whose Lag() exceeds this is cut off (RESOURCE_EXHAUSTED).
  size_t max_subscriber_lag = 10000;
  // Out-of-order events a graph log may hold before it is declared broken.
  size_t max_reorder_per_graph = 10000;
};

// What a global subscription wants. Empty lists accept everything.
struct GlobalFilter {
  std::map<std::string, std::string> labels;
  std::vector<std::string> queues;
  std::vector<forge::v1::EventType> types;
};

// A cursor into a graph log or the global stream. Thread-safe; concurrent
// Next() calls are serialized (each event is returned once). Destroying the
// last reference closes it.
class Subscription {
 public:
  struct Batch {
    std::vector<forge::v1::Event> events;
    // Global subscriptions: the position after this batch (it may be ahead
    // of the last event returned when filtered-out events were skipped);
    // resuming with it continues exactly. Empty for graph subscriptions,
    // which resume with after_seq = seq of the last event received.
    std::string resume_token;
    // The graph's terminal event has been delivered (possibly in `events`);
    // nothing more will come.
    bool end = false;
    // Not OK: the subscription is over (events is then empty).
    //   RESOURCE_EXHAUSTED  cut off as too slow; message "... resume
    //   after_seq=N"
    //                       or "... resume token=T".
    //   OUT_OF_RANGE        the global ring overwrote its position; re-list.
    //   NOT_FOUND           its graph was dropped.
    //   DATA_LOSS           its graph log broke (see header comment).
    //   CANCELLED           Close() was called.
    absl::Status error;
  };

  virtual ~Subscription() = default;

  // Takes up to `max` visible events after the cursor (in order) and
  // advances it. An empty batch with no end and no error means "nothing now;
  // wait for notify".
  virtual Batch Next(size_t max) = 0;
  // Events that became visible after subscribing and are not yet taken (see
  // the header comment).
  virtual size_t Lag() const = 0;
  // Cut off: Lag() went past max_subscriber_lag, or (global) the ring
  // overwrote its position. Sticky. Next() then returns the error.
  virtual bool Overflowed() const = 0;
  // Unsubscribes. When it returns, notify is not running and will not be
  // called again, except that a Close() made from inside this subscription's
  // own notify callback cannot wait for that very call (it returns once the
  // calls on other threads are done). Close() waits for notify calls running
  // on other threads, so it must not be called while holding a lock that the
  // notify callback takes. Close() also destroys the notify callable (so a
  // callable that holds its consumer breaks no cycle), except when called
  // from inside it: it then goes with the subscription. Idempotent.
  virtual void Close() = 0;
};

namespace internal {
struct Shared;
struct GraphLog;
struct GlobalLog;
}  // namespace internal

class EventBus {
 public:
  explicit EventBus(BusOptions options = {});
  ~EventBus();
  EventBus(const EventBus&) = delete;
  EventBus& operator=(const EventBus&) = delete;

  // Creates the log of a graph. ALREADY_EXISTS if it exists,
  // INVALID_ARGUMENT for an empty id.
  absl::Status CreateGraph(const std::string& graph_id,
                           std::map<std::string, std::string> labels)
      ABSL_LOCKS_EXCLUDED(graphs_mu_);

  // Publishes events of a graph (seq >= 1; graph_id empty or equal to
  // graph_id, and set to it). See the header comment for ordering,
  // duplicates and visibility. NOT_FOUND for an unknown (or dropped) graph,
  // INVALID_ARGUMENT for a bad event (nothing of the call is applied),
  // DATA_LOSS once the graph's log is broken.
  absl::Status Publish(const std::string& graph_id,
                       std::vector<forge::v1::Event> events)
      ABSL_LOCKS_EXCLUDED(graphs_mu_);

  // Publish for events already shared, each naming `graph_id` (recovery
  // makes them so as it reads the journal: nothing is moved again).
  absl::Status PublishShared(
      const std::string& graph_id,
      std::vector<std::shared_ptr<const forge::v1::Event>> events)
      ABSL_LOCKS_EXCLUDED(graphs_mu_);

  // Appends an event of no graph (worker events) to the global stream.
  // INVALID_ARGUMENT if it names a graph.
  absl::Status PublishGlobal(forge::v1::Event event);

  // Forgets a graph and frees its log. Returns false if it was unknown.
  bool DropGraph(const std::string& graph_id) ABSL_LOCKS_EXCLUDED(graphs_mu_);

  // Forgets a finished graph that left memory (its events are read from the
  // journal from then on): it is no longer found (SubscribeGraph NOT_FOUND,
  // Publish NOT_FOUND), but its current subscribers keep reading its log to
  // the end; the log is freed with the last of them. Returns false if it was
  // unknown.
  bool ForgetGraph(const std::string& graph_id) ABSL_LOCKS_EXCLUDED(graphs_mu_);

  // Subscribes to a graph from after_seq (0 = from the start). after_seq may
  // be ahead of what is visible (a snapshot's last_seq). NOT_FOUND for an
  // unknown graph, INVALID_ARGUMENT for a negative after_seq.
  absl::StatusOr<std::shared_ptr<Subscription>> SubscribeGraph(
      const std::string& graph_id, int64_t after_seq,
      absl::AnyInvocable<void()> notify) ABSL_LOCKS_EXCLUDED(graphs_mu_);

  // Subscribes to the global stream after `resume_token` (empty = from now).
  // OUT_OF_RANGE for a token of another instance or one the ring overwrote,
  // INVALID_ARGUMENT for an unparsable one or one ahead of the stream.
  // For both Subscribe calls the caller makes the first Next() itself (to
  // drain the backlog); notify signals only what becomes visible later.
  absl::StatusOr<std::shared_ptr<Subscription>> SubscribeAll(
      const std::string& resume_token, GlobalFilter filter,
      absl::AnyInvocable<void()> notify);

  // The token of the newest position of the global stream ("from here").
  std::string CurrentResumeToken() const;

  // Counters for the metrics module (monotonic unless noted).
  uint64_t events_published() const;     // made visible (graph + global)
  uint64_t events_duplicate() const;     // ignored as duplicates
  uint64_t events_discarded() const;     // dropped by reorder overflow
  uint64_t reorder_overflows() const;    // graph logs declared broken
  int64_t subscribers() const;           // current (a gauge)
  uint64_t subscribers_cut_off() const;  // overflowed or position overwritten

 private:
  // Removes a graph's log from the map (no other lock held) and returns it;
  // null if unknown.
  std::shared_ptr<internal::GraphLog> Unlink(const std::string& graph_id)
      ABSL_LOCKS_EXCLUDED(graphs_mu_);
  std::shared_ptr<internal::GraphLog> FindGraph(
      const std::string& graph_id) const ABSL_LOCKS_EXCLUDED(graphs_mu_);

  const std::shared_ptr<internal::Shared> shared_;
  const std::shared_ptr<internal::GlobalLog> global_;

  mutable absl::Mutex graphs_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<internal::GraphLog>> graphs_
      ABSL_GUARDED_BY(graphs_mu_);
};

}  // namespace forge::events
