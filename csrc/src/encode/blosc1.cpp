#include "e2fastio/blosc1.hpp"

#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>

namespace e2fastio {

namespace {

constexpr std::size_t kMinBufferSize = 128;                                  // c-blosc's MIN_BUFFERSIZE
constexpr std::size_t kL1 = 32 * 1024;                                       // c-blosc's L1
constexpr std::size_t kMaxTypesize = 255;                                    // BLOSC_MAX_TYPESIZE
constexpr std::size_t kMaxBuffer = static_cast<std::size_t>(INT_MAX) - kBlosc1HeaderBytes;  // BLOSC_MAX_BUFFERSIZE
constexpr std::size_t kMaxBlocksize = (static_cast<std::size_t>(INT_MAX) - kMaxTypesize * 4) / 3;
constexpr std::uint8_t kVersion = 2, kZstdVersion = 1;
constexpr std::uint8_t kShuffleFlag = 0x1, kMemcpyedFlag = 0x2, kDontSplitFlag = 0x10, kZstdCodecFlags = 4 << 5;

void put_le32(std::uint8_t* p, std::size_t v) {
  const auto u = static_cast<std::uint32_t>(v);
  p[0] = static_cast<std::uint8_t>(u);
  p[1] = static_cast<std::uint8_t>(u >> 8);
  p[2] = static_cast<std::uint8_t>(u >> 16);
  p[3] = static_cast<std::uint8_t>(u >> 24);
}

}  // namespace

Blosc1Layout blosc1_zstd_layout(std::size_t nbytes, std::size_t typesize, int clevel, std::size_t forced_blocksize) {
  if (typesize == 0) throw std::invalid_argument("typesize must be at least 1");
  if (nbytes > kMaxBuffer)
    throw std::invalid_argument("a Blosc1 chunk holds at most " + std::to_string(kMaxBuffer) + " bytes, got " +
                                std::to_string(nbytes));
  if (clevel < 0 || clevel > 9) throw std::invalid_argument("clevel must be 0..9, got " + std::to_string(clevel));
  Blosc1Layout L;
  L.nbytes = nbytes;
  L.typesize = typesize > kMaxTypesize ? 1 : typesize;
  const std::size_t ts = L.typesize;
  // compute_blocksize() for zstd: high-compression codecs get twice the L1
  // based size, and zstd never enlarges for splitting (it does not split).
  std::size_t bs = nbytes;
  if (nbytes < ts) {
    bs = 1;
  } else {
    if (forced_blocksize) {
      bs = forced_blocksize < kMinBufferSize ? kMinBufferSize : forced_blocksize;
      if (bs > kMaxBlocksize) bs = kMaxBlocksize;
    } else if (nbytes >= kL1) {
      bs = kL1 * 2;
      switch (clevel) {
        case 0: bs /= 4; break;
        case 1: bs /= 2; break;
        case 2: break;
        case 3: bs *= 2; break;
        case 4: case 5: bs *= 4; break;
        case 6: case 7: case 8: bs *= 8; break;
        default: bs *= 16; break;  // 9: x8, and x2 again for high-compression codecs
      }
    }
    if (bs > nbytes) bs = nbytes;
    if (bs > ts) bs = bs / ts * ts;
  }
  L.blocksize = bs;
  if (nbytes == 0) {
    L.blocksize = 0;
    L.nblocks = 0;
  } else {
    L.nblocks = nbytes / bs;
    L.leftover = nbytes % bs;
    if (L.leftover) ++L.nblocks;
  }
  L.memcpyed = clevel == 0 || nbytes < kMinBufferSize;
  return L;
}

Blosc1Chunk blosc1_zstd_assemble(const Blosc1Layout& L, bool shuffle, const std::size_t* frame_bytes,
                                 std::uint8_t* dst) {
  Blosc1Chunk out;
  std::uint8_t flags = static_cast<std::uint8_t>(kDontSplitFlag | kZstdCodecFlags | (shuffle ? kShuffleFlag : 0));
  dst[0] = kVersion;
  dst[1] = kZstdVersion;
  dst[3] = static_cast<std::uint8_t>(L.typesize);
  put_le32(dst + 4, L.nbytes);
  put_le32(dst + 8, L.blocksize);
  // Offsets and sizes, as c-blosc lays them out: every block's int32 size
  // right before its payload; a frame not smaller than its block goes raw.
  const std::size_t limit = L.nbytes + kBlosc1HeaderBytes;  // beyond this, c-blosc memcpys the chunk
  std::size_t pos = kBlosc1HeaderBytes + 4 * L.nblocks;
  bool fits = !L.memcpyed && pos <= limit;
  if (fits) {
    out.pieces.reserve(L.nblocks);
    for (std::size_t b = 0; b < L.nblocks; ++b) {
      const std::size_t blen = L.block_bytes(b);
      const bool raw = frame_bytes[b] == 0 || frame_bytes[b] >= blen;
      const std::size_t n = raw ? blen : frame_bytes[b];
      if (pos + 4 + n > limit) {
        fits = false;
        break;
      }
      put_le32(dst + kBlosc1HeaderBytes + 4 * b, pos);
      put_le32(dst + pos, n);
      out.pieces.push_back({b, pos + 4, n, raw});
      out.raw_blocks += raw ? 1 : 0;
      pos += 4 + n;
    }
  }
  if (!fits) {
    out.pieces.clear();
    out.raw_blocks = 0;
    out.memcpyed = true;
    flags = static_cast<std::uint8_t>(flags | kMemcpyedFlag);
    pos = limit;
    if (L.nbytes) out.pieces.push_back({0, kBlosc1HeaderBytes, L.nbytes, true});
  }
  dst[2] = flags;
  put_le32(dst + 12, pos);
  out.cbytes = pos;
  return out;
}

void blosc1_shuffle_block(const std::uint8_t* src, std::uint8_t* dst, std::size_t len, std::size_t ts) {
  const std::size_t n = ts ? len / ts : 0;
  if (ts <= 1 || n == 0) {
    std::memcpy(dst, src, len);
    return;
  }
  for (std::size_t k = 0; k < ts; ++k)
    for (std::size_t i = 0; i < n; ++i) dst[k * n + i] = src[i * ts + k];
  std::memcpy(dst + n * ts, src + n * ts, len - n * ts);
}

void blosc1_unshuffle_block(const std::uint8_t* src, std::uint8_t* dst, std::size_t len, std::size_t ts) {
  const std::size_t n = ts ? len / ts : 0;
  if (ts <= 1 || n == 0) {
    std::memcpy(dst, src, len);
    return;
  }
  for (std::size_t k = 0; k < ts; ++k)
    for (std::size_t i = 0; i < n; ++i) dst[i * ts + k] = src[k * n + i];
  std::memcpy(dst + n * ts, src + n * ts, len - n * ts);
}

void blosc1_shuffle_chunk(const Blosc1Layout& L, const std::uint8_t* src, std::uint8_t* dst) {
  for (std::size_t b = 0; b < L.nblocks; ++b)
    blosc1_shuffle_block(src + b * L.blocksize, dst + b * L.blocksize, L.block_bytes(b), L.typesize);
}

void blosc1_unshuffle_chunk(const Blosc1Layout& L, const std::uint8_t* src, std::uint8_t* dst) {
  for (std::size_t b = 0; b < L.nblocks; ++b)
    blosc1_unshuffle_block(src + b * L.blocksize, dst + b * L.blocksize, L.block_bytes(b), L.typesize);
}

}  // namespace e2fastio
