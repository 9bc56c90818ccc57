// C++ tests of the core: pool, staging bound, codec, sinks, engine.
// A tiny harness (no external test framework: the build must work offline).
// Build with -DE2FASTIO_BUILD_TESTS=ON [-DE2FASTIO_SANITIZE=address,undefined].
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "e2fastio/background_errors.hpp"
#include "e2fastio/buffer_pool.hpp"
#include "e2fastio/busy_gate.hpp"
#include "e2fastio/codec.hpp"
#include "e2fastio/collect_sink.hpp"
#include "e2fastio/crc32c.hpp"
#include "e2fastio/cuda.hpp"
#include "e2fastio/direct_io.hpp"
#include "e2fastio/directory_sink.hpp"
#include "e2fastio/engine.hpp"
#include "e2fastio/error.hpp"
#include "e2fastio/file_region_sink.hpp"
#include "e2fastio/host_memory.hpp"
#include "e2fastio/memory_sink.hpp"
#include "e2fastio/plan.hpp"
#include "e2fastio/shard_sink.hpp"
#include "e2fastio/sink.hpp"
#include "e2fastio/staging_ring.hpp"
#include "e2fastio/thread_pool.hpp"
#include "e2fastio/upload_sink.hpp"
#include "harness.hpp"

using namespace e2fastio;

// Every fsync of this process is done for real and, while recording is on,
// noted by path: the sinks' durability calls are observed, not replaced.
namespace fsync_log {
std::atomic<bool> recording{false};
std::mutex mu;
std::vector<std::string> paths;
}  // namespace fsync_log

extern "C" int fsync(int fd) {
  using Fn = int (*)(int);
  static Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "fsync"));
  if (fsync_log::recording) {
    char buf[4096];
    ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof(buf) - 1);
    std::lock_guard<std::mutex> lk(fsync_log::mu);
    fsync_log::paths.emplace_back(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  }
  if (!real) {
    errno = ENOSYS;
    return -1;
  }
  return real(fd);
}

namespace {

using e2f_test::g_failures;
using e2f_test::registry;
using e2f_test::throws;

// Every directory made here is removed when the test binary exits (by the
// process that made it; forked children leave with _exit), whatever the test's
// outcome: a test that fails halfway leaves nothing in /tmp either.
std::string make_tempdir() {
  static const pid_t owner = getpid();
  static std::vector<std::string>* made = [] {
    auto* v = new std::vector<std::string>();
    std::atexit([] {
      if (getpid() != owner) return;
      for (const std::string& d : *made) std::system(("rm -rf '" + d + "'").c_str());
    });
    return v;
  }();
  char tmpl[] = "/tmp/e2fastio-cpp-XXXXXX";
  char* d = mkdtemp(tmpl);
  if (!d) throw std::runtime_error("mkdtemp failed");
  made->push_back(d);
  return d;
}

void list_files(const std::string& dir, std::vector<std::string>& out, const std::string& rel = "") {
  DIR* dp = opendir(dir.c_str());
  if (!dp) return;
  while (auto* e = readdir(dp)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    std::string p = dir + "/" + n;
    struct stat st;
    stat(p.c_str(), &st);
    if (S_ISDIR(st.st_mode))
      list_files(p, out, rel + n + "/");
    else
      out.push_back(rel + n);
  }
  closedir(dp);
}

ArraySpec make_array(std::vector<int64_t> shape, std::vector<int64_t> chunks, bool blosc) {
  ArraySpec a;
  a.path = "arr";
  a.shape = std::move(shape);
  a.chunks = std::move(chunks);
  a.codec.itemsize = 4;
  a.codec.blosc = blosc;
  a.codec.cname = "zstd";
  a.codec.clevel = 3;
  a.codec.typesize = 4;
  float nan = -1.0f;
  a.fill_value.resize(4);
  std::memcpy(a.fill_value.data(), &nan, 4);
  return a;
}

std::vector<int64_t> iota(int64_t start, int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Reassemble the full array from a memory sink (2-d arrays only).
std::vector<float> read_back_2d(MemorySink& sink, const ArraySpec& a) {
  std::vector<float> out(static_cast<size_t>(a.shape[0] * a.shape[1]), -2.0f);
  const size_t n = a.chunk_nbytes();
  std::vector<uint8_t> raw(n), enc;
  for (int64_t ci = 0; ci * a.chunks[0] < a.shape[0]; ++ci)
    for (int64_t cj = 0; cj * a.chunks[1] < a.shape[1]; ++cj) {
      if (!sink.read(a.chunk_key({ci, cj}), enc)) continue;
      decode_chunk(a.codec, enc.data(), enc.size(), raw.data(), n, 1);
      const float* f = reinterpret_cast<const float*>(raw.data());
      for (int64_t i = 0; i < a.chunks[0]; ++i)
        for (int64_t j = 0; j < a.chunks[1]; ++j) {
          int64_t gi = ci * a.chunks[0] + i, gj = cj * a.chunks[1] + j;
          if (gi < a.shape[0] && gj < a.shape[1]) out[static_cast<size_t>(gi * a.shape[1] + gj)] = f[i * a.chunks[1] + j];
        }
    }
  return out;
}

// ----------------------------------------------------------------- thread pool
TEST(background_errors_keep_the_first_of_its_type_and_name_the_later_ones) {
  BackgroundErrors errors;
  errors.rethrow_first();  // nothing recorded: returns
  auto record = [&](auto error) {
    std::exception_ptr e = std::make_exception_ptr(error);
    errors.record(e);
    CHECK(e == nullptr);  // taken
  };
  record(std::invalid_argument("chunk a/c/0 is bad"));
  CHECK(throws<std::invalid_argument>([&] { errors.rethrow_first(); }, "chunk a/c/0 is bad"));
  errors.rethrow_first();  // reported once
  record(IOError("writing a/c/1", ENOSPC));
  for (std::size_t i = 0; i < BackgroundErrors::kNamed + 2; ++i) record(std::runtime_error("b/c/" + std::to_string(i)));
  bool ok = false;
  try {
    errors.rethrow_first();
  } catch (const IOError& x) {  // the first one's type and errno
    const std::string m = x.what();
    ok = x.error_code() == ENOSPC && m.find("writing a/c/1") == 0 && m.find("and 10 more chunk(s) failed since: b/c/0;") !=
         std::string::npos && m.find("b/c/7; ...)") != std::string::npos && m.find("b/c/8") == std::string::npos;
    if (!ok) std::cerr << "message: " << m << "\n";
  }
  CHECK(ok);
  errors.rethrow_first();
}

TEST(pool_runs_every_task_and_reports_first_error) {
  ThreadPool pool(3);
  TaskGroup g;
  std::atomic<int> n{0};
  for (int i = 0; i < 100; ++i) pool.submit(g.wrap([&] { n.fetch_add(1); }));
  g.wait();
  CHECK(n.load() == 100);
  TaskGroup g2;
  for (int i = 0; i < 10; ++i)
    pool.submit(g2.wrap([i] {
      if (i == 4) throw std::runtime_error("task four failed");
    }));
  CHECK(throws<std::runtime_error>([&] { g2.wait(); }, "task four failed"));
  CHECK(g2.pending() == 0);
  pool.shutdown();
  pool.shutdown();  // idempotent
}

TEST(a_background_pool_runs_under_sched_idle_from_its_first_task) {
  ThreadPool idle(2, "e2f-test-idle", 19, true);
  CHECK(idle.idle_threads() == 2);  // every worker set up before the constructor returned
  ThreadPool normal(2, "e2f-test-norm", 0, true);  // idle_sched only with a lower priority
  CHECK(normal.idle_threads() == 0);
  std::atomic<int> idle_policy{-1}, normal_policy{-1};
  TaskGroup g;
  idle.submit(g.wrap([&] { idle_policy = sched_getscheduler(0); }));
  normal.submit(g.wrap([&] { normal_policy = sched_getscheduler(0); }));
  g.wait();
  CHECK(idle_policy.load() == SCHED_IDLE);
  CHECK(normal_policy.load() == sched_getscheduler(0));
  CHECK(sched_getscheduler(0) != SCHED_IDLE);  // the creator keeps its own policy
}

// ----------------------------------------------------------------- deferral while the caller computes
TEST(busy_gate_defers_while_the_caller_computes_and_never_past_its_bound) {
  const std::int64_t ms = 1000000;
  BusyGate g(100 * ms);
  // The first call only sets the baseline; until a 2 ms window has passed the caller counts as busy.
  CHECK(!g.may_start(0, 0, 0, false));
  CHECK(!g.may_start(1 * ms, 1 * ms, 0, false));
  // An idle caller (0.2 ms of CPU in a 2 ms window): start.
  CHECK(g.may_start(2 * ms, ms / 5, 0, false));
  CHECK(g.may_start(3 * ms, ms / 5, 0, false));  // the verdict holds until the next window ends
  // A busy caller (1.5 ms of 2): defer, for at most 100 ms of one busy stretch.
  std::int64_t t = 4 * ms, cpu = ms / 5 + 3 * ms / 2;
  CHECK(!g.may_start(t, cpu, 0, false));
  CHECK(g.may_start(t, cpu, 0, true));  // a waiter (flush, close, a full ring): start at once
  int deferred = 0;
  for (; t <= 104 * ms; t += 2 * ms, cpu += 2 * ms) deferred += !g.may_start(t, cpu, 0, false);
  CHECK(deferred == 51);
  CHECK(g.may_start(t, cpu, 0, false));                   // busy for more than 100 ms: run beside it
  CHECK(g.may_start(t + 2 * ms, cpu + 2 * ms, 0, false));  // and for the rest of this stretch
  // Idle again ends the stretch; the next busy stretch is deferred afresh.
  t += 4 * ms, cpu += 2 * ms;
  CHECK(g.may_start(t, cpu, 0, false));
  t += 2 * ms, cpu += 2 * ms;
  CHECK(!g.may_start(t, cpu, 0, false));
  // A write after a pause: its chunks wait until the caller has been watched for 1 ms after it.
  t += 2 * ms;
  CHECK(g.may_start(t, cpu, 0, false));  // idle (waiting for its step)
  g.entering();
  CHECK(!g.may_start(t + ms / 2, cpu, ms / 2, false));  // inside the write: not yet
  g.submitted(t + ms, cpu, ms);
  CHECK(!g.may_start(t + 3 * ms / 2, cpu + ms / 2, ms, false));  // 0.5 ms after it, too soon to tell
  CHECK(g.may_start(t + 2 * ms, cpu + ms / 10, ms, false));       // 1 ms after it, idle (a GPU step): start
  g.entering();
  g.submitted(t + 3 * ms, cpu + ms / 10, 2 * ms);
  CHECK(!g.may_start(t + 4 * ms, cpu + ms, 2 * ms, false));  // 1 ms after it, computing: defer
  // A caller that writes in a loop (most of its time inside submit) feeds us: no wait at its writes.
  BusyGate loop(100 * ms);
  std::int64_t w = 0, c = 0, in = 0;
  CHECK(!loop.may_start(w, c, in, false));  // baseline
  for (int i = 0; i < 20; ++i) {
    loop.entering();
    w += 3 * ms, in += 5 * ms / 2, c += ms / 2;  // 2.5 ms copying, 0.5 ms of its own between writes
    loop.submitted(w, c, in);
    if (i > 0) CHECK(loop.may_start(w, c, in, false));
  }
  g.reset();  // a new caller thread: a new baseline
  CHECK(!g.may_start(t + 5 * ms, 0, 0, false));
}

TEST(engine_with_deferral_stores_every_chunk_beside_a_caller_that_never_stops_computing) {
  // The caller spins (its thread always busy) until the chunks it submitted
  // are stored: deferral must end by its bound, never waiting for the caller
  // to go idle. The caller waits for the event (finished chunks), not a time.
  Engine eng(2, 8 << 20, 4 << 20, 19, false, 0.05);
  CHECK(eng.defer_busy_seconds() == 0.05);
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({8, 256}, {1, 256}, true);
  std::vector<float> data(8 * 256, 2.5f);
  Slab s{reinterpret_cast<const uint8_t*>(data.data()), {8, 256}, {1024, 4}, 4};
  volatile std::uint64_t spin = 0;
  for (int round = 0; round < 3; ++round) {
    eng.submit({{&a, mem, s, {iota(0, 8), iota(0, 256)}}});
    while (eng.finished_chunks() < static_cast<std::uint64_t>(8 * (round + 1)))
      for (int i = 0; i < 10000; ++i) spin = spin + 1;  // busy: no sleep, no wait
  }
  CHECK(eng.pending_chunks() == 0);
  eng.flush();
  auto out = read_back_2d(*mem, a);
  CHECK(out[0] == 2.5f && out[8 * 256 - 1] == 2.5f);
  // flush() starts deferred chunks at once: a caller that submits and then flushes never waits out the bound.
  Engine slow(2, 8 << 20, 4 << 20, 19, false, 3600.0);
  slow.submit({{&a, mem, s, {iota(0, 8), iota(0, 256)}}});
  slow.flush();  // would take an hour if the waiting caller did not open the gate
  CHECK(slow.pending_chunks() == 0);
  CHECK(throws<std::invalid_argument>([] { Engine bad(1, 8 << 20, 4 << 20, 19, false, -1.0); }, "defer_busy_seconds"));
}

// ----------------------------------------------------------------- staging bound
TEST(buffer_pool_bounds_memory_and_applies_backpressure) {
  const size_t cap = 4 * 64 * 1024;
  BufferPool pool(cap);
  Lease a = pool.acquire(100 * 1024);  // rounds to 128 KiB
  Lease b = pool.acquire(100 * 1024);
  CHECK(pool.stats().leased_bytes == cap);
  std::atomic<bool> got{false};
  std::thread t([&] {
    Lease c = pool.acquire(64 * 1024);
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!got.load());  // blocked: the pool is full
  a.release();
  t.join();
  CHECK(got.load());
  auto s = pool.stats();
  CHECK(s.waits == 1);
  CHECK(s.peak_bytes <= cap);
  CHECK(s.leased_bytes + s.cached_bytes <= cap);
  CHECK(throws<std::invalid_argument>([&] { pool.acquire(cap + 1); }, "max_buffer_bytes"));
}

TEST(buffer_pool_reuses_buffers_without_growth) {
  BufferPool pool(1 << 20);
  for (int i = 0; i < 50; ++i) {
    Lease l = pool.acquire(300 * 1024);
    std::memset(l.data(), i, l.size());
  }
  auto s = pool.stats();
  CHECK(s.allocations == 1);
  CHECK(s.reuses == 49);
  CHECK(s.peak_bytes <= (1u << 20));
}

// ----------------------------------------------------------------- process-wide host memory cache
TEST(host_cache_hands_a_given_back_block_to_the_next_taker_within_its_limit) {
  host_memory::empty();
  host_memory::set_limit(3 << 20);
  const auto s0 = host_memory::stats();
  host_memory::Block a = host_memory::take(1 << 20, 1 << 20, false);
  CHECK(a.data && a.size == (1u << 20) && !a.pinned);
  CHECK(reinterpret_cast<std::uintptr_t>(a.data) % 4096 == 0);
  std::memset(a.data, 7, a.size);
  uint8_t* const pa = a.data;
  host_memory::give(a);
  CHECK(host_memory::stats().cached_bytes == (1u << 20));
  // Too small a maximum, or the other kind: not served from the cache.
  host_memory::Block small = host_memory::take(4096, 8192, false);
  CHECK(small.data != pa);
  host_memory::give(small);
  host_memory::Block again = host_memory::take(1000 * 1000, 2 << 20, false);
  CHECK(again.data == pa && again.size == (1u << 20) && again.data[12345] == 7);  // the warm block, as left
  const auto s1 = host_memory::stats();
  CHECK(s1.hits == s0.hits + 1);
  CHECK(s1.misses == s0.misses + 2);
  // The limit: the oldest cached blocks make room for the newest; a block larger than the limit is freed.
  host_memory::Block b = host_memory::take(2 << 20, 2 << 20, false);
  host_memory::Block huge = host_memory::take(4 << 20, 4 << 20, false);
  host_memory::give(again);
  host_memory::give(b);
  host_memory::give(huge);
  auto s2 = host_memory::stats();
  CHECK(s2.cached_bytes == (3u << 20) && s2.cached_blocks == 2);  // `small`, the oldest, was freed
  host_memory::set_limit(0);  // off: everything cached is freed, nothing new is kept
  CHECK(host_memory::stats().cached_bytes == 0 && host_memory::stats().cached_blocks == 0);
  host_memory::give(host_memory::take(4096, 4096, false));
  CHECK(host_memory::stats().cached_bytes == 0);
  host_memory::set_limit(std::size_t{1} << 30);
  host_memory::give(host_memory::take(8192, 8192, false));
  CHECK(host_memory::empty() == 8192 && host_memory::stats().cached_bytes == 0);
}

TEST(a_new_ring_and_pool_start_on_the_memory_a_destroyed_engine_left_warm) {
  host_memory::empty();
  uint8_t* ring_base = nullptr;
  uint8_t* buffer = nullptr;
  {
    StagingRing ring(64 * 4096);
    auto s = ring.reserve(4096);
    ring_base = s.data;
    ring.release(s.id);
    BufferPool pool(1 << 20);
    buffer = pool.acquire(300 * 1024).data();
  }
  CHECK(host_memory::stats().cached_blocks == 2);
  StagingRing ring(64 * 4096);
  auto s = ring.reserve(4096);
  CHECK(s.data == ring_base);
  BufferPool pool(1 << 20);
  CHECK(pool.acquire(300 * 1024).data() == buffer);
  CHECK(host_memory::stats().cached_blocks == 0);
  ring.release(s.id);
}

TEST(a_ring_on_a_warm_cached_block_prefaults_only_the_pages_never_touched) {
  host_memory::empty();
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  {
    StagingRing ring(64 * kMiB);
    CHECK(ring.warm_bytes() == 0);
    ring.prefault(0, 16 * kMiB);
    ring.prefault(0, 16 * kMiB);  // already warm: skipped
#ifdef MADV_POPULATE_WRITE
    CHECK(ring.stats().prefaulted_bytes == 16 * kMiB);
    CHECK(ring.warm_bytes() == 16 * kMiB);
#endif
    auto s = ring.reserve(24 * kMiB - 100);  // a slot from the start: its copy writes it
#ifdef MADV_POPULATE_WRITE
    CHECK(ring.warm_bytes() == 16 * kMiB);  // not yet: a prefault may still fault the pages ahead of the copy
#endif
    std::memset(s.data, 1, s.size);
    ring.release(s.id);
    CHECK(ring.warm_bytes() == 24 * kMiB);
  }
  StagingRing ring(64 * kMiB);  // the same block, from the process cache
  CHECK(ring.warm_bytes() == 24 * kMiB);
  ring.prefault(0, 32 * kMiB);
#ifdef MADV_POPULATE_WRITE
  CHECK(ring.stats().prefaulted_bytes == 8 * kMiB);  // only [24, 32) MiB
  CHECK(ring.warm_bytes() == 32 * kMiB);
#endif
  ring.prefault(48 * kMiB, 8 * kMiB);  // not contiguous with the warm start: the mark stays
#ifdef MADV_POPULATE_WRITE
  CHECK(ring.warm_bytes() == 32 * kMiB);
#endif
}

TEST(page_locked_rings_are_cached_apart_from_pageable_ones) {
  host_memory::empty();
  uint8_t* pinned_base = nullptr;
  {
    StagingRing ring(16 * 4096, /*pinned=*/true);  // the fake CUDA runtime's cudaHostAlloc
    CHECK(ring.pinned());
    auto s = ring.reserve(4096);
    pinned_base = s.data;
    ring.release(s.id);
  }
  {
    StagingRing pageable(16 * 4096, /*pinned=*/false);  // never handed a page-locked block
    CHECK(!pageable.pinned());
    auto s = pageable.reserve(4096);
    CHECK(s.data != pinned_base);
    pageable.release(s.id);
  }
  // A forked child must not be handed the parent's page-locked block (the real
  // driver does not map it there); pageable blocks stay usable.
  {
    BufferPool pool(1 << 20);
    (void)pool.acquire(300 * 1024);
  }
  CHECK(host_memory::stats().cached_blocks == 3);  // pinned ring, pageable ring, pool buffer
  const pid_t pid = fork();
  if (pid == 0) {
    const auto st = host_memory::stats();
    bool ok = st.cached_blocks == 2;
    {
      StagingRing child(16 * 4096, /*pinned=*/true);
      auto cs = child.reserve(4096);
      ok = ok && cs.data != pinned_base;
      std::memset(cs.data, 1, 4096);
      child.release(cs.id);
    }
    _exit(ok ? 0 : 1);
  }
  int status = -1;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  StagingRing again(16 * 4096, /*pinned=*/true);  // the parent still has it
  CHECK(again.pinned());
  auto s = again.reserve(4096);
  CHECK(s.data == pinned_base);
  again.release(s.id);
}

// ----------------------------------------------------------------- staging ring
TEST(ring_wraps_releases_out_of_order_and_blocks_when_full) {
  StagingRing ring(16 * 4096);
  auto a = ring.reserve(6 * 4096);
  auto b = ring.reserve(6 * 4096);
  CHECK(a.data + 6 * 4096 == b.data);
  CHECK(reinterpret_cast<std::uintptr_t>(a.data) % StagingRing::kAlign == 0);
  ring.release(b.id);  // out of order: a is still live, nothing is reclaimed before it
  std::atomic<bool> got{false};
  std::thread t([&] {
    auto c = ring.reserve(8 * 4096);  // needs a's space (wraps to the start)
    got = true;
    ring.release(c.id);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!got.load());
  ring.release(a.id);
  t.join();
  CHECK(got.load());
  auto st = ring.stats();
  CHECK(st.waits == 1 && st.used_bytes == 0 && st.peak_used_bytes <= st.capacity);
  CHECK(throws<std::invalid_argument>([&] { ring.reserve(17 * 4096); }, "max_buffer_bytes"));
  // Many reservations of mixed sizes never overlap a live slot.
  std::vector<StagingRing::Slot> live;
  for (int i = 0; i < 200; ++i) {
    auto s = ring.reserve(static_cast<std::size_t>(1 + (i * 7919) % (5 * 4096)));
    std::memset(s.data, i & 0xff, s.size);
    live.push_back(s);
    if (live.size() > 2) {
      for (std::size_t k = 0; k < live[0].size; ++k) CHECK(live[0].data[k] == static_cast<uint8_t>((i - 2) & 0xff));
      ring.release(live.front().id);
      live.erase(live.begin());
    }
  }
}

TEST(flush_returns_with_every_staging_slot_of_its_work_released) {
  // What flush() promises: once it returns, the ring holds nothing of the work
  // it waited for (so stats read zero in flight and the next write never
  // waits on memory already done with). The slot used to be given back only
  // when the last task's closure was destroyed, which a pool thread may do
  // after flush() has seen every chunk finish. Both routes are checked: chunks
  // stored on the encoder (memory) and on the writer stage (files).
  Engine eng(2, 8 << 20, 4 << 20);
  auto mem = std::make_shared<MemorySink>();
  auto dir = make_tempdir();
  auto disk = std::make_shared<DirectorySink>(dir);
  ArraySpec a = make_array({4, 256}, {1, 256}, true);
  std::vector<float> data(4 * 256, 1.5f);
  Slab s{reinterpret_cast<const uint8_t*>(data.data()), {4, 256}, {1024, 4}, 4};
  int held = 0;
  for (int i = 0; i < 400; ++i) {
    eng.submit({{&a, i % 2 ? std::shared_ptr<Sink>(disk) : std::shared_ptr<Sink>(mem), s, {iota(0, 4), iota(0, 256)}}});
    eng.flush();
    held += eng.ring_stats().used_bytes != 0;
  }
  if (held) std::cerr << "  " << held << " of 400 flushes returned with ring bytes still held\n";
  CHECK(held == 0);
  CHECK(eng.pending_chunks() == 0);
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(engine_submit_is_ordered_per_chunk_and_reports_errors_once) {
  Engine eng(2, 8 << 20, 4 << 20);
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 64}, {4, 64}, true);  // one chunk: every write is a partial RMW
  std::vector<float> row(64);
  for (int i = 0; i < 60; ++i) {
    std::fill(row.begin(), row.end(), static_cast<float>(i));
    Slab s{reinterpret_cast<const uint8_t*>(row.data()), {1, 64}, {256, 4}, 4};
    eng.submit({{&a, mem, s, {{i % 4}, iota(0, 64)}}});
    std::fill(row.begin(), row.end(), -7.0f);  // the caller reuses its buffer at once
  }
  eng.flush();
  auto out = read_back_2d(*mem, a);
  for (int r = 0; r < 4; ++r) CHECK(out[static_cast<size_t>(r * 64)] == static_cast<float>(56 + r));
  // A failing chunk is reported once, later; the others land.
  auto dir = make_tempdir();
  auto dsink = std::make_shared<DirectorySink>(dir);
  float v = 1.0f;
  dsink->write("arr", reinterpret_cast<const uint8_t*>(&v), 4);  // blocks the array directory
  ArraySpec other = a;
  other.path = "ok";
  std::vector<float> full(256, 3.0f);
  Slab fs{reinterpret_cast<const uint8_t*>(full.data()), {4, 64}, {256, 4}, 4};
  eng.submit({{&a, dsink, fs, {iota(0, 4), iota(0, 64)}}, {&other, dsink, fs, {iota(0, 4), iota(0, 64)}}});
  CHECK(throws<IOError>([&] { eng.flush(); }, "arr/c/0/0"));
  eng.flush();  // once
  std::vector<uint8_t> back;
  CHECK(dsink->read("ok/c/0/0", back));
  CHECK(eng.failed_chunks() == 1);
  // Several failing chunks: the first error (its type kept) names the others.
  ArraySpec many = make_array({4, 64}, {1, 64}, true);  // four chunks, all blocked
  many.path = "arr";
  eng.submit({{&many, dsink, fs, {iota(0, 4), iota(0, 64)}}});
  bool named_all = false;
  try {
    eng.flush();
  } catch (const IOError& e) {
    const std::string m = e.what();
    named_all = m.find("3 more chunk(s) failed since") != std::string::npos;
    for (int i = 0; i < 4; ++i) named_all = named_all && m.find("arr/c/" + std::to_string(i) + "/0") != std::string::npos;
    if (!named_all) std::cerr << "message: " << m << "\n";
  }
  CHECK(named_all);
  eng.flush();  // reported once
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

// ----------------------------------------------------------------- codec
TEST(codec_roundtrip_all_compressors) {
  std::vector<float> data(10000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i % 97) * 0.25f;
  const size_t n = data.size() * 4;
  for (const char* cname : {"blosclz", "lz4", "lz4hc", "zlib", "zstd"})
    for (auto sh : {Shuffle::none, Shuffle::byte, Shuffle::bit}) {
      CodecSpec c;
      c.blosc = true;
      c.cname = cname;
      c.clevel = 5;
      c.shuffle = sh;
      std::vector<uint8_t> raw(reinterpret_cast<uint8_t*>(data.data()), reinterpret_cast<uint8_t*>(data.data()) + n);
      std::vector<uint8_t> enc(c.max_encoded_size(n));
      const uint8_t* out = nullptr;
      size_t k = encode_chunk(c, raw.data(), n, enc.data(), enc.size(), 2, &out);
      CHECK(out == enc.data());
      CHECK(enc[0] == 2);  // c-blosc 1.x header version: what numcodecs reads
      std::vector<uint8_t> back(n);
      decode_chunk(c, enc.data(), k, back.data(), n, 1);
      CHECK(std::memcmp(back.data(), data.data(), n) == 0);
    }
  CodecSpec bad;
  bad.blosc = true;
  bad.cname = "gzip";
  CHECK(throws<std::invalid_argument>([&] { bad.validate(); }, "cname"));
}

TEST(codec_hdf5_shuffle_deflate_roundtrip) {
  std::vector<double> data(5001);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = 250.0 + static_cast<double>(i % 37) / 8;
  const std::size_t n = data.size() * 8;
  for (bool sh : {false, true})
    for (int level : {0, 1, 4, 9}) {
      CodecSpec c;
      c.itemsize = 8;
      c.deflate = true;
      c.deflate_level = level;
      c.hdf5_shuffle = sh;
      std::vector<uint8_t> raw(reinterpret_cast<uint8_t*>(data.data()), reinterpret_cast<uint8_t*>(data.data()) + n);
      std::vector<uint8_t> enc(c.max_encoded_size(n));
      const uint8_t* out = nullptr;
      std::size_t k = encode_chunk(c, raw.data(), n, enc.data(), enc.size(), 1, &out);
      CHECK(level == 0 ? k > n : k < n / 2);  // level 0: stored blocks
      CHECK(out[0] == 0x78);  // a zlib stream (RFC 1950), as HDF5's deflate filter writes
      std::vector<uint8_t> back(n);
      decode_chunk(c, out, k, back.data(), n, 1);
      CHECK(std::memcmp(back.data(), data.data(), n) == 0);
    }
  std::vector<uint8_t> a{1, 2, 3, 4, 5, 6, 7}, b(7), c2(7);
  hdf5_shuffle(a.data(), b.data(), 7, 2);
  CHECK((b == std::vector<uint8_t>{1, 3, 5, 2, 4, 6, 7}));
  hdf5_unshuffle(b.data(), c2.data(), 7, 2);
  CHECK(c2 == a);
}

TEST(codec_one_zlib_matching_its_header) {
  const ZlibInfo z = zlib_info();
  CHECK(z.linkage == "static" || z.linkage == "c-blosc");
  CHECK(!z.version.empty() && z.version[0] == '1');
  // A static zlib is the library whose zlib.h the core was compiled against.
  if (z.linkage == "static") CHECK(z.version == z.header_version);
  const std::string lib = deflate_library();
  CHECK(lib.rfind("zlib " + z.version + " (", 0) == 0);
  // blosc's "zlib" codec deflates through the same library: a frame it writes
  // holds a zlib stream that the core's own inflate (HDF5 path) reads.
  std::vector<uint8_t> raw(1 << 16);
  for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<uint8_t>((i * 7) % 251 / 3);
  CodecSpec bz;
  bz.blosc = true;
  bz.cname = "zlib";
  bz.clevel = 5;
  bz.shuffle = Shuffle::none;
  bz.typesize = 1;
  bz.itemsize = 1;
  bz.blocksize = raw.size();  // one block: one zlib stream after blosc's header and offsets
  std::vector<uint8_t> src = raw, enc(bz.max_encoded_size(raw.size()));
  const uint8_t* out = nullptr;
  std::size_t k = encode_chunk(bz, src.data(), src.size(), enc.data(), enc.size(), 1, &out);
  CHECK(k > 16 + 4 + 4 && k < raw.size());
  CHECK((enc[2] >> 5) == 3);  // codec bits: zlib
  // Blosc 1.x: 16-byte header, one uint32 block offset, then per stream a uint32
  // length followed by the compressed bytes (one stream when not split).
  uint32_t off = 0, len = 0;
  std::memcpy(&off, enc.data() + 16, 4);
  std::memcpy(&len, enc.data() + off, 4);
  CHECK(off + 4 + len <= k);
  CodecSpec dz;
  dz.itemsize = 1;
  dz.deflate = true;
  std::vector<uint8_t> back(raw.size());
  decode_chunk(dz, enc.data() + off + 4, len, back.data(), back.size(), 1);
  CHECK(back == raw);
}

TEST(codec_big_endian_swaps) {
  CodecSpec c;
  c.itemsize = 4;
  c.big_endian = true;
  uint32_t v = 0x01020304u;
  uint8_t raw[4];
  std::memcpy(raw, &v, 4);
  const uint8_t* out = nullptr;
  encode_chunk(c, raw, 4, nullptr, 0, 1, &out);
  CHECK(out[0] == 1 && out[3] == 4);
}

// ----------------------------------------------------------------- sinks
// Sanitizer runtimes of GCC < 14 / LLVM < 17 do not lock their allocator
// around fork() (GCC 12's libasan has no fork interceptor): a child that
// allocates can block for good on an allocator lock that a parent thread held
// at the fork, whatever the code under test does (seen: a child stuck in
// SizeClassAllocator64::GetFromAllocator, under DirectorySink::write, once in
// ~3000 forks). ThreadSanitizer refuses new threads after a multi-threaded
// fork. The fork tests therefore run in full only in the plain build
// (tests/test_cpp_core.py runs them there too), and in a reduced form here.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitizerRuntime = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitizerRuntime = true;
#else
constexpr bool kSanitizerRuntime = false;
#endif
#else
constexpr bool kSanitizerRuntime = false;
#endif
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

TEST(a_forked_child_writes_through_sinks_that_other_threads_were_using) {
  // Two threads write to a MemorySink and a DirectorySink without pause while
  // this thread forks; every child writes through the same sinks and must
  // finish (a lock held by a parent thread at fork time would hang it: an
  // alarm ends a hung child, and the first one ends the test).
  // With a sanitizer runtime (kSanitizerRuntime), the writers park between
  // writes while a fork happens: no parent thread is then inside the
  // sanitizer's allocator, and the child's writes are still checked, but the
  // sinks' locks are never held at the fork (the plain build covers that).
  auto dir = make_tempdir();
  MemorySink mem;
  DirectorySink disk(dir + "/store");
  std::atomic<bool> stop{false};
  struct {
    std::mutex mu;
    std::condition_variable cv;
    bool closed = false;
    int parked = 0;
  } gate;  // used only with a sanitizer runtime
  constexpr int kWriters = 2;
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t)
    writers.emplace_back([&, t] {
      std::vector<uint8_t> buf(64, static_cast<uint8_t>(t));
      for (int i = 0; !stop.load(); ++i) {
        if (kSanitizerRuntime) {
          std::unique_lock<std::mutex> lk(gate.mu);
          if (gate.closed) {
            ++gate.parked;
            gate.cv.notify_all();
            gate.cv.wait(lk, [&] { return !gate.closed; });
            --gate.parked;
          }
        }
        mem.write("w" + std::to_string(t) + "/" + std::to_string(i % 64), buf.data(), buf.size());
        if (i % 8 == 0) disk.write("d" + std::to_string(t) + "/c/" + std::to_string(i % 32), buf.data(), buf.size());
      }
    });
  int hung = 0, failed = 0;
  for (int k = 0; k < 200 && hung == 0; ++k) {
    if (kSanitizerRuntime) {
      std::unique_lock<std::mutex> lk(gate.mu);
      gate.closed = true;
      gate.cv.wait(lk, [&] { return gate.parked == kWriters; });
    }
    pid_t pid = fork();
    if (pid == 0) {
      alarm(3);
      std::vector<uint8_t> v(8, 7), out;
      mem.write("child", v.data(), v.size());
      disk.write("child/c/" + std::to_string(k), v.data(), v.size());
      _exit(mem.read("child", out) && out == v && disk.read("child/c/" + std::to_string(k), out) && out == v ? 0 : 3);
    }
    if (kSanitizerRuntime) {
      std::lock_guard<std::mutex> lk(gate.mu);
      gate.closed = false;
      gate.cv.notify_all();
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) ++hung;
    else if (WEXITSTATUS(status) != 0) ++failed;
  }
  stop = true;
  for (auto& w : writers) w.join();
  CHECK(hung == 0);
  CHECK(failed == 0);
}

TEST(directory_sink_writes_atomically_and_reports_errors) {
  auto dir = make_tempdir();
  DirectorySink sink(dir + "/store");
  std::vector<uint8_t> payload(1000, 7), back;
  sink.write("a/c/0/1", payload.data(), payload.size());
  CHECK(sink.read("a/c/0/1", back) && back == payload);
  CHECK(!sink.read("a/c/9/9", back));
  std::vector<std::string> files;
  list_files(dir + "/store", files);
  CHECK(files.size() == 1 && files[0] == "a/c/0/1");  // no temporary left behind
  // Removing the directory behind the sink's back must not break later writes.
  CHECK(std::system(("rm -rf " + dir + "/store/a").c_str()) == 0);
  sink.write("a/c/0/2", payload.data(), payload.size());
  CHECK(sink.read("a/c/0/2", back));
  // A file where a directory must go: the error names the key and the OS reason.
  sink.write("f", payload.data(), payload.size());
  CHECK(throws<IOError>([&] { sink.write("f/c/0", payload.data(), 10); }, "f/c"));
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(directory_sink_removes_temporaries_of_dead_writers_on_this_machine_only) {
  auto dir = make_tempdir();
  CHECK(::mkdir((dir + "/a").c_str(), 0777) == 0);
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  CHECK(child > 0 && ::waitpid(child, nullptr, 0) == child);  // a pid that no longer exists
  const std::string& mine = detail::temp_prefix();
  auto touch = [&](const std::string& name) {
    FILE* f = std::fopen((dir + "/a/" + name).c_str(), "wb");
    CHECK(f != nullptr);
    if (f) std::fclose(f);
  };
  const std::string dead = mine + std::to_string(child) + "-0-0";
  const std::string alive = mine + std::to_string(::getpid()) + "-0-1";
  const std::string other_host = ".e2fastio-tmp-0123456789ab-" + std::to_string(child) + "-0-0";
  const std::string legacy = ".e2fastio-tmp-" + std::to_string(child) + "-0-0";
  for (const auto& n : {dead, alive, other_host, legacy}) touch(n);
  CHECK(mine.rfind(".e2fastio-tmp-", 0) == 0 && mine.size() == std::string(".e2fastio-tmp-").size() + 13);
  DirectorySink sink(dir);
  float v = 1.0f;
  sink.write("a/0", reinterpret_cast<const uint8_t*>(&v), 4);  // first use of directory a
  auto exists = [&](const std::string& n) { return ::access((dir + "/a/" + n).c_str(), F_OK) == 0; };
  CHECK(!exists(dead));
  CHECK(exists(alive) && exists(other_host) && exists(legacy));
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(directory_sink_direct_io_writes_exact_bytes) {
  auto dir = make_tempdir();
  for (auto mode : {DirectIO::on, DirectIO::automatic, DirectIO::off}) {
    DirectorySink sink(dir, false, mode);
    BufferPool pool(8 << 20);
    Lease l = pool.acquire(3 * 1024 * 1024 + 123);  // 4096-aligned buffer, odd length
    const std::size_t n = 3 * 1024 * 1024 + 123;
    for (std::size_t i = 0; i < n; ++i) l.data()[i] = static_cast<uint8_t>(i * 31 + 7);
    sink.write("d/c/0", l.data(), n);
    std::vector<uint8_t> back;
    CHECK(sink.read("d/c/0", back));
    CHECK(back.size() == n && std::memcmp(back.data(), l.data(), n) == 0);
    // Unaligned source pointers take the buffered path and are exact too.
    sink.write("d/c/1", l.data() + 1, n - 1);
    CHECK(sink.read("d/c/1", back) && back.size() == n - 1 && std::memcmp(back.data(), l.data() + 1, n - 1) == 0);
  }
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(engine_batch_writes_several_arrays_and_lands_all_on_error) {
  Engine eng(2, 8 << 20);
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 4}, {2, 2}, true), b = make_array({4, 4}, {2, 2}, false);
  b.path = "other";
  std::vector<float> v(16);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  Slab s{reinterpret_cast<const uint8_t*>(v.data()), {4, 4}, {16, 4}, 4};
  eng.write_batch({{&a, mem, s, {iota(0, 4), iota(0, 4)}}, {&b, mem, s, {iota(0, 4), iota(0, 4)}}});
  CHECK(mem->size() == 8);
  CHECK(read_back_2d(*mem, a) == v);
  // One request with an invalid selection: nothing of the batch is stored.
  auto mem2 = std::make_shared<MemorySink>();
  CHECK(throws<std::invalid_argument>(
      [&] { eng.write_batch({{&a, mem2, s, {iota(0, 4), iota(0, 4)}}, {&b, mem2, s, {iota(1, 4), iota(0, 4)}}}); },
      "out of range"));
  CHECK(mem2->size() == 0);
}

// ----------------------------------------------------------------- engine
TEST(engine_full_partial_and_edge_chunks) {
  for (bool blosc : {false, true}) {
    Engine eng(2, 8 << 20);
    auto sink = std::make_shared<MemorySink>();
    ArraySpec a = make_array({5, 7}, {2, 3}, blosc);
    std::vector<float> ref(35, -1.0f);
    // Whole array.
    std::vector<float> full(35);
    for (size_t i = 0; i < full.size(); ++i) full[i] = static_cast<float>(i);
    Slab s{reinterpret_cast<const uint8_t*>(full.data()), {5, 7}, {28, 4}, 4};
    eng.write(a, sink, s, {iota(0, 5), iota(0, 7)});
    ref = full;
    CHECK(read_back_2d(*sink, a) == ref);
    // A partial, out-of-order, strided selection: rows {3, 0}, cols {6, 1, 2}.
    std::vector<float> part(6 * 2);  // viewed with row stride 24 bytes (every other column skipped)
    for (size_t i = 0; i < part.size(); ++i) part[i] = 100.0f + static_cast<float>(i);
    Slab ps{reinterpret_cast<const uint8_t*>(part.data()), {2, 3}, {24, 8}, 4};
    std::vector<int64_t> rows{3, 0}, cols{6, 1, 2};
    eng.write(a, sink, ps, {rows, cols});
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 3; ++c) ref[static_cast<size_t>(rows[r] * 7 + cols[c])] = part[static_cast<size_t>(r * 6 + c * 2)];
    CHECK(read_back_2d(*sink, a) == ref);
    CHECK(eng.stats().chunks_merged > 0);
  }
}

TEST(engine_fills_unwritten_parts_with_fill_value) {
  Engine eng(2, 8 << 20);
  auto sink = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 4}, {4, 4}, true);
  float v = 5.0f;
  Slab s{reinterpret_cast<const uint8_t*>(&v), {1, 1}, {4, 4}, 4};
  eng.write(a, sink, s, {{2}, {1}});
  auto out = read_back_2d(*sink, a);
  for (size_t i = 0; i < out.size(); ++i) CHECK(out[i] == (i == 9 ? 5.0f : -1.0f));
}

TEST(engine_rejects_bad_selection_and_surfaces_sink_errors) {
  Engine eng(2, 8 << 20);
  auto sink = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 4}, {2, 2}, false);
  float v[4] = {1, 2, 3, 4};
  Slab s{reinterpret_cast<const uint8_t*>(v), {2, 2}, {8, 4}, 4};
  CHECK(throws<std::invalid_argument>([&] { eng.write(a, sink, s, {{0, 9}, {0, 1}}); }, "out of range"));
  CHECK(throws<std::invalid_argument>([&] { eng.write(a, sink, s, {{0}, {0, 1}}); }, "positions"));
  CHECK(sink->size() == 0);
  auto dir = make_tempdir();
  auto dsink = std::make_shared<DirectorySink>(dir);
  dsink->write("arr", reinterpret_cast<const uint8_t*>(v), 4);  // a file where the array dir goes
  CHECK(throws<IOError>([&] { eng.write(a, dsink, s, {{0, 1}, {0, 1}}); }, "arr/c/0/0"));
  // The engine keeps working after an error.
  eng.write(a, sink, s, {{0, 1}, {0, 1}});
  CHECK(sink->size() == 1);
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(engine_staging_stays_bounded_under_many_chunks) {
  ArraySpec a = make_array({64, 1024}, {1, 1024}, true);  // 64 chunks of 4 KiB
  Engine eng(2, 3 * 64 * 1024);                          // room for 3 chunks in flight
  auto sink = std::make_shared<MemorySink>();
  std::vector<float> d(64 * 1024, 1.5f);
  Slab s{reinterpret_cast<const uint8_t*>(d.data()), {64, 1024}, {4096, 4}, 4};
  for (int step = 0; step < 5; ++step) eng.write(a, sink, s, {iota(0, 64), iota(0, 1024)});
  auto st = eng.buffers().stats();
  CHECK(st.peak_bytes <= 3 * 64 * 1024);
  CHECK(st.leased_bytes == 0);
  CHECK(sink->size() == 64);
  CHECK(throws<std::invalid_argument>(
      [&] {
        Engine small(1, 1024);
        small.write(a, sink, s, {iota(0, 64), iota(0, 1024)});
      },
      "max_buffer_bytes"));
}

// ----------------------------------------------------------------- device path (fake CUDA runtime)
struct FakeCuda {
  void* h = dlopen(E2FASTIO_FAKE_CUDART, RTLD_NOW);
  template <class F>
  F* fn(const char* name) {
    return reinterpret_cast<F*>(dlsym(h, name));
  }
};

TEST(device_copy_waits_for_producer_and_producer_waits_for_copy) {
  const cuda::Api* api = cuda::api();
  CHECK(api != nullptr);
  if (!api) return;
  FakeCuda fake;
  auto hold = fake.fn<void(void*, int)>("fake_cuda_hold_stream");
  auto copies = fake.fn<unsigned long long()>("fake_cuda_copies");
  auto live_streams = fake.fn<int()>("fake_cuda_live_streams");
  const int streams_before = live_streams();
  auto engine = std::make_unique<Engine>(2, 8 << 20, 4 << 20);
  Engine& eng = *engine;
  CHECK(eng.ring_stats().pinned);
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 64}, {2, 64}, true);
  std::vector<float> dev(256, -5.0f), later(256, 99.0f);  // "device" memory
  cuda::Stream producer = nullptr;
  CHECK(api->StreamCreateWithFlags(&producer, 0) == 0);
  hold(producer, 1);  // a kernel is still computing `dev`
  const auto before = copies();
  Slab s{reinterpret_cast<const uint8_t*>(dev.data()), {4, 64}, {256, 4}, 4};
  eng.submit_device({{&a, mem, s, {iota(0, 4), iota(0, 64)}}}, producer);
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  CHECK(copies() == before);  // no copy before the producer's work is done
  CHECK(mem->size() == 0);
  for (std::size_t i = 0; i < dev.size(); ++i) dev[i] = static_cast<float>(i);  // the kernel's result
  // Work queued on the producer after write() (here: overwriting the source) runs after the copy.
  CHECK(api->MemcpyAsync(dev.data(), later.data(), dev.size() * 4, 2, producer) == 0);
  hold(producer, 0);
  eng.flush();
  std::vector<float> expect(256);
  for (std::size_t i = 0; i < expect.size(); ++i) expect[i] = static_cast<float>(i);
  CHECK(read_back_2d(*mem, a) == expect);
  CHECK(eng.copies_done() == 1);
  CHECK(live_streams() == streams_before + 2);  // the producer's and the engine's copy stream
  engine.reset();
  CHECK(live_streams() == streams_before + 1);  // the engine destroyed its own
  api->StreamDestroy(producer);
}

TEST(device_slots_are_reused_only_after_their_chunks_are_stored) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  FakeCuda fake;
  auto delay = fake.fn<void(int)>("fake_cuda_set_copy_delay_ms");
  Engine eng(2, 1 << 20, 16384);  // the ring holds exactly one 16 KiB write
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 4096}, {1, 4096}, true);
  std::vector<std::vector<float>> devs(4, std::vector<float>(4096));
  delay(60);
  auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < 4; ++k) {
    std::fill(devs[static_cast<size_t>(k)].begin(), devs[static_cast<size_t>(k)].end(), static_cast<float>(k));
    Slab s{reinterpret_cast<const uint8_t*>(devs[static_cast<size_t>(k)].data()), {1, 4096}, {16384, 4}, 4};
    eng.submit_device({{&a, mem, s, {{k}, iota(0, 4096)}}}, nullptr);
  }
  eng.flush();
  delay(0);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(secs >= 0.18);  // each submit waited for the previous copy + encode (backpressure)
  CHECK(eng.ring_stats().waits >= 3);
  std::vector<uint8_t> enc, raw(16384);
  for (int k = 0; k < 4; ++k) {
    CHECK(mem->read(a.chunk_key({k, 0}), enc));
    decode_chunk(a.codec, enc.data(), enc.size(), raw.data(), raw.size(), 1);
    CHECK(reinterpret_cast<float*>(raw.data())[4095] == static_cast<float>(k));
  }
}

TEST(a_waiter_that_helps_stores_queued_chunks_while_every_encoder_is_busy) {
  // The only encoder thread is held by a device job whose producer has not
  // finished; host chunks queued behind it are stored by the thread waiting
  // in wait_idle(help=true), at that thread's priority.
  const cuda::Api* api = cuda::api();
  if (!api) return;
  FakeCuda fake;
  auto hold = fake.fn<void(void*, int)>("fake_cuda_hold_stream");
  Engine eng(1, 8 << 20, 4 << 20);
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({4, 64}, {1, 64}, true);
  std::vector<float> dev(64, 1.0f), host(3 * 64, 2.0f);
  cuda::Stream producer = nullptr;
  CHECK(api->StreamCreateWithFlags(&producer, 0) == 0);
  hold(producer, 1);
  Slab d{reinterpret_cast<const uint8_t*>(dev.data()), {1, 64}, {256, 4}, 4};
  eng.submit_device({{&a, mem, d, {{0}, iota(0, 64)}}}, producer);  // queued first: the encoder takes it and waits
  Slab h{reinterpret_cast<const uint8_t*>(host.data()), {3, 64}, {256, 4}, 4};
  eng.submit({{&a, mem, h, {iota(1, 3), iota(0, 64)}}});  // queued behind it
  const std::uint64_t before = eng.finished_chunks();
  bool idle = false;
  std::thread waiter([&] { idle = eng.wait_idle(60.0, true); });
  std::uint64_t done = before;
  for (int i = 0; i < 6 && done < before + 3; ++i) done = eng.wait_progress(done, 10.0);  // wakes on each chunk
  CHECK(done >= before + 3);  // the three host chunks, stored by the waiter
  CHECK(mem->size() == 3);
  hold(producer, 0);
  waiter.join();
  CHECK(idle);
  eng.flush();
  CHECK(mem->size() == 4);
  api->StreamDestroy(producer);
}

TEST(device_copy_errors_surface) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  FakeCuda fake;
  Engine eng(2, 8 << 20, 4 << 20);
  auto mem = std::make_shared<MemorySink>();
  ArraySpec a = make_array({2, 64}, {1, 64}, true);
  std::vector<float> dev(128, 1.0f);
  Slab s{reinterpret_cast<const uint8_t*>(dev.data()), {2, 64}, {256, 4}, 4};
  fake.fn<void()>("fake_cuda_fail_next_copy")();
  CHECK(throws<std::runtime_error>([&] { eng.submit_device({{&a, mem, s, {iota(0, 2), iota(0, 64)}}}, nullptr); },
                                   "cudaMemcpyAsync"));
  cuda::Stream st = nullptr;
  api->StreamCreateWithFlags(&st, 0);  // a fresh "device" context for the asynchronous failure
  Engine eng2(2, 8 << 20, 4 << 20);
  fake.fn<void()>("fake_cuda_fail_next_copy_async")();
  eng2.submit_device({{&a, mem, s, {iota(0, 2), iota(0, 64)}}}, st);
  CHECK(throws<std::runtime_error>([&] { eng2.flush(); }, "device-to-host copy"));
  CHECK(mem->size() == 0);  // nothing encoded from a failed copy
  api->StreamDestroy(st);
}

// A memory sink whose reads wait (at most 2 s) until `open()` says so: the
// merge of a partial chunk then reads its staged slab only after that.
struct GatedSink : MemorySink {
  std::function<bool()> open = [] { return true; };
  bool read(const std::string& key, std::vector<uint8_t>& out) override {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (!open() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return MemorySink::read(key, out);
  }
};

TEST(a_device_write_failing_after_its_copy_was_queued_keeps_the_slot_until_the_copy_ended) {
  // A CUDA call fails after cudaMemcpyAsync queued a copy into the ring slot.
  // The copy is slow (150 ms); the ring holds one write, so the next
  // reservation gets the same memory. If the failed write released its slot
  // at once, the late copy would land over the next write's staged data
  // (which is read, after its sink read is let through, only once the copy
  // ended): the stored chunk would hold the failed write's values.
  const cuda::Api* api = cuda::api();
  CHECK(api != nullptr);
  if (!api) return;
  FakeCuda fake;
  auto fail = fake.fn<void(const char*, int, int)>("fake_cuda_fail_call");
  auto delay = fake.fn<void(int)>("fake_cuda_set_copy_delay_ms");
  auto copies = fake.fn<unsigned long long()>("fake_cuda_copies");
  CHECK(fail && delay && copies);
  if (!fail || !delay || !copies) return;
  Engine eng(1, 1 << 20, 16384);
  ArraySpec a = make_array({1, 4096}, {1, 4096}, false);  // uncompressed: the store holds the staged bytes
  struct Case {
    const char* fn;
    int nth;
    const char* what;
    int pieces;
  };
  const Case cases[] = {
      {"cudaMemcpyAsync", 2, "cudaMemcpyAsync", 2},  // the first half's copy is queued, the second fails
      {"cudaEventRecord", 2, "cudaEventRecord on the copy stream", 1},
      {"cudaStreamWaitEvent", 2, "cudaStreamWaitEvent on the producer stream", 1},
  };
  int k = 0;
  for (const Case& c : cases) {
    ++k;
    std::vector<float> dev(4096, 100.0f + static_cast<float>(k));  // must never reach the store
    auto sink = std::make_shared<GatedSink>();
    std::vector<Engine::Request> reqs;
    const int64_t w = 4096 / c.pieces;
    for (int p = 0; p < c.pieces; ++p)
      reqs.push_back({&a, sink, Slab{reinterpret_cast<const uint8_t*>(dev.data() + p * w), {1, w}, {4 * w, 4}, 4},
                      {{0}, iota(p * w, w)}});
    delay(150);
    const auto before = copies();
    fail(c.fn, c.nth, 0);
    CHECK(throws<std::runtime_error>([&] { eng.submit_device(reqs, nullptr); }, c.what));
    CHECK(copies() == before + 1);  // the queued copy had ended when the error reached the caller
    // The next reservation: half a row from the host (a partial chunk, merged after a read).
    sink->open = [&] { return copies() > before; };
    std::vector<float> host(2048, static_cast<float>(k));
    Slab hs{reinterpret_cast<const uint8_t*>(host.data()), {1, 2048}, {8192, 4}, 4};
    eng.submit({{&a, sink, hs, {{0}, iota(0, 2048)}}});
    eng.flush();
    delay(0);
    std::vector<uint8_t> stored;
    CHECK(sink->read(a.chunk_key({0, 0}), stored) && stored.size() == 4096 * 4);
    if (stored.size() != 4096 * 4) continue;
    const float* f = reinterpret_cast<const float*>(stored.data());
    int wrong = 0;
    for (int i = 0; i < 4096; ++i) wrong += f[i] != (i < 2048 ? static_cast<float>(k) : -1.0f);
    if (wrong) std::cerr << "  " << c.fn << " failing: " << wrong << " values of the next write overwritten\n";
    CHECK(wrong == 0);
  }
  CHECK(eng.ring_stats().used_bytes == 0);
  eng.flush();  // the failed writes left no background error
}

TEST(fault_injection_fails_the_nth_call_of_a_fake_cuda_function) {
  FakeCuda fake;
  auto fail = fake.fn<void(const char*, int, int)>("fake_cuda_fail_call");
  auto create = fake.fn<int(void**, unsigned)>("cudaEventCreateWithFlags");
  auto destroy = fake.fn<int(void*)>("cudaEventDestroy");
  CHECK(fail && create && destroy);
  if (!fail || !create || !destroy) return;
  void* e[4] = {};
  fail("cudaEventCreateWithFlags", 3, 0);
  CHECK(create(&e[0], 0) == 0 && create(&e[1], 0) == 0);
  CHECK(create(&e[2], 0) == 999);  // the third, once
  CHECK(create(&e[3], 0) == 0);
  fail("cudaEventCreateWithFlags", 1, 700);
  fail("cudaEventCreateWithFlags", 0, 0);  // disarmed
  void* more = nullptr;
  CHECK(create(&more, 0) == 0);
  for (void* x : {e[0], e[1], e[3], more}) destroy(x);
}


// A memory sink whose writes wait while it is closed (encoder threads parked
// in the middle of a chunk), counting the waiting writers.
struct ParkingSink : MemorySink {
  std::mutex mu;
  std::condition_variable cv;
  bool closed = false;
  int parked = 0;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override {
    {
      std::unique_lock<std::mutex> lk(mu);
      ++parked;
      cv.wait(lk, [&] { return !closed; });
      --parked;
    }
    MemorySink::write(key, data, nbytes);
  }
  void set_closed(bool c) {
    {
      std::lock_guard<std::mutex> lk(mu);
      closed = c;
    }
    cv.notify_all();
  }
  int parked_writers() {
    std::lock_guard<std::mutex> lk(mu);
    return parked;
  }
};

// What each forked child does with the engine it inherited: abandon it (as
// the Python layer's at-fork handler does) or not (shutdown() and the
// destructor notice the fork), destroy it, then (with `own_writes`) write and read back a store of
// its own through a new engine. Returns the child's exit status.
int forked_child(std::unique_ptr<Engine>& inherited, const ArraySpec& a, const std::shared_ptr<Sink>& sink, int k,
                 bool own_writes) {
  bool ok = true;
  if (k % 2 == 0) {
    inherited->abandon_after_fork();
    ok = ok && inherited->inherited() && inherited->pending_chunks() == 0 && inherited->threads() == 0;
  }
  float v = 0.0f;
  Slab one{reinterpret_cast<const uint8_t*>(&v), {1, 1}, {4, 4}, 4};
  ok = ok && throws<std::runtime_error>([&] { inherited->submit({{&a, sink, one, {{0}, {0}}}}); }, "fork");
  inherited->flush();  // nothing of the parent's to wait for here
  if (k % 4 == 1) inherited->shutdown();  // as close() does: notices the fork by itself
  inherited.reset();
  if (!own_writes) return ok ? 0 : 3;
  Engine mine(2, 4 << 20, 1 << 20);
  auto store = std::make_shared<MemorySink>();
  ArraySpec b = make_array({2, 1024}, {1, 1024}, true);
  std::vector<float> want(2048);
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = static_cast<float>(k * 10000 + static_cast<int>(i));
  Slab row{reinterpret_cast<const uint8_t*>(want.data()), {1, 1024}, {4096, 4}, 4};
  mine.submit({{&b, store, row, {{0}, iota(0, 1024)}}});  // non-blocking
  mine.flush();
  Slab row1{reinterpret_cast<const uint8_t*>(want.data() + 1024), {1, 1024}, {4096, 4}, 4};
  mine.write(b, store, row1, {{1}, iota(0, 1024)});  // blocking
  ok = ok && read_back_2d(*store, b) == want && mine.failed_chunks() == 0;
  return ok ? 0 : 4;
}

TEST(forked_children_leak_the_inherited_engine_and_write_with_their_own) {
  // A feeder thread keeps an engine saturated with host writes and device
  // writes (fake runtime): at every fork chunks are queued in the pool and
  // behind others of the same key, copy fences are pending, and the ring is
  // full. Running or destroying what the parent had queued would release ring
  // slots and buffer leases under locks a vanished thread may hold, destroy
  // CUDA events and join the copy stream's thread in the child. An alarm ends
  // a hung child; the first one ends the test.
  //  1. Parked forks: the encoder threads wait inside sink writes (jobs in
  //     progress), the feeder waits for ring space, and a runtime thread
  //     holds the event table's lock across the fork. Every child writes a
  //     store of its own with a new engine.
  //  2. Free-running forks at arbitrary moments, while locks are taken and
  //     released; with a sanitizer runtime the child only disposes of the
  //     inherited engine (see kSanitizerRuntime).
  const cuda::Api* api = cuda::api();
  FakeCuda fake;
  auto hold_events = fake.fn<void(int)>("fake_cuda_hold_event_table");
  CHECK(!api || hold_events);
  // "Device" memory is read by copies until the engine has flushed: it outlives the engine.
  std::vector<float> host(8 * 16384), dev(8 * 16384, 2.5f);  // `dev` stays as it is while copies read it
  auto engine = std::make_unique<Engine>(2, 8 << 20, 1 << 20);
  auto sink = std::make_shared<ParkingSink>();
  ArraySpec a = make_array({8, 16384}, {1, 16384}, true);
  std::atomic<bool> stop{false};
  std::atomic<long> submitted{0};
  std::thread feeder([&] {
    for (int i = 0; !stop.load(); ++i) {
      for (std::size_t j = 0; j < host.size(); j += 97) host[j] = static_cast<float>(i + static_cast<int>(j % 13));
      Slab hs{reinterpret_cast<const uint8_t*>(host.data()), {8, 16384}, {65536, 4}, 4};
      Slab ds{reinterpret_cast<const uint8_t*>(dev.data()), {8, 16384}, {65536, 4}, 4};
      if (api && i % 3 == 2)
        engine->submit_device({{&a, sink, ds, {iota(0, 8), iota(0, 16384)}}}, nullptr);
      else
        engine->submit({{&a, sink, hs, {iota(0, 8), iota(0, 16384)}}});
      submitted.fetch_add(1);
    }
  });
  int forks = 0, busy = 0, hung = 0, failed = 0;
  std::size_t pending_at_forks = 0;
  auto fork_one = [&](int k, bool own_writes) {
    const std::size_t pending = engine->pending_chunks();
    pending_at_forks += pending;
    if (pending > 0) ++busy;
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(20);
      _exit(forked_child(engine, a, sink, k, own_writes));
    }
    ++forks;
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status)) {
      ++hung;
      std::cerr << "  child " << k << " ended by signal " << WTERMSIG(status) << "\n";
    } else if (WEXITSTATUS(status) != 0) {
      ++failed;
      std::cerr << "  child " << k << " exited " << WEXITSTATUS(status) << "\n";
    }
  };
  auto wait_for = [](const std::function<bool()>& cond) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!cond() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::microseconds(200));
    return cond();
  };
  // 1. Parked.
  const int kStates = 20, kForksPerState = 5;
  const bool own_writes_parked = !kThreadSanitizer;
  int parked_forks = 0;
  for (int st = 0; st < kStates && hung == 0; ++st) {
    // Close the gate just after a submit (its chunks are queued), then wait
    // until nothing moves: writers parked, the rest idle or queued behind
    // them, the feeder waiting for ring space.
    const long goal = submitted.load() + 1;
    wait_for([&] { return submitted.load() >= goal; });
    sink->set_closed(true);
    bool parked = wait_for([&] { return sink->parked_writers() >= 1; });
    auto progress = [&] { return submitted.load() * 1000003 + static_cast<long>(engine->stats().chunks_written); };
    long seen = progress();
    for (int still = 0; parked && still < 20;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      const long now = progress();
      still = now == seen ? still + 1 : 0;
      seen = now;
    }
    if (!parked)
      std::cerr << "  state " << st << ": " << sink->parked_writers() << " writers parked, " << engine->pending_chunks()
                << " chunks pending, ring " << engine->ring_stats().used_bytes << " bytes used, "
                << engine->failed_chunks() << " failed\n";
    CHECK(parked);
    if (api && hold_events) hold_events(1);
    for (int f = 0; f < kForksPerState && hung == 0; ++f, ++parked_forks) fork_one(st * kForksPerState + f, own_writes_parked);
    if (api && hold_events) hold_events(0);
    sink->set_closed(false);
  }
  const int parked_busy = busy;
  const std::size_t parked_pending = pending_at_forks;
  // 2. Free-running.
  const int kFree = 200;
  for (int k = 0; k < kFree && hung == 0; ++k) {
    const long goal = submitted.load() + 1;
    wait_for([&] { return submitted.load() >= goal && engine->pending_chunks() > 0; });
    fork_one(1000 + k, !kSanitizerRuntime);
  }
  stop = true;
  feeder.join();
  engine->flush();
  const int free_forks = forks - parked_forks;
  std::cout << "  fork: " << parked_forks << " children forked with the engine parked (" << parked_busy
            << " with chunks pending, " << (parked_forks ? parked_pending / static_cast<std::size_t>(parked_forks) : 0)
            << " on average; new engine in the child: " << (own_writes_parked ? "yes" : "no") << "), " << free_forks
            << " at arbitrary moments (" << busy - parked_busy << " with chunks pending, "
            << (free_forks ? (pending_at_forks - parked_pending) / static_cast<std::size_t>(free_forks) : 0)
            << " on average; new engine in the child: " << (kSanitizerRuntime ? "no, sanitizer runtime" : "yes")
            << "); " << hung << " hung or crashed, " << failed << " failed; the parent submitted " << submitted.load()
            << " writes and stored " << engine->stats().chunks_written << " chunks" << std::endl;
  CHECK(forks == kStates * kForksPerState + kFree);
  CHECK(hung == 0);
  CHECK(failed == 0);
  CHECK(parked_busy == parked_forks);
  CHECK(busy - parked_busy >= kFree / 2);
  CHECK(parked_pending >= 2 * static_cast<std::size_t>(parked_forks));  // more than the parked chunks, on average
}

}  // namespace

TEST(upload_sink_orders_keys_coalesces_and_bounds_memory) {
  UploadSink sink(/*capacity_bytes=*/100, "test bucket");
  std::vector<uint8_t> a(40, 1), b(40, 2), c(40, 3);
  sink.write("k1", a.data(), a.size());
  sink.write("k2", b.data(), b.size());
  // A newer version of a queued key replaces it (never uploaded twice, newest wins).
  sink.write("k1", c.data(), c.size());
  CHECK(sink.stats().objects_coalesced == 1 && sink.stats().queued_objects == 2);
  UploadSink::Item i1, i2, none;
  CHECK(sink.next(0, i1) && i1.key == "k1" && (*i1.data)[0] == 3);
  // While k1 is uploading, a newer k1 waits behind it; k2 can go.
  std::vector<uint8_t> d(10, 4);
  sink.write("k1", d.data(), d.size());
  CHECK(sink.next(0, i2) && i2.key == "k2");
  CHECK(!sink.next(0.01, none));  // only k1 left, and k1 is busy
  // read() serves the newest queued/uploading version without asking the store.
  std::vector<uint8_t> got;
  CHECK(sink.read("k1", got) && got == d);
  // Backpressure: 40 + 40 + 10 queued/uploading; 40 more must wait for space.
  std::atomic<bool> written{false};
  std::thread writer([&] {
    std::vector<uint8_t> e(40, 5);
    sink.write("k3", e.data(), e.size());
    written = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(!written.load());
  sink.done(i2.id, "");  // k2 stored: frees 40 bytes
  writer.join();
  CHECK(written.load() && sink.stats().backpressure_wait_seconds > 0.01);
  sink.done(i1.id, "HTTP 503 after 3 attempts");  // old k1 failed; the newer k1 is still queued
  UploadSink::Item i3, i4;
  CHECK(sink.next(0, i3) && i3.key == "k1" && i3.data->size() == 10);
  CHECK(sink.next(0, i4) && i4.key == "k3");
  CHECK(!sink.wait_idle(0.01));
  sink.done(i3.id, "");
  sink.done(i4.id, "");
  CHECK(sink.wait_idle(1));
  auto errors = sink.take_errors();
  CHECK(errors.size() == 1 && errors[0].first == "k1" && errors[0].second.find("503") != std::string::npos);
  CHECK(sink.take_errors().empty());  // reported once
  // Not queued any more: read() asks the store.
  CHECK(throws<std::runtime_error>([&] { sink.read("k1", got); }, "no reader"));
  sink.set_fetch([](const std::string& key, std::vector<uint8_t>& out) {
    out.assign(key.begin(), key.end());
    return key != "missing";
  });
  CHECK(sink.read("k1", got) && std::string(got.begin(), got.end()) == "k1");
  CHECK(!sink.read("missing", got));
  auto st = sink.stats();
  CHECK(st.objects_uploaded == 3 && st.objects_failed == 1 && st.queued_bytes == 0);
  sink.close();
  CHECK(!sink.next(0, none));
  CHECK(throws<std::runtime_error>([&] { sink.write("k9", a.data(), a.size()); }, "closed"));
}

TEST(upload_sink_wake_ends_a_consumers_wait_once) {
  // A consumer stopping its feeder thread wakes it instead of waiting for its
  // poll timeout. The wake is kept until a next() takes it: one that comes
  // while the consumer is busy ends its following wait. (If wake() did
  // nothing, the first next() below would wait an hour: the test's own
  // timeout fails it.)
  UploadSink sink(1 << 20, "test");
  UploadSink::Item item;
  sink.wake();
  CHECK(!sink.next(3600, item));
  std::vector<uint8_t> v(16, 1);
  sink.write("a/c/0", v.data(), v.size());
  CHECK(sink.next(3600, item) && item.key == "a/c/0");  // the wake was taken: work is handed out again
  sink.done(item.id, "");
  std::thread waiter([&] {
    UploadSink::Item it;
    CHECK(!sink.next(3600, it));
  });
  sink.wake();  // before or during the waiter's next(): either way it returns
  waiter.join();
  CHECK(sink.stats().objects_uploaded == 1);
}

TEST(engine_stores_through_an_upload_sink_with_concurrent_uploaders) {
  auto sink = std::make_shared<UploadSink>(1 << 16, "test");
  std::mutex mu;
  std::unordered_map<std::string, std::vector<uint8_t>> stored;
  sink->set_fetch([&](const std::string& key, std::vector<uint8_t>& out) {
    std::lock_guard<std::mutex> lk(mu);
    auto it = stored.find(key);
    if (it == stored.end()) return false;
    out = it->second;
    return true;
  });
  std::atomic<bool> stop{false};
  std::vector<std::thread> uploaders;
  for (int t = 0; t < 3; ++t)
    uploaders.emplace_back([&] {
      UploadSink::Item item;
      while (!stop.load() || sink->stats().queued_objects > 0) {
        if (!sink->next(0.01, item)) continue;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        {
          std::lock_guard<std::mutex> lk(mu);
          stored[item.key] = *item.data;
        }
        sink->done(item.id, "");
      }
    });
  Engine engine(2, 1 << 22, 1 << 20);
  ArraySpec spec = make_array({4, 64}, {1, 32}, false);
  // Many partial writes of the same chunks, in order: the last one must win everywhere.
  for (int round = 0; round < 20; ++round) {
    std::vector<float> data(4 * 16, static_cast<float>(round));
    Slab slab{reinterpret_cast<const uint8_t*>(data.data()), {4, 16}, {16 * 4, 4}, 4};
    engine.submit({{&spec, sink, slab, {iota(0, 4), iota((round % 4) * 16, 16)}}});
  }
  engine.flush();
  CHECK(sink->wait_idle(5));
  stop = true;
  for (auto& t : uploaders) t.join();
  for (int row = 0; row < 4; ++row)
    for (int c = 0; c < 2; ++c) {
      auto& bytes = stored[spec.chunk_key({row, c})];
      CHECK(bytes.size() == 32 * 4);
      const float* f = reinterpret_cast<const float*>(bytes.data());
      for (int j = 0; j < 32; ++j) {
        int col = c * 32 + j;
        int last = 16 + (col / 16);  // rounds 16..19 wrote columns block by block last
        CHECK(f[j] == static_cast<float>(last));
      }
    }
}

TEST(collect_sink_bounds_what_it_holds_and_wakes_writers_as_the_consumer_pops) {
  CollectSink sink(/*capacity_bytes=*/100);
  CHECK(throws<std::invalid_argument>([] { CollectSink zero(0); }, "capacity"));
  std::vector<uint8_t> a(40, 1), b(40, 2), c(40, 3);
  sink.write("a", a.data(), a.size());
  sink.write("b", b.data(), b.size());
  // 80 held: 40 more do not fit and wait (no busy loop: the writer sleeps on a condition).
  std::atomic<bool> written{false};
  std::thread writer([&] {
    sink.write("c", c.data(), c.size());
    written = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(!written.load() && sink.stats().writer_waits == 1 && sink.stats().held_bytes == 80);
  CollectSink::Item item;
  CHECK(sink.pop(item) && item.key == "a" && item.data == a);  // oldest first, moved out
  writer.join();
  CHECK(written.load() && sink.stats().writer_wait_seconds > 0.01);
  CHECK(sink.pop(item) && item.key == "b" && sink.pop(item) && item.key == "c" && item.data == c);
  CHECK(!sink.pop(item));
  auto st = sink.stats();
  CHECK(st.held_bytes == 0 && st.peak_held_bytes == 80 && st.chunks_collected == 3 && st.chunks_popped == 3);

  // A chunk larger than the bound is taken alone, when nothing else is held.
  CollectSink small(10);
  std::vector<uint8_t> big(50, 9), tiny(5, 8);
  small.write("big", big.data(), big.size());
  std::thread after([&] { small.write("tiny", tiny.data(), tiny.size()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(small.stats().held_chunks == 1);
  CHECK(small.pop(item) && item.key == "big");
  after.join();
  CHECK(small.pop(item) && item.key == "tiny" && small.stats().peak_held_bytes == 50);

  // Closed (the consumer is gone): a waiting writer wakes and fails, held chunks are dropped.
  std::vector<uint8_t> d(90, 4);
  sink.write("d", d.data(), d.size());
  std::atomic<int> failed{0};
  std::thread stuck([&] {
    if (throws<std::runtime_error>([&] { sink.write("e", a.data(), a.size()); }, "closed")) ++failed;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const std::size_t dropped = sink.close();
  stuck.join();
  CHECK(dropped == 1);  // "d": written, never popped; the caller reports it
  CHECK(failed.load() == 1 && !sink.pop(item) && sink.stats().held_bytes == 0);
  CHECK(sink.close() == 0);  // idempotent
  CHECK(throws<std::runtime_error>([&] { sink.write("f", a.data(), a.size()); }, "closed"));
}

TEST(collect_sink_under_many_writers_never_holds_more_than_its_bound) {
  // 4 writers, chunks of 1..60 bytes into 100 bytes: every byte arrives, in order per writer, and the
  // bound holds at every moment (checked by the consumer too, not only by the sink's own peak).
  CollectSink sink(100);
  constexpr int kWriters = 4, kEach = 300;
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w)
    writers.emplace_back([&, w] {
      for (int i = 0; i < kEach; ++i) {
        std::vector<uint8_t> v(static_cast<std::size_t>(1 + (i * 7 + w * 13) % 60), static_cast<uint8_t>(i % 251));
        sink.write(std::to_string(w) + "/" + std::to_string(i), v.data(), v.size());
      }
    });
  std::vector<int> next(kWriters, 0);
  int got = 0, bad = 0;
  std::size_t most = 0;
  CollectSink::Item item;
  while (got < kWriters * kEach) {
    most = std::max(most, sink.stats().held_bytes);
    if (!sink.pop(item)) {
      std::this_thread::yield();
      continue;
    }
    const int w = std::stoi(item.key.substr(0, item.key.find('/')));
    const int i = std::stoi(item.key.substr(item.key.find('/') + 1));
    if (i != next[static_cast<std::size_t>(w)]++) ++bad;
    if (item.data.size() != static_cast<std::size_t>(1 + (i * 7 + w * 13) % 60)) ++bad;
    for (auto byte : item.data) bad += byte != static_cast<uint8_t>(i % 251);
    ++got;
  }
  for (auto& t : writers) t.join();
  CHECK(bad == 0);
  CHECK(most <= 100 && sink.stats().peak_held_bytes <= 100 && sink.stats().writer_waits > 0);
}

TEST(engine_wait_progress_wakes_a_collect_sink_consumer_without_polling) {
  // Encoders fill a collector far smaller than a submit's output; the consumer sleeps in
  // wait_progress between pops and wakes for each finished chunk and at idle: every wait ends
  // by a wake-up, none by its (long) timeout, and nothing deadlocks.
  Engine eng(2, 8 << 20, 4 << 20);
  CHECK(eng.wait_progress(eng.finished_chunks(), 5.0) == 0);  // idle: returns at once
  auto sink = std::make_shared<CollectSink>(3000);  // about two encoded chunks
  ArraySpec a = make_array({64, 256}, {4, 256}, true);  // 16 chunks of 4 KiB per submit
  std::vector<float> data(64 * 256);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>((i * 2654435761u) % 1000) * 0.37f;
  Slab s{reinterpret_cast<const uint8_t*>(data.data()), {64, 256}, {256 * 4, 4}, 4};
  std::size_t popped = 0, waits = 0, slow_waits = 0;
  CollectSink::Item item;
  MemorySink stored;
  for (int round = 0; round < 5; ++round) {
    eng.submit({{&a, sink, s, {iota(0, 64), iota(0, 256)}}});
    if (round == 0) {
      // Nobody pops yet: the encoders fill the collector and wait for room, so nothing finishes.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const std::uint64_t seen = eng.finished_chunks();
      const auto t0 = std::chrono::steady_clock::now();
      CHECK(eng.wait_progress(seen, 0.05) == seen && eng.pending_chunks() > 0);
      CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(45));
      CHECK(sink->stats().writer_waits > 0);
    }
    for (;;) {
      const std::uint64_t seen = eng.finished_chunks();
      const bool idle = eng.pending_chunks() == 0;
      while (sink->pop(item)) {
        stored.write(item.key, item.data.data(), item.data.size());
        ++popped;
      }
      if (idle) break;
      const auto t0 = std::chrono::steady_clock::now();
      eng.wait_progress(seen, 30.0);
      ++waits;
      if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(10)) ++slow_waits;
    }
  }
  eng.flush();
  CHECK(popped == 5 * 16 && slow_waits == 0 && waits > 0);
  CHECK(sink->stats().peak_held_bytes <= 3000);
  auto back = read_back_2d(stored, a);
  CHECK(back == data);
}

std::vector<std::string> take_fsynced() {
  std::lock_guard<std::mutex> lk(fsync_log::mu);
  std::vector<std::string> out;
  out.swap(fsync_log::paths);
  return out;
}

std::size_t count_of(const std::vector<std::string>& v, const std::string& s) {
  return static_cast<std::size_t>(std::count(v.begin(), v.end(), s));
}

TEST(directory_sink_fsync_makes_renames_and_new_directories_durable) {
  char* real = realpath(make_tempdir().c_str(), nullptr);
  const std::string dir = real;
  std::free(real);
  std::vector<uint8_t> payload(5000, 3), back;
  take_fsynced();
  fsync_log::recording = true;
  {
    DirectorySink plain(dir + "/plain", false);
    plain.write("a/c/0/1", payload.data(), payload.size());
  }
  CHECK(take_fsynced().empty());  // fsync=false: no fsync at all
  DirectorySink sink(dir + "/store", true);
  auto made = take_fsynced();
  CHECK(count_of(made, dir + "/store") == 1 && count_of(made, dir) == 1);  // the new root and its entry
  sink.write("a/c/0/1", payload.data(), payload.size());
  auto first = take_fsynced();
  // Each new directory and the parent holding its entry, then the chunk file
  // (before the rename) and its directory (after it, which also covers it as new).
  CHECK(count_of(first, dir + "/store") == 1);
  CHECK(count_of(first, dir + "/store/a") == 1);
  CHECK(count_of(first, dir + "/store/a/c") == 1);
  CHECK(count_of(first, dir + "/store/a/c/0") == 1 && first.back() == dir + "/store/a/c/0");
  std::size_t files = 0;
  for (auto& p : first) files += p.find("/store/a/c/0/.e2fastio-tmp-") != std::string::npos;
  CHECK(files == 1 && first.size() == 5);
  // Known directories are not synced again: one file and one directory per chunk.
  sink.write("a/c/0/2", payload.data(), payload.size());
  auto second = take_fsynced();
  CHECK(second.size() == 2 && count_of(second, dir + "/store/a/c/0") == 1 && second.back() == dir + "/store/a/c/0");
  // A directory made by someone else (here, an earlier sink without fsync) is synced on first use.
  DirectorySink again(dir + "/plain", true);
  again.write("a/c/0/9", payload.data(), payload.size());
  auto third = take_fsynced();
  CHECK(count_of(third, dir + "/plain") == 2 && count_of(third, dir + "/plain/a") == 1);
  CHECK(count_of(third, dir + "/plain/a/c") == 1 && count_of(third, dir + "/plain/a/c/0") == 1);
  fsync_log::recording = false;
  CHECK(sink.read("a/c/0/2", back) && back == payload);
  CHECK(again.read("a/c/0/9", back) && back == payload);
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(direct_io_alignment_follows_page_size_and_device) {
  using detail::direct_alignment;
  using detail::direct_span;
  // 4 KiB pages: a 512-byte or 4 KiB device aligns to the page.
  CHECK(direct_alignment(4096, true, 512, 512).offset == 4096);
  CHECK(direct_alignment(4096, true, 512, 512).memory == 512);
  CHECK(direct_alignment(4096, true, 4096, 4096).offset == 4096);
  // 64 KiB pages (aarch64): the page, never the device's block alone.
  CHECK(direct_alignment(65536, true, 512, 512).offset == 65536);
  CHECK(direct_alignment(65536, true, 4096, 4096).offset == 65536);
  CHECK(direct_alignment(65536, true, 4096, 4).memory == 4);
  // A device block larger than the page wins.
  CHECK(direct_alignment(4096, true, 16384, 16384).offset == 16384);
  // The file system says it takes no direct I/O (tmpfs): none.
  CHECK(direct_alignment(4096, true, 0, 0).offset == 0);
  // Unknown (no STATX_DIOALIGN): the page and 4 KiB blocks and buffers.
  CHECK(direct_alignment(65536, false, 0, 0).offset == 65536 && direct_alignment(65536, false, 0, 0).memory == 4096);
  CHECK(direct_alignment(4096, false, 0, 0).offset == 4096);
  CHECK(direct_alignment(0, false, 0, 0).offset == 4096);  // sysconf failed
  // Region splits: a field of 300000 bytes at offset 100.
  DirectSpan s4 = direct_span(100, 300000, 4096), s64 = direct_span(100, 300000, 65536);
  CHECK(s4.begin == 4096 && s4.end == 299008);
  CHECK(s64.begin == 65536 && s64.end == 262144);  // edges [100, 65536) and [262144, 300100) buffered
  CHECK(direct_span(100, 100000, 65536).empty());   // no whole 64 KiB page inside
  CHECK(!direct_span(100, 100000, 4096).empty());
  CHECK(direct_span(0, 200000, 65536).begin == 0 && direct_span(0, 200000, 65536).end == 196608);
  CHECK(direct_span(5, 1 << 20, 0).empty());  // no direct I/O
  // The real probe: a multiple of this kernel's page size (or none).
  auto dir = make_tempdir();
  int fd = ::open((dir + "/f").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  CHECK(fd >= 0);
  DirectAlignment a = detail::probe_direct_alignment(fd);
  ::close(fd);
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  CHECK(a.offset == 0 || (a.offset % page == 0 && a.memory > 0));
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(write_in_place_with_page_sized_alignment_writes_exact_bytes) {
  // As on a 64 KiB-page kernel: direct interior on 64 KiB boundaries, edges buffered.
  auto dir = make_tempdir();
  const std::string path = dir + "/f.bin";
  const std::size_t size = 400000;
  {
    std::vector<uint8_t> junk(size, 0xCD);
    FILE* f = std::fopen(path.c_str(), "wb");
    CHECK(f && std::fwrite(junk.data(), 1, size, f) == size);
    std::fclose(f);
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  int dfd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);  // -1 where refused: all buffered
  std::vector<uint8_t> src(300000);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 13 + 1);
  auto* bounce = static_cast<uint8_t*>(std::aligned_alloc(65536, 327680));
  detail::write_in_place(fd, dfd, 65536, src.data(), src.size(), 100, bounce, path);
  std::free(bounce);
  if (dfd >= 0) ::close(dfd);
  std::vector<uint8_t> back(size);
  CHECK(::pread(fd, back.data(), size, 0) == static_cast<ssize_t>(size));
  ::close(fd);
  CHECK(back[99] == 0xCD && back[100 + src.size()] == 0xCD);
  CHECK(std::memcmp(back.data() + 100, src.data(), src.size()) == 0);
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

TEST(file_region_sink_writes_fields_in_place_and_merges_partial_ones) {
  auto dir = make_tempdir();
  const std::string path = dir + "/region.bin";
  // A 3 x 5 x 700 float32 array (fields of 2800 bytes: unaligned, neighbours share
  // 4 KiB blocks) at an unaligned offset inside a larger file.
  const std::size_t offset = 4096 * 3 + 100, nbytes = 3 * 5 * 700 * 4, size = offset + nbytes + 5000;
  {
    std::vector<uint8_t> junk(size, 0xAB);
    FILE* f = std::fopen(path.c_str(), "wb");
    CHECK(f && std::fwrite(junk.data(), 1, size, f) == size);
    std::fclose(f);
  }
  auto sink = std::make_shared<FileRegionSink>(path, offset, "v", std::vector<int64_t>{3, 5, 700},
                                               std::vector<int64_t>{1, 1, 700}, 4, true);
  ArraySpec spec = make_array({3, 5, 700}, {1, 1, 700}, false);
  spec.path = "v";
  Engine engine(2, 16 << 20);
  std::vector<float> all(3 * 5 * 700);
  std::iota(all.begin(), all.end(), 0.0f);
  Slab s{reinterpret_cast<const uint8_t*>(all.data()), {3, 5, 700}, {5 * 700 * 4, 700 * 4, 4}, 4};
  engine.write(spec, sink, s, {iota(0, 3), iota(0, 5), iota(0, 700)});
  // A partial write of one field: the rest of it is read back (pread) and kept.
  std::vector<float> part(10, -1.0f);
  Slab p{reinterpret_cast<const uint8_t*>(part.data()), {1, 1, 10}, {40, 40, 4}, 4};
  engine.write(spec, sink, p, {{2}, {4}, iota(100, 10)});
  for (int i = 0; i < 10; ++i) all[static_cast<std::size_t>((2 * 5 + 4) * 700 + 100 + i)] = -1.0f;
  std::vector<uint8_t> back(size);
  FILE* f = std::fopen(path.c_str(), "rb");
  CHECK(f && std::fread(back.data(), 1, size, f) == size);
  std::fclose(f);
  CHECK(std::memcmp(back.data() + offset, all.data(), nbytes) == 0);
  CHECK(back[offset - 1] == 0xAB && back[offset + nbytes] == 0xAB);  // nothing outside the region
  std::vector<uint8_t> chunk;
  CHECK(sink->read("v/c/0/1/0", chunk) && chunk.size() == 2800);
  CHECK(throws<std::invalid_argument>([&] { sink->read("w/c/0/0/0", chunk); }, "not under"));
  CHECK(throws<std::invalid_argument>([&] { sink->read("v/c/3/0/0", chunk); }, "out of range"));
  CHECK(throws<std::invalid_argument>(
      [&] { FileRegionSink(path, 0, "v", {3, 5, 700}, {1, 2, 700}, 4, true); }, "1 or the full extent"));
  CHECK(throws<IOError>([&] { FileRegionSink(dir + "/missing", 0, "v", {1}, {1}, 4, true); }, "missing"));
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}

// ---------------------------------------------------------------- planning (pure)

TEST(plan_dimension_groups_positions_into_runs_per_chunk) {
  // Positions 0..5 land on 3,4,5,6 then 9 then 1: chunks of 4.
  DimPlan p = plan_dimension({3, 4, 5, 6, 9, 1}, 4);
  CHECK((p.chunk_ids == std::vector<int64_t>{0, 1, 2}));
  // chunk 0: offset 3 from position 0, offset 1 from position 5 (two runs)
  CHECK(p.runs[0].size() == 2 && p.runs[0][0].src == 0 && p.runs[0][0].dst == 3 && p.runs[0][0].len == 1);
  CHECK(p.runs[0][1].src == 5 && p.runs[0][1].dst == 1 && p.runs[0][1].len == 1);
  // chunk 1: positions 1..3 land on offsets 0..2 (one run of 3)
  CHECK(p.runs[1].size() == 1 && p.runs[1][0].src == 1 && p.runs[1][0].dst == 0 && p.runs[1][0].len == 3);
  CHECK((p.covered == std::vector<int64_t>{2, 3, 1}));
}

TEST(plan_jobs_marks_full_partial_edge_and_direct_chunks) {
  ArraySpec a;
  a.path = "v";
  a.shape = {2, 10};
  a.chunks = {1, 4};
  a.codec.itemsize = 4;
  a.fill_value.assign(4, 0);
  std::vector<float> data(2 * 10);
  auto row = [](int64_t n) {
    std::vector<int64_t> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), 0);
    return v;
  };
  // The whole array: chunks (0|1, 0|1|2), the last column chunk is an edge (10 = 4 + 4 + 2).
  std::vector<WriteRequest> reqs{WriteRequest{&a, nullptr, Slab{reinterpret_cast<const uint8_t*>(data.data()), {2, 10}, {40, 4}, 4},
                                              {{0, 1}, row(10)}}};
  std::vector<std::vector<DimPlan>> plans;
  std::vector<ChunkJob> jobs;
  plan_jobs(reqs, plans, jobs);
  CHECK(jobs.size() == 6);
  for (const auto& j : jobs) {
    CHECK(j.full);
    CHECK(j.edge == (j.coords[1] == 2));
    // Each inner chunk is a C-contiguous block of the slab: encoded from it; edges are gathered.
    CHECK(j.direct == !j.edge);
    if (j.direct) CHECK(j.src_offset == j.coords[0] * 40 + j.coords[1] * 16);
  }
  CHECK((jobs[0].coords == std::vector<int64_t>{0, 0}) && (jobs[5].coords == std::vector<int64_t>{1, 2}));
  // Chunks of 2 x 4 in a slab with 10-element rows: a chunk spans two rows, not one block: gathered.
  ArraySpec tall = a;
  tall.shape = {2, 8};
  tall.chunks = {2, 4};
  std::vector<WriteRequest> rows{WriteRequest{&tall, nullptr, Slab{reinterpret_cast<const uint8_t*>(data.data()), {2, 8}, {40, 4}, 4},
                                              {{0, 1}, row(8)}}};
  jobs.clear();
  plan_jobs(rows, plans, jobs);
  CHECK(jobs.size() == 2 && jobs[0].full && !jobs[0].direct && !jobs[1].direct);
  // A strided view whose chunks are blocks (every other row of the data): direct, at each row's offset.
  std::vector<WriteRequest> every_other{WriteRequest{&a, nullptr, Slab{reinterpret_cast<const uint8_t*>(data.data()), {1, 8}, {80, 4}, 4},
                                                     {{1}, row(8)}}};
  jobs.clear();
  plan_jobs(every_other, plans, jobs);
  CHECK(jobs.size() == 2 && jobs[0].direct && jobs[1].direct && jobs[1].src_offset == 16);
  // Reversed positions are never a block.
  std::vector<WriteRequest> reversed{WriteRequest{&a, nullptr, Slab{reinterpret_cast<const uint8_t*>(data.data()), {1, 4}, {16, 4}, 4},
                                                  {{0}, {3, 2, 1, 0}}}};
  jobs.clear();
  plan_jobs(reversed, plans, jobs);
  CHECK(jobs.size() == 1 && jobs[0].full && !jobs[0].direct);
  // One chunk exactly, C-contiguous: encoded straight from the data.
  std::vector<WriteRequest> one{WriteRequest{&a, nullptr, Slab{reinterpret_cast<const uint8_t*>(data.data()), {1, 4}, {16, 4}, 4},
                                             {{1}, {4, 5, 6, 7}}}};
  jobs.clear();
  plan_jobs(one, plans, jobs);
  CHECK(jobs.size() == 1 && jobs[0].full && !jobs[0].edge && jobs[0].direct);
  // Part of a chunk: not full (merged with what is stored).
  std::vector<WriteRequest> part{WriteRequest{&a, nullptr, Slab{reinterpret_cast<const uint8_t*>(data.data()), {1, 2}, {8, 4}, 4},
                                              {{0}, {5, 6}}}};
  jobs.clear();
  plan_jobs(part, plans, jobs);
  CHECK(jobs.size() == 1 && !jobs[0].full && !jobs[0].direct);
  // Empty data plans nothing; a bad request is refused naming the problem.
  std::vector<WriteRequest> none{WriteRequest{&a, nullptr, Slab{nullptr, {0, 4}, {16, 4}, 4}, {{}, {0, 1, 2, 3}}}};
  jobs.clear();
  plan_jobs(none, plans, jobs);
  CHECK(jobs.empty());
  auto sink = std::make_shared<MemorySink>();
  WriteRequest bad{&a, sink, Slab{reinterpret_cast<const uint8_t*>(data.data()), {1, 2}, {8, 4}, 4}, {{0}, {9, 10}}};
  CHECK(throws<std::invalid_argument>([&] { validate_request(bad); }, "out of range"));
}

TEST(plan_blosc_threads_share_one_budget) {
  ArraySpec big, small;
  big.chunks = {1 << 22};
  big.codec.itemsize = 4;
  small.chunks = {1024};
  small.codec.itemsize = 4;
  std::vector<WriteRequest> b{WriteRequest{&big, nullptr, Slab{}, {}}};
  std::vector<WriteRequest> s{WriteRequest{&small, nullptr, Slab{}, {}}};
  CHECK(blosc_threads_for(s, 8, 8) == 1);   // small chunks: one thread each
  CHECK(blosc_threads_for(b, 2, 8) == 8);   // two large chunks on 8 threads: up to 8 each
  CHECK(blosc_threads_for(b, 16, 8) == 1);  // more chunks than threads
}

// ------------------------------------------------------------------ sharding

TEST(crc32c_matches_the_standard_check_value_on_both_paths) {
  const std::string check = "123456789";
  const auto* p = reinterpret_cast<const std::uint8_t*>(check.data());
  CHECK(crc32c(p, check.size()) == 0xE3069283u);  // the CRC-32C check value
  CHECK(detail::crc32c_portable(p, check.size(), 0) == 0xE3069283u);
  CHECK(detail::crc32c_hardware(p, check.size(), 0) == 0xE3069283u);
  CHECK(crc32c(nullptr, 0) == 0);
  std::vector<std::uint8_t> buf(4099);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::uint8_t>((i * 2654435761u) >> 13);
  for (std::size_t off : {0, 1, 3, 7}) {
    for (std::size_t n : {0, 1, 7, 8, 9, 63, 64, 1000, 4090}) {
      const std::uint32_t a = detail::crc32c_portable(buf.data() + off, n, 0);
      CHECK(detail::crc32c_hardware(buf.data() + off, n, 0) == a);
      // Continuing from a partial CRC equals one pass.
      const std::size_t h = n / 3;
      CHECK(crc32c(buf.data() + off + h, n - h, crc32c(buf.data() + off, h)) == a);
    }
  }
}

TEST(shard_format_roundtrips_index_at_either_end_and_refuses_damage) {
  std::vector<std::uint8_t> a{1, 2, 3}, c{9, 9, 9, 9, 9};
  std::vector<shard_format::Piece> pieces{{a.data(), a.size(), true}, {}, {c.data(), c.size(), true}, {}};
  for (bool start : {false, true}) {
    auto obj = shard_format::assemble(pieces, start);
    CHECK(obj.size() == 3 + 5 + 16 * 4 + 4);
    auto idx = shard_format::parse_index(obj.data(), obj.size(), 4, start);
    CHECK(idx[0].present() && idx[0].nbytes == 3 && !idx[1].present() && idx[2].nbytes == 5 && !idx[3].present());
    CHECK(idx[0].offset == (start ? 68u : 0u) && idx[2].offset == idx[0].offset + 3);
    CHECK(std::memcmp(obj.data() + idx[2].offset, c.data(), 5) == 0);
    // The absent entries are 2^64-1 twice (all 0xFF bytes).
    const std::uint8_t* index = start ? obj.data() : obj.data() + 8;
    CHECK(std::all_of(index + 16, index + 32, [](std::uint8_t b) { return b == 0xFF; }));
    auto bad = obj;
    bad[start ? 1 : 9] ^= 1;  // inside the first index entry
    CHECK(throws<std::runtime_error>([&] { shard_format::parse_index(bad.data(), bad.size(), 4, start); },
                                     "checksum"));
    CHECK(throws<std::runtime_error>([&] { shard_format::parse_index(obj.data(), 10, 4, start); }, "fewer"));
  }
  // An entry pointing past the object, with a valid checksum, is refused too.
  std::vector<shard_format::Piece> one{{a.data(), a.size(), true}};
  auto obj = shard_format::assemble(one, false);
  obj[3 + 8] = 200;  // nbytes of entry 0
  const std::uint32_t crc = crc32c(obj.data() + 3, 16);
  for (int b = 0; b < 4; ++b) obj[3 + 16 + static_cast<std::size_t>(b)] = static_cast<std::uint8_t>(crc >> (8 * b));
  CHECK(throws<std::runtime_error>([&] { shard_format::parse_index(obj.data(), obj.size(), 1, false); }, "outside"));
}

TEST(shard_layout_maps_inner_keys_to_shards) {
  ShardLayout l;
  l.path = "arr";
  l.shape = {10, 6};
  l.chunks = {1, 3};
  l.shards = {4, 6};
  l.validate();
  CHECK(l.chunks_per_shard() == 8 && l.index_nbytes() == 132);
  std::vector<int64_t> shard;
  std::size_t pos = 0;
  CHECK(l.locate("arr/c/5/1", shard, pos) && shard == (std::vector<int64_t>{1, 0}) && pos == 3);
  CHECK(l.locate("arr/c/9/0", shard, pos) && shard == (std::vector<int64_t>{2, 0}) && pos == 2);
  CHECK(!l.locate("arr/c/5", shard, pos) && !l.locate("arrx/c/5/1", shard, pos) && !l.locate("arr/zarr.json", shard, pos));
  CHECK(!l.locate("arr/c/5/1/2", shard, pos));
  CHECK(throws<std::invalid_argument>([&] { l.locate("arr/c/10/0", shard, pos); }, "outside"));
  CHECK(l.shard_key({2, 0}) == "arr/c/2/0");
  CHECK(l.chunks_in_bounds({0, 0}) == 8 && l.chunks_in_bounds({2, 0}) == 4);
  l.shards = {4, 4};
  CHECK(throws<std::invalid_argument>([&] { l.validate(); }, "multiple of the chunk size"));
}

namespace {

struct ShardFixture {
  ArraySpec spec;
  ShardLayout layout;
  std::shared_ptr<MemorySink> store = std::make_shared<MemorySink>();

  ShardFixture(std::vector<int64_t> shape, std::vector<int64_t> chunks, std::vector<int64_t> shards, bool start) {
    spec = make_array(shape, chunks, true);
    layout.path = spec.path;
    layout.shape = shape;
    layout.chunks = chunks;
    layout.shards = shards;
    layout.index_at_start = start;
  }
  std::shared_ptr<ShardSink> sink(std::size_t capacity, std::size_t inflight) {
    auto s = std::make_shared<ShardSink>(store, capacity, inflight);
    s->add_array(layout);
    return s;
  }
  // Element (i, j) of a 2-D array as stored, or the fill value (-1) where nothing is.
  float at(int64_t i, int64_t j) {
    const int64_t ci = i / spec.chunks[0], cj = j / spec.chunks[1];
    std::vector<int64_t> shard{ci * spec.chunks[0] / layout.shards[0], cj * spec.chunks[1] / layout.shards[1]};
    auto v = store->get(layout.shard_key(shard));
    if (!v) return -1.0f;
    const int64_t pi = layout.shards[0] / spec.chunks[0], pj = layout.shards[1] / spec.chunks[1];
    const std::size_t pos = static_cast<std::size_t>((ci % pi) * pj + (cj % pj));
    auto idx = shard_format::parse_index(v->data(), v->size(), layout.chunks_per_shard(), layout.index_at_start);
    if (!idx[pos].present()) return -1.0f;
    std::vector<float> raw(static_cast<std::size_t>(spec.chunks[0] * spec.chunks[1]));
    decode_chunk(spec.codec, v->data() + idx[pos].offset, idx[pos].nbytes, reinterpret_cast<uint8_t*>(raw.data()),
                 raw.size() * 4, 1);
    return raw[static_cast<std::size_t>((i % spec.chunks[0]) * spec.chunks[1] + j % spec.chunks[1])];
  }
};

}  // namespace

TEST(shard_sink_writes_each_complete_shard_once_and_flushes_the_rest) {
  for (bool start : {false, true}) {
    // 10 x 6 array, chunks 1 x 3, shards 4 x 6: shard rows [0,4) [4,8) [8,10) (the last one cut by the array).
    ShardFixture f({10, 6}, {1, 3}, {4, 6}, start);
    auto sink = f.sink(64 << 20, 2);
    Engine engine(2, 16 << 20);
    std::vector<float> row(6);
    for (int64_t i = 0; i < 9; ++i) {  // rows 0..8: shards 0 and 1 complete, shard 2 half
      for (int j = 0; j < 6; ++j) row[static_cast<std::size_t>(j)] = static_cast<float>(i * 10 + j);
      Slab s{reinterpret_cast<const uint8_t*>(row.data()), {1, 6}, {24, 4}, 4};
      engine.write(f.spec, sink, s, {{i}, iota(0, 6)});
    }
    auto st = sink->stats();
    CHECK(st.shards_written == 2 && st.shards_merged == 0 && st.open_shards == 1 && f.store->size() == 2);
    std::vector<uint8_t> chunk;
    CHECK(sink->read("arr/c/8/1", chunk) && !chunk.empty());  // from the shard under assembly
    CHECK(sink->read("arr/c/2/0", chunk) && !chunk.empty());  // from the stored shard
    CHECK(!sink->read("arr/c/9/0", chunk));                   // never written
    sink->flush();
    CHECK(sink->stats().shards_written == 3 && sink->stats().held_bytes == 0 && f.store->size() == 3);
    for (int64_t i = 0; i < 10; ++i)
      for (int64_t j = 0; j < 6; ++j) CHECK(f.at(i, j) == (i < 9 ? static_cast<float>(i * 10 + j) : -1.0f));
    // Row 9 later, plus a partial rewrite of row 8: both merge with the stored shard.
    for (int j = 0; j < 6; ++j) row[static_cast<std::size_t>(j)] = 900.0f + static_cast<float>(j);
    Slab s{reinterpret_cast<const uint8_t*>(row.data()), {1, 6}, {24, 4}, 4};
    engine.write(f.spec, sink, s, {{9}, iota(0, 6)});  // completes the shard's seen set? no: a new session of it
    Slab two{reinterpret_cast<const uint8_t*>(row.data()), {1, 2}, {8, 4}, 4};
    engine.write(f.spec, sink, two, {{8}, {4, 5}});
    sink->flush();
    CHECK(sink->stats().shards_merged >= 1);
    for (int64_t j = 0; j < 6; ++j) CHECK(f.at(9, j) == 900.0f + static_cast<float>(j));
    for (int64_t j = 0; j < 6; ++j)
      CHECK(f.at(8, j) == (j < 4 ? static_cast<float>(80 + j) : 900.0f + static_cast<float>(j - 4)));
    // A key of another array passes straight through.
    const uint8_t b = 7;
    sink->write("other/c/0", &b, 1);
    CHECK(f.store->contains("other/c/0"));
  }
}

TEST(shard_sink_flush_can_hold_shards_back) {
  // 8 x 6 array, chunks 1 x 3, shards 4 x 6: two shards, both left incomplete.
  ShardFixture f({8, 6}, {1, 3}, {4, 6}, false);
  auto sink = f.sink(64 << 20, 2);
  Engine engine(2, 16 << 20);
  std::vector<float> row(6, 5.0f);
  for (int64_t i : {0, 1, 4, 5}) {
    Slab s{reinterpret_cast<const uint8_t*>(row.data()), {1, 6}, {24, 4}, 4};
    engine.write(f.spec, sink, s, {{i}, iota(0, 6)});
  }
  sink->flush({{"arr", {1, 0}}});  // shard 1 stays under assembly
  CHECK(f.store->size() == 1 && f.store->contains("arr/c/0/0") && sink->stats().open_shards == 1);
  CHECK(f.at(0, 0) == 5.0f && f.at(4, 0) == -1.0f);
  sink->flush();  // now the held one
  CHECK(f.store->size() == 2 && f.at(5, 5) == 5.0f && sink->stats().open_shards == 0);
  CHECK(throws<std::invalid_argument>([&] { sink->flush({{"nope", {0, 0}}}); }, "not a sharded array"));
}

TEST(shard_sink_stays_within_its_bound_without_deadlock) {
  for (std::size_t inflight : {1, 3}) {
    ShardFixture f({64, 16}, {1, 8}, {8, 16}, false);
    auto sink = f.sink(1, inflight);  // smaller than any chunk: every chunk spills
    Engine engine(4, 16 << 20, 8 << 20);
    std::vector<float> all(64 * 16);
    std::iota(all.begin(), all.end(), 0.0f);
    for (int64_t i = 0; i < 64; i += 2) {  // non-blocking submits of two rows each
      Slab s{reinterpret_cast<const uint8_t*>(all.data() + i * 16), {2, 16}, {64, 4}, 4};
      engine.submit({Engine::Request{&f.spec, sink, s, {{i, i + 1}, iota(0, 16)}}});
    }
    engine.flush();
    sink->flush();
    auto st = sink->stats();
    CHECK(st.shards_spilled > 0 && st.held_bytes == 0);
    CHECK(st.peak_held_bytes < 64 * 1024);  // a few chunks and shards, never everything
    bool ok = true;
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t j = 0; j < 16; ++j) ok = ok && f.at(i, j) == static_cast<float>(i * 16 + j);
    CHECK(ok);
  }
}

TEST(shard_sink_reports_a_damaged_stored_shard_by_key) {
  ShardFixture f({4, 4}, {1, 4}, {4, 4}, false);
  const uint8_t junk[200] = {};
  f.store->write("arr/c/0/0", junk, sizeof(junk));
  auto sink = f.sink(1 << 20, 1);
  Engine engine(1, 16 << 20);
  std::vector<float> row(4, 1.0f);
  Slab s{reinterpret_cast<const uint8_t*>(row.data()), {1, 4}, {16, 4}, 4};
  engine.write(f.spec, sink, s, {{0}, iota(0, 4)});
  CHECK(throws<std::runtime_error>([&] { sink->flush(); }, "shard 'arr/c/0/0'"));
  CHECK(sink->stats().held_bytes == 0);
}

// ----------------------------------------------------------------- writer stage and priorities
namespace {

std::string this_thread_name() {
  char name[32] = {0};
  pthread_getname_np(pthread_self(), name, sizeof(name));
  return name;
}

int this_thread_nice() {
  errno = 0;
  return getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)));
}

// A memory store whose writes wait like a slow disk: the engine hands its
// chunks to the writer stage. Records who stored what, and fails one key.
class SlowDeviceSink : public MemorySink {
 public:
  std::string fail_key;
  std::mutex mu;
  std::vector<std::string> threads;
  std::atomic<int> in_write{0}, max_in_write{0};
  bool waits_on_device() const override { return true; }
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override {
    int now = ++in_write;
    int seen = max_in_write.load();
    while (now > seen && !max_in_write.compare_exchange_weak(seen, now)) {
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      threads.push_back(this_thread_name());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    --in_write;
    if (key == fail_key) throw IOError("writing chunk '" + key + "' (test device)", EIO);
    MemorySink::write(key, data, nbytes);
  }
};

}  // namespace

TEST(pool_threads_run_at_the_nice_value_they_were_given) {
  const int base = this_thread_nice();
  std::atomic<int> seen{-100};
  std::string name;
  {
    ThreadPool pool(1, "e2f-test-nice", 5);
    TaskGroup g;
    pool.submit(g.wrap([&] {
      seen = this_thread_nice();
      name = this_thread_name();
    }));
    g.wait();
  }
  CHECK(seen.load() == std::min(19, base + 5));
  CHECK(name == "e2f-test-nice");
  CHECK(this_thread_nice() == base);  // the caller's own priority is untouched
  Engine bg(2, 8 << 20, 4 << 20, 10);
  CHECK(bg.nice() == 10);
  Engine fg(2, 8 << 20);
  CHECK(fg.nice() == 0);
}

TEST(writer_stage_stores_every_chunk_off_the_encoders_within_the_buffer_bound) {
  ArraySpec a = make_array({64, 256}, {4, 256}, true);  // 16 chunks of 4 KiB
  std::vector<float> data(64 * 256);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i % 977) * 0.5f;
  Slab s{reinterpret_cast<const uint8_t*>(data.data()), {64, 256}, {1024, 4}, 4};
  // Room for three chunks' staging: encoders wait for leases the writers hold.
  Engine eng(2, 3 * (std::size_t{64} << 10));  // three leases (the pool hands out 64 KiB granules)
  auto slow = std::make_shared<SlowDeviceSink>();
  eng.write_batch({{&a, slow, s, {iota(0, 64), iota(0, 256)}}});
  // Blocking: every chunk is stored when write_batch returns, exactly.
  CHECK(slow->size() == 16);
  CHECK(read_back_2d(*slow, a) == data);
  CHECK(eng.writer_threads() >= 2);
  for (const auto& t : slow->threads) CHECK(t == "e2fastio-write");
  auto st = eng.buffers().stats();
  CHECK(st.peak_bytes <= st.capacity);
  CHECK(st.leased_bytes == 0);
  CHECK(st.waits > 0);  // backpressure did hold encoders back

  // A failing store: write_batch reports it with the key, the others land.
  auto slow2 = std::make_shared<SlowDeviceSink>();
  slow2->fail_key = a.chunk_key({5, 0});
  CHECK(throws<IOError>([&] { eng.write_batch({{&a, slow2, s, {iota(0, 64), iota(0, 256)}}}); }, "arr/c/5/0"));
  CHECK(slow2->size() == 15);
  CHECK(eng.buffers().stats().leased_bytes == 0);

  // Non-blocking: reported once at flush(), naming the key; the same key's
  // writes still land in submission order when stored by the writers.
  Engine nb(2, 1 << 20, 1 << 19, 10);
  auto slow3 = std::make_shared<SlowDeviceSink>();
  slow3->fail_key = a.chunk_key({7, 0});
  nb.submit({{&a, slow3, s, {iota(0, 64), iota(0, 256)}}});
  CHECK(throws<IOError>([&] { nb.flush(); }, "arr/c/7/0"));
  nb.flush();  // once
  CHECK(nb.failed_chunks() == 1);
  std::vector<float> row(256);
  for (int i = 0; i < 24; ++i) {
    std::fill(row.begin(), row.end(), static_cast<float>(i));
    Slab r{reinterpret_cast<const uint8_t*>(row.data()), {1, 256}, {1024, 4}, 4};
    nb.submit({{&a, slow3, r, {{i % 4}, iota(0, 256)}}});  // partial writes of chunk 0: read-modify-write
  }
  nb.flush();
  auto out = read_back_2d(*slow3, a);
  for (int r = 0; r < 4; ++r) CHECK(out[static_cast<size_t>(r * 256)] == static_cast<float>(20 + r));
  CHECK(nb.pending_chunks() == 0 && nb.buffers().stats().leased_bytes == 0);
}

TEST(writer_stage_writes_directory_chunks_exactly_and_fsynced_before_reporting) {
  char* real = realpath(make_tempdir().c_str(), nullptr);
  std::string dir = real;
  std::free(real);
  ArraySpec a = make_array({64, 512}, {8, 512}, true);  // 8 chunks of 16 KiB
  std::vector<float> data(64 * 512);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>((i * 7919) % 4093);
  Slab s{reinterpret_cast<const uint8_t*>(data.data()), {64, 512}, {2048, 4}, 4};
  auto sink = std::make_shared<DirectorySink>(dir, /*fsync=*/true);
  Engine eng(2, 8 << 20);
  take_fsynced();
  fsync_log::recording = true;
  eng.write_batch({{&a, sink, s, {iota(0, 64), iota(0, 512)}}});
  fsync_log::recording = false;
  auto synced = take_fsynced();
  // Reported means durable: each chunk's file was fsynced (as its temporary,
  // before the rename) before write_batch returned.
  std::size_t chunk_files = 0;
  for (const auto& p : synced) chunk_files += p.find(".e2fastio-tmp-") != std::string::npos;
  CHECK(chunk_files == 8);
  CHECK(eng.writer_threads() >= 2);
  const std::size_t n = a.chunk_nbytes();
  std::vector<uint8_t> enc, raw(n);
  for (int64_t c = 0; c < 8; ++c) {
    CHECK(sink->read(a.chunk_key({c, 0}), enc));
    decode_chunk(a.codec, enc.data(), enc.size(), raw.data(), n, 1);
    CHECK(std::memcmp(raw.data(), data.data() + c * 8 * 512, n) == 0);
  }
  std::vector<std::string> files;
  list_files(dir, files);
  CHECK(files.size() == 8);  // no temporary left behind
  eng.shutdown();
  CHECK(eng.writer_threads() == 0);
  CHECK(std::system(("rm -rf " + dir).c_str()) == 0);
}


int main(int argc, char** argv) {
  // Every CUDA call in these tests goes to the fake runtime (loaded like the real one).
  setenv("E2FASTIO_CUDART", E2FASTIO_FAKE_CUDART, 1);
  setenv("E2FASTIO_NVCOMP", E2FASTIO_FAKE_CUDART, 1);  // and its fake nvCOMP
  std::size_t ran = 0;
  for (auto& [name, fn] : registry()) {
    if (argc > 1 && name.find(argv[1]) == std::string::npos) continue;  // a name filter, for debugging
    ++ran;
    int before = g_failures;
    try {
      fn();
    } catch (const std::exception& e) {
      std::cerr << name << ": unexpected exception: " << e.what() << "\n";
      ++g_failures;
    }
    std::cout << (g_failures == before ? "PASS " : "FAIL ") << name << std::endl;  // flushed: a hang shows where
  }
  std::cout << ran << " tests, " << g_failures << " failed checks\n";
  return g_failures == 0 ? 0 : 1;
}
