// CRC-32C (Castagnoli), the checksum of Zarr v3's `crc32c` codec (the index of
// a shard ends with it). Two implementations with one result: the CPU's CRC32
// instruction (x86-64 SSE4.2, chosen at run time) and a portable table-driven
// one. Why not a library: no maintained C implementation can be linked
// statically from the build requirements we depend on (see
// docs/ARCHITECTURE.md, "CRC32C"); both paths here are tested against
// zarr-python's / numcodecs' crc32c output.
#pragma once

#include <cstddef>
#include <cstdint>

namespace e2fastio {

// CRC-32C of [data, data + n), continuing from `crc` (0 to start): crc32c(b, crc32c(a)) == crc32c(a + b).
std::uint32_t crc32c(const std::uint8_t* data, std::size_t n, std::uint32_t crc = 0) noexcept;

namespace detail {
std::uint32_t crc32c_portable(const std::uint8_t* data, std::size_t n, std::uint32_t crc) noexcept;
// Only where crc32c_hardware_available(); otherwise the portable result.
std::uint32_t crc32c_hardware(const std::uint8_t* data, std::size_t n, std::uint32_t crc) noexcept;
bool crc32c_hardware_available() noexcept;
}  // namespace detail

// "sse4.2" when the CPU instruction is used, "portable" otherwise.
const char* crc32c_implementation() noexcept;

}  // namespace e2fastio
