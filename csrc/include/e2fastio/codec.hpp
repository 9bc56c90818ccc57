// Chunk encoding exactly as zarr-python's v3 codec pipeline does it:
// the `bytes` codec (endianness), then optionally `blosc` (c-blosc 1.x frame,
// header version 2, what numcodecs reads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace e2fastio {

enum class Shuffle : int { none = 0, byte = 1, bit = 2 };

struct CodecSpec {
  std::size_t itemsize = 4;     // element size in bytes
  bool big_endian = false;      // `bytes` codec endian; data arrives native (little)
  bool blosc = false;           // false: no compressor
  std::string cname = "zstd";   // blosclz, lz4, lz4hc, snappy, zlib, zstd
  int clevel = 5;
  Shuffle shuffle = Shuffle::byte;
  std::size_t typesize = 4;
  std::size_t blocksize = 0;    // 0: automatic
  // HDF5's filters for NetCDF-4: optional byte shuffle (filter 2), then
  // deflate (filter 1) as a zlib stream (RFC 1950, what HDF5 writes).
  bool deflate = false;
  int deflate_level = 4;
  bool hdf5_shuffle = false;

  void validate() const;        // throws std::invalid_argument with the field name
  // Bytes a destination buffer needs for a raw chunk of `nbytes`.
  std::size_t max_encoded_size(std::size_t nbytes) const;
};

// Encode raw (native byte order, C order) chunk bytes. `raw` may be modified in
// place (byte swap). Returns the encoded size; *out_ptr points either at `dst`
// or, when no compressor is used, at `raw` itself (no copy).
std::size_t encode_chunk(const CodecSpec& spec, uint8_t* raw, std::size_t nbytes, uint8_t* dst,
                         std::size_t dst_capacity, int blosc_threads, const uint8_t** out_ptr);

// Decode an encoded chunk into `raw` (exactly `nbytes` of native-order data).
void decode_chunk(const CodecSpec& spec, const uint8_t* enc, std::size_t enc_size, uint8_t* raw,
                  std::size_t nbytes, int blosc_threads);

void byteswap_inplace(uint8_t* data, std::size_t nbytes, std::size_t itemsize);
// HDF5's shuffle filter: byte k of every element goes to plane k.
void hdf5_shuffle(const uint8_t* src, uint8_t* dst, std::size_t nbytes, std::size_t itemsize);
void hdf5_unshuffle(const uint8_t* src, uint8_t* dst, std::size_t nbytes, std::size_t itemsize);

std::string blosc_version();
// The one zlib linked into the core: HDF5 deflate/inflate and blosc's "zlib" codec.
struct ZlibInfo {
  std::string version;         // zlibVersion() of the linked library
  std::string header_version;  // ZLIB_VERSION of the zlib.h compiled against
  std::string linkage;         // "static" (a libz.a) or "c-blosc" (the copy inside libblosc.a)
};
ZlibInfo zlib_info();
std::string deflate_library();  // "zlib <version> (<linkage>)", for info()

}  // namespace e2fastio
