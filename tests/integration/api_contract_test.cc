// The public API's contract, driven through real gRPC stubs on loopback:
// every bad input gets its precise status and changes nothing (SPEC.md,
// "Security"), submits are idempotent on request_id, ListGraphs and WaitGraph
// keep their documented shapes, the WorkerService stream honours its credit
// and fences results by lease, and grpc.health.v1 answers.
//
// "Changes nothing" is checked with a Footprint (graphs held, graphs
// submitted, events made visible) taken before a refused call and compared
// after it; in ephemeral mode every effect of an accepted call is applied
// before its reply, so a refused call that left no trace leaves equal
// footprints.
//
// Waits are on replies and stream reads bounded by call deadlines; no test
// sleeps for correctness.
#include <grpcpp/generic/generic_stub.h>

#include <deque>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "forge/v1/worker.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/wrappers.pb.h"
#include "tests/integration/fixture.h"

namespace forge::testing {
namespace {

using ::testing::HasSubstr;

// A well-formed graph id (a ULID) that no server made.
constexpr char kUnknownGraph[] = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
// A queue no worker serves: its tasks stay READY and their graph RUNNING.
constexpr char kUnserved[] = "nobody-serves-this";
constexpr int kAborted = static_cast<int>(grpc::StatusCode::ABORTED);

std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

std::string Describe(const grpc::Status& s) {
  return absl::StrCat(s.error_code(), ": ", s.error_message());
}

v1::GraphSpec OneTask(const std::string& queue = "default") {
  v1::GraphSpec g;
  g.set_name("one");
  AddTask(g, "t", {}, queue);
  return g;
}

v1::WorkerMessage HelloMsg(const std::vector<std::string>& queues, int slots) {
  v1::WorkerMessage m;
  m.mutable_hello()->set_name("raw");
  for (const std::string& q : queues) m.mutable_hello()->add_queues(q);
  m.mutable_hello()->set_slots(slots);
  return m;
}

// A raw WorkerService stream (no client library), to send exactly the
// messages a test needs and see exactly what the server sends. One thread
// drives it. The call's deadline bounds every blocking read.
class RawWorker {
 public:
  explicit RawWorker(const std::string& address,
                     absl::Duration deadline = absl::Seconds(10))
      : stub_(v1::WorkerService::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {
    ctx_.set_deadline(In(deadline));
    stream_ = stub_->Connect(&ctx_);
  }

  ~RawWorker() {
    if (finished_) return;
    ctx_.TryCancel();
    v1::ServerMessage m;
    while (stream_->Read(&m)) {
    }
    stream_->Finish().IgnoreError();
  }

  bool Send(const v1::WorkerMessage& m) { return stream_->Write(m); }

  bool Hello(const std::vector<std::string>& queues, int slots) {
    return Send(HelloMsg(queues, slots));
  }

  bool SendResult(const v1::Lease& lease, bool success,
                  const std::string& output = "") {
    v1::WorkerMessage m;
    v1::TaskResult* r = m.add_results();
    *r->mutable_lease() = lease;
    r->set_success(success);
    r->set_output(output);
    ++results_sent_;
    return Send(m);
  }

  // Reads one message and files what it carries. False once the stream ended.
  bool ReadOne() {
    v1::ServerMessage m;
    if (!stream_->Read(&m)) return false;
    if (m.has_welcome()) worker_id_ = m.welcome().worker_id();
    for (const v1::Assignment& a : m.assignments()) assignments_.push_back(a);
    assignments_seen_ += m.assignments_size();
    for (const v1::ResultAck& a : m.acks()) acks_.push_back(a);
    // Every result sent may already have returned its credit, no more.
    max_outstanding_ =
        std::max(max_outstanding_, assignments_seen_ - results_sent_);
    return true;
  }

  bool AwaitWelcome() {
    while (worker_id_.empty()) {
      if (!ReadOne()) return false;
    }
    return true;
  }
  // Until `n` assignments in all have arrived on this stream.
  bool AwaitAssignmentsSeen(int64_t n) {
    while (assignments_seen_ < n) {
      if (!ReadOne()) return false;
    }
    return true;
  }
  // Until an ack not yet taken arrives; takes it.
  bool AwaitAck(v1::ResultAck* out) {
    while (acks_.empty()) {
      if (!ReadOne()) return false;
    }
    *out = acks_.front();
    acks_.pop_front();
    return true;
  }

  // Reads until the server ends the stream and returns its status.
  grpc::Status AwaitEnd() {
    v1::ServerMessage m;
    while (stream_->Read(&m)) ++messages_at_end_;
    finished_ = true;
    return stream_->Finish();
  }

  v1::Assignment TakeAssignment() {
    v1::Assignment a = assignments_.front();
    assignments_.pop_front();
    return a;
  }

  const std::string& worker_id() const { return worker_id_; }
  int64_t assignments_seen() const { return assignments_seen_; }
  int64_t max_outstanding() const { return max_outstanding_; }
  size_t held() const { return assignments_.size(); }
  int messages_at_end() const { return messages_at_end_; }

 private:
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::WorkerMessage, v1::ServerMessage>>
      stream_;
  bool finished_ = false;
  std::string worker_id_;
  std::deque<v1::Assignment> assignments_;
  std::deque<v1::ResultAck> acks_;
  int64_t assignments_seen_ = 0;
  int64_t results_sent_ = 0;
  int64_t max_outstanding_ = 0;
  int messages_at_end_ = 0;
};

class ApiContractTest : public ForgeTest {
 protected:
  // What a refused call must leave as it found it.
  struct Footprint {
    int64_t graphs = 0;
    int64_t submitted = 0;
    uint64_t events = 0;
  };
  Footprint Mark() {
    return Footprint{GraphCount(),
                     server().engine().counters().graphs_submitted,
                     server().engine().bus().events_published()};
  }
  void ExpectUnchanged(const Footprint& before) {
    const Footprint now = Mark();
    EXPECT_EQ(now.graphs, before.graphs) << "a graph was created";
    EXPECT_EQ(now.submitted, before.submitted) << "a submit was counted";
    EXPECT_EQ(now.events, before.events) << "an event was published";
  }

  // Submits `spec` expecting `code` with every one of `needles` in the
  // message, and nothing created.
  void ExpectSubmitRefused(const v1::SubmitGraphRequest& request,
                           grpc::StatusCode code,
                           const std::vector<std::string>& needles) {
    const Footprint before = Mark();
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::SubmitGraphResponse resp;
    grpc::Status s = stub().SubmitGraph(&ctx, request, &resp);
    EXPECT_EQ(s.error_code(), code) << Describe(s);
    for (const std::string& n : needles) {
      EXPECT_THAT(s.error_message(), HasSubstr(n));
    }
    EXPECT_TRUE(resp.graph_id().empty());
    ExpectUnchanged(before);
  }
  void ExpectSpecRefused(const v1::GraphSpec& spec,
                         const std::vector<std::string>& needles) {
    v1::SubmitGraphRequest req;
    *req.mutable_graph() = spec;
    ExpectSubmitRefused(req, grpc::StatusCode::INVALID_ARGUMENT, needles);
  }

  grpc::Status GetGraphStatus(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::GetGraphRequest req;
    req.set_graph_id(id);
    v1::GetGraphResponse resp;
    return stub().GetGraph(&ctx, req, &resp);
  }
  grpc::Status GetTaskStatus(const std::string& id, const std::string& task,
                             v1::Task* out = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::GetTaskRequest req;
    req.set_graph_id(id);
    req.set_task(task);
    v1::GetTaskResponse resp;
    grpc::Status s = stub().GetTask(&ctx, req, &resp);
    if (out != nullptr) *out = resp.task();
    return s;
  }
  v1::Task FetchTask(const std::string& id, const std::string& task) {
    v1::Task t;
    grpc::Status s = GetTaskStatus(id, task, &t);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return t;
  }
  grpc::Status CancelGraphStatus(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::CancelGraphRequest req;
    req.set_graph_id(id);
    req.set_reason("test");
    v1::CancelGraphResponse resp;
    return stub().CancelGraph(&ctx, req, &resp);
  }
  grpc::Status CancelTaskStatus(const std::string& id,
                                const std::string& task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::CancelTaskRequest req;
    req.set_graph_id(id);
    req.set_task(task);
    req.set_reason("test");
    v1::CancelTaskResponse resp;
    return stub().CancelTask(&ctx, req, &resp);
  }
  grpc::Status WaitGraphStatus(const v1::WaitGraphRequest& req,
                               absl::Duration deadline,
                               v1::WaitGraphResponse* out = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(deadline));
    v1::WaitGraphResponse resp;
    grpc::Status s = stub().WaitGraph(&ctx, req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
  grpc::Status ListStatus(const v1::ListGraphsRequest& req,
                          v1::ListGraphsResponse* out = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::ListGraphsResponse resp;
    grpc::Status s = stub().ListGraphs(&ctx, req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
  v1::ListGraphsResponse List(const v1::ListGraphsRequest& req) {
    v1::ListGraphsResponse resp;
    grpc::Status s = ListStatus(req, &resp);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return resp;
  }
  // A Watch the server must refuse at once: returns its status and checks it
  // sent no message first.
  grpc::Status RefusedWatchStatus(const v1::WatchRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(5)));
    auto reader = stub().Watch(&ctx, req);
    v1::WatchResponse msg;
    int messages = 0;
    while (reader->Read(&msg)) ++messages;
    EXPECT_EQ(messages, 0) << "a refused Watch sent messages";
    return reader->Finish();
  }

  // Runs a raw worker through a bad hello; returns the stream's status and
  // checks that no executor was registered.
  grpc::Status BadHelloStatus(const v1::WorkerMessage& first) {
    const Footprint before = Mark();
    RawWorker w(address());
    w.Send(first);  // may fail if the server already ended the stream
    grpc::Status s = w.AwaitEnd();
    EXPECT_EQ(w.messages_at_end(), 0) << "a bad hello was answered";
    EXPECT_TRUE(server().engine().scheduler().Executors().empty())
        << "a worker with a bad hello was registered";
    ExpectUnchanged(before);
    return s;
  }
};

// Tight limits, to reach them with small graphs.
class LimitedApiContractTest : public ApiContractTest {
 protected:
  void Configure(ServerOptions& options) override {
    options.engine.limits.max_tasks = 5;
    options.engine.limits.max_input_bytes = 16;
  }
};

// ---------------------------------------------------------------------------
// SubmitGraph: every bad spec is INVALID_ARGUMENT naming the field, and
// creates nothing.

TEST_F(ApiContractTest, EmptyGraphIsInvalidAndNamesGraphTasks) {
  v1::GraphSpec g;
  g.set_name("empty");
  ExpectSpecRefused(g, {"graph.tasks"});
}

TEST_F(ApiContractTest, MissingGraphIsInvalid) {
  v1::SubmitGraphRequest req;
  req.set_request_id("no-graph");
  ExpectSubmitRefused(req, grpc::StatusCode::INVALID_ARGUMENT, {"graph"});
}

TEST_F(ApiContractTest, DuplicateTaskNamesAreInvalid) {
  v1::GraphSpec g;
  AddTask(g, "a");
  AddTask(g, "b");
  AddTask(g, "a");
  ExpectSpecRefused(g,
                    {"graph.tasks[2].name", "duplicate", "\"a\"", "tasks[0]"});
}

TEST_F(ApiContractTest, UnknownDependencyIsInvalid) {
  v1::GraphSpec g;
  AddTask(g, "a");
  AddTask(g, "b", {"a", "ghost"});
  ExpectSpecRefused(
      g, {"graph.tasks[1].depends_on[1]", "unknown task", "\"ghost\""});
}

TEST_F(ApiContractTest, SelfDependencyIsInvalid) {
  v1::GraphSpec g;
  AddTask(g, "a");
  AddTask(g, "b", {"a", "b"});
  ExpectSpecRefused(g, {"graph.tasks[1].depends_on[1]", "\"b\"", "itself"});
}

TEST_F(ApiContractTest, CycleIsInvalidAndNamesItsPath) {
  // "x -> y" in the message means x depends on y.
  v1::GraphSpec g;
  AddTask(g, "root");
  AddTask(g, "a", {"root", "b"});
  AddTask(g, "b", {"c"});
  AddTask(g, "c", {"a"});
  AddTask(g, "leaf", {"c"});
  ExpectSpecRefused(g, {"graph.tasks", "cycle", "a -> b -> c -> a"});
}

TEST_F(LimitedApiContractTest, TooManyTasksIsInvalid) {
  v1::GraphSpec g;
  for (int i = 0; i < 6; ++i) AddTask(g, absl::StrCat("t", i));
  ExpectSpecRefused(g, {"graph.tasks", "6", "limit of 5"});
  // At the limit is accepted.
  g.mutable_tasks()->RemoveLast();
  v1::SubmitGraphResponse resp;
  grpc::Status s = TrySubmit(g, &resp);
  EXPECT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(GraphCount(), 1);
}

TEST_F(LimitedApiContractTest, TooLargeInputIsInvalid) {
  v1::GraphSpec g;
  AddTask(g, "small")->set_input(std::string(16, 'x'));
  AddTask(g, "big")->set_input(std::string(17, 'x'));
  ExpectSpecRefused(g, {"graph.tasks[1].input", "17", "limit of 16"});
}

TEST_F(ApiContractTest, TooLongTaskNameIsInvalid) {
  v1::GraphSpec g;
  AddTask(g, std::string(128, 'n'));  // at the limit: fine
  AddTask(g, std::string(129, 'n'));
  ExpectSpecRefused(g, {"graph.tasks[1].name", "129", "limit of 128"});
}

TEST_F(ApiContractTest, TaskNameWithBadCharactersIsInvalid) {
  const std::vector<std::string> bad_names = {
      "with space", "slash/name", "semi;colon", std::string("nul\0byte", 8)};
  for (const std::string& bad : bad_names) {
    v1::GraphSpec g;
    AddTask(g, "ok_name.1:x-y");
    AddTask(g, bad);
    SCOPED_TRACE(bad);
    ExpectSpecRefused(g, {"graph.tasks[1].name", "outside [A-Za-z0-9_.:-]"});
  }
}

TEST_F(ApiContractTest, TooLongLabelKeyIsInvalid) {
  v1::GraphSpec g = OneTask();
  (*g.mutable_labels())["fine"] = "v";
  (*g.mutable_labels())[std::string(64, 'k')] = "v";
  ExpectSpecRefused(g, {"graph.labels[", "key of 64 bytes", "limit of 63"});
}

TEST_F(ApiContractTest, TooLongLabelValueIsInvalid) {
  v1::GraphSpec g = OneTask();
  (*g.mutable_tasks(0)->mutable_labels())["k"] = std::string(257, 'v');
  ExpectSpecRefused(g, {"graph.tasks[0].labels[\"k\"]", "value of 257 bytes",
                        "limit of 256"});
}

TEST_F(ApiContractTest, BadQueueNameIsInvalid) {
  ExpectSpecRefused(OneTask("no spaces allowed"),
                    {"graph.tasks[0].queue", "outside [A-Za-z0-9_.:-]"});
  ExpectSpecRefused(OneTask(std::string(129, 'q')),
                    {"graph.tasks[0].queue", "limit of 128"});
}

TEST_F(ApiContractTest, NegativeMaxAttemptsIsInvalid) {
  v1::GraphSpec g = OneTask();
  g.mutable_tasks(0)->mutable_retry()->set_max_attempts(-1);
  ExpectSpecRefused(g, {"graph.tasks[0].retry.max_attempts", "negative"});
}

TEST_F(ApiContractTest, JitterAboveOneIsInvalid) {
  v1::GraphSpec g = OneTask();
  g.mutable_tasks(0)->mutable_retry()->set_jitter(1.5);
  ExpectSpecRefused(g, {"graph.tasks[0].retry.jitter", "outside [0, 1]"});
}

TEST_F(ApiContractTest, RequestIdLongerThan128BytesIsInvalid) {
  v1::SubmitGraphRequest req;
  *req.mutable_graph() = OneTask();
  req.set_request_id(std::string(129, 'r'));
  ExpectSubmitRefused(req, grpc::StatusCode::INVALID_ARGUMENT,
                      {"request_id", "129", "limit of 128"});
  // 128 bytes is accepted.
  v1::SubmitGraphResponse resp;
  grpc::Status s = TrySubmit(OneTask(), &resp, std::string(128, 'r'));
  EXPECT_TRUE(s.ok()) << Describe(s);
  EXPECT_TRUE(resp.created());
}

// ---------------------------------------------------------------------------
// Unknown and missing ids.

TEST_F(ApiContractTest, EveryCallOnAnUnknownGraphIsNotFound) {
  // A live graph the refused calls must leave alone.
  const std::string live = Submit(OneTask(kUnserved));
  const Footprint before = Mark();
  for (const std::string id : {kUnknownGraph, "nope"}) {
    SCOPED_TRACE(id);
    EXPECT_EQ(GetGraphStatus(id).error_code(), grpc::StatusCode::NOT_FOUND);
    grpc::Status s = GetTaskStatus(id, "t");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(s);
    EXPECT_THAT(s.error_message(), HasSubstr(id));
    EXPECT_EQ(CancelGraphStatus(id).error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(CancelTaskStatus(id, "t").error_code(),
              grpc::StatusCode::NOT_FOUND);
    v1::WaitGraphRequest wait;
    wait.set_graph_id(id);
    EXPECT_EQ(WaitGraphStatus(wait, absl::Seconds(5)).error_code(),
              grpc::StatusCode::NOT_FOUND);
    wait.mutable_timeout()->set_seconds(1);
    EXPECT_EQ(WaitGraphStatus(wait, absl::Seconds(5)).error_code(),
              grpc::StatusCode::NOT_FOUND);
    v1::WatchRequest watch;  // snapshot first
    watch.mutable_graph()->set_graph_id(id);
    EXPECT_EQ(RefusedWatchStatus(watch).error_code(),
              grpc::StatusCode::NOT_FOUND);
    watch.mutable_graph()->set_replay(true);
    EXPECT_EQ(RefusedWatchStatus(watch).error_code(),
              grpc::StatusCode::NOT_FOUND);
    watch.mutable_graph()->set_replay(false);
    watch.mutable_graph()->set_after_seq(3);
    EXPECT_EQ(RefusedWatchStatus(watch).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  ExpectUnchanged(before);
  EXPECT_EQ(Get(live).state(), v1::GRAPH_STATE_RUNNING);
}

TEST_F(ApiContractTest, EveryCallWithAnEmptyGraphIdIsInvalid) {
  Submit(OneTask(kUnserved));
  const Footprint before = Mark();
  auto expect_invalid = [](const grpc::Status& s, const char* what) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << what << ": " << Describe(s);
    EXPECT_THAT(s.error_message(), HasSubstr("graph_id")) << what;
  };
  expect_invalid(GetGraphStatus(""), "GetGraph");
  expect_invalid(GetTaskStatus("", "t"), "GetTask");
  expect_invalid(CancelGraphStatus(""), "CancelGraph");
  expect_invalid(CancelTaskStatus("", "t"), "CancelTask");
  v1::WaitGraphRequest wait;
  expect_invalid(WaitGraphStatus(wait, absl::Seconds(5)), "WaitGraph");
  v1::WatchRequest watch;
  watch.mutable_graph();
  expect_invalid(RefusedWatchStatus(watch), "Watch");
  ExpectUnchanged(before);
}

TEST_F(ApiContractTest, UnknownTaskNameIsNotFoundAndChangesNothing) {
  const std::string id = Submit(Diamond());  // no worker: "a" stays READY
  const v1::Graph g0 = Get(id);
  const Footprint before = Mark();
  grpc::Status s = GetTaskStatus(id, "ghost");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("ghost"));
  s = CancelTaskStatus(id, "ghost");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("ghost"));
  ExpectUnchanged(before);
  const v1::Graph g1 = Get(id);
  EXPECT_EQ(g1.last_seq(), g0.last_seq());
  EXPECT_EQ(g1.state(), v1::GRAPH_STATE_RUNNING);
  EXPECT_FALSE(g1.cancel_requested());
  for (const v1::Task& t : g0.tasks()) {
    EXPECT_EQ(TaskOf(g1, t.spec().name()).state(), t.state())
        << t.spec().name();
  }
}

TEST_F(ApiContractTest, EmptyTaskNameIsInvalid) {
  const std::string id = Submit(OneTask(kUnserved));
  const int64_t seq = Get(id).last_seq();
  const Footprint before = Mark();
  grpc::Status s = GetTaskStatus(id, "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("task"));
  s = CancelTaskStatus(id, "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("task"));
  ExpectUnchanged(before);
  EXPECT_EQ(Get(id).last_seq(), seq);
}

TEST_F(ApiContractTest, WaitGraphRefusesNegativeTimeout) {
  const std::string id = Submit(OneTask(kUnserved));
  v1::WaitGraphRequest req;
  req.set_graph_id(id);
  req.mutable_timeout()->set_seconds(-1);
  grpc::Status s = WaitGraphStatus(req, absl::Seconds(5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("timeout"));
}

// ---------------------------------------------------------------------------
// ListGraphs and Watch arguments.

TEST_F(ApiContractTest, ListGraphsRefusesNegativePageSize) {
  v1::ListGraphsRequest req;
  req.set_page_size(-1);
  grpc::Status s = ListStatus(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("page_size"));
}

TEST_F(ApiContractTest, ListGraphsRefusesPageSizeAbove1000) {
  v1::ListGraphsRequest req;
  req.set_page_size(1000);
  EXPECT_TRUE(ListStatus(req).ok());
  req.set_page_size(1001);
  grpc::Status s = ListStatus(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("page_size"));
}

TEST_F(ApiContractTest, ListGraphsRefusesMalformedPageToken) {
  Submit(OneTask(kUnserved));
  for (const std::string token : {"garbage", "01ARZ3NDEKTSV4RRFFQ69G5FA",
                                  "01ARZ3NDEKTSV4RRFFQ69G5FAU!"}) {
    v1::ListGraphsRequest req;
    req.set_page_token(token);
    grpc::Status s = ListStatus(req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << token << ": " << Describe(s);
    EXPECT_THAT(s.error_message(), HasSubstr("page_token"));
  }
}

TEST_F(ApiContractTest, WatchRefusesNegativeAfterSeq) {
  const std::string id = Submit(OneTask(kUnserved));
  v1::WatchRequest req;
  req.mutable_graph()->set_graph_id(id);
  req.mutable_graph()->set_after_seq(-1);
  grpc::Status s = RefusedWatchStatus(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("after_seq"));
}

TEST_F(ApiContractTest, WatchWithoutTargetIsInvalid) {
  grpc::Status s = RefusedWatchStatus(v1::WatchRequest());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("target"));
}

TEST_F(ApiContractTest, GlobalWatchRefusesGarbageResumeToken) {
  for (const std::string token :
       {"garbage", "fg1.zz.1", "fg1.0123456789abcdef.-1",
        "fg2.0123456789abcdef.1", "fg1.0123456789abcdef.1.2"}) {
    v1::WatchRequest req;
    req.mutable_all()->set_resume_token(token);
    grpc::Status s = RefusedWatchStatus(req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << token << ": " << Describe(s);
  }
}

TEST_F(ApiContractTest, GlobalWatchTokenOfAnotherInstanceIsOutOfRange) {
  // A second server: its tokens are well-formed but of another instance
  // (tokens are "fg1.<instance epoch>.<position>", see event_bus.cc).
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<ForgeServer>> other =
      ForgeServer::Start(options);
  ASSERT_TRUE(other.ok()) << other.status();
  auto other_stub = v1::Orchestrator::NewStub(grpc::CreateChannel(
      (*other)->address(), grpc::InsecureChannelCredentials()));
  const std::string token = (*other)->engine().bus().CurrentResumeToken();

  // The token is good where it was made: a watch resumed from it receives
  // the events published after it.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    v1::WatchRequest req;
    req.mutable_all()->set_resume_token(token);
    auto reader = other_stub->Watch(&ctx, req);
    grpc::ClientContext sctx;
    sctx.set_deadline(In(absl::Seconds(10)));
    v1::SubmitGraphRequest sreq;
    *sreq.mutable_graph() = OneTask(kUnserved);
    v1::SubmitGraphResponse sresp;
    ASSERT_TRUE(other_stub->SubmitGraph(&sctx, sreq, &sresp).ok());
    v1::WatchResponse msg;
    ASSERT_TRUE(reader->Read(&msg))
        << "the token was refused by its own server";
    ASSERT_GT(msg.events_size(), 0);
    EXPECT_EQ(msg.events(0).type(), v1::GRAPH_SUBMITTED);
    EXPECT_EQ(msg.events(0).graph_id(), sresp.graph_id());
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    reader->Finish().IgnoreError();
  }

  const Footprint before = Mark();
  v1::WatchRequest req;
  req.mutable_all()->set_resume_token(token);
  grpc::Status s = RefusedWatchStatus(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Describe(s);

  // A token forged from this server's own by changing its epoch, likewise.
  std::string forged = server().engine().bus().CurrentResumeToken();
  ASSERT_THAT(forged, ::testing::StartsWith("fg1."));
  forged[4] = forged[4] == '0' ? '1' : '0';
  req.mutable_all()->set_resume_token(forged);
  s = RefusedWatchStatus(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Describe(s);
  ExpectUnchanged(before);

  other_stub.reset();
  other->reset();
}

// ---------------------------------------------------------------------------
// WorkerService hello.

TEST_F(ApiContractTest, WorkerWhoseFirstMessageIsNotAHelloIsRefused) {
  v1::WorkerMessage m;
  m.mutable_heartbeat();
  grpc::Status s = BadHelloStatus(m);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("hello"));
  v1::WorkerMessage result_first;
  result_first.add_results()->mutable_lease()->set_graph_id(kUnknownGraph);
  s = BadHelloStatus(result_first);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
}

TEST_F(ApiContractTest, WorkerHelloWithoutQueuesIsRefused) {
  grpc::Status s = BadHelloStatus(HelloMsg({}, 1));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("hello.queues"));
}

TEST_F(ApiContractTest, WorkerHelloWithZeroSlotsIsRefused) {
  grpc::Status s = BadHelloStatus(HelloMsg({"q"}, 0));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("hello.slots"));
  s = BadHelloStatus(HelloMsg({"q"}, -3));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
}

TEST_F(ApiContractTest, WorkerHelloWithMoreThan10000SlotsIsRefused) {
  grpc::Status s = BadHelloStatus(HelloMsg({"q"}, 10001));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("hello.slots"));
}

TEST_F(ApiContractTest, WorkerHelloWithInvalidQueueNameIsRefused) {
  const std::vector<std::string> bad_queues = {"", "has space",
                                               std::string(129, 'q')};
  for (const std::string& bad : bad_queues) {
    SCOPED_TRACE(bad);
    grpc::Status s = BadHelloStatus(HelloMsg({"good", bad}, 1));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << Describe(s);
    EXPECT_THAT(s.error_message(), HasSubstr("hello.queues[1]"));
  }
}

// ---------------------------------------------------------------------------
// Idempotent submit.

TEST_F(ApiContractTest, SameRequestIdReturnsTheSameGraph) {
  const int64_t before = GraphCount();
  v1::SubmitGraphResponse first, second;
  ASSERT_TRUE(TrySubmit(Diamond(), &first, "req-1").ok());
  EXPECT_TRUE(first.created());
  const v1::Graph g0 = Get(first.graph_id());
  ASSERT_TRUE(TrySubmit(Diamond(), &second, "req-1").ok());
  EXPECT_FALSE(second.created());
  EXPECT_EQ(second.graph_id(), first.graph_id());
  EXPECT_EQ(GraphCount(), before + 1);
  const v1::Graph g1 = Get(first.graph_id());
  EXPECT_EQ(g1.request_id(), "req-1");
  EXPECT_EQ(g1.last_seq(), g0.last_seq()) << "the retry changed the graph";
}

TEST_F(ApiContractTest, SameRequestIdWithAnotherSpecIsAlreadyExists) {
  const std::string id = Submit(Diamond(), "req-2");
  const v1::Graph g0 = Get(id);
  v1::GraphSpec other = Diamond();
  other.mutable_tasks(3)->set_input("different");
  v1::SubmitGraphRequest req;
  req.set_request_id("req-2");
  *req.mutable_graph() = other;
  ExpectSubmitRefused(req, grpc::StatusCode::ALREADY_EXISTS, {"req-2", id});
  EXPECT_EQ(GraphCount(), 1);
  EXPECT_EQ(Get(id).last_seq(), g0.last_seq());
}

// The same spec sent again must be recognised whatever order its maps travel
// in: proto maps have no defined order (in C++ each Map instance iterates in
// an order seeded per instance), so an equality test on serialized bytes is
// not a spec equality test.
TEST_F(ApiContractTest, SameRequestIdWithTheSameMapsIsTheSameGraph) {
  auto spec = [](bool reversed) {
    v1::GraphSpec g = OneTask(kUnserved);
    std::vector<int> order;
    for (int i = 0; i < 24; ++i) order.push_back(reversed ? 23 - i : i);
    for (int i : order) {
      (*g.mutable_labels())[absl::StrCat("label", i)] = absl::StrCat("v", i);
      (*g.mutable_tasks(0)->mutable_params())[absl::StrCat("p", i)] =
          absl::StrCat("v", i);
    }
    return g;
  };
  v1::SubmitGraphResponse first;
  ASSERT_TRUE(TrySubmit(spec(false), &first, "req-maps").ok());
  for (int i = 0; i < 5; ++i) {
    v1::SubmitGraphResponse again;
    grpc::Status s = TrySubmit(spec(i % 2 == 1), &again, "req-maps");
    EXPECT_TRUE(s.ok()) << "retry " << i << ": " << Describe(s);
    EXPECT_EQ(again.graph_id(), first.graph_id());
    EXPECT_FALSE(again.created());
  }
  EXPECT_EQ(GraphCount(), 1);
}

TEST_F(ApiContractTest, ConcurrentSubmitsWithOneRequestIdCreateOneGraph) {
  constexpr int kThreads = 8;
  absl::Notification go;
  std::vector<v1::SubmitGraphResponse> responses(kThreads);
  std::vector<grpc::Status> statuses(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i]() {
      go.WaitForNotification();
      statuses[i] = TrySubmit(Diamond(), &responses[i], "req-race");
    });
  }
  go.Notify();
  for (std::thread& t : threads) t.join();
  int created = 0;
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << Describe(statuses[i]);
    EXPECT_EQ(responses[i].graph_id(), responses[0].graph_id());
    created += responses[i].created() ? 1 : 0;
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(GraphCount(), 1);
  EXPECT_EQ(server().engine().counters().graphs_submitted, 1);
}

// ---------------------------------------------------------------------------
// ListGraphs.

TEST_F(ApiContractTest, ListGraphsIsNewestFirst) {
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(Submit(OneTask(kUnserved)));
  v1::ListGraphsResponse r = List(v1::ListGraphsRequest());
  ASSERT_EQ(r.graphs_size(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r.graphs(i).id(), ids[3 - i]);
  EXPECT_TRUE(r.graphs(0).tasks().empty()) << "ListGraphs is BASIC by default";
  EXPECT_TRUE(r.next_page_token().empty());
}

TEST_F(ApiContractTest, ListGraphsPagesVisitEveryGraphOnce) {
  std::set<std::string> submitted;
  for (int i = 0; i < 5; ++i) submitted.insert(Submit(OneTask(kUnserved)));
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    v1::ListGraphsRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    v1::ListGraphsResponse r = List(req);
    EXPECT_LE(r.graphs_size(), 2);
    for (const v1::Graph& g : r.graphs()) seen.push_back(g.id());
    token = r.next_page_token();
    ASSERT_LT(++pages, 10) << "pagination does not end";
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), submitted);
  EXPECT_TRUE(std::is_sorted(seen.rbegin(), seen.rend())) << "newest first";
}

TEST_F(ApiContractTest, ListGraphsFiltersByLabels) {
  auto labelled = [](const std::string& team, const std::string& env) {
    v1::GraphSpec g = OneTask(kUnserved);
    (*g.mutable_labels())["team"] = team;
    (*g.mutable_labels())["env"] = env;
    return g;
  };
  const std::string a_prod = Submit(labelled("a", "prod"));
  const std::string a_dev = Submit(labelled("a", "dev"));
  Submit(labelled("b", "prod"));
  Submit(OneTask(kUnserved));

  v1::ListGraphsRequest req;
  (*req.mutable_labels())["team"] = "a";
  v1::ListGraphsResponse r = List(req);
  ASSERT_EQ(r.graphs_size(), 2);
  EXPECT_EQ(r.graphs(0).id(), a_dev);
  EXPECT_EQ(r.graphs(1).id(), a_prod);

  (*req.mutable_labels())["env"] = "prod";
  r = List(req);
  ASSERT_EQ(r.graphs_size(), 1);
  EXPECT_EQ(r.graphs(0).id(), a_prod);
  EXPECT_EQ(r.graphs(0).labels().at("team"), "a");

  (*req.mutable_labels())["team"] = "nobody";
  EXPECT_EQ(List(req).graphs_size(), 0);
}

TEST_F(ApiContractTest, ListGraphsFiltersByState) {
  StartWorker({"default"}, 1);
  const std::string done = Submit(OneTask("default"));
  ASSERT_EQ(WaitTerminal(done).state(), v1::GRAPH_STATE_SUCCEEDED);
  const std::string running = Submit(OneTask(kUnserved));

  v1::ListGraphsRequest req;
  req.add_states(v1::GRAPH_STATE_SUCCEEDED);
  v1::ListGraphsResponse r = List(req);
  ASSERT_EQ(r.graphs_size(), 1);
  EXPECT_EQ(r.graphs(0).id(), done);
  EXPECT_EQ(r.graphs(0).state(), v1::GRAPH_STATE_SUCCEEDED);

  req.clear_states();
  req.add_states(v1::GRAPH_STATE_RUNNING);
  r = List(req);
  ASSERT_EQ(r.graphs_size(), 1);
  EXPECT_EQ(r.graphs(0).id(), running);

  req.add_states(v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(List(req).graphs_size(), 2);

  req.clear_states();
  req.add_states(v1::GRAPH_STATE_FAILED);
  EXPECT_EQ(List(req).graphs_size(), 0);
}

// ---------------------------------------------------------------------------
// WaitGraph.

TEST_F(ApiContractTest, WaitGraphTimeoutReturnsTheGraphAsItIs) {
  const std::string id = Submit(OneTask(kUnserved));
  v1::WaitGraphRequest req;
  req.set_graph_id(id);
  req.mutable_timeout()->set_nanos(100 * 1000 * 1000);
  v1::WaitGraphResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status s = WaitGraphStatus(req, absl::Seconds(10), &resp);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_FALSE(resp.terminal());
  EXPECT_EQ(resp.graph().id(), id);
  EXPECT_EQ(resp.graph().state(), v1::GRAPH_STATE_RUNNING);
  EXPECT_EQ(resp.graph().tasks_size(), 1) << "FULL view by default";
  EXPECT_GE(took, absl::Milliseconds(90));
  EXPECT_LT(took, absl::Seconds(2));
}

TEST_F(ApiContractTest, WaitGraphWithoutTimeoutEndsAtTheCallDeadline) {
  const std::string id = Submit(OneTask(kUnserved));
  v1::WaitGraphRequest req;
  req.set_graph_id(id);
  const absl::Time start = absl::Now();
  grpc::Status s = WaitGraphStatus(req, absl::Milliseconds(200));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << Describe(s);
  EXPECT_LT(took, absl::Seconds(2));
  EXPECT_EQ(Get(id).state(), v1::GRAPH_STATE_RUNNING);
}

TEST_F(ApiContractTest, WaitGraphOnAFinishedGraphReturnsAtOnce) {
  StartWorker({"default"}, 1);
  const std::string id = Submit(OneTask());
  ASSERT_EQ(WaitTerminal(id).state(), v1::GRAPH_STATE_SUCCEEDED);
  v1::WaitGraphRequest req;
  req.set_graph_id(id);
  req.mutable_timeout()->set_seconds(30);  // would be felt if it waited
  v1::WaitGraphResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status s = WaitGraphStatus(req, absl::Seconds(30), &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(resp.terminal());
  EXPECT_EQ(resp.graph().state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(resp.graph().tasks_size(), 1);
}

// ---------------------------------------------------------------------------
// WorkerService: credit flow and fencing.

TEST_F(ApiContractTest, AssignmentCarriesLeaseTaskQueueInputAndParams) {
  RawWorker w(address());
  ASSERT_TRUE(w.Hello({"q"}, 1));
  ASSERT_TRUE(w.AwaitWelcome());
  EXPECT_THAT(w.worker_id(), ::testing::StartsWith("raw"));
  v1::GraphSpec g;
  AddTask(g, "first", {}, kUnserved);
  v1::TaskSpec* t = AddTask(g, "second", {}, "q");
  t->set_input(std::string("in\0put", 6));
  (*t->mutable_params())["model"] = "m1";
  (*t->mutable_params())["n"] = "3";
  (*t->mutable_labels())["owner"] = "me";
  const std::string id = Submit(g);
  ASSERT_TRUE(w.AwaitAssignmentsSeen(1));
  const v1::Assignment a = w.TakeAssignment();
  EXPECT_EQ(a.lease().graph_id(), id);
  EXPECT_EQ(a.lease().task_index(), 1);
  EXPECT_EQ(a.lease().attempt(), 1);
  EXPECT_GT(a.lease().epoch(), 0u);
  EXPECT_EQ(a.task(), "second");
  EXPECT_EQ(a.queue(), "q");
  EXPECT_EQ(a.input(), std::string("in\0put", 6));
  EXPECT_EQ(a.params().size(), 2u);
  EXPECT_EQ(a.params().at("model"), "m1");
  EXPECT_EQ(a.params().at("n"), "3");
  EXPECT_EQ(a.labels().at("owner"), "me");
  EXPECT_GT(a.run_timeout_ms(), 0);
  const v1::Task running = FetchTask(id, "second");
  EXPECT_EQ(running.state(), v1::RUNNING);
  EXPECT_EQ(running.attempt(), 1);
  ASSERT_EQ(running.attempts_size(), 1);
  EXPECT_EQ(running.attempts(0).worker_id(), w.worker_id());
}

TEST_F(ApiContractTest, WorkerStreamNeverCarriesMoreAssignmentsThanSlots) {
  constexpr int kSlots = 2;
  constexpr int kTasks = 6;
  RawWorker w(address());
  ASSERT_TRUE(w.Hello({"q"}, kSlots));
  ASSERT_TRUE(w.AwaitWelcome());
  v1::GraphSpec g;
  for (int i = 0; i < kTasks; ++i) {
    v1::TaskSpec* t = AddTask(g, absl::StrCat("t", i), {}, "q");
    t->set_input(absl::StrCat("in-", i));
    (*t->mutable_params())["i"] = absl::StrCat(i);
  }
  const std::string id = Submit(g);

  // The first credit's worth: exactly kSlots, whatever the batching.
  ASSERT_TRUE(w.AwaitAssignmentsSeen(kSlots));
  EXPECT_EQ(w.assignments_seen(), kSlots);

  std::set<std::string> delivered;
  auto check = [&](const v1::Assignment& a) {
    const int i = a.lease().task_index();
    EXPECT_EQ(a.lease().graph_id(), id);
    EXPECT_EQ(a.lease().attempt(), 1);
    EXPECT_GT(a.lease().epoch(), 0u);
    EXPECT_EQ(a.task(), absl::StrCat("t", i));
    EXPECT_EQ(a.queue(), "q");
    EXPECT_EQ(a.input(), absl::StrCat("in-", i));
    EXPECT_EQ(a.params().at("i"), absl::StrCat(i));
    EXPECT_TRUE(delivered.insert(a.task()).second)
        << "delivered twice: " << a.task();
  };
  // Each result returns one credit; only then may the next task come.
  int results = 0;
  while (results < kTasks) {
    ASSERT_GT(w.held(), 0u);
    const v1::Assignment a = w.TakeAssignment();
    check(a);
    ASSERT_TRUE(w.SendResult(a.lease(), true, "out-" + a.task()));
    ++results;
    if (w.assignments_seen() < kTasks) {
      ASSERT_TRUE(w.AwaitAssignmentsSeen(w.assignments_seen() + 1));
    } else if (w.held() == 0) {
      break;
    }
  }
  EXPECT_EQ(w.assignments_seen(), kTasks);
  EXPECT_EQ(delivered.size(), static_cast<size_t>(kTasks));
  EXPECT_EQ(w.max_outstanding(), kSlots)
      << "more assignments outstanding than slots";
  // Every result was accepted.
  for (int i = 0; i < kTasks; ++i) {
    v1::ResultAck ack;
    ASSERT_TRUE(w.AwaitAck(&ack));
    EXPECT_EQ(ack.code(), 0) << ack.message();
  }
  const v1::Graph done = WaitTerminal(id);
  EXPECT_EQ(done.state(), v1::GRAPH_STATE_SUCCEEDED);
  for (const v1::Task& t : done.tasks()) {
    EXPECT_EQ(t.output(), "out-" + t.spec().name());
    EXPECT_EQ(t.attempt(), 1);
  }
}

TEST_F(ApiContractTest, ResultWithAStaleLeaseIsAbortedAndChangesNothing) {
  RawWorker w(address());
  ASSERT_TRUE(w.Hello({"q"}, 1));
  const std::string id = Submit(OneTask("q"));
  ASSERT_TRUE(w.AwaitAssignmentsSeen(1));
  const v1::Assignment a = w.TakeAssignment();
  const int64_t seq = Get(id).last_seq();

  v1::Lease wrong_attempt = a.lease();
  wrong_attempt.set_attempt(a.lease().attempt() + 1);
  v1::Lease wrong_epoch = a.lease();
  wrong_epoch.set_epoch(a.lease().epoch() + 1000);
  v1::Lease old_attempt = a.lease();
  old_attempt.set_attempt(0);
  for (const v1::Lease& stale : {wrong_attempt, wrong_epoch, old_attempt}) {
    SCOPED_TRACE(stale.ShortDebugString());
    ASSERT_TRUE(w.SendResult(stale, true, "stale"));
    v1::ResultAck ack;
    ASSERT_TRUE(w.AwaitAck(&ack));
    EXPECT_EQ(ack.code(), kAborted) << ack.message();
    EXPECT_EQ(ack.lease().attempt(), stale.attempt());
    EXPECT_EQ(ack.lease().epoch(), stale.epoch());
    const v1::Task t = FetchTask(id, "t");
    EXPECT_EQ(t.state(), v1::RUNNING);
    EXPECT_EQ(t.attempt(), 1);
    EXPECT_TRUE(t.output().empty());
    EXPECT_EQ(Get(id).last_seq(), seq) << "a stale result made an event";
  }

  // The real lease still works...
  ASSERT_TRUE(w.SendResult(a.lease(), true, "first"));
  v1::ResultAck ack;
  ASSERT_TRUE(w.AwaitAck(&ack));
  EXPECT_EQ(ack.code(), 0) << ack.message();
  const v1::Task t = FetchTask(id, "t");
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.output(), "first");
  EXPECT_EQ(t.attempts_size(), 1);
}

TEST_F(ApiContractTest, SecondResultForALeaseIsRefusedAndChangesNothing) {
  RawWorker w(address());
  ASSERT_TRUE(w.Hello({"q"}, 1));
  const std::string id = Submit(OneTask("q"));
  ASSERT_TRUE(w.AwaitAssignmentsSeen(1));
  const v1::Assignment a = w.TakeAssignment();
  ASSERT_TRUE(w.SendResult(a.lease(), true, "first"));
  v1::ResultAck ack;
  ASSERT_TRUE(w.AwaitAck(&ack));
  ASSERT_EQ(ack.code(), 0) << ack.message();
  const v1::Graph g0 = Get(id);
  ASSERT_EQ(g0.state(), v1::GRAPH_STATE_SUCCEEDED);

  // Same lease again, now a failure with another output.
  ASSERT_TRUE(w.SendResult(a.lease(), false, "second"));
  ASSERT_TRUE(w.AwaitAck(&ack));
  EXPECT_NE(ack.code(), 0);
  const v1::Graph g1 = Get(id);
  EXPECT_EQ(g1.state(), v1::GRAPH_STATE_SUCCEEDED);
  EXPECT_EQ(g1.last_seq(), g0.last_seq());
  const v1::Task& t = TaskOf(g1, "t");
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.output(), "first");
  ASSERT_EQ(t.attempts_size(), 1);
  EXPECT_EQ(t.attempts(0).state(), v1::SUCCEEDED);
}

// ---------------------------------------------------------------------------
// grpc.health.v1. The test generates no health stubs: HealthCheckRequest
// {string service = 1} and HealthCheckResponse {ServingStatus status = 1}
// have the wire form of google.protobuf.StringValue and Int32Value.

TEST_F(ApiContractTest, HealthCheckReportsServing) {
  grpc::TemplatedGenericStub<google::protobuf::StringValue,
                             google::protobuf::Int32Value>
      health(channel_);
  auto check = [&](const std::string& service,
                   google::protobuf::Int32Value* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(5)));
    google::protobuf::StringValue req;
    req.set_value(service);
    absl::Notification done;
    grpc::Status status;
    health.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                     &req, resp, [&](grpc::Status s) {
                       status = std::move(s);
                       done.Notify();
                     });
    done.WaitForNotification();  // bounded by the call's deadline
    return status;
  };
  google::protobuf::Int32Value resp;
  grpc::Status s = check("", &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(resp.value(), 1) << "SERVING";
  s = check("no.such.Service", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(s);
}

}  // namespace
}  // namespace forge::testing
