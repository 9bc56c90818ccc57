#include "e2fastio/collect_sink.hpp"

#include <chrono>
#include <cstring>

#include "e2fastio/error.hpp"

namespace e2fastio {

CollectSink::CollectSink(std::size_t capacity_bytes) : capacity_(capacity_bytes) {
  E2F_EXPECT(capacity_bytes > 0, "the collector's capacity must be positive");
  stats_.capacity = capacity_bytes;
}

void CollectSink::write(const std::string& key, const uint8_t* data, std::size_t nbytes) {
  // Admit the bytes first (waiting for room), copy them outside the lock: the
  // bound covers chunks being copied in too, and the consumer is never held up
  // by a copy.
  {
    std::unique_lock<std::mutex> lk(mu_);
    auto fits = [&] { return closed_ || held_ == 0 || held_ + nbytes <= capacity_; };
    if (!fits()) {
      ++stats_.writer_waits;
      const auto t0 = std::chrono::steady_clock::now();
      room_cv_.wait(lk, fits);
      stats_.writer_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    if (closed_) E2F_FAIL("cannot hand chunk " + key + " to HDF5: its writer was closed");
    held_ += nbytes;
    stats_.peak_held_bytes = std::max(stats_.peak_held_bytes, held_);
  }
  Item item{key, {}};
  try {
    item.data.assign(data, data + nbytes);
  } catch (...) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      held_ -= nbytes;
    }
    room_cv_.notify_all();
    throw;
  }
  std::lock_guard<std::mutex> lk(mu_);
  if (closed_) {
    held_ -= nbytes;
    E2F_FAIL("cannot hand chunk " + key + " to HDF5: its writer was closed");
  }
  items_.push_back(std::move(item));
  ++stats_.chunks_collected;
  stats_.bytes_collected += nbytes;
}

bool CollectSink::pop(Item& out) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (items_.empty()) return false;
    out = std::move(items_.front());
    items_.pop_front();
    held_ -= out.data.size();
    ++stats_.chunks_popped;
  }
  room_cv_.notify_all();  // chunks differ in size: every waiting writer checks whether it fits now
  return true;
}

std::size_t CollectSink::close() {
  std::deque<Item> dropped;
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    for (const auto& it : items_) held_ -= it.data.size();
    dropped.swap(items_);
  }
  room_cv_.notify_all();
  return dropped.size();  // `dropped` is freed on return, outside the lock
}

CollectSink::Stats CollectSink::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  Stats s = stats_;
  s.held_bytes = held_;
  s.held_chunks = items_.size();
  return s;
}

}  // namespace e2fastio
