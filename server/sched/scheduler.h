// server/sched: queues of READY tasks and their matching with executor
// capacity.
//
// A queue orders its tasks by priority (higher first), then by the store-wide
// ready sequence (FIFO among equals). An executor (a remote worker session or
// the command runner) registers the queues it serves and its slots; Take()
// pairs the best task of a queue with an executor that has a free slot and
// reserves that slot and a unit of the queue's concurrency. The store is the
// authority on task state: the caller turns a match into a RUNNING attempt
// with Store::StartAttempt and calls Release() if the task had moved on.
//
// Thread-safe. One mutex (Scheduler::mu_), a leaf with respect to the store:
// the scheduler never calls out while holding it, and never takes another
// lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "forge/v1/worker.pb.h"

namespace forge::sched {

// Something that runs tasks: receives batches of assignments and cancels.
// Implementations must not block in these calls (they buffer and return).
class Executor {
 public:
  virtual ~Executor() = default;
  // Unique id (worker session id, "runner").
  virtual const std::string& id() const = 0;
  // Hands over a batch of assignments. Returns false if the executor is
  // closed: the caller then fails those attempts (LEASE_LOST).
  virtual bool Assign(std::vector<forge::v1::Assignment> batch) = 0;
  // Tells the executor to stop the attempt named by `lease`.
  virtual void Cancel(const forge::v1::Lease& lease,
                      const std::string& reason) = 0;
};

// A READY task waiting in a queue (a reference: the store holds the task).
struct QueuedTask {
  std::string graph_id;
  int32_t index = 0;
  int32_t priority = 0;
  uint64_t ready_seq = 0;
  std::string ordering_key;
};

struct QueueConfig {
  // Most tasks of the queue running at once (0 = unlimited).
  int32_t concurrency = 0;
};

struct QueueStats {
  std::string name;
  int64_t depth = 0;    // queued tasks (some may have been cancelled since)
  int64_t running = 0;  // reserved slots
  int32_t concurrency = 0;
  int64_t executors = 0;
};

struct ExecutorStats {
  std::string id;
  std::vector<std::string> queues;
  int32_t slots = 0;
  int32_t in_use = 0;
};

// A task paired with an executor whose slot is now reserved for it.
struct Match {
  QueuedTask task;
  std::string queue;
  std::shared_ptr<Executor> executor;
};

class Scheduler {
 public:
  explicit Scheduler(QueueConfig default_config = {});

  // Sets a queue's configuration (future takes obey it).
  void Configure(const std::string& queue, QueueConfig config)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Adds tasks to their queues.
  void Enqueue(const std::string& queue, QueuedTask task)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Registers an executor with `slots` slots serving `queues`.
  void AddExecutor(std::shared_ptr<Executor> executor,
                   std::vector<std::string> queues, int32_t slots)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets an executor: no more matches with it. Slots it holds are gone.
  void RemoveExecutor(const std::string& executor_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Pairs the best task of `queue` with an executor that has a free slot.
  // nullopt when the queue is empty, at its concurrency limit, or no
  // executor serving it has a free slot.
  std::optional<Match> Take(const std::string& queue) ABSL_LOCKS_EXCLUDED(mu_);

  // Returns the slot reserved by a match (the attempt finished, or never
  // started) and a unit of the queue's concurrency.
  void Release(const std::string& executor_id, const std::string& queue)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Queues served by an executor (to retry matching when it frees a slot).
  std::vector<std::string> QueuesOf(const std::string& executor_id) const
      ABSL_LOCKS_EXCLUDED(mu_);

  std::vector<QueueStats> Queues() const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<ExecutorStats> Executors() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Later {
    // Heap order: lower priority or later ready_seq sinks.
    bool operator()(const QueuedTask& a, const QueuedTask& b) const {
      if (a.priority != b.priority) return a.priority < b.priority;
      return a.ready_seq > b.ready_seq;
    }
  };
  struct ExecutorEntry {
    std::shared_ptr<Executor> executor;
    std::vector<std::string> queues;
    int32_t slots = 0;
    int32_t in_use = 0;
  };
  struct Queue {
    QueueConfig config;
    std::vector<QueuedTask> heap;  // std::push_heap with Later
    int64_t running = 0;
    // Executors serving this queue, scanned round-robin from `next`.
    std::vector<std::string> executors;
    size_t next = 0;
  };

  Queue& QueueLocked(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const QueueConfig default_config_;
  mutable absl::Mutex mu_;
  std::map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, ExecutorEntry> executors_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace forge::sched
