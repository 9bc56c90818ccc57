// An in-memory object store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "e2fastio/fork_safe_mutex.hpp"
#include "e2fastio/sink.hpp"

namespace e2fastio {

// An in-memory key/value store (backs zarr's MemoryStore through a mapping).
class MemorySink : public Sink {
 public:
  using Value = std::shared_ptr<const std::vector<uint8_t>>;
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "memory"; }

  Value get(const std::string& key) const;  // nullptr when absent
  bool erase(const std::string& key);
  bool contains(const std::string& key) const;
  std::vector<std::string> keys() const;
  std::size_t size() const;
  std::size_t nbytes() const;
  void clear();

 private:
  mutable ForkSafeMutex mu_;
  std::unordered_map<std::string, Value> map_;
};

}  // namespace e2fastio
