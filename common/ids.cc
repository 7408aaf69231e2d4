#include "common/ids.h"

#include <array>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"

namespace forge {
namespace {

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

struct UlidState {
  absl::Mutex mu;
  uint64_t last_ms ABSL_GUARDED_BY(mu) = 0;
  // 80 random bits: hi holds 16, lo holds 64.
  uint16_t rand_hi ABSL_GUARDED_BY(mu) = 0;
  uint64_t rand_lo ABSL_GUARDED_BY(mu) = 0;
  absl::BitGen gen ABSL_GUARDED_BY(mu);
};

UlidState& State() {
  static UlidState* state = new UlidState();
  return *state;
}

}  // namespace

std::string NewUlid(absl::Time now) {
  uint64_t ms = static_cast<uint64_t>(absl::ToUnixMillis(now));
  uint16_t hi;
  uint64_t lo;
  {
    UlidState& s = State();
    absl::MutexLock lock(&s.mu);
    if (ms <= s.last_ms) {
      // Same (or earlier) millisecond: increment the random part so ids stay
      // strictly increasing.
      ms = s.last_ms;
      if (++s.rand_lo == 0) ++s.rand_hi;
    } else {
      s.last_ms = ms;
      s.rand_hi = absl::Uniform<uint16_t>(s.gen);
      // Keep the top bit clear so increments never overflow in practice.
      s.rand_lo = absl::Uniform<uint64_t>(s.gen) >> 1;
    }
    hi = s.rand_hi;
    lo = s.rand_lo;
  }
  std::string out(26, '0');
  // 48-bit time -> 10 chars (50 bits, top 2 zero).
  for (int i = 9; i >= 0; --i) {
    out[i] = kCrockford[ms & 31];
    ms >>= 5;
  }
  // 80-bit randomness -> 16 chars.
  for (int i = 25; i >= 10; --i) {
    out[i] = kCrockford[lo & 31];
    lo = (lo >> 5) | (static_cast<uint64_t>(hi & 31) << 59);
    hi >>= 5;
  }
  return out;
}

bool IsUlid(const std::string& id) {
  if (id.size() != 26) return false;
  for (char c : id) {
    bool ok = false;
    for (const char* p = kCrockford; *p; ++p) {
      if (*p == c) {
        ok = true;
        break;
      }
    }
    if (!ok) return false;
  }
  return true;
}

}  // namespace forge
