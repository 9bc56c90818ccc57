#include "e2fastio/memory_sink.hpp"

#include <mutex>

namespace e2fastio {

bool MemorySink::read(const std::string& key, std::vector<uint8_t>& out) {
  Value v = get(key);
  if (!v) return false;
  out.assign(v->begin(), v->end());
  return true;
}

void MemorySink::write(const std::string& key, const uint8_t* data, std::size_t nbytes) {
  auto v = std::make_shared<const std::vector<uint8_t>>(data, data + nbytes);
  std::lock_guard<ForkSafeMutex> lk(mu_);
  map_[key] = std::move(v);
}

MemorySink::Value MemorySink::get(const std::string& key) const {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  auto it = map_.find(key);
  return it == map_.end() ? nullptr : it->second;
}

bool MemorySink::erase(const std::string& key) {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  return map_.erase(key) > 0;
}

bool MemorySink::contains(const std::string& key) const {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  return map_.count(key) > 0;
}

std::vector<std::string> MemorySink::keys() const {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  std::vector<std::string> out;
  out.reserve(map_.size());
  for (auto& kv : map_) out.push_back(kv.first);
  return out;
}

std::size_t MemorySink::size() const {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  return map_.size();
}

std::size_t MemorySink::nbytes() const {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  std::size_t n = 0;
  for (auto& kv : map_) n += kv.second->size();
  return n;
}

void MemorySink::clear() {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  map_.clear();
}

}  // namespace e2fastio
