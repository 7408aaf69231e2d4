#include "server/forge_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "server/api/orchestrator_service.h"
#include "server/api/worker_service.h"

namespace forge {

absl::StatusOr<std::unique_ptr<ForgeServer>> ForgeServer::Start(
    ServerOptions options, Clock* clock) {
  std::unique_ptr<ForgeServer> s(new ForgeServer());
  s->options_ = options;
  s->timers_ = std::make_unique<TimerService>(clock);
  s->bus_ = std::make_unique<events::EventBus>(options.bus);
  s->engine_ = std::make_unique<Engine>(options.engine, clock, s->timers_.get(),
                                        s->bus_.get());
  s->orchestrator_ = std::make_unique<api::OrchestratorService>(
      s->engine_.get(), s->timers_.get(), options.watch);
  s->workers_ = std::make_unique<api::WorkerServiceImpl>(s->engine_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(s->orchestrator_.get());
  builder.RegisterService(s->workers_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  return s;
}

ForgeServer::~ForgeServer() {
  Shutdown(absl::ZeroDuration());
  // Reverse order of construction: the server (and its reactors) go first.
  server_.reset();
  timers_->Shutdown();
}

std::string ForgeServer::address() const {
  const std::string& l = options_.listen;
  const size_t colon = l.rfind(':');
  return absl::StrCat(colon == std::string::npos ? l : l.substr(0, colon), ":",
                      port_);
}

void ForgeServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (!server_) return;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
}

void ForgeServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace forge
