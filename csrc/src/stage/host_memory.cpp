#include "e2fastio/host_memory.hpp"

#include <pthread.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>
#include <string>

#include "e2fastio/cuda.hpp"
#include "e2fastio/fork_safe_mutex.hpp"

namespace e2fastio::host_memory {

namespace {
constexpr std::size_t kAlign = kBlockAlign;
constexpr std::size_t kDefaultLimit = std::size_t{1} << 30;

void release(const Block& b) noexcept {
  if (!b.data) return;
  if (b.pinned) {
    if (const cuda::Api* api = cuda::api()) api->FreeHost(b.data);
  } else {
    std::free(b.data);
  }
}

struct Cache {
  ForkSafeMutex mu;  // a leaf lock: nothing is waited for while it is held
  std::deque<Block> blocks;  // oldest first
  Stats stats;
  Cache() { stats.limit = kDefaultLimit; }

  // Drop cached blocks, oldest first, until cached_bytes <= target; the
  // caller frees the returned blocks outside the lock.
  std::deque<Block> shrink_to(std::size_t target) {
    std::deque<Block> out;
    while (!blocks.empty() && stats.cached_bytes > target) {
      stats.cached_bytes -= blocks.front().size;
      out.push_back(blocks.front());
      blocks.pop_front();
    }
    stats.cached_blocks = blocks.size();
    return out;
  }
};

Cache* g_cache = nullptr;

// In a forked child, page-locked blocks are not the child's: the driver maps
// them MADV_DONTFORK (absent in the child), and CUDA cannot run there anyway.
// Forget them (never free them). Only the forking thread exists here, and the
// lock was held across the fork (ForkSafeMutex), so the list is whole; the
// lock is not taken, since this handler may run before it is released.
void forget_pinned_in_child() {
  if (!g_cache) return;
  Cache& c = *g_cache;
  for (auto it = c.blocks.begin(); it != c.blocks.end();) {
    if (it->pinned) {
      c.stats.cached_bytes -= it->size;
      it = c.blocks.erase(it);
    } else {
      ++it;
    }
  }
  c.stats.cached_blocks = c.blocks.size();
}

// Never destroyed: blocks may be given back from static destructors, and
// pinned blocks must not be freed after the CUDA runtime has shut down.
Cache& cache() {
  static Cache* c = [] {
    g_cache = new Cache();
    pthread_atfork(nullptr, nullptr, forget_pinned_in_child);
    return g_cache;
  }();
  return *c;
}
}  // namespace

Block take(std::size_t min_size, std::size_t max_size, bool pinned) {
  min_size = (std::max<std::size_t>(min_size, 1) + kAlign - 1) / kAlign * kAlign;
  Cache& c = cache();
  {
    std::lock_guard<ForkSafeMutex> lk(c.mu);
    auto best = c.blocks.end();
    for (auto it = c.blocks.begin(); it != c.blocks.end(); ++it)
      if (it->pinned == pinned && it->size >= min_size && it->size <= max_size &&
          (best == c.blocks.end() || it->size < best->size))
        best = it;
    if (best != c.blocks.end()) {
      Block b = *best;
      c.blocks.erase(best);
      c.stats.cached_bytes -= b.size;
      c.stats.cached_blocks = c.blocks.size();
      ++c.stats.hits;
      return b;
    }
    ++c.stats.misses;
  }
  if (pinned) {
    const cuda::Api* api = cuda::api();
    void* p = nullptr;
    if (api && api->HostAlloc(&p, min_size, cuda::kHostAllocPortable) == cuda::kSuccess && p)
      return Block{static_cast<uint8_t*>(p), min_size, true};
    return Block{};
  }
  void* p = std::aligned_alloc(kAlign, min_size);
  if (!p) throw std::bad_alloc();
  return Block{static_cast<uint8_t*>(p), min_size, false};
}

void give(Block b) noexcept {
  if (!b.data) return;
  Cache& c = cache();
  std::deque<Block> drop;
  {
    std::lock_guard<ForkSafeMutex> lk(c.mu);
    if (b.size <= c.stats.limit) {
      try {
        c.blocks.push_back(b);
        c.stats.cached_bytes += b.size;
        b = Block{};
        drop = c.shrink_to(c.stats.limit);  // the oldest make room for the newest (warmest)
      } catch (...) {
        // could not record it: free it below
      }
    }
  }
  release(b);
  for (const Block& d : drop) release(d);
}

std::size_t empty() noexcept {
  Cache& c = cache();
  std::deque<Block> drop;
  {
    std::lock_guard<ForkSafeMutex> lk(c.mu);
    drop.swap(c.blocks);
    c.stats.cached_bytes = 0;
    c.stats.cached_blocks = 0;
  }
  std::size_t n = 0;
  for (const Block& d : drop) {
    n += d.size;
    release(d);
  }
  return n;
}

Stats stats() {
  Cache& c = cache();
  std::lock_guard<ForkSafeMutex> lk(c.mu);
  return c.stats;
}

void set_limit(std::size_t bytes) {
  Cache& c = cache();
  std::deque<Block> drop;
  {
    std::lock_guard<ForkSafeMutex> lk(c.mu);
    c.stats.limit = bytes;
    drop = c.shrink_to(bytes);
  }
  for (const Block& d : drop) release(d);
}

}  // namespace e2fastio::host_memory
