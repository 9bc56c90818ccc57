// Direct I/O alignment (page size and statx STATX_DIOALIGN) and in-place writes.
#include "e2fastio/direct_io.hpp"

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

namespace detail {

DirectAlignment direct_alignment(std::size_t page_size, bool dio_known, std::uint32_t dio_offset_align,
                                 std::uint32_t dio_mem_align) {
  if (page_size == 0) page_size = kAssumedBlock;
  if (!dio_known) return {std::lcm(page_size, kAssumedBlock), kAssumedBlock};
  if (dio_offset_align == 0) return {};  // the file system offers no direct I/O for this file
  return {std::lcm(page_size, static_cast<std::size_t>(dio_offset_align)),
          std::max<std::size_t>(dio_mem_align, 1)};
}

DirectSpan direct_span(std::uint64_t off, std::size_t n, std::size_t align) {
  if (align == 0) return {off, off};
  const std::uint64_t begin = (off + align - 1) / align * align;
  const std::uint64_t end = (off + n) / align * align;
  return end > begin ? DirectSpan{begin, end} : DirectSpan{off, off};
}

DirectAlignment probe_direct_alignment(int fd) {
  long page = ::sysconf(_SC_PAGESIZE);
  const std::size_t page_size = page > 0 ? static_cast<std::size_t>(page) : kAssumedBlock;
#ifdef STATX_DIOALIGN
  struct statx st {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) == 0 && (st.stx_mask & STATX_DIOALIGN))
    return direct_alignment(page_size, true, st.stx_dio_offset_align, st.stx_dio_mem_align);
#else
  (void)fd;
#endif
  return direct_alignment(page_size, false, 0, 0);  // headers or kernel without STATX_DIOALIGN
}

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

void write_in_place(int buffered_fd, int direct_fd, std::size_t align, const uint8_t* p, std::size_t n,
                    std::uint64_t off, uint8_t* bounce, const std::string& path) {
  const DirectSpan span = direct_span(off, n, align);
  if (direct_fd < 0 || bounce == nullptr || span.empty()) {
    pwrite_all(buffered_fd, p, n, off, path);
    return;
  }
  const std::uint64_t a0 = span.begin, a1 = span.end;
  // Unaligned edges through the page cache: they share pages with neighbouring
  // data, never with the direct interior (page-aligned at both ends).
  pwrite_all(buffered_fd, p, static_cast<std::size_t>(a0 - off), off, path);
  pwrite_all(buffered_fd, p + (a1 - off), static_cast<std::size_t>(off + n - a1), a1, path);
  const auto mid = static_cast<std::size_t>(a1 - a0);
  std::memcpy(bounce, p + (a0 - off), mid);
  try {
    pwrite_all(direct_fd, bounce, mid, a0, path);
  } catch (const IOError& e) {
    if (e.error_code() != EINVAL) throw;
    pwrite_all(buffered_fd, bounce, mid, a0, path);  // an alignment the device refuses
  }
}

}  // namespace detail

}  // namespace e2fastio
