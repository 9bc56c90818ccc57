// An array stored contiguously in an existing file, written in place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "e2fastio/direct_io.hpp"
#include "e2fastio/fork_safe_mutex.hpp"
#include "e2fastio/host_memory.hpp"
#include "e2fastio/sink.hpp"

namespace e2fastio {

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
  // In-place writes wait on the device: stored by the engine's writer threads,
  // several at once (a deeper queue than the encoders alone keep).
  bool waits_on_device() const override { return true; }
  bool direct_io_active() const noexcept { return direct_fd_ >= 0; }
  const DirectAlignment& direct_alignment() const noexcept { return align_; }

 private:
  std::uint64_t offset_of(const std::string& key) const;
  std::size_t bounce_bytes() const noexcept;  // one chunk, rounded up to the bounce alignment
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
  std::vector<host_memory::Block> bounces_;  // idle bounce buffers; back to the process cache at the end
};

}  // namespace e2fastio
