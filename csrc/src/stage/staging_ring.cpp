#include "e2fastio/staging_ring.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "e2fastio/host_memory.hpp"

namespace e2fastio {

StagingRing::StagingRing(std::size_t capacity, bool pinned)
    : capacity_((capacity + kAlign - 1) / kAlign * kAlign) {
  if (capacity == 0) throw std::invalid_argument("staging ring capacity must be positive");
  // A ring that a destroyed engine gave back to the process cache is taken
  // warm; a block at most a quarter larger than asked is accepted.
  const std::size_t most = capacity_ + capacity_ / 4;
  if (pinned) block_ = host_memory::take(capacity_, most, true);
  if (!block_.data) block_ = host_memory::take(capacity_, most, false);
  // Pages are touched on first use and then reused as the ring wraps (never
  // returned to the OS while the process cache keeps the block): only the
  // first lap pays the page-fault cost, and a small workload never maps the
  // whole capacity.
  warm_ = block_.pinned ? capacity_ : std::min(block_.warm, capacity_);
  stats_.capacity = capacity_;
}

StagingRing::~StagingRing() {
  block_.warm = std::max(block_.warm, warm_);  // a smaller ring may have used a larger cached block
  host_memory::give(block_);
}

std::size_t StagingRing::warm_bytes() const {
  std::lock_guard<std::mutex> lk(mu_);
  return warm_;
}

void StagingRing::prefault(std::size_t offset, std::size_t n) noexcept {
#ifdef MADV_POPULATE_WRITE
  if (block_.pinned || offset >= capacity_) return;
  const std::size_t end = offset + std::min(n, capacity_ - offset);
  {
    std::lock_guard<std::mutex> lk(mu_);
    offset = std::max(offset, warm_);
    if (offset >= end) return;
    stats_.prefaulted_bytes += end - offset;
  }
  if (::madvise(block_.data + offset, end - offset, MADV_POPULATE_WRITE) != 0) return;
  std::lock_guard<std::mutex> lk(mu_);
  if (offset <= warm_) warm_ = std::max(warm_, end);  // contiguous from the start: the mark grows
#else
  (void)offset;
  (void)n;
#endif
}

bool StagingRing::fits(std::size_t n, std::size_t* offset) const {
  if (live_.empty()) {
    *offset = 0;
    return n <= capacity_;
  }
  const std::size_t tail = live_.front().offset;
  if (head_ > tail) {  // free space: [head_, capacity_) and [0, tail)
    if (head_ + n <= capacity_) {
      *offset = head_;
      return true;
    }
    if (n <= tail) {  // wrap to the start
      *offset = 0;
      return true;
    }
    return false;
  }
  // head_ <= tail with live slots: free space is [head_, tail).
  if (head_ + n <= tail) {
    *offset = head_;
    return true;
  }
  return false;
}

StagingRing::Slot StagingRing::reserve(std::size_t nbytes) {
  const std::size_t n = std::max<std::size_t>(kAlign, (nbytes + kAlign - 1) / kAlign * kAlign);
  if (n > capacity_)
    throw std::invalid_argument("one write stages " + std::to_string(nbytes) + " bytes but the staging ring holds " +
                                std::to_string(capacity_) + "; raise max_buffer_bytes or write smaller pieces");
  std::unique_lock<std::mutex> lk(mu_);
  std::size_t off = 0;
  if (!fits(n, &off)) {
    ++stats_.waits;
    auto t0 = std::chrono::steady_clock::now();
    cv_.wait(lk, [&] { return fits(n, &off); });
    stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  Live l{next_id_++, off, n, false};
  live_.push_back(l);
  head_ = off + n;
  stats_.used_bytes += n;
  stats_.peak_used_bytes = std::max(stats_.peak_used_bytes, stats_.used_bytes);
  ++stats_.reservations;
  return Slot{l.id, block_.data + off, nbytes};
}

void StagingRing::release(uint64_t id) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& l : live_)
      if (l.id == id && !l.released) {
        l.released = true;
        stats_.used_bytes -= l.size;
        if (l.offset <= warm_) warm_ = std::max(warm_, l.offset + l.size);  // the slot's copy wrote it
        break;
      }
    while (!live_.empty() && live_.front().released) live_.pop_front();
    if (live_.empty()) head_ = 0;
  }
  cv_.notify_all();
}

RingStats StagingRing::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  RingStats s = stats_;
  s.pinned = block_.pinned;
  return s;
}

}  // namespace e2fastio
