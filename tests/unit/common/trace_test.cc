// W3C trace context and the OTLP/JSON encoding.
#include "common/otlp.h"
#include "common/trace_context.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace forge {
namespace {

TEST(TraceparentTest, ParsesAndFormatsVersion00) {
  const std::string h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  std::optional<TraceContext> c = ParseTraceparent(h);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(c->span_id, "00f067aa0ba902b7");
  EXPECT_TRUE(c->sampled);
  EXPECT_EQ(FormatTraceparent(*c), h);
  c = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(c.has_value());
  EXPECT_FALSE(c->sampled);
  // A later version may carry more fields; read by the version-00 rules.
  EXPECT_TRUE(ParseTraceparent(
                  "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
                  .has_value());
}

TEST(TraceparentTest, RefusesMalformedHeaders) {
  for (const char* bad : {
           "", "garbage",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",      // 3 fields
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // zero trace
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // zero span
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // upper case
           "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",    // short
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // version ff
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // 00 + extra
       }) {
    EXPECT_FALSE(ParseTraceparent(bad).has_value()) << bad;
  }
}

TEST(TraceparentTest, DerivedIdsAreStableDistinctAndWellFormed) {
  EXPECT_EQ(GraphSpanId("g1"), GraphSpanId("g1"));
  EXPECT_NE(GraphSpanId("g1"), GraphSpanId("g2"));
  EXPECT_NE(AttemptSpanId("g1", 0, 1), AttemptSpanId("g1", 0, 2));
  EXPECT_NE(AttemptSpanId("g1", 1, 1), AttemptSpanId("g1", 0, 1));
  const std::string tp =
      FormatTraceparent({GraphTraceId("g1"), AttemptSpanId("g1", 3, 1), true});
  EXPECT_TRUE(ParseTraceparent(tp).has_value()) << tp;
  EXPECT_TRUE(ParseTraceparent(FormatTraceparent({NewTraceId(), NewSpanId(), true}))
                  .has_value());
  EXPECT_NE(NewSpanId(), NewSpanId());
}

TEST(OtlpJsonTest, EncodesSpansAsOtlpJson) {
  otlp::Span s;
  s.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  s.span_id = "00f067aa0ba902b7";
  s.parent_span_id = "1111111111111111";
  s.name = "quote\" back\\slash\nnewline\x01";
  s.kind = otlp::SpanKind::kServer;
  s.start = absl::FromUnixNanos(1700000000123456789);
  s.end = absl::FromUnixNanos(1700000001000000000);
  s.attributes = {{"s", std::string("v")}, {"i", int64_t{42}}, {"b", true}, {"d", 1.5}};
  s.status = otlp::StatusCode::kError;
  s.status_message = "boom";
  const std::string json = otlp::EncodeJson({s}, {{"service.name", std::string("forged")}});
  google::protobuf::Struct root;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &root).ok()) << json;
  const auto& rs = root.fields().at("resourceSpans").list_value().values(0).struct_value();
  const auto& span = rs.fields().at("scopeSpans").list_value().values(0).struct_value()
                         .fields().at("spans").list_value().values(0).struct_value().fields();
  EXPECT_EQ(span.at("traceId").string_value(), s.trace_id);
  EXPECT_EQ(span.at("parentSpanId").string_value(), s.parent_span_id);
  EXPECT_EQ(span.at("name").string_value(), s.name);  // escaping round-trips
  EXPECT_EQ(span.at("kind").number_value(), 2);
  EXPECT_EQ(span.at("startTimeUnixNano").string_value(), "1700000000123456789");
  EXPECT_EQ(span.at("status").struct_value().fields().at("code").number_value(), 2);
  const auto& attrs = span.at("attributes").list_value();
  ASSERT_EQ(attrs.values_size(), 4);
  EXPECT_EQ(attrs.values(1).struct_value().fields().at("value").struct_value()
                .fields().at("intValue").string_value(), "42");
  EXPECT_TRUE(attrs.values(2).struct_value().fields().at("value").struct_value()
                  .fields().at("boolValue").bool_value());
}

TEST(OtlpExporterTest, RefusesANonHttpEndpoint) {
  otlp::ExporterOptions o;
  o.endpoint = "127.0.0.1:4318";
  EXPECT_EQ(otlp::SpanExporter::Start(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(OtlpExporterTest, CountsFailuresWhenNoCollectorListens) {
  otlp::ExporterOptions o;
  o.endpoint = "http://127.0.0.1:1";  // nothing listens on port 1
  o.request_timeout = absl::Seconds(2);
  auto e = otlp::SpanExporter::Start(o);
  ASSERT_TRUE(e.ok());
  otlp::Span s;
  s.trace_id = NewTraceId();
  s.span_id = NewSpanId();
  s.name = "x";
  (*e)->Export(s);
  (*e)->Flush();
  EXPECT_EQ((*e)->stats().failed, 1u);
  EXPECT_EQ((*e)->stats().exported, 0u);
  EXPECT_EQ((*e)->url(), "http://127.0.0.1:1/v1/traces");
}

TEST(OtlpExporterTest, DropsBeyondItsQueueBound) {
  otlp::ExporterOptions o;
  o.endpoint = "http://127.0.0.1:1";
  o.max_queue = 4;
  o.max_batch = 1000;  // nothing is sent before the flush interval
  o.flush_interval = absl::Hours(1);
  auto e = otlp::SpanExporter::Start(o);
  ASSERT_TRUE(e.ok());
  for (int i = 0; i < 10; ++i) (*e)->Export(otlp::Span{});
  EXPECT_EQ((*e)->stats().dropped, 6u);
}

}  // namespace
}  // namespace forge
