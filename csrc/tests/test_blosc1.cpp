// Blosc1 chunks assembled from separately compressed blocks (the device
// encoder's format), checked against c-blosc itself: the block size it picks,
// and its decoder reading back every chunk we assemble.
#include <blosc.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "e2fastio/blosc1.hpp"
#include "harness.hpp"

extern "C" {  // zstd, bundled inside libblosc.a
std::size_t ZSTD_compress(void* dst, std::size_t cap, const void* src, std::size_t n, int level);
std::size_t ZSTD_compressBound(std::size_t n);
unsigned ZSTD_isError(std::size_t code);
}

using namespace e2fastio;

namespace {

std::vector<std::uint8_t> smooth_floats(std::size_t nbytes, unsigned seed) {
  std::vector<std::uint8_t> out(nbytes);
  std::mt19937 rng(seed);
  float v = 280.0f;
  for (std::size_t i = 0; i + 4 <= nbytes; i += 4) {
    v += static_cast<float>(static_cast<int>(rng() % 5) - 2) * 0.0625f;
    std::memcpy(out.data() + i, &v, 4);
  }
  for (std::size_t i = nbytes / 4 * 4; i < nbytes; ++i) out[i] = static_cast<std::uint8_t>(rng());
  return out;
}

std::vector<std::uint8_t> noise(std::size_t nbytes, unsigned seed) {
  std::vector<std::uint8_t> out(nbytes);
  std::mt19937 rng(seed);
  for (auto& b : out) b = static_cast<std::uint8_t>(rng());
  return out;
}

// What the device path does, on the host: shuffle per block, one zstd frame
// per block, assemble, copy the payloads, unshuffle a memcpyed chunk.
std::vector<std::uint8_t> assemble_like_the_device(const std::vector<std::uint8_t>& raw, std::size_t typesize,
                                                   bool shuffle, std::size_t forced, Blosc1Chunk* info = nullptr) {
  const Blosc1Layout L = blosc1_zstd_layout(raw.size(), typesize, 3, forced);
  std::vector<std::uint8_t> shuffled(raw.size());
  if (shuffle)
    blosc1_shuffle_chunk(L, raw.data(), shuffled.data());
  else
    shuffled = raw;
  std::vector<std::vector<std::uint8_t>> frames(L.nblocks);
  std::vector<std::size_t> sizes(L.nblocks);
  for (std::size_t b = 0; b < L.nblocks; ++b) {
    const std::size_t n = L.block_bytes(b);
    frames[b].resize(ZSTD_compressBound(n));
    const std::size_t c = ZSTD_compress(frames[b].data(), frames[b].size(), shuffled.data() + b * L.blocksize, n, 1);
    sizes[b] = ZSTD_isError(c) ? 0 : c;
  }
  std::vector<std::uint8_t> chunk(L.max_chunk_bytes());
  Blosc1Chunk c = blosc1_zstd_assemble(L, shuffle, sizes.data(), chunk.data());
  for (const Blosc1Piece& p : c.pieces) {
    const std::uint8_t* src = p.raw ? shuffled.data() + p.block * L.blocksize : frames[p.block].data();
    std::memcpy(chunk.data() + p.dst_offset, src, p.nbytes);
  }
  if (c.memcpyed && shuffle) {
    std::vector<std::uint8_t> tmp(chunk.begin() + 16, chunk.begin() + 16 + static_cast<long>(raw.size()));
    blosc1_unshuffle_chunk(L, tmp.data(), chunk.data() + 16);
  }
  chunk.resize(c.cbytes);
  if (info) *info = c;
  return chunk;
}

bool decodes_to(const std::vector<std::uint8_t>& chunk, const std::vector<std::uint8_t>& raw) {
  std::size_t nbytes = 0, cbytes = 0, blocksize = 0;
  blosc_cbuffer_sizes(chunk.data(), &nbytes, &cbytes, &blocksize);
  if (nbytes != raw.size() || cbytes != chunk.size()) return false;
  std::vector<std::uint8_t> out(raw.size() + 1);
  const int n = blosc_decompress_ctx(chunk.data(), out.data(), out.size(), 1);
  return n == static_cast<int>(raw.size()) && std::memcmp(out.data(), raw.data(), raw.size()) == 0;
}

TEST(blosc1_layout_picks_the_block_size_c_blosc_picks_for_zstd) {
  for (int clevel : {1, 3, 5, 9})
    for (std::size_t typesize : {1, 2, 4, 8})
      for (std::size_t nbytes : {std::size_t{200}, std::size_t{4000}, std::size_t{32768}, std::size_t{100003},
                                 std::size_t{721 * 1440 * 4}}) {
        for (std::size_t forced : {std::size_t{0}, std::size_t{65536}, std::size_t{1000}}) {
          std::vector<std::uint8_t> raw = smooth_floats(nbytes, 7);
          std::vector<std::uint8_t> out(nbytes + 16);
          const int c = blosc_compress_ctx(clevel, 1, typesize, nbytes, raw.data(), out.data(), out.size(), "zstd",
                                           forced, 1);
          CHECK(c > 0);
          std::size_t nb = 0, cb = 0, bs = 0;
          blosc_cbuffer_sizes(out.data(), &nb, &cb, &bs);
          const Blosc1Layout L = blosc1_zstd_layout(nbytes, typesize, clevel, forced);
          if (L.blocksize != bs)
            std::cerr << "  clevel " << clevel << " typesize " << typesize << " nbytes " << nbytes << " forced "
                      << forced << ": ours " << L.blocksize << ", c-blosc " << bs << "\n";
          CHECK(L.blocksize == bs);
          CHECK(L.nblocks == (nbytes + bs - 1) / bs);
        }
      }
}

TEST(blosc1_shuffle_matches_c_blosc_per_block) {
  // c-blosc stores a block it cannot compress as its shuffled bytes: compare ours with those.
  for (std::size_t typesize : {2, 4, 8}) {
    const std::size_t n = 4096 + 3;  // a last block with trailing bytes
    std::vector<std::uint8_t> raw = noise(n, 11);
    std::vector<std::uint8_t> out(n + 64);
    const int c = blosc_compress_ctx(5, 1, typesize, n, raw.data(), out.data(), out.size(), "zstd", 1024, 1);
    CHECK(c > 0);
    const Blosc1Layout L = blosc1_zstd_layout(n, typesize, 5, 1024);
    if (out[2] & 0x2) continue;  // memcpyed by c-blosc: no shuffled blocks to compare
    std::vector<std::uint8_t> mine(n);
    blosc1_shuffle_chunk(L, raw.data(), mine.data());
    for (std::size_t b = 0; b < L.nblocks; ++b) {
      std::uint32_t start, size;
      std::memcpy(&start, out.data() + 16 + 4 * b, 4);
      std::memcpy(&size, out.data() + start, 4);
      if (size == L.block_bytes(b)) CHECK(std::memcmp(out.data() + start + 4, mine.data() + b * L.blocksize, size) == 0);
    }
    std::vector<std::uint8_t> back(n);
    blosc1_unshuffle_chunk(L, mine.data(), back.data());
    CHECK(back == raw);
  }
}

TEST(blosc1_assembled_chunks_decode_exactly_through_c_blosc) {
  const std::size_t grid = 721 * 1440 * 4;
  struct Case {
    std::vector<std::uint8_t> raw;
    std::size_t typesize;
    bool shuffle;
    std::size_t forced;
  };
  std::vector<std::uint8_t> mixed = smooth_floats(grid, 3);
  std::vector<std::uint8_t> half_noise = noise(grid / 2, 5);
  std::memcpy(mixed.data(), half_noise.data(), half_noise.size());
  std::vector<Case> cases = {
      {smooth_floats(grid, 1), 4, true, 0},        // the seed grid: whole blocks and a short last one
      {smooth_floats(grid, 2), 4, false, 0},       // no shuffle
      {mixed, 4, true, 0},                         // some blocks raw, the rest zstd
      {noise(grid, 4), 4, true, 0},                // nothing compresses: a memcpyed chunk
      {smooth_floats(100003, 6), 8, true, 65536},  // typesize 8, trailing bytes, forced block size
      {smooth_floats(100, 8), 4, true, 0},         // under 128 bytes: memcpyed as c-blosc does
      {smooth_floats(4096, 9), 1, true, 0},        // typesize 1: the shuffle flag without a shuffle
  };
  for (const Case& c : cases) {
    Blosc1Chunk info;
    std::vector<std::uint8_t> chunk = assemble_like_the_device(c.raw, c.typesize, c.shuffle, c.forced, &info);
    CHECK(decodes_to(chunk, c.raw));
    CHECK(chunk.size() <= c.raw.size() + 16);
    CHECK(chunk[0] == 2 && chunk[1] == 1);
    CHECK((chunk[2] & 0x10) && (chunk[2] >> 5) == 4);   // do-not-split, zstd
    CHECK(((chunk[2] & 0x1) != 0) == c.shuffle);
    CHECK(((chunk[2] & 0x2) != 0) == info.memcpyed);
  }
  Blosc1Chunk info;
  assemble_like_the_device(mixed, 4, true, 0, &info);
  CHECK(!info.memcpyed && info.raw_blocks > 0 && info.raw_blocks < blosc1_zstd_layout(grid, 4, 3, 0).nblocks);
  assemble_like_the_device(noise(grid, 4), 4, true, 0, &info);
  CHECK(info.memcpyed);
}

TEST(blosc1_layout_refuses_what_a_blosc1_chunk_cannot_hold) {
  CHECK(e2f_test::throws<std::invalid_argument>([] { blosc1_zstd_layout(std::size_t{1} << 31, 4, 3, 0); }, "at most"));
  CHECK(e2f_test::throws<std::invalid_argument>([] { blosc1_zstd_layout(100, 0, 3, 0); }, "typesize"));
  CHECK(e2f_test::throws<std::invalid_argument>([] { blosc1_zstd_layout(100, 4, 10, 0); }, "clevel"));
}

}  // namespace
