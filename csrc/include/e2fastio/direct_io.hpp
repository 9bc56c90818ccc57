// Direct I/O (O_DIRECT) alignment and the in-place write used by the file sinks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace e2fastio {

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
// Assumed where the kernel cannot tell: the block size and buffer alignment
// that every Linux file system offering O_DIRECT accepts.
inline constexpr std::size_t kAssumedBlock = 4096;

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

}  // namespace e2fastio
