// server/sched: queues of READY tasks and their matching with executor
// capacity.
//
// A queue orders its tasks by priority (higher first), then by the store-wide
// ready sequence (FIFO among equals), within what its ordering mode allows:
//   relaxed  any READY task may run;
//   per_key  tasks sharing an ordering_key run at most per_key_concurrency
//            (default 1) at a time, in READY order; different keys (and tasks
//            without a key) in parallel;
//   strict   one running task per queue, global READY order (FIFO).
// An executor (a remote worker session or the command runner) registers the
// queues it serves and its slots; Take() pairs the best eligible task of a
// queue with an executor that has a free slot, reserves that slot, a unit of
// the queue's concurrency and of its key's, and returns them as a ticket.
// Release(ticket) gives them back. The store is the authority on task state:
// the caller turns a match into a RUNNING attempt with Store::StartAttempt
// and releases the ticket if the task had moved on.
//
// Thread-safe. One mutex (Scheduler::mu_), a leaf with respect to the store:
// the scheduler never calls out while holding it, and never takes another
// lock.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "forge/v1/worker.pb.h"

namespace forge::sched {

// One assignment with the scheduler ticket of its reservation. The executor
// hands the ticket back (through the engine) when the attempt ends.
struct Dispatch {
  forge::v1::Assignment assignment;
  uint64_t ticket = 0;
};

// Something that runs tasks: receives batches of assignments and cancels.
// Implementations must not block in these calls (they buffer and return).
class Executor {
 public:
  virtual ~Executor() = default;
  // Unique id (worker session id, "runner").
  virtual const std::string& id() const = 0;
  // Hands over a batch of assignments. Returns false if the executor is
  // closed: the caller then fails those attempts (LEASE_LOST).
  virtual bool Assign(std::vector<Dispatch> batch) = 0;
  // Tells the executor to stop the attempt named by `lease`.
  virtual void Cancel(const forge::v1::Lease& lease,
                      const std::string& reason) = 0;
  // Whether its attempts hold heartbeat leases. Remote workers do; an
  // in-process executor that supervises its attempts itself (the command
  // runner) does not, and only the run timeout applies.
  virtual bool needs_heartbeat() const { return true; }
};

// A READY task waiting in a queue (a reference: the store holds the task).
struct QueuedTask {
  std::string graph_id;
  int32_t index = 0;
  int32_t priority = 0;
  uint64_t ready_seq = 0;
  std::string ordering_key;
};

enum class OrderingMode { kRelaxed, kPerKey, kStrict };

struct QueueConfig {
  // Most tasks of the queue running at once (0 = unlimited).
  int32_t concurrency = 0;
  OrderingMode mode = OrderingMode::kRelaxed;
  // per_key: most running tasks per ordering_key.
  int32_t per_key_concurrency = 1;
};

// "relaxed" | "per_key" | "strict".
const char* OrderingModeName(OrderingMode mode);
bool ParseOrderingMode(const std::string& name, OrderingMode* mode);

struct QueueStats {
  std::string name;
  int64_t depth = 0;    // queued tasks (some may have been cancelled since)
  int64_t running = 0;  // reserved slots
  int32_t concurrency = 0;
  int64_t executors = 0;
  OrderingMode mode = OrderingMode::kRelaxed;
  int32_t per_key_concurrency = 1;
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
  // Names the reservation (slot, queue and key concurrency): Release() it
  // exactly once when the attempt ends or never starts.
  uint64_t ticket = 0;
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

  // Returns what a match reserved (the attempt finished, or never started).
  // Unknown tickets are ignored. Returns the queue of the ticket (to match
  // again), or an empty string.
  std::string Release(uint64_t ticket) ABSL_LOCKS_EXCLUDED(mu_);

  // Queues served by an executor (to retry matching when it frees a slot).
  std::vector<std::string> QueuesOf(const std::string& executor_id) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Stops (or resumes) matching: while paused, Take() returns nothing.
  void SetPaused(bool paused) ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until no reservation is outstanding (every running attempt has
  // ended) or `deadline`; true if idle. Woken by Release(), never polls.
  bool AwaitIdle(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

  std::vector<QueueStats> Queues() const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<ExecutorStats> Executors() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Tasks free of key constraints: FIFO (by ready_seq) per priority, best
  // priority first. Push and pop are O(1) in the usual case (tasks arrive
  // nearly in READY order), where a binary heap of tasks moved their
  // strings log(n) times per operation.
  class FreeTasks {
   public:
    bool empty() const { return by_priority_.empty(); }
    const QueuedTask& front() const { return by_priority_.begin()->second.front(); }
    void push(QueuedTask task) { by_priority_[task.priority].push(std::move(task)); }
    QueuedTask pop() {
      auto it = by_priority_.begin();
      QueuedTask t = it->second.pop();
      if (it->second.empty()) by_priority_.erase(it);
      return t;
    }

   private:
    // One priority's tasks in READY order: a vector consumed from the front
    // (a deque would allocate a block every few tasks).
    class Fifo {
     public:
      bool empty() const { return head_ == items_.size(); }
      const QueuedTask& front() const { return items_[head_]; }
      void push(QueuedTask task) {
        // Effects are applied in any order across threads: keep READY order
        // (nearly always an append).
        if (empty() || items_.back().ready_seq < task.ready_seq) {
          items_.push_back(std::move(task));
          return;
        }
        auto at = std::upper_bound(
            items_.begin() + static_cast<std::ptrdiff_t>(head_), items_.end(), task,
            [](const QueuedTask& a, const QueuedTask& b) { return a.ready_seq < b.ready_seq; });
        items_.insert(at, std::move(task));
      }
      QueuedTask pop() {
        QueuedTask t = std::move(items_[head_++]);
        if (head_ == items_.size()) {
          items_.clear();
          head_ = 0;
        } else if (head_ >= 1024 && head_ * 2 >= items_.size()) {
          items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
          head_ = 0;
        }
        return t;
      }

     private:
      std::vector<QueuedTask> items_;
      size_t head_ = 0;
    };
    std::map<int32_t, Fifo, std::greater<int32_t>> by_priority_;
  };
  struct BySeq {
    bool operator()(const QueuedTask& a, const QueuedTask& b) const {
      return a.ready_seq < b.ready_seq;
    }
  };
  // The first task of an eligible key: best priority, then oldest.
  struct Head {
    int32_t priority;
    uint64_t ready_seq;
    std::string key;
    bool operator<(const Head& o) const {
      if (priority != o.priority) return priority > o.priority;
      return ready_seq < o.ready_seq;
    }
  };
  struct KeyState {
    std::set<QueuedTask, BySeq> tasks;  // READY order
    int32_t running = 0;
    std::optional<Head> head;  // its entry in Queue::heads, if eligible
  };
  struct ExecutorEntry {
    std::shared_ptr<Executor> executor;
    std::vector<std::string> queues;
    int32_t slots = 0;
    int32_t in_use = 0;
  };
  struct Queue {
    QueueConfig config;
    // Tasks free of key constraints (relaxed, or per_key without a key).
    FreeTasks free;
    // Keyed tasks (per_key; strict keeps all its tasks under one key).
    absl::flat_hash_map<std::string, KeyState> keys;
    std::set<Head> heads;
    int64_t depth = 0;
    int64_t running = 0;
    // Executors serving this queue, scanned round-robin from `next`.
    std::vector<std::string> executors;
    size_t next = 0;
  };
  struct Ticket {
    std::string executor_id;
    std::string queue;
    bool keyed = false;
    std::string key;
  };

  // Puts key `key`'s first task among the heads if the key may run one more.
  static void RefreshHead(Queue& q, const std::string& key);
  static int32_t KeyLimit(const Queue& q);

  Queue& QueueLocked(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const QueueConfig default_config_;
  mutable absl::Mutex mu_;
  std::map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, ExecutorEntry> executors_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Ticket> tickets_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace forge::sched
