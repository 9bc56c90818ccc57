// Encoded chunks handed to one consumer thread (the NetCDF4 backend).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "e2fastio/sink.hpp"

namespace e2fastio {

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
  // Returns how many chunks it dropped (their writes had succeeded: only the caller can tell anyone).
  std::size_t close();
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
