// In-process Forge on loopback (port 0) with real gRPC clients and workers.
// Waits are on events with deadlines, never fixed sleeps.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "client/worker/worker.h"
#include "forge/v1/orchestrator.grpc.pb.h"
#include "server/forge_server.h"

namespace forge::testing {

namespace v1 = ::forge::v1;

// A fresh directory under the system's temporary directory, named
// PREFIX-<pid>-<n>; removed (with everything in it) when destroyed.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix);
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

class ForgeTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(); }
  void TearDown() override;

  // Override to adjust options before the server starts.
  virtual void Configure(ServerOptions& options) {}
  // Override to adjust the options of every worker StartWorker starts.
  virtual void ConfigureWorker(client::WorkerOptions& options) {}
  void StartServer();

  v1::Orchestrator::Stub& stub() { return *stub_; }
  ForgeServer& server() { return *server_; }
  std::string address() const { return server_->address(); }

  // Starts a worker serving `queues` with `slots`, whose handler is `h`
  // (echo when null). Waits until it is welcomed.
  client::Worker& StartWorker(std::vector<std::string> queues, int slots,
                              client::Handler h = nullptr,
                              const std::string& name = "w");

  // Submits; fails the test on error.
  std::string Submit(const v1::GraphSpec& spec, const std::string& request_id = "");
  grpc::Status TrySubmit(const v1::GraphSpec& spec, v1::SubmitGraphResponse* out,
                         const std::string& request_id = "");
  // Waits until terminal (deadline 30 s) and returns the FULL graph.
  v1::Graph WaitTerminal(const std::string& graph_id);
  v1::Graph Get(const std::string& graph_id);
  // Replays every event of a terminal graph.
  std::vector<v1::Event> Replay(const std::string& graph_id);
  const v1::Task& TaskOf(const v1::Graph& g, const std::string& name);
  int64_t GraphCount();

  std::unique_ptr<ForgeServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
  std::vector<std::unique_ptr<client::Worker>> workers_;
};

// Graph-building helpers.
v1::TaskSpec* AddTask(v1::GraphSpec& g, const std::string& name,
                      std::vector<std::string> deps = {},
                      const std::string& queue = "default");
v1::GraphSpec Diamond();

// Echo handler, and a handler that fails tasks whose params has fail=true.
client::TaskOutcome Echo(client::TaskContext& ctx);

}  // namespace forge::testing
