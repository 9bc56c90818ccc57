// A fake CUDA runtime for tests on machines without a GPU. It implements the
// functions e2fastio loads (same names, same signatures) on the host:
// "device" memory is host memory, each stream is a worker thread running its
// queue in order, events complete when their stream reaches them. Extra
// entry points let a test hold a stream (a kernel still running), add delay
// to copies, make the next copy fail, and make the Nth call of any function
// fail (fake_cuda_fail_call, or FAKE_CUDA_FAIL="cudaEventRecord:2,..." in the
// environment, counted from the process start).
//
// It is a fake nvCOMP 6 too (E2FASTIO_NVCOMP may point at this library): the
// batched zstd compressor runs on the stream's worker with the CPU zstd
// inside c-blosc, over "device" memory that is host memory. It checks what
// the real one leaves undefined (alignments, temp size, output capacity) and
// reports misuse as a per-chunk status plus a counter a test asserts zero;
// fake_nvcomp_fail_block(n) makes the nth block compressed from now on fail
// with a status, and FAKE_CUDA_FAIL arms nvcomp* launch failures alike.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

struct FakeEvent {
  std::mutex mu;
  std::condition_variable cv;
  unsigned long long recorded = 0, completed = 0;  // generations
  int error = 0;
};

struct FakeStream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> ops;
  bool held = false, stop = false;
  bool failed = false;  // a copy on this stream failed: later events report it (touched by `worker` only)
  std::thread worker;
  FakeStream() {
    worker = std::thread([this] {
      for (;;) {
        std::function<void()> op;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [this] { return stop || (!held && !ops.empty()); });
          if (stop && ops.empty()) return;
          if (held || ops.empty()) continue;
          op = std::move(ops.front());
          ops.pop_front();
        }
        op();
      }
    });
  }
  ~FakeStream() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
      held = false;
    }
    cv.notify_all();
    worker.join();
  }
  void push(std::function<void()> op) {
    {
      std::lock_guard<std::mutex> lk(mu);
      ops.push_back(std::move(op));
    }
    cv.notify_all();
  }
};

std::atomic<int> g_delay_ms{0};
std::atomic<int> g_fail_async{0};
std::atomic<int> g_live_streams{0};  // created and not yet destroyed
std::atomic<unsigned long long> g_copies{0};
std::atomic<unsigned long long> g_host_allocs{0};
FakeStream* g_default = nullptr;

// CUDA lets a program destroy an event that queued work still refers to;
// queued operations here hold their own reference.
std::mutex g_events_mu;
std::unordered_map<void*, std::shared_ptr<FakeEvent>> g_events;
std::shared_ptr<FakeEvent> event_of(void* e) {
  std::lock_guard<std::mutex> lk(g_events_mu);
  return g_events.at(e);
}

// ---- fault injection: the Nth call of a named function returns an error.
constexpr int kInjectedError = 999;  // cudaErrorUnknown
std::atomic<int> g_armed{0};          // faults waiting: the lock is taken only then
std::mutex g_faults_mu;
std::unordered_map<std::string, std::pair<int, int>>& faults() {  // name -> (calls left, error)
  static auto* m = new std::unordered_map<std::string, std::pair<int, int>>;
  return *m;
}
void arm(const std::string& name, int nth, int error) {
  std::lock_guard<std::mutex> lk(g_faults_mu);
  auto& f = faults();
  if (nth <= 0) {
    g_armed -= static_cast<int>(f.erase(name));
    return;
  }
  if (f.emplace(name, std::make_pair(nth, error)).second)
    ++g_armed;
  else
    f[name] = {nth, error};
}
void arm_from_environment() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("FAKE_CUDA_FAIL");  // "name:n[,name:n...]"
    if (!env) return;
    std::string spec = env;
    std::size_t pos = 0;
    while (pos < spec.size()) {
      std::size_t end = spec.find(',', pos);
      if (end == std::string::npos) end = spec.size();
      const std::string item = spec.substr(pos, end - pos);
      const std::size_t colon = item.find(':');
      if (colon != std::string::npos) arm(item.substr(0, colon), std::atoi(item.c_str() + colon + 1), kInjectedError);
      pos = end + 1;
    }
  });
}
// The error to return from this call of `name`, or 0.
int injected(const char* name) {
  arm_from_environment();
  if (g_armed.load() == 0) return 0;  // no lock when nothing is armed (e.g. in a forked child)
  std::lock_guard<std::mutex> lk(g_faults_mu);
  auto it = faults().find(name);
  if (it == faults().end() || --it->second.first > 0) return 0;
  const int error = it->second.second;
  faults().erase(it);
  --g_armed;
  return error;
}

// A thread of the runtime holding the event table's lock (as one inside
// cudaEventDestroy would): fake_cuda_hold_event_table.
std::mutex g_holder_mu;
std::condition_variable g_holder_cv;
bool g_hold_table = false, g_table_held = false;
std::thread* g_table_holder = nullptr;

FakeStream* stream_of(void* s) {
  if (s) return static_cast<FakeStream*>(s);
  static std::once_flag once;
  std::call_once(once, [] { g_default = new FakeStream(); });
  return g_default;
}

}  // namespace

extern "C" {

int cudaGetDevice(int* d) {
  *d = 0;
  return 0;
}
int cudaSetDevice(int) { return 0; }
const char* cudaGetErrorString(int e) {
  if (e == 0) return "no error";
  return e == kInjectedError ? "injected failure (fake CUDA runtime)" : "fake copy failure (injected by the test)";
}

int cudaHostAlloc(void** p, size_t n, unsigned) {
  if (int e = injected("cudaHostAlloc")) return e;
  *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
  g_host_allocs.fetch_add(1);
  return *p ? 0 : 2;
}
int cudaFreeHost(void* p) {
  std::free(p);
  return 0;
}
std::atomic<long long> g_device_bytes{0};  // "device" memory allocated and not freed
std::mutex g_device_mu;
std::unordered_map<void*, size_t>& device_allocs() {
  static auto* m = new std::unordered_map<void*, size_t>;
  return *m;
}
int cudaMalloc(void** p, size_t n) {
  if (int e = injected("cudaMalloc")) return e;
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
  if (!*p) return 2;  // cudaErrorMemoryAllocation
  std::lock_guard<std::mutex> lk(g_device_mu);
  device_allocs()[*p] = n;
  g_device_bytes += static_cast<long long>(n);
  return 0;
}
int cudaFree(void* p) {
  if (!p) return 0;
  std::lock_guard<std::mutex> lk(g_device_mu);
  auto it = device_allocs().find(p);
  if (it == device_allocs().end()) return 1;  // cudaErrorInvalidValue: not ours
  g_device_bytes -= static_cast<long long>(it->second);
  device_allocs().erase(it);
  std::free(p);
  return 0;
}
int cudaStreamCreateWithFlags(void** s, unsigned) {
  if (int e = injected("cudaStreamCreateWithFlags")) return e;
  *s = new FakeStream();
  ++g_live_streams;
  return 0;
}
int cudaStreamDestroy(void* s) {
  delete static_cast<FakeStream*>(s);
  --g_live_streams;
  return 0;
}
// Waits until every operation queued on the stream so far has run; reports a
// failed copy on it (sticky, like a device error).
int cudaStreamSynchronize(void* s) {
  if (int e = injected("cudaStreamSynchronize")) return e;
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int error = 0;
  };
  auto d = std::make_shared<Done>();
  FakeStream* st = stream_of(s);
  st->push([d, st] {
    std::lock_guard<std::mutex> lk(d->mu);
    d->done = true;
    d->error = st->failed ? 700 : 0;
    d->cv.notify_all();
  });
  std::unique_lock<std::mutex> lk(d->mu);
  d->cv.wait(lk, [&] { return d->done; });
  return d->error;
}
int cudaEventCreateWithFlags(void** e, unsigned) {
  if (int err = injected("cudaEventCreateWithFlags")) return err;
  auto ev = std::make_shared<FakeEvent>();
  *e = ev.get();
  std::lock_guard<std::mutex> lk(g_events_mu);
  g_events[*e] = std::move(ev);
  return 0;
}
int cudaEventDestroy(void* e) {
  std::lock_guard<std::mutex> lk(g_events_mu);
  g_events.erase(e);
  return 0;
}
int cudaEventRecord(void* e, void* s) {
  if (int err = injected("cudaEventRecord")) return err;
  auto ev = event_of(e);
  unsigned long long gen;
  {
    std::lock_guard<std::mutex> lk(ev->mu);
    gen = ++ev->recorded;
  }
  FakeStream* st = stream_of(s);
  st->push([ev, gen, st] {
    std::lock_guard<std::mutex> lk(ev->mu);
    ev->completed = gen;
    if (st->failed) ev->error = 700;
    ev->cv.notify_all();
  });
  return 0;
}
int cudaEventQuery(void* e) {
  if (int err = injected("cudaEventQuery")) return err;
  auto ev = event_of(e);
  std::lock_guard<std::mutex> lk(ev->mu);
  return ev->completed >= ev->recorded ? ev->error : 600;  // cudaErrorNotReady
}
int cudaEventSynchronize(void* e) {
  if (int err = injected("cudaEventSynchronize")) return err;
  auto ev = event_of(e);
  std::unique_lock<std::mutex> lk(ev->mu);
  ev->cv.wait(lk, [ev] { return ev->completed >= ev->recorded; });
  return ev->error;
}
int cudaStreamWaitEvent(void* s, void* e, unsigned) {
  if (int err = injected("cudaStreamWaitEvent")) return err;
  auto ev = event_of(e);
  unsigned long long gen;
  {
    std::lock_guard<std::mutex> lk(ev->mu);
    gen = ev->recorded;
  }
  stream_of(s)->push([ev, gen] {
    std::unique_lock<std::mutex> lk(ev->mu);
    ev->cv.wait(lk, [ev, gen] { return ev->completed >= gen; });
  });
  return 0;
}
int cudaMemcpyAsync(void* dst, const void* src, size_t n, int, void* s) {
  if (int err = injected("cudaMemcpyAsync")) return err;
  const bool fail = g_fail_async.exchange(0) != 0;
  FakeStream* st = stream_of(s);
  st->push([dst, src, n, fail, st] {
    if (int d = g_delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(d));
    if (fail) {
      st->failed = true;  // like a sticky device error: later events on the stream report it
      return;
    }
    std::memcpy(dst, src, n);
    g_copies.fetch_add(1);
  });
  return 0;
}
int cudaMemcpy(void* dst, const void* src, size_t n, int) {
  if (int err = injected("cudaMemcpy")) return err;
  std::memcpy(dst, src, n);
  return 0;
}

// ---- test controls
void fake_cuda_hold_stream(void* s, int hold) {
  auto* st = stream_of(s);
  {
    std::lock_guard<std::mutex> lk(st->mu);
    st->held = hold != 0;
  }
  st->cv.notify_all();
}
void fake_cuda_set_copy_delay_ms(int ms) { g_delay_ms = ms; }
void fake_cuda_fail_next_copy() { arm("cudaMemcpyAsync", 1, 700); }  // cudaErrorIllegalAddress-like
// hold != 0: a thread of the runtime takes the event table's lock and keeps
// it until fake_cuda_hold_event_table(0); returns once the lock is taken.
// Every event call waits meanwhile; a process forked meanwhile inherits the
// lock held by a thread it does not have.
void fake_cuda_hold_event_table(int hold) {
  std::unique_lock<std::mutex> lk(g_holder_mu);
  if (hold && !g_table_holder) {
    g_hold_table = true;
    g_table_holder = new std::thread([] {
      std::lock_guard<std::mutex> table(g_events_mu);
      std::unique_lock<std::mutex> h(g_holder_mu);
      g_table_held = true;
      g_holder_cv.notify_all();
      g_holder_cv.wait(h, [] { return !g_hold_table; });
      g_table_held = false;
    });
    g_holder_cv.wait(lk, [] { return g_table_held; });
  } else if (!hold && g_table_holder) {
    g_hold_table = false;
    g_holder_cv.notify_all();
    lk.unlock();
    g_table_holder->join();
    delete g_table_holder;
    g_table_holder = nullptr;
  }
}
// The nth call (1 = the next) of the CUDA function `name` returns `error`
// (0: cudaErrorUnknown) without doing anything; nth <= 0 disarms it.
void fake_cuda_fail_call(const char* name, int nth, int error) { arm(name, nth, error ? error : kInjectedError); }
void fake_cuda_fail_next_copy_async() { g_fail_async = 1; }
int fake_cuda_live_streams() { return g_live_streams.load(); }
unsigned long long fake_cuda_copies() { return g_copies.load(); }
unsigned long long fake_cuda_host_allocs() { return g_host_allocs.load(); }
long long fake_cuda_device_bytes() { return g_device_bytes.load(); }
}  // extern "C"

// ---------------------------------------------------------------- fake nvCOMP 6
extern "C" {  // zstd, bundled inside libblosc.a
size_t ZSTD_compress(void* dst, size_t cap, const void* src, size_t n, int level);
unsigned ZSTD_isError(size_t code);
}

namespace {
struct NvcompOpts {
  char reserved[64];
};
struct NvcompAlign {
  size_t input, output, temp;
};
constexpr int kNvSuccess = 0, kNvInvalidValue = 10, kNvOutputTooSmall = 15, kNvAlignment = 17,
              kNvCannotCompress = 19;
constexpr size_t kInAlign = 4, kOutAlign = 8, kTempAlign = 8, kMaxChunk = (size_t{1} << 24);
std::atomic<unsigned long long> g_nv_launches{0}, g_nv_blocks{0}, g_nv_misuse{0}, g_nv_in_bytes{0};
std::atomic<long long> g_nv_fail_block{0};  // > 0: the nth block from now fails
size_t max_out(size_t n) { return n + n / 128 + 1024; }  // at least ZSTD_compressBound(n)
bool opts_zeroed(const NvcompOpts& o) {
  for (char c : o.reserved)
    if (c) return false;
  return true;
}
}  // namespace

extern "C" {
struct FakeNvcompProperties {
  unsigned version, cudart_version;
};
int nvcompGetProperties(FakeNvcompProperties* p) {
  const char* v = std::getenv("FAKE_NVCOMP_VERSION");  // e.g. 5000, to test the version pin
  p->version = v ? static_cast<unsigned>(std::atoi(v)) : 6000;
  p->cudart_version = 12080;
  return kNvSuccess;
}
const char* nvcompGetStatusString(int s) {
  switch (s) {
    case kNvSuccess: return "nvcompSuccess";
    case kNvInvalidValue: return "nvcompErrorInvalidValue";
    case kNvOutputTooSmall: return "nvcompErrorOutputBufferTooSmall";
    case kNvAlignment: return "nvcompErrorAlignment";
    case kNvCannotCompress: return "nvcompErrorCannotCompress";
    case kInjectedError: return "injected failure (fake nvCOMP)";
    default: return "nvcompError (fake)";
  }
}
int nvcompBatchedZstdCompressGetRequiredAlignments(NvcompOpts o, NvcompAlign* a) {
  if (!opts_zeroed(o) || !a) return kNvInvalidValue;
  *a = {kInAlign, kOutAlign, kTempAlign};
  return kNvSuccess;
}
int nvcompBatchedZstdCompressGetTempSize(size_t n, size_t max_chunk, NvcompOpts o, size_t* temp, size_t, void*) {
  if (int e = injected("nvcompBatchedZstdCompressGetTempSize")) return e;
  if (!opts_zeroed(o) || !temp || max_chunk > kMaxChunk) return kNvInvalidValue;
  *temp = 64 * n + 256;
  return kNvSuccess;
}
int nvcompBatchedZstdCompressGetMaxOutputChunkSize(size_t max_chunk, NvcompOpts o, size_t* out) {
  if (!opts_zeroed(o) || !out || max_chunk > kMaxChunk) return kNvInvalidValue;
  *out = max_out(max_chunk);
  return kNvSuccess;
}
int nvcompBatchedZstdCompressAsync(const void* const* in_ptrs, const size_t* in_bytes, size_t max_chunk, size_t n,
                                   void* temp, size_t temp_bytes, void* const* out_ptrs, size_t* out_bytes,
                                   NvcompOpts o, int* statuses, void* s) {
  if (int e = injected("nvcompBatchedZstdCompressAsync")) return e;
  if (!opts_zeroed(o) || max_chunk > kMaxChunk || !in_ptrs || !in_bytes || !out_ptrs || !out_bytes) return kNvInvalidValue;
  if (temp_bytes < 64 * n + 256 || reinterpret_cast<uintptr_t>(temp) % kTempAlign) {
    g_nv_misuse.fetch_add(1);
    return kNvInvalidValue;
  }
  g_nv_launches.fetch_add(1);
  // The pointer and size arrays are read when the stream gets here, as on a device.
  stream_of(s)->push([=] {
    for (size_t i = 0; i < n; ++i) {
      int st = kNvSuccess;
      const size_t len = in_bytes[i];
      if (reinterpret_cast<uintptr_t>(in_ptrs[i]) % kInAlign || reinterpret_cast<uintptr_t>(out_ptrs[i]) % kOutAlign) {
        st = kNvAlignment;
        g_nv_misuse.fetch_add(1);
      } else if (len > max_chunk) {
        st = kNvInvalidValue;
        g_nv_misuse.fetch_add(1);
      } else if (g_nv_fail_block.load() > 0 && g_nv_fail_block.fetch_sub(1) == 1) {
        st = kNvCannotCompress;
      } else {
        const size_t c = ZSTD_compress(out_ptrs[i], max_out(max_chunk), in_ptrs[i], len, 3);
        if (ZSTD_isError(c)) {
          st = kNvOutputTooSmall;
        } else {
          out_bytes[i] = c;
          g_nv_in_bytes.fetch_add(len);
        }
      }
      if (statuses) statuses[i] = st;
      g_nv_blocks.fetch_add(1);
    }
  });
  return kNvSuccess;
}

// ---- test controls
void fake_nvcomp_fail_block(long long nth) { g_nv_fail_block = nth; }
unsigned long long fake_nvcomp_launches() { return g_nv_launches.load(); }
unsigned long long fake_nvcomp_blocks() { return g_nv_blocks.load(); }
unsigned long long fake_nvcomp_misuse() { return g_nv_misuse.load(); }
unsigned long long fake_nvcomp_bytes_in() { return g_nv_in_bytes.load(); }
}
