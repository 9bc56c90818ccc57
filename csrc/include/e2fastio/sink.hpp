// Where encoded chunks go. Implementations are thread-safe: many encoder
// threads call write() at once.
#pragma once

#include <cstddef>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "e2fastio/fork_safe_mutex.hpp"

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

// Alignment of direct I/O (O_DIRECT) on one file. `offset` applies to file
// offsets and lengths, `memory` to buffer addresses; offset == 0: the file
// takes no direct I/O. The offset alignment is a multiple of the kernel's page
// size, not only of the device's block: a buffered write next to direct-written
// data must never share a page cache page with it, or the page (read before the
// direct write landed) can be written back over it later. That matters on
// kernels with 64 KiB pages (aarch64), where a 4 KiB-aligned direct interior
// shares pages with buffered edges.
struct DirectAlignment {
  std::size_t offset = 0;
  std::size_t memory = 0;
};

// The bytes [begin, end) of a write of n bytes at file offset `off` that go
// through O_DIRECT (both ends aligned); begin == end when none.
struct DirectSpan {
  std::uint64_t begin = 0, end = 0;
  bool empty() const noexcept { return end <= begin; }
};

namespace detail {
// Pure: the alignment from the kernel's page size and the file's STATX_DIOALIGN
// figures. `dio_known` false (headers or kernel without STATX_DIOALIGN): assume
// 4 KiB blocks and 4 KiB buffer alignment; known with offset 0: no direct I/O.
DirectAlignment direct_alignment(std::size_t page_size, bool dio_known, std::uint32_t dio_offset_align,
                                 std::uint32_t dio_mem_align);
// Pure: the largest `align`-aligned part of [off, off + n); empty when align is 0.
DirectSpan direct_span(std::uint64_t off, std::size_t n, std::size_t align);
// The alignment of the open file `fd` (statx STATX_DIOALIGN where offered) on this kernel.
DirectAlignment probe_direct_alignment(int fd);
}  // namespace detail

// A directory store: key "a/c/0/1" is the file <root>/a/c/0/1. Each object is
// written to a hidden temporary file in the same directory and renamed over
// the target, so neither a reader nor a crash sees a partial chunk.
// With fsync, write() returns once the chunk survives a crash: the file is
// fsynced before the rename, its directory after it, and every directory on
// the way from the root the first time this sink uses it (with its parent,
// which holds its entry).
// Direct I/O (O_DIRECT) bypasses the page cache for the aligned body of
// large objects: on these VMs fresh page-cache pages fault in at ~0.5 GB/s
// while O_DIRECT writes reach the device at ~1.6-2.6 GB/s, and the data needs
// no later writeback. The body is aligned as DirectAlignment says (probed on
// the first file); falls back to buffered writes when the buffer is not
// aligned or the file system refuses O_DIRECT (tmpfs, some network FS).
enum class DirectIO : int { off = 0, on = 1, automatic = 2 };

class DirectorySink : public Sink {
 public:
  static constexpr std::size_t kDirectMin = 1 << 20;  // automatic: objects of at least 1 MiB

  explicit DirectorySink(std::string root, bool fsync = false, DirectIO direct = DirectIO::automatic);
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "directory " + root_; }
  const std::string& root() const noexcept { return root_; }
  // Whether O_DIRECT was used for the last eligible object (false once refused).
  bool direct_io_active() const noexcept { return direct_ != DirectIO::off && !direct_refused_.load(); }

 private:
  // Make `dir` (and what it needs above it); with fsync, make them durable,
  // `dir`'s own contents excepted when `synced_by_caller`.
  void ensure_dir(const std::string& dir, bool synced_by_caller = false);
  bool known_dir(const std::string& dir);
  // mkdir `dir` and whatever it needs above it; appends each directory handled to `chain`, outermost first.
  void make_dirs(const std::string& dir, std::vector<std::string>& chain);
  void ensure_parent_of_chunk(const std::string& key, const std::string& path);  // errors name the key
  int open_temp(const std::string& key, const std::string& path, const std::string& tmp, bool direct);
  DirectAlignment alignment_for(int fd);  // probed once, on the first file opened for direct I/O
  std::string root_;
  bool fsync_;
  DirectIO direct_;
  std::atomic<bool> direct_refused_{false};
  std::atomic<bool> align_probed_{false};
  std::atomic<std::size_t> align_offset_{0}, align_memory_{0};
  ForkSafeMutex dirs_mu_;
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
  mutable ForkSafeMutex mu_;
  std::unordered_map<std::string, Value> map_;
};

// Hands encoded chunks to a single consumer thread (HDF5 is not thread-safe:
// the NetCDF4 backend stores them from the caller's thread), oldest first.
// Bounded: at most `capacity` bytes of encoded chunks are held (admitted and
// not yet popped), or one chunk when a chunk alone is larger; an encoder
// thread whose chunk does not fit waits until the consumer pops. The consumer
// must therefore keep popping while it waits for encoders (it learns that a
// chunk may be ready from the engine: every write ends a chunk's job).
// Popped bytes are moved out, never copied. Reads find nothing: writers
// through it must cover whole chunks. Plain mutexes (paired with condition
// variables): a forked child must make its own.
class CollectSink : public Sink {
 public:
  struct Item {
    std::string key;
    std::vector<uint8_t> data;
  };
  struct Stats {
    std::size_t capacity = 0;
    std::size_t held_bytes = 0, peak_held_bytes = 0, held_chunks = 0;
    std::uint64_t chunks_collected = 0, chunks_popped = 0, bytes_collected = 0;
    std::uint64_t writer_waits = 0;  // writes that waited for room
    double writer_wait_seconds = 0;
  };

  explicit CollectSink(std::size_t capacity_bytes);
  bool read(const std::string&, std::vector<uint8_t>&) override { return false; }
  // Waits while the chunk does not fit; fails once closed.
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "collector"; }
  // The oldest collected chunk, moved out (its bytes leave the bound); false when none is ready.
  bool pop(Item& out);
  // No consumer any more: held chunks are dropped, waiting and later writers fail.
  void close();
  Stats stats() const;
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  const std::size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable room_cv_;
  std::deque<Item> items_;
  std::size_t held_ = 0;  // admitted bytes: collected, or being copied in
  bool closed_ = false;
  Stats stats_;
};

}  // namespace e2fastio

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
  Stats stats_;
  std::mutex fetch_mu_;
  Fetch fetch_;
};

}  // namespace e2fastio

namespace e2fastio {

namespace detail {
// pwrite every byte (retrying short writes); errors name the path and offset.
void pwrite_all(int fd, const uint8_t* p, std::size_t n, std::uint64_t off, const std::string& path);
// Write [p, p+n) at file offset `off`: the interior aligned to `align` (a
// DirectAlignment::offset) through `direct_fd` (O_DIRECT; -1: none) via `bounce`
// (aligned for direct I/O, at least n bytes), the edges (and everything without
// O_DIRECT) through `buffered_fd`.
void write_in_place(int buffered_fd, int direct_fd, std::size_t align, const uint8_t* p, std::size_t n,
                    std::uint64_t off, uint8_t* bounce, const std::string& path);
}  // namespace detail

// A C-order array stored contiguously at `offset` in an existing file (an HDF5
// contiguous dataset, allocated): chunk keys of an ArraySpec whose chunks are
// 1 or the full extent along every dimension map to contiguous byte ranges,
// written in place (O_DIRECT interior, pwrite edges) and read back with pread.
class FileRegionSink : public Sink {
 public:
  FileRegionSink(std::string path, std::uint64_t offset, std::string array_path, std::vector<int64_t> shape,
                 std::vector<int64_t> chunks, std::size_t itemsize, bool direct);
  ~FileRegionSink() override;
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "file region of " + path_; }
  bool direct_io_active() const noexcept { return direct_fd_ >= 0; }
  const DirectAlignment& direct_alignment() const noexcept { return align_; }

 private:
  std::uint64_t offset_of(const std::string& key) const;
  uint8_t* take_bounce();
  void give_bounce(uint8_t* b);
  std::string path_;
  std::uint64_t offset_;
  std::string prefix_;
  std::vector<int64_t> shape_, chunks_;
  std::size_t itemsize_, chunk_bytes_;
  int fd_ = -1, direct_fd_ = -1;
  DirectAlignment align_;
  std::size_t bounce_align_ = 0;
  ForkSafeMutex mu_;
  std::vector<uint8_t*> bounces_;
};

}  // namespace e2fastio
