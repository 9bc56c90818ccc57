// Engine::write_file_runs: byte runs at known file offsets, O_DIRECT where aligned.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // O_DIRECT
#endif
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "e2fastio/engine.hpp"
#include "e2fastio/error.hpp"

namespace e2fastio {

namespace {

constexpr std::size_t kBlock = 4096;               // O_DIRECT alignment (offset, length, memory)
constexpr std::size_t kPiece = std::size_t{8} << 20;  // bytes per task (and bounce buffer)

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void pwrite_all(int fd, const uint8_t* p, std::size_t n, std::uint64_t off, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IOError("writing " + std::to_string(n) + " bytes at offset " + std::to_string(off) + " of " + path,
                    errno);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
    off += static_cast<std::uint64_t>(w);
  }
}

}  // namespace

bool Engine::write_file_runs(const std::string& path, const std::vector<FileRun>& runs, bool direct) {
  for (const auto& r : runs) E2F_EXPECT(r.data != nullptr || r.nbytes == 0, "file run without data");
  Fd buffered, odirect;
  buffered.fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (buffered.fd < 0) throw IOError("opening " + path + " to write data in place", errno);
  if (direct) {
    odirect.fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);
    if (odirect.fd < 0 && errno != EINVAL) throw IOError("opening " + path + " with O_DIRECT", errno);
  }
  const bool use_direct = odirect.fd >= 0;
  // Split every run into pieces of at most kPiece bytes, cut at block boundaries.
  struct Piece {
    std::uint64_t offset;
    const uint8_t* data;
    std::size_t nbytes;
  };
  std::vector<Piece> pieces;
  for (const auto& r : runs) {
    std::uint64_t off = r.offset;
    const uint8_t* p = r.data;
    std::size_t left = r.nbytes;
    while (left > 0) {
      std::uint64_t end = std::min<std::uint64_t>(off + left, (off / kBlock) * kBlock + kPiece);
      auto n = static_cast<std::size_t>(end - off);
      pieces.push_back({off, p, n});
      off += n;
      p += n;
      left -= n;
    }
  }
  if (pieces.empty()) return use_direct;
  const int bfd = buffered.fd, dfd = odirect.fd;
  TaskGroup group;
  try {
    for (const Piece& pc : pieces) {
      std::uint64_t a0 = (pc.offset + kBlock - 1) / kBlock * kBlock;
      std::uint64_t a1 = (pc.offset + pc.nbytes) / kBlock * kBlock;
      std::shared_ptr<Lease> bounce;
      if (use_direct && a1 > a0) bounce = std::make_shared<Lease>(buffers_.acquire(static_cast<std::size_t>(a1 - a0)));
      pool_.submit(group.wrap([pc, a0, a1, bfd, dfd, bounce, &path]() {
        if (!bounce) {
          pwrite_all(bfd, pc.data, pc.nbytes, pc.offset, path);
          return;
        }
        // Unaligned edges through the page cache; they share blocks with neighbouring runs.
        pwrite_all(bfd, pc.data, static_cast<std::size_t>(a0 - pc.offset), pc.offset, path);
        const std::size_t tail = static_cast<std::size_t>(pc.offset + pc.nbytes - a1);
        pwrite_all(bfd, pc.data + (a1 - pc.offset), tail, a1, path);
        const std::size_t mid = static_cast<std::size_t>(a1 - a0);
        std::memcpy(bounce->data(), pc.data + (a0 - pc.offset), mid);
        try {
          pwrite_all(dfd, bounce->data(), mid, a0, path);
        } catch (const IOError& e) {
          if (e.error_code() != EINVAL) throw;
          pwrite_all(bfd, bounce->data(), mid, a0, path);  // alignment the device refuses
        }
        bounce->release();
      }));
    }
  } catch (...) {
    try {
      group.wait();
    } catch (...) {
    }
    throw;
  }
  group.wait();
  return use_direct;
}

}  // namespace e2fastio
