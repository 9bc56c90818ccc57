// Zarr v3 sharding ("sharding_indexed") on the chunk pipeline. The engine
// writes an array's inner chunks as if they were ordinary chunks (keys
// "<path>/c/i/j/..." in inner-chunk coordinates); a ShardSink in front of the
// store's sink gathers them per shard and writes each shard as one object:
// the encoded inner chunks back to back plus the shard index (one uint64 LE
// (offset, nbytes) pair per inner chunk in C order, 2^64-1 twice for an absent
// chunk, then the CRC-32C of those bytes, little-endian), at the end of the
// object or at its start.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <new>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "e2fastio/sink.hpp"

namespace e2fastio {

// The geometry of one sharded array: array shape, inner chunk shape, shard
// shape (a multiple of the inner chunk shape along every dimension; the array
// shape need not be a multiple of it) and the chunk key encoding.
struct ShardLayout {
  std::string path;
  char separator = '/';
  std::vector<int64_t> shape, chunks, shards;
  bool index_at_start = false;

  void validate() const;
  std::size_t chunks_per_shard() const;               // inner chunks in one (whole) shard
  std::size_t index_nbytes() const { return 16 * chunks_per_shard() + 4; }
  std::string shard_key(const std::vector<int64_t>& shard) const;
  // An inner chunk key of this array -> its shard's coordinates and its C-order
  // position inside the shard; false when `key` is not an inner chunk key of it.
  bool locate(const std::string& key, std::vector<int64_t>& shard, std::size_t& pos) const;
  // Inner chunks of shard `shard` that lie (at least partly) inside the array.
  std::size_t chunks_in_bounds(const std::vector<int64_t>& shard) const;
};

namespace shard_format {
constexpr std::uint64_t kAbsent = ~std::uint64_t{0};
// Page-aligned bytes: an assembled shard can go to the device with O_DIRECT
// (DirectorySink takes that path only for aligned buffers).
template <class T>
struct PageAligned {
  using value_type = T;
  PageAligned() = default;
  template <class U>
  PageAligned(const PageAligned<U>&) noexcept {}
  T* allocate(std::size_t n) {
    void* p = nullptr;
    if (::posix_memalign(&p, 4096, n ? n * sizeof(T) : 1) != 0) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const PageAligned<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const PageAligned<U>&) const noexcept { return false; }
};
using Bytes = std::vector<std::uint8_t, PageAligned<std::uint8_t>>;
struct Piece {
  const std::uint8_t* data = nullptr;
  std::size_t nbytes = 0;
  bool present = false;
};
struct Entry {
  std::uint64_t offset = kAbsent, nbytes = kAbsent;
  bool present() const noexcept { return !(offset == kAbsent && nbytes == kAbsent); }
};
// One shard object from its inner chunks (C order).
Bytes assemble(const std::vector<Piece>& chunks, bool index_at_start);
// The index of a stored shard object with `nchunks` inner chunks. Throws
// std::runtime_error when the checksum does not match or an entry points
// outside the object.
std::vector<Entry> parse_index(const std::uint8_t* data, std::size_t nbytes, std::size_t nchunks,
                               bool index_at_start);
}  // namespace shard_format

// Gathers inner chunks of the arrays registered with add_array() and writes
// whole shards to `inner`; keys of other arrays pass straight through.
//  - A shard is written as soon as every inner chunk of it that lies in the
//    array was written through this sink (since its last completion); flush()
//    writes every shard still incomplete.
//  - A shard written while incomplete is merged with the stored object
//    (read-modify-write): chunks it lacks keep their stored bytes; an absent
//    chunk reads back as the fill value, as an unwritten chunk does.
//  - Writes of one shard never overlap and land in the order they were
//    decided; at most `max_inflight` shard objects are written at once.
//  - Memory: encoded inner chunks held (under assembly, and being written,
//    with the assembled object) are bounded by `capacity_bytes`: when a new
//    chunk would exceed it, the writer first waits for shard writes in flight
//    to finish, and if held chunks still exceed the bound the oldest shards
//    under assembly are written out incomplete (a later chunk of such a shard
//    merges). No writer waits for anything but shard writes in flight, so
//    there is no deadlock, also with max_inflight == 1.
//  - read() of an inner chunk serves it from the shard under assembly, else
//    from a shard being written, else from the stored shard object.
// Shard writes run on the thread whose write() completed (or spilled) the
// shard, or on the one calling flush(); their errors are raised there, naming
// the shard key.
class ShardSink : public Sink {
 public:
  struct Stats {
    std::size_t capacity = 0, max_inflight = 0;
    std::size_t held_bytes = 0, peak_held_bytes = 0, open_shards = 0;
    std::uint64_t chunks_gathered = 0, shards_written = 0, shards_merged = 0, shards_spilled = 0;
    std::uint64_t writer_waits = 0;
    double writer_wait_seconds = 0;
    std::map<std::string, std::uint64_t> merged_by_array;  // shards merged, by array path
  };

  ShardSink(std::shared_ptr<Sink> inner, std::size_t capacity_bytes, std::size_t max_inflight);
  // Register (or replace) a sharded array. Nothing of it may be held (flush first).
  void add_array(const ShardLayout& layout);
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "shards in " + inner_->describe(); }
  // A completed shard is written to the store from whichever thread stored its
  // last chunk: on a device-bound store, that is a writer thread, not an encoder.
  bool waits_on_device() const override { return inner_->waits_on_device(); }
  // Write out every shard under assembly, except those in `hold` (array path,
  // shard coordinates), which stay under assembly; wait for every shard write in flight.
  void flush(const std::vector<std::pair<std::string, std::vector<int64_t>>>& hold = {});
  Stats stats() const;
  const std::shared_ptr<Sink>& inner() const noexcept { return inner_; }

 private:
  using Data = std::shared_ptr<const std::vector<uint8_t>>;
  struct Open {  // a shard under assembly
    std::shared_ptr<const ShardLayout> layout;
    std::vector<int64_t> coords;
    std::vector<Data> chunks;   // per position; null: not held
    std::vector<uint8_t> seen;  // written since the shard last completed (held or spilled)
    std::size_t held = 0, seen_count = 0, bytes = 0, in_bounds = 0;
    std::uint64_t since = 0;    // when its oldest held chunk arrived (spill order)
  };
  struct Pending {  // a shard write decided, waiting or running
    std::string key;
    std::shared_ptr<const ShardLayout> layout;
    std::vector<Data> chunks;
    bool merge = false;
    std::size_t bytes = 0;
  };
  using PendingPtr = std::shared_ptr<Pending>;

  const ShardLayout* find_layout(const std::string& key, std::vector<int64_t>& shard, std::size_t& pos,
                                 std::shared_ptr<const ShardLayout>& keep) const;
  PendingPtr take(const std::string& key, Open& o, bool keep_seen);  // mu_ held
  void emit_all(const std::vector<PendingPtr>& todo);
  void emit(const PendingPtr& p);

  std::shared_ptr<Sink> inner_;
  const std::size_t capacity_, max_inflight_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<const ShardLayout>> layouts_;  // by array path
  std::unordered_map<std::string, Open> open_;                        // by shard key
  std::unordered_map<std::string, std::deque<PendingPtr>> writing_;   // by shard key, in decision order
  std::size_t held_ = 0, open_bytes_ = 0, writing_bytes_ = 0, in_flight_ = 0;
  std::uint64_t seq_ = 0;
  Stats stats_;
};

}  // namespace e2fastio
