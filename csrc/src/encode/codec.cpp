#include "e2fastio/codec.hpp"

#include <blosc.h>
#include <zlib.h>
#if E2FASTIO_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include <algorithm>
#include <new>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "e2fastio/error.hpp"

#ifndef E2FASTIO_ZLIB_LINKAGE
#error "E2FASTIO_ZLIB_LINKAGE is set by CMakeLists.txt: \"static\" or \"c-blosc\""
#endif
#ifndef E2FASTIO_HAVE_LIBDEFLATE
#error "E2FASTIO_HAVE_LIBDEFLATE is set by CMakeLists.txt: 0 or 1"
#endif

namespace e2fastio {

#if E2FASTIO_HAVE_LIBDEFLATE
namespace {
// libdeflate's compressors are not thread-safe and cost more to make than a small chunk costs to
// compress: each encoder thread keeps one per level it has used (a few hundred KiB each), freed
// when the thread ends.
libdeflate_compressor* thread_deflater(int level) {
  struct Cache {
    libdeflate_compressor* by_level[10] = {};
    ~Cache() {
      for (auto* c : by_level) libdeflate_free_compressor(c);
    }
  };
  thread_local Cache cache;
  libdeflate_compressor*& c = cache.by_level[level];
  if (c == nullptr) c = libdeflate_alloc_compressor(level);
  if (c == nullptr) throw std::bad_alloc();
  return c;
}
}  // namespace
#endif

ZlibInfo zlib_info() {
  ZlibInfo z;
  z.version = zlibVersion();
  z.header_version = ZLIB_VERSION;
  z.linkage = E2FASTIO_ZLIB_LINKAGE;
  return z;
}

std::string deflate_library() {
  const ZlibInfo z = zlib_info();
  std::string s = "zlib " + z.version;
  s += z.linkage == "static" ? " (static, linked into e2fastio)" : " (the copy inside c-blosc's libblosc.a)";
  if (z.version != z.header_version) s += ", compiled against zlib.h " + z.header_version;
#if E2FASTIO_HAVE_LIBDEFLATE
  s += "; deflate by libdeflate " LIBDEFLATE_VERSION_STRING " (static, linked into e2fastio)";
#endif
  return s;
}

void CodecSpec::validate() const {
  E2F_EXPECT(itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8,
             "itemsize must be 1, 2, 4 or 8, got " + std::to_string(itemsize));
  E2F_EXPECT(!(blosc && deflate), "a chunk uses either blosc or deflate, not both");
  if (deflate) {
    E2F_EXPECT(deflate_level >= 0 && deflate_level <= 9,
               "deflate level (complevel) must be in 0..9, got " + std::to_string(deflate_level));
    return;
  }
  if (!blosc) return;
  static const char* kNames[] = {"blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd"};
  bool known = std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return cname == n; });
  E2F_EXPECT(known, "blosc cname must be one of blosclz, lz4, lz4hc, snappy, zlib, zstd; got '" + cname + "'");
  const char* comp = nullptr;
  E2F_EXPECT(blosc_compcode_to_compname(blosc_compname_to_compcode(cname.c_str()), &comp) >= 0,
             "blosc cname '" + cname + "' is not compiled into this c-blosc build");
  E2F_EXPECT(clevel >= 0 && clevel <= 9, "blosc clevel must be in 0..9, got " + std::to_string(clevel));
  E2F_EXPECT(typesize >= 1, "blosc typesize must be >= 1");
}

std::size_t CodecSpec::max_encoded_size(std::size_t nbytes) const {
  // deflate: the zlib bound, plus room for the shuffled copy of the chunk.
  if (deflate) {
    std::size_t bound = compressBound(static_cast<uLong>(nbytes));
#if E2FASTIO_HAVE_LIBDEFLATE
    bound = std::max(bound, libdeflate_zlib_compress_bound(nullptr, nbytes));
#endif
    return bound + (hdf5_shuffle ? nbytes : 0);
  }
  return blosc ? nbytes + BLOSC_MAX_OVERHEAD : (big_endian && itemsize > 1 ? nbytes : 0);
}

void byteswap_inplace(uint8_t* data, std::size_t nbytes, std::size_t itemsize) {
  if (itemsize <= 1) return;
  for (std::size_t off = 0; off + itemsize <= nbytes; off += itemsize) std::reverse(data + off, data + off + itemsize);
}

void hdf5_shuffle(const uint8_t* src, uint8_t* dst, std::size_t nbytes, std::size_t itemsize) {
  const std::size_t n = nbytes / itemsize;
  for (std::size_t b = 0; b < itemsize; ++b)
    for (std::size_t i = 0; i < n; ++i) dst[b * n + i] = src[i * itemsize + b];
  std::memcpy(dst + n * itemsize, src + n * itemsize, nbytes - n * itemsize);  // trailing bytes unchanged
}

void hdf5_unshuffle(const uint8_t* src, uint8_t* dst, std::size_t nbytes, std::size_t itemsize) {
  const std::size_t n = nbytes / itemsize;
  for (std::size_t b = 0; b < itemsize; ++b)
    for (std::size_t i = 0; i < n; ++i) dst[i * itemsize + b] = src[b * n + i];
  std::memcpy(dst + n * itemsize, src + n * itemsize, nbytes - n * itemsize);
}

std::size_t encode_chunk(const CodecSpec& spec, uint8_t* raw, std::size_t nbytes, uint8_t* dst,
                         std::size_t dst_capacity, int blosc_threads, const uint8_t** out_ptr) {
  if (spec.big_endian) byteswap_inplace(raw, nbytes, spec.itemsize);
  if (spec.deflate) {
    if (dst_capacity < spec.max_encoded_size(nbytes)) E2F_FAIL("encode buffer too small");
    const uint8_t* src = raw;
    uint8_t* out = dst;
    uLongf cap = static_cast<uLongf>(dst_capacity);
    if (spec.hdf5_shuffle && spec.itemsize > 1) {
      // Shuffle into the tail of dst, compress into its head.
      uint8_t* scratch = dst + (dst_capacity - nbytes);
      hdf5_shuffle(raw, scratch, nbytes, spec.itemsize);
      src = scratch;
      cap = static_cast<uLongf>(dst_capacity - nbytes);
    }
    *out_ptr = out;
#if E2FASTIO_HAVE_LIBDEFLATE
    // libdeflate's level 1 writes up to ~12% more than zlib's on unshuffled noisy floats; its level 2
    // is smaller than zlib's level 1 on every field measured and still about twice its speed.
    const int level = spec.deflate_level == 1 ? 2 : spec.deflate_level;
    const std::size_t n = libdeflate_zlib_compress(thread_deflater(level), src, nbytes, out, cap);
    if (n == 0) E2F_FAIL("libdeflate could not compress " + std::to_string(nbytes) + " bytes within its bound");
    if (level != spec.deflate_level) {
      // The zlib header (RFC 1950) as compress2 writes it for the level asked: FLEVEL 0 ("fastest"),
      // FCHECK making the first two bytes a multiple of 31. Informational only: inflate ignores FLEVEL.
      out[1] = 0;
      out[1] = static_cast<uint8_t>((31 - out[0] * 256 % 31) % 31);
    }
    return n;
#else
    const int rc = compress2(out, &cap, src, static_cast<uLong>(nbytes), spec.deflate_level);
    if (rc != Z_OK) E2F_FAIL("zlib compress2 failed with code " + std::to_string(rc));
    return static_cast<std::size_t>(cap);
#endif
  }
  if (!spec.blosc) {
    *out_ptr = raw;
    return nbytes;
  }
  if (nbytes > static_cast<std::size_t>(BLOSC_MAX_BUFFERSIZE))
    throw std::invalid_argument("chunk of " + std::to_string(nbytes) +
                                " bytes exceeds blosc's 2 GiB limit; use smaller chunks");
  if (dst_capacity < nbytes + BLOSC_MAX_OVERHEAD) E2F_FAIL("encode buffer too small");
  int n = blosc_compress_ctx(spec.clevel, static_cast<int>(spec.shuffle), spec.typesize, nbytes, raw, dst,
                             dst_capacity, spec.cname.c_str(), spec.blocksize, std::max(1, blosc_threads));
  if (n <= 0) E2F_FAIL("blosc_compress_ctx failed with code " + std::to_string(n));
  *out_ptr = dst;
  return static_cast<std::size_t>(n);
}

void decode_chunk(const CodecSpec& spec, const uint8_t* enc, std::size_t enc_size, uint8_t* raw,
                  std::size_t nbytes, int blosc_threads) {
  if (spec.deflate) {
    std::vector<uint8_t> tmp(spec.hdf5_shuffle && spec.itemsize > 1 ? nbytes : 0);
    uint8_t* target = tmp.empty() ? raw : tmp.data();
    uLongf n = static_cast<uLongf>(nbytes);
    const int rc = uncompress(target, &n, enc, static_cast<uLong>(enc_size));
    if (rc != Z_OK || n != nbytes) E2F_FAIL("stored deflate chunk does not inflate to " + std::to_string(nbytes) + " bytes");
    if (!tmp.empty()) hdf5_unshuffle(tmp.data(), raw, nbytes, spec.itemsize);
    if (spec.big_endian) byteswap_inplace(raw, nbytes, spec.itemsize);
    return;
  }
  if (!spec.blosc) {
    if (enc_size != nbytes)
      E2F_FAIL("stored chunk has " + std::to_string(enc_size) + " bytes, expected " + std::to_string(nbytes));
    std::memcpy(raw, enc, nbytes);
  } else {
    if (enc_size < BLOSC_MIN_HEADER_LENGTH) E2F_FAIL("stored chunk is too short to be a blosc frame");
    size_t dec_n = 0, cbytes = 0, blocksize = 0;
    blosc_cbuffer_sizes(enc, &dec_n, &cbytes, &blocksize);
    if (enc[0] != 2 && enc[0] != 1)
      E2F_FAIL("stored chunk has blosc header version " + std::to_string(enc[0]) + "; only c-blosc 1.x frames are readable");
    if (dec_n != nbytes || cbytes != enc_size)
      E2F_FAIL("stored blosc chunk decodes to " + std::to_string(dec_n) + " bytes, expected " + std::to_string(nbytes));
    int n = blosc_decompress_ctx(enc, raw, nbytes, std::max(1, blosc_threads));
    if (n < 0 || static_cast<std::size_t>(n) != nbytes) E2F_FAIL("blosc_decompress_ctx failed with code " + std::to_string(n));
  }
  if (spec.big_endian) byteswap_inplace(raw, nbytes, spec.itemsize);
}

std::string blosc_version() { return BLOSC_VERSION_STRING; }

}  // namespace e2fastio
