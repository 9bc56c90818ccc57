// Where encoded chunks go. Implementations are thread-safe: many encoder
// threads call write() at once.
#pragma once

#include <cstddef>
#include <atomic>
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
// Direct I/O (O_DIRECT) bypasses the page cache for the aligned body of
// large objects: on these VMs fresh page-cache pages fault in at ~0.5 GB/s
// while O_DIRECT writes reach the device at ~1.6-2.6 GB/s, and the data needs
// no later writeback. Falls back to buffered writes when the buffer is not
// aligned or the file system refuses O_DIRECT (tmpfs, some network FS).
enum class DirectIO : int { off = 0, on = 1, automatic = 2 };

class DirectorySink : public Sink {
 public:
  static constexpr std::size_t kDirectAlign = 4096;
  static constexpr std::size_t kDirectMin = 1 << 20;  // automatic: objects of at least 1 MiB

  explicit DirectorySink(std::string root, bool fsync = false, DirectIO direct = DirectIO::automatic);
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "directory " + root_; }
  const std::string& root() const noexcept { return root_; }
  // Whether O_DIRECT was used for the last eligible object (false once refused).
  bool direct_io_active() const noexcept { return direct_ != DirectIO::off && !direct_refused_.load(); }

 private:
  void ensure_dir(const std::string& dir);
  void ensure_parent_of_chunk(const std::string& key, const std::string& path);  // errors name the key
  int open_temp(const std::string& key, const std::string& path, const std::string& tmp, bool direct);
  std::string root_;
  bool fsync_;
  DirectIO direct_;
  std::atomic<bool> direct_refused_{false};
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

// Collects encoded chunks for a single-threaded consumer (HDF5 is not
// thread-safe: the NetCDF4 backend hands them to HDF5 from one thread).
// Reads find nothing: writers through it must cover whole chunks.
class CollectSink : public Sink {
 public:
  bool read(const std::string&, std::vector<uint8_t>&) override { return false; }
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "collector"; }
  // Everything collected so far, oldest first; empties the sink.
  std::vector<std::pair<std::string, std::vector<uint8_t>>> take();

 private:
  std::mutex mu_;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> items_;
};

}  // namespace e2fastio
