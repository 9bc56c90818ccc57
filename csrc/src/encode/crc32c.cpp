#include "e2fastio/crc32c.hpp"

#include <array>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define E2F_CRC32C_X86 1
#endif

namespace e2fastio {

namespace {

constexpr std::uint32_t kPoly = 0x82F63B78u;  // Castagnoli, bit-reflected

// Slicing-by-8 tables: t[k][b] is the CRC of byte b followed by k zero bytes.
struct Tables {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  Tables() {
    for (std::uint32_t b = 0; b < 256; ++b) {
      std::uint32_t c = b;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][b] = c;
    }
    for (std::size_t k = 1; k < 8; ++k)
      for (std::uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
  }
};

const Tables& tables() {
  static const Tables tab;
  return tab;
}

std::uint64_t load_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

namespace detail {

std::uint32_t crc32c_portable(const std::uint8_t* p, std::size_t n, std::uint32_t crc) noexcept {
  const auto& t = tables().t;
  std::uint32_t c = ~crc;
  while (n >= 8) {
    const std::uint64_t v = load_le64(p) ^ c;
    c = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^ t[4][(v >> 24) & 0xFF] ^
        t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^ t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFFu];
  return ~c;
}

#ifdef E2F_CRC32C_X86
// Newer clang (zig's, for the cross-built wheels) has CRC32 as a feature of its own beside SSE4.2.
#if defined(__clang__) && __clang_major__ >= 14
#define E2F_CRC32C_TARGET __attribute__((target("sse4.2,crc32")))
#else
#define E2F_CRC32C_TARGET __attribute__((target("sse4.2")))
#endif
E2F_CRC32C_TARGET static std::uint32_t crc32c_sse42(const std::uint8_t* p, std::size_t n,
                                                                     std::uint32_t crc) noexcept {
  std::uint64_t c = ~crc;
  while (n >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);  // x86 is little-endian; memcpy: no unaligned load
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  std::uint32_t c32 = static_cast<std::uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}
#endif

bool crc32c_hardware_available() noexcept {
#ifdef E2F_CRC32C_X86
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
#else
  return false;
#endif
}

std::uint32_t crc32c_hardware(const std::uint8_t* p, std::size_t n, std::uint32_t crc) noexcept {
#ifdef E2F_CRC32C_X86
  if (crc32c_hardware_available()) return crc32c_sse42(p, n, crc);
#endif
  return crc32c_portable(p, n, crc);
}

}  // namespace detail

std::uint32_t crc32c(const std::uint8_t* data, std::size_t n, std::uint32_t crc) noexcept {
  return detail::crc32c_hardware_available() ? detail::crc32c_hardware(data, n, crc)
                                             : detail::crc32c_portable(data, n, crc);
}

const char* crc32c_implementation() noexcept {
  return detail::crc32c_hardware_available() ? "sse4.2" : "portable";
}

}  // namespace e2fastio
