#include "e2fastio/upload_sink.hpp"

#include <chrono>
#include <cstring>

#include "e2fastio/error.hpp"

namespace e2fastio {

UploadSink::UploadSink(std::size_t capacity_bytes, std::string description)
    : capacity_(capacity_bytes), description_(std::move(description)) {
  E2F_EXPECT(capacity_bytes > 0, "upload queue capacity must be positive");
}

UploadSink::~UploadSink() = default;

void UploadSink::set_fetch(Fetch fetch) {
  Fetch old;
  {
    std::lock_guard<std::mutex> lk(fetch_mu_);
    old.swap(fetch_);
    fetch_ = std::move(fetch);
  }
  // `old` is destroyed here, outside the lock.
}

bool UploadSink::read(const std::string& key, std::vector<uint8_t>& out) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = newest_.find(key);
    if (it != newest_.end()) {
      out.assign(it->second->begin(), it->second->end());
      return true;
    }
  }
  // Not queued or uploading: the store has the newest version (or nothing).
  // The engine orders the jobs of one key, so no newer version can appear meanwhile.
  Fetch fetch;
  {
    std::lock_guard<std::mutex> lk(fetch_mu_);
    fetch = fetch_;
  }
  if (!fetch) E2F_FAIL("cannot read " + key + " back from " + description_ + ": no reader attached");
  return fetch(key, out);
}

void UploadSink::write(const std::string& key, const uint8_t* data, std::size_t nbytes) {
  auto value = std::make_shared<const std::vector<uint8_t>>(data, data + nbytes);
  std::unique_lock<std::mutex> lk(mu_);
  // A queued (not yet uploading) older version of the key is replaced, so only the growth needs room.
  auto queued_same_key = [&]() -> std::size_t {
    for (auto& e : queue_)
      if (e.key == key) return e.data->size();
    return 0;
  };
  auto fits = [&] {
    std::size_t replaced = queued_same_key();
    return closed_ || stats_.queued_bytes == 0 || stats_.queued_bytes - replaced + nbytes <= capacity_;
  };
  if (!fits()) {
    auto t0 = std::chrono::steady_clock::now();
    space_cv_.wait(lk, fits);
    stats_.backpressure_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (closed_) E2F_FAIL("cannot store " + key + ": the upload queue of " + description_ + " was closed");
  newest_[key] = value;
  for (auto& e : queue_) {
    if (e.key == key) {  // not yet started: the newer version replaces it
      stats_.queued_bytes = stats_.queued_bytes - e.data->size() + nbytes;
      e.data = std::move(value);
      ++stats_.objects_coalesced;
      stats_.peak_queued_bytes = std::max(stats_.peak_queued_bytes, stats_.queued_bytes);
      return;
    }
  }
  queue_.push_back(Entry{next_id_++, key, std::move(value)});
  stats_.queued_bytes += nbytes;
  stats_.peak_queued_bytes = std::max(stats_.peak_queued_bytes, stats_.queued_bytes);
  lk.unlock();
  work_cv_.notify_one();
}

bool UploadSink::next(double timeout_seconds, Item& out) {
  std::unique_lock<std::mutex> lk(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                         std::chrono::duration<double>(std::max(0.0, timeout_seconds)));
  for (;;) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (busy_keys_.count(it->key)) continue;  // one upload per key at a time, in order
      out.id = it->id;
      out.key = it->key;
      out.data = it->data;
      busy_keys_.insert(it->key);
      in_flight_.emplace(it->id, std::move(*it));
      queue_.erase(it);
      return true;
    }
    if (closed_ && queue_.empty()) return false;
    if (woken_) {
      woken_ = false;
      return false;
    }
    if (work_cv_.wait_until(lk, deadline) == std::cv_status::timeout) return false;
  }
}

void UploadSink::done(std::uint64_t id, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = in_flight_.find(id);
    E2F_EXPECT(it != in_flight_.end(), "done(): no upload in flight with id " + std::to_string(id));
    Entry e = std::move(it->second);
    in_flight_.erase(it);
    busy_keys_.erase(e.key);
    stats_.queued_bytes -= e.data->size();
    if (error.empty()) {
      ++stats_.objects_uploaded;
      stats_.bytes_uploaded += e.data->size();
    } else {
      ++stats_.objects_failed;
      errors_.emplace_back(e.key, error);
    }
    auto n = newest_.find(e.key);
    if (n != newest_.end() && n->second == e.data) newest_.erase(n);
  }
  space_cv_.notify_all();
  work_cv_.notify_all();
  idle_cv_.notify_all();
}

bool UploadSink::wait_idle(double timeout_seconds) {
  std::unique_lock<std::mutex> lk(mu_);
  return idle_cv_.wait_for(lk, std::chrono::duration<double>(std::max(0.0, timeout_seconds)),
                           [&] { return queue_.empty() && in_flight_.empty(); });
}

std::vector<std::pair<std::string, std::string>> UploadSink::take_errors() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::pair<std::string, std::string>> out;
  out.swap(errors_);
  return out;
}

void UploadSink::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }
  space_cv_.notify_all();
  work_cv_.notify_all();
  idle_cv_.notify_all();
}

void UploadSink::wake() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    woken_ = true;
  }
  work_cv_.notify_all();
}

UploadSink::Stats UploadSink::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  Stats s = stats_;
  s.queued_objects = queue_.size();
  s.in_flight = in_flight_.size();
  return s;
}

}  // namespace e2fastio
