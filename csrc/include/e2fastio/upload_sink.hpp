// Encoded chunks handed to object-store uploaders through a bounded queue.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "e2fastio/sink.hpp"

namespace e2fastio {

// Hands encoded chunks to uploaders (coroutines of an object-store client,
// driven from Python) through a bounded queue. Encoder threads call write()
// and wait while `capacity` bytes are queued or uploading (backpressure). An
// uploader takes an item with next(), uploads it and reports done(). Per key
// at most one upload is in flight and the newest version is uploaded last; a
// queued older version of a key is replaced by a newer one (it would be
// overwritten anyway). read() serves the newest queued or uploading version
// (a partial-chunk merge must see it) and asks `fetch` for anything else.
// Failures are kept per key and handed out by take_errors().
class UploadSink : public Sink {
 public:
  using Data = std::shared_ptr<const std::vector<uint8_t>>;
  using Fetch = std::function<bool(const std::string& key, std::vector<uint8_t>& out)>;
  struct Item {
    std::uint64_t id = 0;
    std::string key;
    Data data;
  };
  struct Stats {
    std::uint64_t objects_uploaded = 0, bytes_uploaded = 0, objects_failed = 0, objects_coalesced = 0;
    std::size_t queued_bytes = 0, peak_queued_bytes = 0, queued_objects = 0, in_flight = 0;
    double backpressure_wait_seconds = 0;
  };

  UploadSink(std::size_t capacity_bytes, std::string description);
  ~UploadSink() override;
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return description_; }

  void set_fetch(Fetch fetch);
  // The next item whose key has no upload in flight; false on timeout or once closed and empty.
  bool next(double timeout_seconds, Item& out);
  // Report the end of item `id`'s upload; `error` empty on success.
  void done(std::uint64_t id, const std::string& error);
  // Wait until nothing is queued or uploading; false on timeout.
  bool wait_idle(double timeout_seconds);
  std::vector<std::pair<std::string, std::string>> take_errors();  // (key, reason), oldest first
  // No more writes: writers fail, next() drains what is queued, then returns false.
  void close();
  // Make the pending next() (or else the next one) return false at once, so
  // that a consumer stopping its feeder thread need not wait for a timeout.
  void wake();
  Stats stats() const;
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct Entry {
    std::uint64_t id;
    std::string key;
    Data data;
  };
  std::size_t capacity_;
  std::string description_;
  mutable std::mutex mu_;
  std::condition_variable space_cv_, work_cv_, idle_cv_;
  std::deque<Entry> queue_;
  std::unordered_map<std::string, Data> newest_;  // queued or uploading, per key
  std::unordered_map<std::uint64_t, Entry> in_flight_;
  std::unordered_set<std::string> busy_keys_;
  std::vector<std::pair<std::string, std::string>> errors_;
  std::uint64_t next_id_ = 1;
  bool closed_ = false;
  bool woken_ = false;
  Stats stats_;
  std::mutex fetch_mu_;
  Fetch fetch_;
};

}  // namespace e2fastio
