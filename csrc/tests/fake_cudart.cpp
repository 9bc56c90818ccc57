// A fake CUDA runtime for tests on machines without a GPU. It implements the
// functions e2fastio loads (same names, same signatures) on the host:
// "device" memory is host memory, each stream is a worker thread running its
// queue in order, events complete when their stream reaches them. Extra
// entry points let a test hold a stream (a kernel still running), add delay
// to copies, and make the next copy fail.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

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
std::atomic<int> g_fail_next{0};
std::atomic<int> g_fail_async{0};
std::atomic<int> g_live_streams{0};  // created and not yet destroyed
thread_local bool t_stream_failed = false;  // set on a stream's worker thread by a failing copy
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
const char* cudaGetErrorString(int e) { return e == 0 ? "no error" : "fake copy failure (injected by the test)"; }

int cudaHostAlloc(void** p, size_t n, unsigned) {
  *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
  g_host_allocs.fetch_add(1);
  return *p ? 0 : 2;
}
int cudaFreeHost(void* p) {
  std::free(p);
  return 0;
}
int cudaStreamCreateWithFlags(void** s, unsigned) {
  *s = new FakeStream();
  ++g_live_streams;
  return 0;
}
int cudaStreamDestroy(void* s) {
  delete static_cast<FakeStream*>(s);
  --g_live_streams;
  return 0;
}
int cudaEventCreateWithFlags(void** e, unsigned) {
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
  auto ev = event_of(e);
  unsigned long long gen;
  {
    std::lock_guard<std::mutex> lk(ev->mu);
    gen = ++ev->recorded;
  }
  stream_of(s)->push([ev, gen] {
    std::lock_guard<std::mutex> lk(ev->mu);
    ev->completed = gen;
    if (t_stream_failed) ev->error = 700;
    ev->cv.notify_all();
  });
  return 0;
}
int cudaEventQuery(void* e) {
  auto ev = event_of(e);
  std::lock_guard<std::mutex> lk(ev->mu);
  return ev->completed >= ev->recorded ? ev->error : 600;  // cudaErrorNotReady
}
int cudaEventSynchronize(void* e) {
  auto ev = event_of(e);
  std::unique_lock<std::mutex> lk(ev->mu);
  ev->cv.wait(lk, [ev] { return ev->completed >= ev->recorded; });
  return ev->error;
}
int cudaStreamWaitEvent(void* s, void* e, unsigned) {
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
  if (g_fail_next.exchange(0)) return 700;  // cudaErrorIllegalAddress-like
  const bool fail = g_fail_async.exchange(0) != 0;
  stream_of(s)->push([dst, src, n, fail] {
    if (int d = g_delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(d));
    if (fail) {
      t_stream_failed = true;  // like a sticky device error: later events report it
      return;
    }
    std::memcpy(dst, src, n);
    g_copies.fetch_add(1);
  });
  return 0;
}
int cudaMemcpy(void* dst, const void* src, size_t n, int) {
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
void fake_cuda_fail_next_copy() { g_fail_next = 1; }
void fake_cuda_fail_next_copy_async() { g_fail_async = 1; }
int fake_cuda_live_streams() { return g_live_streams.load(); }
unsigned long long fake_cuda_copies() { return g_copies.load(); }
unsigned long long fake_cuda_host_allocs() { return g_host_allocs.load(); }
}
