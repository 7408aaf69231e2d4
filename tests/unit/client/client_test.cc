// Tests of client/lib (forge::Client) and client/forgectl against a fake
// Orchestrator: a callback service on 127.0.0.1:0 that returns canned
// responses and records the requests it got.

#include "client/lib/client.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/graph_file.h"
#include "common/tsan.h"
#include "forge/v1/orchestrator.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

extern char** environ;

namespace forge {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A message from its text form. Keep map fields out of `text` and set them
// through the generated API: a map filled by TextFormat (reflection) takes
// protobuf's internal lock on first read, which ThreadSanitizer builds
// against Debian's uninstrumented libprotobuf misreport.
template <typename T>
T ParseText(const std::string& text) {
  T message;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &message))
      << text;
  return message;
}

// ---------------------------------------------------------------------------
// The fake Orchestrator
// ---------------------------------------------------------------------------

// Canned answers for one RPC method, and what the method received.
template <typename Request, typename Response>
struct Canned {
  grpc::Status status;
  Response response;
  std::vector<Request> requests;
  // Deadline of each call, relative to its arrival; InfiniteDuration if none.
  std::vector<absl::Duration> deadlines;
};

// Thread-safe: handlers run on gRPC threads, the test reads and sets the
// canned data from its own.
class FakeOrchestrator final : public forge::v1::Orchestrator::CallbackService {
 public:
  absl::Mutex mu;
  Canned<forge::v1::SubmitGraphRequest, forge::v1::SubmitGraphResponse> submit
      ABSL_GUARDED_BY(mu);
  Canned<forge::v1::GetGraphRequest, forge::v1::GetGraphResponse> get_graph
      ABSL_GUARDED_BY(mu);
  Canned<forge::v1::ListGraphsRequest, forge::v1::ListGraphsResponse>
      list_graphs ABSL_GUARDED_BY(mu);
  Canned<forge::v1::GetTaskRequest, forge::v1::GetTaskResponse> get_task
      ABSL_GUARDED_BY(mu);
  Canned<forge::v1::WaitGraphRequest, forge::v1::WaitGraphResponse> wait_graph
      ABSL_GUARDED_BY(mu);
  Canned<forge::v1::CancelGraphRequest, forge::v1::CancelGraphResponse>
      cancel_graph ABSL_GUARDED_BY(mu);
  Canned<forge::v1::CancelTaskRequest, forge::v1::CancelTaskResponse>
      cancel_task ABSL_GUARDED_BY(mu);
  // Watch: these messages in order, then `watch.status` unless
  // `watch_hold_open` (then the stream stays open until cancelled).
  Canned<forge::v1::WatchRequest, std::vector<forge::v1::WatchResponse>> watch
      ABSL_GUARDED_BY(mu);
  bool watch_hold_open ABSL_GUARDED_BY(mu) = false;
  int watch_cancelled ABSL_GUARDED_BY(mu) = 0;

  int UnaryCallsForTest() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    return static_cast<int>(
        submit.requests.size() + get_graph.requests.size() +
        list_graphs.requests.size() + get_task.requests.size() +
        wait_graph.requests.size() + cancel_graph.requests.size() +
        cancel_task.requests.size());
  }

  // Orchestrator::CallbackService:
  grpc::ServerUnaryReactor* SubmitGraph(
      grpc::CallbackServerContext* ctx,
      const forge::v1::SubmitGraphRequest* request,
      forge::v1::SubmitGraphResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::submit);
  }
  grpc::ServerUnaryReactor* GetGraph(
      grpc::CallbackServerContext* ctx,
      const forge::v1::GetGraphRequest* request,
      forge::v1::GetGraphResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::get_graph);
  }
  grpc::ServerUnaryReactor* ListGraphs(
      grpc::CallbackServerContext* ctx,
      const forge::v1::ListGraphsRequest* request,
      forge::v1::ListGraphsResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::list_graphs);
  }
  grpc::ServerUnaryReactor* GetTask(
      grpc::CallbackServerContext* ctx,
      const forge::v1::GetTaskRequest* request,
      forge::v1::GetTaskResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::get_task);
  }
  grpc::ServerUnaryReactor* WaitGraph(
      grpc::CallbackServerContext* ctx,
      const forge::v1::WaitGraphRequest* request,
      forge::v1::WaitGraphResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::wait_graph);
  }
  grpc::ServerUnaryReactor* CancelGraph(
      grpc::CallbackServerContext* ctx,
      const forge::v1::CancelGraphRequest* request,
      forge::v1::CancelGraphResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::cancel_graph);
  }
  grpc::ServerUnaryReactor* CancelTask(
      grpc::CallbackServerContext* ctx,
      const forge::v1::CancelTaskRequest* request,
      forge::v1::CancelTaskResponse* response) override {
    return Answer(ctx, request, response, &FakeOrchestrator::cancel_task);
  }
  grpc::ServerWriteReactor<forge::v1::WatchResponse>* Watch(
      grpc::CallbackServerContext* ctx,
      const forge::v1::WatchRequest* request) override;

 private:
  static absl::Duration DeadlineOf(grpc::CallbackServerContext* ctx) {
    if (ctx->deadline() == std::chrono::system_clock::time_point::max()) {
      return absl::InfiniteDuration();
    }
    return absl::FromChrono(ctx->deadline() - std::chrono::system_clock::now());
  }

  template <typename Request, typename Response>
  grpc::ServerUnaryReactor* Answer(
      grpc::CallbackServerContext* ctx, const Request* request,
      Response* response, Canned<Request, Response> FakeOrchestrator::*canned) {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu);
      Canned<Request, Response>& c = this->*canned;
      c.requests.push_back(*request);
      c.deadlines.push_back(DeadlineOf(ctx));
      *response = c.response;
      status = c.status;
    }
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

  friend class FakeWatchWriter;
};

// Writes the canned Watch messages one at a time, then finishes (or waits
// for the client to cancel).
class FakeWatchWriter final
    : public grpc::ServerWriteReactor<forge::v1::WatchResponse> {
 public:
  FakeWatchWriter(FakeOrchestrator* fake,
                  std::vector<forge::v1::WatchResponse> messages,
                  grpc::Status status, bool hold_open)
      : fake_(fake),
        messages_(std::move(messages)),
        status_(std::move(status)),
        hold_open_(hold_open) {
    absl::MutexLock lock(&mu_);
    NextLocked();
  }

  void OnWriteDone(bool ok) override {
    FORGE_TSAN_RECEIVE(this);
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    NextLocked();
  }
  void OnCancel() override {
    FORGE_TSAN_RECEIVE(this);
    {
      absl::MutexLock lock(&fake_->mu);
      ++fake_->watch_cancelled;
    }
    {
      absl::MutexLock lock(&mu_);
      if (!writing_) FinishLocked(grpc::Status::CANCELLED);
    }
    // gRPC runs OnDone after OnCancel, ordered inside libgrpc: told to TSan.
    FORGE_TSAN_HANDOFF(this);
  }
  void OnDone() override {
    FORGE_TSAN_RECEIVE(this);
    delete this;
  }

 private:
  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (next_ < messages_.size()) {
      writing_ = true;
      FORGE_TSAN_HANDOFF(this);
      StartWrite(&messages_[next_++]);
    } else if (!hold_open_) {
      FinishLocked(status_);
    }
  }
  void FinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  FakeOrchestrator* const fake_;
  const std::vector<forge::v1::WatchResponse> messages_;
  const grpc::Status status_;
  const bool hold_open_;
  absl::Mutex mu_;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerWriteReactor<forge::v1::WatchResponse>* FakeOrchestrator::Watch(
    grpc::CallbackServerContext* ctx, const forge::v1::WatchRequest* request) {
  std::vector<forge::v1::WatchResponse> messages;
  grpc::Status status;
  bool hold_open;
  {
    absl::MutexLock lock(&mu);
    watch.requests.push_back(*request);
    watch.deadlines.push_back(DeadlineOf(ctx));
    messages = watch.response;
    status = watch.status;
    hold_open = watch_hold_open;
  }
  return new FakeWatchWriter(this, std::move(messages), std::move(status),
                             hold_open);
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // gRPC loads a time zone on its own threads (to stamp errors); loading
    // one here first, before gRPC starts any thread, makes the lazy setup of
    // the zone cache (inside Debian's uninstrumented Abseil) happen before
    // them, where ThreadSanitizer can see it.
    absl::LocalTimeZone();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    address_ = absl::StrCat("127.0.0.1:", port_);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address_);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  void TearDown() override {
    client_.reset();
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now());
    }
  }

  FakeOrchestrator fake_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
  std::unique_ptr<Client> client_;
};

forge::v1::WatchResponse EventsMessage(const std::string& graph_id,
                                       std::vector<int64_t> seqs) {
  forge::v1::WatchResponse response;
  for (int64_t seq : seqs) {
    forge::v1::Event* event = response.add_events();
    event->set_graph_id(graph_id);
    event->set_seq(seq);
    event->set_type(forge::v1::TASK_READY);
    event->set_task(absl::StrCat("t", seq));
  }
  return response;
}

forge::v1::WatchRequest GraphWatchRequest(const std::string& graph_id) {
  forge::v1::WatchRequest request;
  request.mutable_graph()->set_graph_id(graph_id);
  request.mutable_graph()->set_replay(true);
  return request;
}

// ---------------------------------------------------------------------------
// Client library
// ---------------------------------------------------------------------------

TEST_F(ClientTest, StatusCodeAndMessagePropagate) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.submit.status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       "tasks: cycle a -> b -> a");
    fake_.get_graph.status =
        grpc::Status(grpc::StatusCode::NOT_FOUND, "graph \"G9\" not found");
    fake_.cancel_task.status = grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION, "task b is SUCCEEDED");
  }
  absl::StatusOr<forge::v1::SubmitGraphResponse> submitted =
      client_->Submit(forge::v1::GraphSpec());
  EXPECT_EQ(submitted.status(),
            absl::InvalidArgumentError("tasks: cycle a -> b -> a"));
  EXPECT_EQ(client_->GetGraph("G9").status(),
            absl::NotFoundError("graph \"G9\" not found"));
  EXPECT_EQ(client_->CancelTask("G1", "b").status(),
            absl::FailedPreconditionError("task b is SUCCEEDED"));
}

TEST_F(ClientTest, UnavailableServerGivesUnavailable) {
  // The port was just in use and is now closed: connection refused.
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  absl::StatusOr<forge::v1::Graph> graph = client_->GetGraph("G1");
  EXPECT_EQ(graph.status().code(), absl::StatusCode::kUnavailable)
      << graph.status();
}

TEST_F(ClientTest, ConnectRejectsAnEmptyTargetAndTimesOutIfAsked) {
  EXPECT_EQ(Client::Connect("").status().code(),
            absl::StatusCode::kInvalidArgument);
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  ClientOptions options;
  options.connect_timeout = absl::Milliseconds(200);
  EXPECT_EQ(Client::Connect(address_, options).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(ClientTest, RequestsCarryTheirFieldsAndResponsesComeBack) {
  const auto spec = ParseText<forge::v1::GraphSpec>(
      R"pb(name: "g"
           tasks { name: "a" }
           tasks { name: "b" depends_on: "a" })pb");
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.submit.response.set_graph_id("G1");
    fake_.submit.response.set_created(true);
    fake_.get_task.response.mutable_task()->mutable_spec()->set_name("b");
    fake_.cancel_graph.response.set_state(forge::v1::GRAPH_STATE_CANCELLED);
  }
  absl::StatusOr<forge::v1::SubmitGraphResponse> submitted =
      client_->Submit(spec, "req-1");
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  EXPECT_EQ(submitted->graph_id(), "G1");
  EXPECT_TRUE(submitted->created());
  absl::StatusOr<forge::v1::Task> task = client_->GetTask("G1", "b");
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ(task->spec().name(), "b");
  absl::StatusOr<forge::v1::CancelGraphResponse> cancelled =
      client_->CancelGraph("G1", "no longer needed");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), forge::v1::GRAPH_STATE_CANCELLED);

  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.submit.requests.size(), 1u);
  EXPECT_EQ(fake_.submit.requests[0].request_id(), "req-1");
  EXPECT_TRUE(
      MessageDifferencer::Equals(fake_.submit.requests[0].graph(), spec));
  ASSERT_EQ(fake_.get_task.requests.size(), 1u);
  EXPECT_EQ(fake_.get_task.requests[0].graph_id(), "G1");
  EXPECT_EQ(fake_.get_task.requests[0].task(), "b");
  ASSERT_EQ(fake_.cancel_graph.requests.size(), 1u);
  EXPECT_EQ(fake_.cancel_graph.requests[0].reason(), "no longer needed");
}

TEST_F(ClientTest, UnaryCallsHaveTheRpcTimeoutAndWaitGraphNone) {
  ASSERT_TRUE(client_->GetGraph("G1").ok());
  ASSERT_TRUE(client_->WaitGraph("G1").ok());
  ASSERT_TRUE(client_->WaitGraph("G1", absl::Seconds(5)).ok());
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.get_graph.deadlines.size(), 1u);
  EXPECT_GT(fake_.get_graph.deadlines[0], absl::Seconds(20));
  // (The wire format rounds timeouts up a little.)
  EXPECT_LE(fake_.get_graph.deadlines[0], absl::Seconds(31));
  EXPECT_EQ(fake_.get_graph.requests[0].view(), forge::v1::FULL);

  ASSERT_EQ(fake_.wait_graph.requests.size(), 2u);
  // No timeout: no deadline and no timeout in the request.
  EXPECT_EQ(fake_.wait_graph.deadlines[0], absl::InfiniteDuration());
  EXPECT_FALSE(fake_.wait_graph.requests[0].has_timeout());
  // A timeout: the server is told, and the call outlives it by rpc_timeout.
  EXPECT_EQ(fake_.wait_graph.requests[1].timeout().seconds(), 5);
  EXPECT_GT(fake_.wait_graph.deadlines[1], absl::Seconds(30));
  EXPECT_LE(fake_.wait_graph.deadlines[1], absl::Seconds(36));
}

TEST_F(ClientTest, WatchDeliversMessagesInOrderThenEndsOk) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.watch.response = {EventsMessage("G1", {1, 2}),
                            EventsMessage("G1", {3}),
                            EventsMessage("G1", {4, 5, 6})};
  }
  std::vector<int64_t> seqs;
  const absl::Status status =
      client_->Watch(GraphWatchRequest("G1"),
                     [&seqs](const forge::v1::WatchResponse& response) {
                       for (const auto& event : response.events()) {
                         seqs.push_back(event.seq());
                       }
                       return true;
                     });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_THAT(seqs, ::testing::ElementsAre(1, 2, 3, 4, 5, 6));
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.watch.requests.size(), 1u);
  EXPECT_EQ(fake_.watch.requests[0].graph().graph_id(), "G1");
  EXPECT_EQ(fake_.watch.deadlines[0], absl::InfiniteDuration());
}

TEST_F(ClientTest, WatchStopsWhenOnMessageReturnsFalse) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.watch.response = {EventsMessage("G1", {1}), EventsMessage("G1", {2}),
                            EventsMessage("G1", {3})};
    fake_.watch_hold_open = true;  // Only a cancel ends this stream.
  }
  int calls = 0;
  const absl::Status status = client_->Watch(
      GraphWatchRequest("G1"),
      [&calls](const forge::v1::WatchResponse&) { return ++calls < 2; });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(calls, 2);
  // The server sees the cancellation.
  absl::MutexLock lock(&fake_.mu);
  EXPECT_TRUE(fake_.mu.AwaitWithTimeout(
      absl::Condition(
          +[](FakeOrchestrator* f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(f->mu) {
            return f->watch_cancelled > 0;
          },
          &fake_),
      absl::Seconds(10)));
}

TEST_F(ClientTest, WatchReturnsTheServersError) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.watch.response = {EventsMessage("G1", {1, 2})};
    fake_.watch.status = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                      "resume after_seq=2");
  }
  int calls = 0;
  const absl::Status status = client_->Watch(
      GraphWatchRequest("G1"), [&calls](const forge::v1::WatchResponse&) {
        ++calls;
        return true;
      });
  EXPECT_EQ(status, absl::ResourceExhaustedError("resume after_seq=2"));
  EXPECT_EQ(calls, 1);
}

TEST_F(ClientTest, WatchDeadlineGivesDeadlineExceeded) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.watch_hold_open = true;
  }
  const absl::Status status = client_->Watch(
      GraphWatchRequest("G1"),
      [](const forge::v1::WatchResponse&) { return true; },
      absl::Milliseconds(100));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

// ---------------------------------------------------------------------------
// forgectl (the built binary)
// ---------------------------------------------------------------------------

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string BinDir() {
  const char* env = std::getenv("FORGE_BIN_DIR");
  return env != nullptr ? env : FORGE_BIN_DIR_DEFAULT;
}

std::string SourceDir() {
  const char* env = std::getenv("FORGE_SOURCE_DIR");
  return env != nullptr ? env : FORGE_SOURCE_DIR_DEFAULT;
}

// Runs forgectl with `args`; its stdout and stderr go to files (no pipe can
// fill up), read once it has exited.
RunResult RunForgectl(const std::vector<std::string>& args) {
  static int counter = 0;
  const std::string base = absl::StrCat(::testing::TempDir(), "/forgectl.",
                                        getpid(), ".", ++counter);
  const std::string out_path = base + ".out";
  const std::string err_path = base + ".err";
  const std::string binary = BinDir() + "/forgectl";
  std::vector<std::string> argv_strings = {binary};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                   O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  RunResult result;
  pid_t pid;
  const int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr,
                             argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "cannot run " << binary;
  if (rc != 0) return result;
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  result.out = ReadWholeFile(out_path);
  result.err = ReadWholeFile(err_path);
  unlink(out_path.c_str());
  unlink(err_path.c_str());
  return result;
}

class ForgectlTest : public ClientTest {
 protected:
  RunResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", address_});
    return RunForgectl(args);
  }

  static std::string WriteTempFile(const std::string& name,
                                   const std::string& text) {
    const std::string path =
        absl::StrCat(::testing::TempDir(), "/", getpid(), ".", name);
    std::ofstream(path) << text;
    return path;
  }
};

// The graph of diamond.yaml after `right` failed (see DiamondGraph()).
constexpr char kDiamondGraph[] = R"pb(
  id: "G1"
  name: "diamond"
  state: GRAPH_STATE_FAILED
  counts { succeeded: 2 failed: 1 skipped: 1 }
  created_at { seconds: 1700000000 }
  finished_at { seconds: 1700000042 }
  last_seq: 14
  tasks {
    spec { name: "fetch" queue: "default" }
    state: SUCCEEDED
    attempt: 1
  }
  tasks {
    spec { name: "left" queue: "default" depends_on: "fetch" }
    state: SUCCEEDED
    attempt: 1
  }
  tasks {
    spec { name: "right" queue: "default" depends_on: "fetch" }
    state: FAILED
    attempt: 3
    error { code: "EXIT_CODE" message: "exit status 1" }
  }
  tasks {
    spec {
      name: "join"
      queue: "default"
      depends_on: "left"
      depends_on: "right"
    }
    state: SKIPPED
  }
)pb";

forge::v1::Graph DiamondGraph() {
  forge::v1::Graph graph = ParseText<forge::v1::Graph>(kDiamondGraph);
  (*graph.mutable_labels())["team"] = "data";
  return graph;
}

TEST_F(ForgectlTest, SubmitOfABadFileExits2WithoutCallingTheServer) {
  const std::string path =
      WriteTempFile("bad.yaml", "name: g\ntasks:\n  - nmae: a\n");
  const RunResult r = Run({"submit", "-f", path});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, StartsWith("forgectl: INVALID_ARGUMENT: "));
  EXPECT_THAT(r.err, HasSubstr("tasks[0].nmae (line 3): unknown field"));
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(fake_.UnaryCallsForTest(), 0);
  unlink(path.c_str());
}

TEST_F(ForgectlTest, RpcErrorsExit2WithTheCodeNameAndMessage) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.submit.status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       "tasks: cycle a -> b -> c -> a");
    fake_.get_graph.status =
        grpc::Status(grpc::StatusCode::NOT_FOUND, "graph \"G9\" not found");
  }
  RunResult r =
      Run({"submit", "-f", SourceDir() + "/client/examples/cycle.yaml"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "forgectl: INVALID_ARGUMENT: tasks: cycle a -> b -> c -> a\n");
  r = Run({"get", "G9"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "forgectl: NOT_FOUND: graph \"G9\" not found\n");
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.submit.requests.size(), 1u);
  EXPECT_EQ(fake_.submit.requests[0].graph().tasks_size(), 3);
}

TEST_F(ForgectlTest, SubmitWaitExits1WhenTheGraphFailed) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.submit.response.set_graph_id("G1");
    *fake_.wait_graph.response.mutable_graph() = DiamondGraph();
    fake_.wait_graph.response.set_terminal(true);
  }
  const RunResult r =
      Run({"submit", "-f", SourceDir() + "/client/examples/diamond.yaml",
           "--wait", "--request-id", "req-7"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.out,
            "G1\n"
            "G1 FAILED succeeded=2 failed=1 skipped=1\n"
            "  right: FAILED attempt=3 EXIT_CODE \"exit status 1\"\n");
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.submit.requests.size(), 1u);
  EXPECT_EQ(fake_.submit.requests[0].request_id(), "req-7");
  ASSERT_EQ(fake_.wait_graph.requests.size(), 1u);
  EXPECT_EQ(fake_.wait_graph.requests[0].graph_id(), "G1");
  EXPECT_FALSE(fake_.wait_graph.requests[0].has_timeout());
  EXPECT_EQ(fake_.wait_graph.deadlines[0], absl::InfiniteDuration());
}

TEST_F(ForgectlTest, SubmitWaitExits0WhenTheGraphSucceeded) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.submit.response.set_graph_id("G2");
    fake_.wait_graph.response.mutable_graph()->set_id("G2");
    fake_.wait_graph.response.mutable_graph()->set_state(
        forge::v1::GRAPH_STATE_SUCCEEDED);
    fake_.wait_graph.response.set_terminal(true);
  }
  const RunResult r = Run({"-o", "json", "submit", "--wait", "-f",
                           SourceDir() + "/client/examples/diamond.json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  forge::v1::WaitGraphResponse printed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &printed).ok())
      << r.out;
  EXPECT_EQ(printed.graph().id(), "G2");
}

TEST_F(ForgectlTest, WaitTimeoutOnARunningGraphIsDeadlineExceeded) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.wait_graph.response.mutable_graph()->set_id("G1");
    fake_.wait_graph.response.mutable_graph()->set_state(
        forge::v1::GRAPH_STATE_RUNNING);
  }
  const RunResult r = Run({"wait", "G1", "--timeout", "2s"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(
      r.err,
      "forgectl: DEADLINE_EXCEEDED: graph G1 is still RUNNING after 2s\n");
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.wait_graph.requests.size(), 1u);
  EXPECT_EQ(fake_.wait_graph.requests[0].timeout().seconds(), 2);
}

TEST_F(ForgectlTest, GetPrintsTheHeaderThenOneRowPerTask) {
  {
    absl::MutexLock lock(&fake_.mu);
    *fake_.get_graph.response.mutable_graph() = DiamondGraph();
  }
  const RunResult r = Run({"get", "G1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "GRAPH     G1\n"
            "NAME      diamond\n"
            "STATE     FAILED\n"
            "TASKS     succeeded=2 failed=1 skipped=1\n"
            "CREATED   2023-11-14T22:13:20Z\n"
            "FINISHED  2023-11-14T22:14:02Z\n"
            "LABELS    team=data\n"
            "LAST SEQ  14\n"
            "\n"
            "NAME   QUEUE    STATE      ATTEMPT  DEPS        ERROR\n"
            "fetch  default  SUCCEEDED  1        -\n"
            "left   default  SUCCEEDED  1        fetch\n"
            "right  default  FAILED     3        fetch       EXIT_CODE: "
            "\"exit status 1\"\n"
            "join   default  SKIPPED    0        left,right\n");

  // -o yaml / json print the Graph proto.
  const RunResult yaml = Run({"get", "G1", "-o", "yaml"});
  EXPECT_EQ(yaml.exit_code, 0) << yaml.err;
  EXPECT_THAT(yaml.out, StartsWith("id: G1\nname: diamond\n"));
  const RunResult dot = Run({"dot", "G1"});
  EXPECT_EQ(dot.exit_code, 0) << dot.err;
  EXPECT_THAT(dot.out, StartsWith("digraph \"diamond\" {\n"));
  EXPECT_THAT(dot.out, HasSubstr("  \"fetch\" -> \"left\";\n"));
  EXPECT_THAT(dot.out, HasSubstr("  \"right\" -> \"join\";\n"));
  EXPECT_THAT(dot.out, HasSubstr("\"right\" [label=\"right\\nFAILED\", "
                                 "fillcolor=\"#f28b82\"]"));
}

TEST_F(ForgectlTest, WatchPrintsOneLinePerEventFromSeq1) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.watch.response = {
        ParseText<forge::v1::WatchResponse>(R"pb(
          events { graph_id: "G1" seq: 1 type: GRAPH_SUBMITTED }
          events {
            graph_id: "G1"
            seq: 2
            type: TASK_READY
            task: "a"
            queue: "default"
          }
        )pb"),
        ParseText<forge::v1::WatchResponse>(R"pb(
          events {
            graph_id: "G1"
            seq: 3
            type: TASK_STARTED
            task: "a"
            attempt: 1
            worker_id: "w-1"
          }
          events {
            graph_id: "G1"
            seq: 4
            type: TASK_FAILED
            task: "a"
            attempt: 1
            exit_code: 2
            error { code: "EXIT_CODE" message: "exit status 2" }
          }
          events { graph_id: "G1" seq: 5 type: GRAPH_FAILED }
        )pb")};
  }
  RunResult r = Run({"watch", "G1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "seq=1 GRAPH_SUBMITTED\n"
            "seq=2 TASK_READY a\n"
            "seq=3 TASK_STARTED a attempt=1 worker=w-1\n"
            "seq=4 TASK_FAILED a attempt=1 exit=2 error=EXIT_CODE: "
            "\"exit status 2\"\n"
            "seq=5 GRAPH_FAILED\n");
  {
    absl::MutexLock lock(&fake_.mu);
    ASSERT_EQ(fake_.watch.requests.size(), 1u);
    EXPECT_EQ(fake_.watch.requests[0].graph().graph_id(), "G1");
    EXPECT_TRUE(fake_.watch.requests[0].graph().replay());
    EXPECT_EQ(fake_.watch.requests[0].graph().after_seq(), 0);
  }

  // -o json: JSON lines, one event each.
  r = Run({"watch", "G1", "-o", "json", "--after-seq", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u) << r.out;
  for (size_t i = 0; i < lines.size(); ++i) {
    forge::v1::Event event;
    ASSERT_TRUE(
        google::protobuf::util::JsonStringToMessage(lines[i], &event).ok())
        << lines[i];
    EXPECT_EQ(event.seq(), static_cast<int64_t>(i + 1));
  }
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.watch.requests.size(), 2u);
  EXPECT_EQ(fake_.watch.requests[1].graph().after_seq(), 2);
  EXPECT_FALSE(fake_.watch.requests[1].graph().replay());
}

TEST_F(ForgectlTest, ListSendsFiltersAndPrintsATable) {
  {
    absl::MutexLock lock(&fake_.mu);
    *fake_.list_graphs.response.add_graphs() = DiamondGraph();
  }
  const RunResult r = Run({"list", "--state", "failed,running", "--label",
                           "team=data", "--limit", "5"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "ID  NAME     STATE   TASKS                           CREATED\n"
            "G1  diamond  FAILED  succeeded=2 failed=1 skipped=1  "
            "2023-11-14T22:13:20Z\n");
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.list_graphs.requests.size(), 1u);
  const forge::v1::ListGraphsRequest& request = fake_.list_graphs.requests[0];
  EXPECT_THAT(request.states(),
              ::testing::ElementsAre(forge::v1::GRAPH_STATE_FAILED,
                                     forge::v1::GRAPH_STATE_RUNNING));
  EXPECT_EQ(request.labels().at("team"), "data");
  EXPECT_EQ(request.page_size(), 5);
}

TEST_F(ForgectlTest, TaskShowsTheTaskAndItsAttempts) {
  {
    absl::MutexLock lock(&fake_.mu);
    *fake_.get_task.response.mutable_task() = ParseText<forge::v1::Task>(R"pb(
      graph_id: "G1"
      spec { name: "right" queue: "default" depends_on: "fetch" }
      state: FAILED
      attempt: 2
      exit_code: 1
      error { code: "EXIT_CODE" message: "exit status 1" }
      attempts {
        number: 1
        worker_id: "w-1"
        state: FAILED
        started_at { seconds: 1700000001 }
        finished_at { seconds: 1700000002 }
        exit_code: 1
        error { code: "EXIT_CODE" message: "exit status 1" }
      }
      attempts { number: 2 worker_id: "w-2" state: FAILED exit_code: 1 }
    )pb");
  }
  const RunResult r = Run({"task", "G1", "right"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("TASK       right\n"
                                "GRAPH      G1\n"
                                "QUEUE      default\n"
                                "STATE      FAILED\n"
                                "ATTEMPT    2\n"
                                "DEPS       fetch\n"
                                "TRIGGER    ALL_SUCCESS\n"));
  EXPECT_THAT(r.out, HasSubstr("ERROR      EXIT_CODE: \"exit status 1\"\n"));
  EXPECT_THAT(r.out,
              HasSubstr("ATTEMPT  WORKER  STATE   STARTED               "
                        "FINISHED              EXIT  ERROR\n"
                        "1        w-1     FAILED  2023-11-14T22:13:21Z  "
                        "2023-11-14T22:13:22Z  1     EXIT_CODE: \"exit status "
                        "1\"\n"));
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.get_task.requests.size(), 1u);
  EXPECT_EQ(fake_.get_task.requests[0].task(), "right");
}

TEST_F(ForgectlTest, CancelCancelsTheGraphOrOneTask) {
  {
    absl::MutexLock lock(&fake_.mu);
    fake_.cancel_graph.response.set_state(forge::v1::GRAPH_STATE_RUNNING);
    fake_.cancel_task.response.set_state(forge::v1::CANCELLED);
  }
  RunResult r = Run({"cancel", "G1", "--reason", "not needed"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "G1 RUNNING\n");
  r = Run({"cancel", "G1", "--task", "b"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "G1/b CANCELLED\n");
  absl::MutexLock lock(&fake_.mu);
  ASSERT_EQ(fake_.cancel_graph.requests.size(), 1u);
  EXPECT_EQ(fake_.cancel_graph.requests[0].reason(), "not needed");
  ASSERT_EQ(fake_.cancel_task.requests.size(), 1u);
  EXPECT_EQ(fake_.cancel_task.requests[0].task(), "b");
}

TEST_F(ForgectlTest, UsageErrorsExit2AndHelpExits0) {
  RunResult r = Run({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, StartsWith("forgectl: INVALID_ARGUMENT: unknown command"));
  r = Run({"get"});
  EXPECT_EQ(r.exit_code, 2);
  r = Run({"get", "G1", "--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown flag \"--bogus\""));
  r = RunForgectl({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("Usage: forgectl"));
  r = RunForgectl({"submit", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--request-id"));
  EXPECT_EQ(fake_.UnaryCallsForTest(), 0);
}

}  // namespace
}  // namespace forge
