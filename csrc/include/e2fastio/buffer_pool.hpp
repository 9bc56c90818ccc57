// Bounded host staging memory. Buffers are allocated once, touched once and
// reused: the pool caches released buffers instead of giving them back to the
// OS (fresh pages fault in at ~0.5 GB/s on these VMs; warm memcpy is 14 GB/s),
// and when it is destroyed (or trimmed) hands them to the process-wide
// host_memory cache, where the next engine's pool finds them warm.
// The total of leased plus cached bytes never exceeds the capacity, so host
// memory does not grow with the number of steps. acquire() blocks while the
// leased bytes would exceed the capacity (backpressure).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace e2fastio {

class BufferPool;

class Lease {
 public:
  Lease() = default;
  Lease(BufferPool* pool, uint8_t* data, std::size_t size) : pool_(pool), data_(data), size_(size) {}
  Lease(Lease&& o) noexcept { *this = std::move(o); }
  Lease& operator=(Lease&& o) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { release(); }

  uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  void release() noexcept;

 private:
  BufferPool* pool_ = nullptr;
  uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

struct BufferPoolStats {
  std::size_t capacity = 0;
  std::size_t leased_bytes = 0;
  std::size_t cached_bytes = 0;
  std::size_t peak_bytes = 0;        // max of leased + cached
  std::uint64_t allocations = 0;     // blocks the pool obtained (process cache or OS)
  std::uint64_t reuses = 0;          // leases served from the cache
  std::uint64_t waits = 0;           // acquires that had to wait
  double wait_seconds = 0.0;         // total time spent waiting
};

class BufferPool {
 public:
  explicit BufferPool(std::size_t capacity);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // Blocks until `nbytes` fit under the capacity. Throws std::invalid_argument
  // when nbytes alone exceeds the capacity (waiting could never succeed).
  Lease acquire(std::size_t nbytes);
  std::size_t capacity() const noexcept { return capacity_; }
  BufferPoolStats stats() const;
  // Hand every cached (unleased) buffer to the process-wide host_memory cache.
  void trim();

 private:
  friend class Lease;
  void give_back(uint8_t* data, std::size_t size) noexcept;
  static std::size_t round_up(std::size_t n);

  struct Block {
    uint8_t* data;
    std::size_t size;
  };
  const std::size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Block> cache_;
  BufferPoolStats stats_;
};

}  // namespace e2fastio
