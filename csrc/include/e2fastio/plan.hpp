// Planning, the pure first stage of the pipeline: which chunks of an array a
// write touches, which positions of the caller's data land where in each, and
// whether a chunk is covered whole (encode from the data itself), partly (merge
// with what is stored) or at the array's edge (fill the rest). No I/O, no
// threads, no allocation beyond the plan itself: unit-tested on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "e2fastio/codec.hpp"
#include "e2fastio/sink.hpp"

namespace e2fastio {

// One Zarr v3 array with a regular chunk grid and the default chunk key
// encoding ("<path>/c/<i>/<j>/...").
struct ArraySpec {
  std::string path;                  // array path inside the store, e.g. "t2m"
  std::vector<int64_t> shape;
  std::vector<int64_t> chunks;
  CodecSpec codec;
  std::vector<uint8_t> fill_value;   // one element, native byte order
  char separator = '/';

  void validate() const;
  std::size_t chunk_nbytes() const;
  std::string chunk_key(const std::vector<int64_t>& chunk_coords) const;
};

// A strided host view of the data to write (byte strides, may be negative).
struct Slab {
  const uint8_t* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  std::size_t itemsize = 0;
};

// One write: `slab` lands at the orthogonal selection `index[d]` (one target
// index per slab position along each dimension; unique, in range) of `array`,
// whose encoded chunks go to `sink`.
struct WriteRequest {
  const ArraySpec* array;
  std::shared_ptr<Sink> sink;
  Slab slab;
  std::vector<std::vector<int64_t>> index;
};

// Throws std::invalid_argument naming what is wrong (rank, itemsize, index
// range); a request that passes can be planned and run.
void validate_request(const WriteRequest& r);

// A run of consecutive slab positions landing on consecutive chunk offsets.
struct Run {
  int64_t src;
  int64_t dst;
  int64_t len;
};

// For one dimension: which chunks the selection touches, and how.
struct DimPlan {
  std::vector<int64_t> chunk_ids;      // sorted
  std::vector<std::vector<Run>> runs;  // per chunk id
  std::vector<int64_t> covered;        // offsets covered, per chunk id
};

DimPlan plan_dimension(const std::vector<int64_t>& index, int64_t chunk);

// Copies the slab positions of one chunk (the runs of each dimension) into
// the chunk's C-order buffer, or, with whole-extent runs, gathers a strided
// slab into C order.
struct Scatter {
  const Slab* slab;
  std::vector<const std::vector<Run>*> runs;  // per dimension, for one chunk
  std::vector<int64_t> dst_strides;           // chunk C-order strides in bytes
  std::size_t itemsize;

  void copy(std::size_t d, const uint8_t* src, uint8_t* dst) const;
};

// One chunk's work item.
struct ChunkJob {
  const WriteRequest* req;
  std::vector<int64_t> coords;
  Scatter scatter;
  bool full;    // every element of the chunk (within the array) is written
  bool edge;    // the chunk extends past the array's end
  bool direct;  // the chunk is one C-contiguous block of the slab: encode from it, no gather
  int64_t src_offset;  // direct: byte offset of the chunk's first element in the slab
};

// The chunk jobs of `requests` (which, with `plans`, must outlive the jobs),
// request by request, chunks in C order of their coordinates.
void plan_jobs(const std::vector<WriteRequest>& requests, std::vector<std::vector<DimPlan>>& plans,
               std::vector<ChunkJob>& jobs);

// Fill `nbytes` of `raw` with repeated copies of the one-element `fill`.
void fill_with(uint8_t* raw, std::size_t nbytes, const std::vector<uint8_t>& fill);

// One thread budget shared by chunk parallelism and blosc's internal threads
// (see plan.cpp).
int blosc_threads_for(const std::vector<WriteRequest>& requests, std::size_t njobs, std::size_t nthreads);

}  // namespace e2fastio
