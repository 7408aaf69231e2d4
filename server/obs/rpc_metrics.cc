#include "server/obs/rpc_metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"

namespace forge::obs {
namespace {

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit MetricsInterceptor(MethodMetrics& m) : m_(m), start_(absl::Now()) {}

  ~MetricsInterceptor() override {
    // The call ended without a status of ours (the client cancelled it).
    if (!recorded_) Record(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Record(grpc::StatusCode code) {
    recorded_ = true;
    const int c = static_cast<int>(code);
    m_.by_code[(c >= 0 && c < 17) ? c : static_cast<int>(grpc::StatusCode::UNKNOWN)]
        .fetch_add(1, std::memory_order_relaxed);
    m_.duration.Observe(absl::Now() - start_);
  }

  MethodMetrics& m_;
  const absl::Time start_;
  bool recorded_ = false;
};

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(RpcMetrics& metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_.For(info->method()));
  }

 private:
  RpcMetrics& metrics_;
};

}  // namespace

RpcMetrics::RpcMetrics(const std::vector<std::string>& full_names) {
  for (const std::string& full : full_names) {
    auto m = std::make_unique<MethodMetrics>();
    const size_t slash = full.rfind('/');
    m->service = full.substr(1, slash == std::string::npos ? 0 : slash - 1);
    m->method = slash == std::string::npos ? full : full.substr(slash + 1);
    by_name_[full] = m.get();
    methods_.push_back(std::move(m));
  }
  auto unknown = std::make_unique<MethodMetrics>();
  unknown->service = "_unknown";
  unknown->method = "_unknown";
  unknown_ = unknown.get();
  methods_.push_back(std::move(unknown));
}

MethodMetrics& RpcMetrics::For(const char* full_name) {
  if (full_name == nullptr) return *unknown_;
  auto it = by_name_.find(full_name);
  return it == by_name_.end() ? *unknown_ : *it->second;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::Factory() {
  return std::make_unique<obs::Factory>(*this);
}

std::vector<std::string> MethodsOf(const std::vector<std::string>& service_names) {
  std::vector<std::string> out;
  const google::protobuf::DescriptorPool* pool =
      google::protobuf::DescriptorPool::generated_pool();
  for (const std::string& name : service_names) {
    const google::protobuf::ServiceDescriptor* s = pool->FindServiceByName(name);
    if (s == nullptr) continue;
    for (int i = 0; i < s->method_count(); ++i) {
      out.push_back(absl::StrCat("/", s->full_name(), "/", s->method(i)->name()));
    }
  }
  return out;
}

}  // namespace forge::obs
