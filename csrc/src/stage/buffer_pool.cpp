#include "e2fastio/buffer_pool.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "e2fastio/host_memory.hpp"

namespace e2fastio {

namespace {
constexpr std::size_t kGranule = 64 * 1024;

void to_process_cache(uint8_t* data, std::size_t size) noexcept { host_memory::give({data, size, false}); }
}  // namespace

Lease& Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    release();
    pool_ = o.pool_;
    data_ = o.data_;
    size_ = o.size_;
    o.pool_ = nullptr;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

void Lease::release() noexcept {
  if (pool_ && data_) pool_->give_back(data_, size_);
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

BufferPool::BufferPool(std::size_t capacity) : capacity_(capacity) {
  if (capacity == 0) throw std::invalid_argument("max_buffer_bytes must be positive");
  stats_.capacity = capacity;
}

BufferPool::~BufferPool() {
  for (auto& b : cache_) to_process_cache(b.data, b.size);
}

std::size_t BufferPool::round_up(std::size_t n) { return (n + kGranule - 1) / kGranule * kGranule; }

Lease BufferPool::acquire(std::size_t nbytes) {
  const std::size_t need = round_up(std::max<std::size_t>(nbytes, 1));
  if (need > capacity_) {
    throw std::invalid_argument("a single chunk needs " + std::to_string(need) +
                                " bytes of staging memory but max_buffer_bytes is " +
                                std::to_string(capacity_) +
                                "; raise max_buffer_bytes or use smaller chunks");
  }
  std::unique_lock<std::mutex> lk(mu_);
  if (stats_.leased_bytes + need > capacity_) {
    ++stats_.waits;
    auto t0 = std::chrono::steady_clock::now();
    cv_.wait(lk, [&] { return stats_.leased_bytes + need <= capacity_; });
    stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Best fit from the cache.
  auto best = cache_.end();
  for (auto it = cache_.begin(); it != cache_.end(); ++it)
    if (it->size >= need && (best == cache_.end() || it->size < best->size)) best = it;
  if (best != cache_.end() && stats_.leased_bytes + best->size <= capacity_) {
    Block b = *best;
    cache_.erase(best);
    stats_.cached_bytes -= b.size;
    stats_.leased_bytes += b.size;
    ++stats_.reuses;
    return Lease(this, b.data, b.size);
  }
  // Make room: evict cached blocks (largest first) until leased + cached + need fits.
  std::sort(cache_.begin(), cache_.end(), [](const Block& a, const Block& b) { return a.size < b.size; });
  while (!cache_.empty() && stats_.leased_bytes + stats_.cached_bytes + need > capacity_) {
    to_process_cache(cache_.back().data, cache_.back().size);
    stats_.cached_bytes -= cache_.back().size;
    cache_.pop_back();
  }
  // A block a destroyed engine left warm in the process cache, else a fresh one;
  // never more than the capacity leaves room for.
  const std::size_t room = capacity_ - std::min(capacity_, stats_.leased_bytes + stats_.cached_bytes);
  const host_memory::Block b = host_memory::take(need, std::max(need, std::min(room, need + need / 4)), false);
  stats_.leased_bytes += b.size;
  ++stats_.allocations;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.leased_bytes + stats_.cached_bytes);
  return Lease(this, b.data, b.size);
}

void BufferPool::give_back(uint8_t* data, std::size_t size) noexcept {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.leased_bytes -= size;
    try {
      cache_.push_back({data, size});
      stats_.cached_bytes += size;
    } catch (...) {
      to_process_cache(data, size);
    }
  }
  cv_.notify_all();
}

BufferPoolStats BufferPool::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void BufferPool::trim() {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& b : cache_) to_process_cache(b.data, b.size);
  cache_.clear();
  stats_.cached_bytes = 0;
}

}  // namespace e2fastio
