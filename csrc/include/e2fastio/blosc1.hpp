// Blosc1 chunks assembled from blocks compressed elsewhere (on the device, by
// nvCOMP): the layout c-blosc 1.x would choose, the 16-byte header, the block
// offsets and each block's size, byte shuffle per block, and the "memcpyed"
// chunk when compression would make it grow. Pure host code, no I/O: what a
// Blosc1 decoder (c-blosc 1.x, numcodecs, zarr-python's BloscCodec,
// tensorstore) reads back exactly. Format as in c-blosc's blosc.c:
//   header  : version 2, versionlz 1 (zstd), flags, typesize, nbytes, blocksize, cbytes (LE uint32s)
//   flags   : bit0 byte shuffle, bit1 memcpyed, bit4 do-not-split, bits 5-7 codec (zstd = 4)
//   bstarts : one int32 per block, the offset of that block from the chunk's start
//   block   : int32 compressed size, then one zstd frame; a size equal to the
//             block's length means the block is stored raw (shuffled).
// A memcpyed chunk is the header followed by the unshuffled bytes (cbytes = nbytes + 16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace e2fastio {

constexpr std::size_t kBlosc1HeaderBytes = 16;

struct Blosc1Layout {
  std::size_t nbytes = 0;     // raw chunk bytes
  std::size_t typesize = 1;   // as written in the header (1 when the element is wider than 255 bytes)
  std::size_t blocksize = 0;
  std::size_t nblocks = 0;
  std::size_t leftover = 0;   // bytes of the last block when it is short (0: every block is whole)
  bool memcpyed = false;      // too small to compress (c-blosc memcpys chunks under 128 bytes)

  std::size_t block_bytes(std::size_t b) const noexcept {
    return (b + 1 == nblocks && leftover) ? leftover : blocksize;
  }
  // The largest a chunk of this layout can become (memcpyed: header + raw).
  std::size_t max_chunk_bytes() const noexcept { return nbytes + kBlosc1HeaderBytes; }
};

// The block size c-blosc 1.x picks for zstd (a "high compression ratio" codec
// that never splits blocks) at `clevel`, or `forced_blocksize` when non-zero
// (clamped as c-blosc does). Throws std::invalid_argument for nbytes > 2^31 - 1 - 16
// (a Blosc1 chunk's limit) or typesize 0.
Blosc1Layout blosc1_zstd_layout(std::size_t nbytes, std::size_t typesize, int clevel, std::size_t forced_blocksize);

// One copy the assembler asks for: `nbytes` of block `block`'s payload (its
// zstd frame, or the shuffled block itself when `raw`) to `dst_offset` in the chunk.
struct Blosc1Piece {
  std::size_t block;
  std::size_t dst_offset;
  std::size_t nbytes;
  bool raw;
};

struct Blosc1Chunk {
  std::size_t cbytes = 0;            // the chunk's size
  bool memcpyed = false;             // pieces: one raw copy of the whole (shuffled) chunk to offset 16; unshuffle after
  std::size_t raw_blocks = 0;        // blocks stored raw because their frame was not smaller
  std::vector<Blosc1Piece> pieces;   // payload copies, in chunk order
};

// Write the header, the block offsets and the block sizes of a zstd chunk
// whose block b compressed to `frame_bytes[b]` into `dst` (at least
// layout.max_chunk_bytes()), and say which payloads go where. `shuffle`
// records byte shuffle in the header (the payloads must be shuffled per block).
Blosc1Chunk blosc1_zstd_assemble(const Blosc1Layout& layout, bool shuffle, const std::size_t* frame_bytes,
                                 std::uint8_t* dst);

// Byte shuffle of one block as c-blosc does it: element byte k of every
// whole element to plane k, trailing bytes (len % typesize) copied as they are.
void blosc1_shuffle_block(const std::uint8_t* src, std::uint8_t* dst, std::size_t len, std::size_t typesize);
void blosc1_unshuffle_block(const std::uint8_t* src, std::uint8_t* dst, std::size_t len, std::size_t typesize);
// Shuffle (or undo it) block by block over a whole chunk.
void blosc1_shuffle_chunk(const Blosc1Layout& layout, const std::uint8_t* src, std::uint8_t* dst);
void blosc1_unshuffle_chunk(const Blosc1Layout& layout, const std::uint8_t* src, std::uint8_t* dst);

}  // namespace e2fastio
