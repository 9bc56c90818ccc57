// FileRegionSink: chunks of an array stored contiguously in a file, written in place
// (O_DIRECT for the aligned interior, pwrite for the edges) and read with pread.
#include "e2fastio/file_region_sink.hpp"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // O_DIRECT
#endif
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "e2fastio/error.hpp"

namespace e2fastio {

FileRegionSink::FileRegionSink(std::string path, std::uint64_t offset, std::string array_path,
                               std::vector<int64_t> shape, std::vector<int64_t> chunks, std::size_t itemsize,
                               bool direct)
    : path_(std::move(path)), offset_(offset), prefix_(array_path + "/c/"), shape_(std::move(shape)),
      chunks_(std::move(chunks)), itemsize_(itemsize) {
  E2F_EXPECT(!shape_.empty() && shape_.size() == chunks_.size(), "shape and chunks must have the same rank");
  E2F_EXPECT(itemsize_ > 0, "itemsize must be positive");
  chunk_bytes_ = itemsize_;
  for (std::size_t d = 0; d < shape_.size(); ++d) {
    // Each chunk must be one contiguous byte range of the C-order array: 1 or full.
    E2F_EXPECT(chunks_[d] == 1 || chunks_[d] == shape_[d],
               "file-region chunks must be 1 or the full extent along every dimension");
    chunk_bytes_ *= static_cast<std::size_t>(chunks_[d]);
  }
  fd_ = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) throw IOError("opening " + path_ + " to write data in place", errno);
  if (direct) direct_fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);  // -1: not supported here
  if (direct_fd_ >= 0) {
    align_ = detail::probe_direct_alignment(direct_fd_);
    if (align_.offset == 0) {  // opened, but the file system says it takes no direct I/O
      ::close(direct_fd_);
      direct_fd_ = -1;
    }
    bounce_align_ = std::max({align_.memory, detail::kAssumedBlock, sizeof(void*)});
  }
}

FileRegionSink::~FileRegionSink() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
  for (const host_memory::Block& b : bounces_) host_memory::give(b);
}

std::uint64_t FileRegionSink::offset_of(const std::string& key) const {
  E2F_EXPECT(key.compare(0, prefix_.size(), prefix_) == 0, "chunk key " + key + " is not under " + prefix_);
  std::uint64_t linear = 0;
  std::size_t pos = prefix_.size(), d = 0;
  while (d < shape_.size()) {
    std::size_t end = key.find('/', pos);
    int64_t c = std::stoll(key.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
    E2F_EXPECT(c >= 0 && c * chunks_[d] < shape_[d], "chunk key " + key + " is out of range");
    linear = linear * static_cast<std::uint64_t>(shape_[d]) + static_cast<std::uint64_t>(c * chunks_[d]);
    ++d;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  E2F_EXPECT(d == shape_.size(), "chunk key " + key + " has the wrong rank");
  return offset_ + linear * itemsize_;
}

std::size_t FileRegionSink::bounce_bytes() const noexcept {
  return (chunk_bytes_ + bounce_align_ - 1) / bounce_align_ * bounce_align_;
}

uint8_t* FileRegionSink::take_bounce() {
  {
    std::lock_guard<ForkSafeMutex> lk(mu_);
    if (!bounces_.empty()) {
      host_memory::Block b = bounces_.back();
      bounces_.pop_back();
      return b.data;
    }
  }
  // From the process cache: a file's sink lives as long as one file, and fresh
  // pages fault in slowly, so the next file's sink takes these warm.
  const std::size_t n = bounce_bytes();
  if (bounce_align_ <= host_memory::kBlockAlign) return host_memory::take(n, n, false).data;
  auto* b = static_cast<uint8_t*>(std::aligned_alloc(bounce_align_, n));
  if (!b) throw std::bad_alloc();
  return b;
}

void FileRegionSink::give_bounce(uint8_t* b) {
  std::lock_guard<ForkSafeMutex> lk(mu_);
  bounces_.push_back({b, bounce_bytes(), false});  // reused: at most one per thread that ever wrote at once
}

void FileRegionSink::write(const std::string& key, const uint8_t* data, std::size_t nbytes) {
  E2F_EXPECT(nbytes == chunk_bytes_, "chunk " + key + " has " + std::to_string(nbytes) + " bytes, expected " +
                                         std::to_string(chunk_bytes_) + " (uncompressed)");
  const std::uint64_t off = offset_of(key);
  uint8_t* bounce = direct_fd_ >= 0 && !detail::direct_span(off, nbytes, align_.offset).empty() ? take_bounce()
                                                                                                 : nullptr;
  try {
    detail::write_in_place(fd_, direct_fd_, align_.offset, data, nbytes, off, bounce, path_);
  } catch (const IOError& e) {
    if (bounce) give_bounce(bounce);
    throw IOError("writing chunk '" + key + "': " + e.context(), e.error_code());
  } catch (...) {
    if (bounce) give_bounce(bounce);
    throw;
  }
  if (bounce) give_bounce(bounce);
}

bool FileRegionSink::read(const std::string& key, std::vector<uint8_t>& out) {
  const std::uint64_t off = offset_of(key);
  out.resize(chunk_bytes_);
  std::size_t got = 0;
  while (got < chunk_bytes_) {
    ssize_t r = ::pread(fd_, out.data() + got, chunk_bytes_ - got, static_cast<off_t>(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IOError("reading chunk " + key + " of " + path_, errno);
    }
    if (r == 0) {  // past the end of the file: never written (a hole)
      std::fill(out.begin() + static_cast<std::ptrdiff_t>(got), out.end(), 0);
      break;
    }
    got += static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace e2fastio
