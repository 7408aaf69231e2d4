// ThreadSanitizer builds only. Debian's librocksdb is not instrumented: its
// own accesses are invisible to TSan, but the memcpy/memcmp it calls go
// through TSan's interceptors, and since the hand-offs between its threads
// use its (equally invisible) atomics, e.g. its memtable's lock-free
// skiplist, those calls look racy. ignore_noninstrumented_modules makes the
// interceptors ignore memory accesses made on behalf of uninstrumented
// libraries, while their locks and condition variables still order
// everything (RocksDB's threads use our logger and file system objects).
// TSan reads these defaults before TSAN_OPTIONS. Once the journal is linked
// into other binaries, the same flag belongs in .ci/run's TSAN_OPTIONS.
#include "common/tsan.h"

#ifdef FORGE_TSAN_ENABLED
extern "C" const char* __tsan_default_options() {
  return "ignore_noninstrumented_modules=1";
}
#endif
