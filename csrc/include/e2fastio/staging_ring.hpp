// The host staging ring of non-blocking writes: one block of fixed capacity,
// allocated and touched once, handed out in FIFO order as variable-size slots.
// reserve() blocks while the ring is full (backpressure); slots may be
// released in any order, space is reclaimed from the oldest slot on.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>

#include "e2fastio/host_memory.hpp"

namespace e2fastio {

struct RingStats {
  std::size_t capacity = 0;
  bool pinned = false;
  std::size_t used_bytes = 0;
  std::size_t peak_used_bytes = 0;
  std::uint64_t reservations = 0;
  std::size_t prefaulted_bytes = 0;  // bytes prefault() asked the kernel for (warm ones are skipped)
  std::uint64_t waits = 0;       // reservations that had to wait for space
  double wait_seconds = 0.0;
};

class StagingRing {
 public:
  static constexpr std::size_t kAlign = 4096;
  // pinned: allocate with the CUDA runtime's cudaHostAlloc (page-locked, so
  // device-to-host copies run at full speed and asynchronously).
  explicit StagingRing(std::size_t capacity, bool pinned = false);
  ~StagingRing();
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  struct Slot {
    uint64_t id = 0;
    uint8_t* data = nullptr;
    std::size_t size = 0;
  };
  // Blocks until `nbytes` fit; std::invalid_argument if they never can.
  Slot reserve(std::size_t nbytes);
  void release(uint64_t id);
  RingStats stats() const;
  std::size_t capacity() const noexcept { return capacity_; }
  bool pinned() const noexcept { return block_.pinned; }
  const uint8_t* base() const noexcept { return block_.data; }
  // Fault pages [offset, offset + n) in without writing them (MADV_POPULATE_WRITE):
  // safe while slots are in use; a no-op where unsupported. Pages below
  // warm_bytes() are skipped: walking 128 MiB of pages that are already there
  // still costs ~5 ms of CPU, paid again by every engine a process creates.
  void prefault(std::size_t offset, std::size_t n) noexcept;
  // Bytes from the ring's start known to be faulted in: by a prefault, by a
  // slot released (its copy wrote it), or by an earlier owner of the block
  // (the process cache keeps the mark). Pinned blocks are always resident.
  std::size_t warm_bytes() const;

 private:
  struct Live {
    uint64_t id;
    std::size_t offset;
    std::size_t size;  // including padding up to kAlign
    bool released;
  };
  bool fits(std::size_t n, std::size_t* offset) const;
  const std::size_t capacity_;
  host_memory::Block block_;  // from (and back to) the process-wide cache
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Live> live_;
  std::size_t head_ = 0;  // next free offset
  std::size_t warm_ = 0;  // see warm_bytes(); only grows, from 0 or the cached block's mark
  uint64_t next_id_ = 1;
  RingStats stats_;
};

}  // namespace e2fastio
