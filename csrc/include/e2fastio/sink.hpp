// Where encoded chunks go. Implementations are thread-safe: many encoder
// threads call write() at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace e2fastio {

class Sink {
 public:
  virtual ~Sink() = default;
  // Read a whole object; false when it does not exist.
  virtual bool read(const std::string& key, std::vector<uint8_t>& out) = 0;
  // Store a whole object atomically (a reader never sees a torn object).
  virtual void write(const std::string& key, const uint8_t* data, std::size_t nbytes) = 0;
  virtual std::string describe() const = 0;
};

// A directory store: key "a/c/0/1" is the file <root>/a/c/0/1. Each object is
// written to a hidden temporary file in the same directory and renamed over
// the target, so neither a reader nor a crash sees a partial chunk.
class DirectorySink : public Sink {
 public:
  explicit DirectorySink(std::string root, bool fsync = false);
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "directory " + root_; }
  const std::string& root() const noexcept { return root_; }

 private:
  void ensure_dir(const std::string& dir);
  std::string root_;
  bool fsync_;
  std::mutex dirs_mu_;
  std::unordered_set<std::string> made_dirs_;
};

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
  mutable std::mutex mu_;
  std::unordered_map<std::string, Value> map_;
};

}  // namespace e2fastio
