#include "e2fastio/plan.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

#include "e2fastio/error.hpp"

namespace e2fastio {

void ArraySpec::validate() const {
  E2F_EXPECT(!shape.empty(), "array '" + path + "' must have at least one dimension");
  E2F_EXPECT(shape.size() == chunks.size(), "array '" + path + "': shape and chunks differ in length");
  for (std::size_t d = 0; d < shape.size(); ++d) {
    E2F_EXPECT(shape[d] >= 0, "array '" + path + "': negative shape");
    E2F_EXPECT(chunks[d] >= 1, "array '" + path + "': chunk sizes must be >= 1");
  }
  codec.validate();
  E2F_EXPECT(fill_value.size() == codec.itemsize, "array '" + path + "': fill value must be one element");
  E2F_EXPECT(separator == '/' || separator == '.', "chunk key separator must be '/' or '.'");
}

std::size_t ArraySpec::chunk_nbytes() const {
  std::size_t n = codec.itemsize;
  for (auto c : chunks) {
    if (static_cast<std::size_t>(c) > (SIZE_MAX / 2) / n) throw std::invalid_argument("chunk size overflows");
    n *= static_cast<std::size_t>(c);
  }
  return n;
}

std::string ArraySpec::chunk_key(const std::vector<int64_t>& cc) const {
  std::string key = path.empty() ? std::string("c") : path + "/c";
  for (auto c : cc) {
    key += separator;
    key += std::to_string(c);
  }
  return key;
}

void validate_request(const WriteRequest& r) {
  const ArraySpec& a = *r.array;
  a.validate();
  E2F_EXPECT(r.sink != nullptr, "no sink");
  const std::size_t nd = a.shape.size();
  const Slab& slab = r.slab;
  E2F_EXPECT(slab.shape.size() == nd && slab.strides.size() == nd && r.index.size() == nd,
             "data has " + std::to_string(slab.shape.size()) + " dimensions but array '" + a.path + "' has " +
                 std::to_string(nd));
  E2F_EXPECT(slab.itemsize == a.codec.itemsize, "data itemsize " + std::to_string(slab.itemsize) +
                                                    " does not match array '" + a.path + "' itemsize " +
                                                    std::to_string(a.codec.itemsize));
  for (std::size_t d = 0; d < nd; ++d) {
    E2F_EXPECT(static_cast<int64_t>(r.index[d].size()) == slab.shape[d],
               "dimension " + std::to_string(d) + ": data has " + std::to_string(slab.shape[d]) +
                   " positions but the selection has " + std::to_string(r.index[d].size()));
    for (auto t : r.index[d])
      E2F_EXPECT(t >= 0 && t < a.shape[d], "dimension " + std::to_string(d) + ": index " + std::to_string(t) +
                                               " out of range [0, " + std::to_string(a.shape[d]) + ")");
  }
}

DimPlan plan_dimension(const std::vector<int64_t>& index, int64_t chunk) {
  std::map<int64_t, std::vector<Run>> by_chunk;
  std::map<int64_t, int64_t> covered;
  for (int64_t p = 0; p < static_cast<int64_t>(index.size()); ++p) {
    const int64_t t = index[static_cast<std::size_t>(p)];
    const int64_t c = t / chunk, o = t % chunk;
    auto& runs = by_chunk[c];
    if (!runs.empty() && runs.back().src + runs.back().len == p && runs.back().dst + runs.back().len == o)
      ++runs.back().len;
    else
      runs.push_back({p, o, 1});
    ++covered[c];
  }
  DimPlan plan;
  for (auto& kv : by_chunk) {
    plan.chunk_ids.push_back(kv.first);
    plan.runs.push_back(std::move(kv.second));
    plan.covered.push_back(covered[kv.first]);
  }
  return plan;
}

void Scatter::copy(std::size_t d, const uint8_t* src, uint8_t* dst) const {
  const int64_t ss = slab->strides[d], ds = dst_strides[d];
  const bool last = d + 1 == runs.size();
  for (const Run& r : *runs[d]) {
    const uint8_t* s = src + r.src * ss;
    uint8_t* t = dst + r.dst * ds;
    if (last && ss == static_cast<int64_t>(itemsize)) {
      std::memcpy(t, s, static_cast<std::size_t>(r.len) * itemsize);
    } else if (last) {
      for (int64_t k = 0; k < r.len; ++k) std::memcpy(t + k * ds, s + k * ss, itemsize);
    } else {
      for (int64_t k = 0; k < r.len; ++k) copy(d + 1, s + k * ss, t + k * ds);
    }
  }
}

void fill_with(uint8_t* raw, std::size_t nbytes, const std::vector<uint8_t>& fill) {
  const std::size_t is = fill.size();
  if (std::all_of(fill.begin(), fill.end(), [](uint8_t b) { return b == 0; })) {
    std::memset(raw, 0, nbytes);
    return;
  }
  for (std::size_t off = 0; off + is <= nbytes; off += is) std::memcpy(raw + off, fill.data(), is);
}

void plan_jobs(const std::vector<WriteRequest>& requests, std::vector<std::vector<DimPlan>>& plans,
               std::vector<ChunkJob>& jobs) {
  plans.assign(requests.size(), {});
  for (std::size_t ri = 0; ri < requests.size(); ++ri) {
    const WriteRequest& r = requests[ri];
    const ArraySpec& a = *r.array;
    const std::size_t nd = a.shape.size();
    bool empty = false;
    for (auto n : r.slab.shape) empty = empty || n == 0;
    if (empty) continue;
    std::size_t nchunks = 1;
    for (std::size_t d = 0; d < nd; ++d) {
      plans[ri].push_back(plan_dimension(r.index[d], a.chunks[d]));
      nchunks *= plans[ri].back().chunk_ids.size();
    }
    std::vector<int64_t> dst_strides(nd);
    int64_t st = static_cast<int64_t>(a.codec.itemsize);
    for (std::size_t d = nd; d-- > 0;) {
      dst_strides[d] = st;
      st *= a.chunks[d];
    }
    const bool swaps = a.codec.big_endian && a.codec.itemsize > 1;
    std::vector<std::size_t> pos(nd, 0);  // odometer over each dim's chunk list
    for (std::size_t i = 0; i < nchunks; ++i) {
      ChunkJob job{&r, std::vector<int64_t>(nd),
                      Scatter{&r.slab, std::vector<const std::vector<Run>*>(nd), dst_strides, a.codec.itemsize},
                      true, false, false, 0};
      // Direct: the chunk is one block of the slab, C-contiguous in memory
      // (one run per dimension, the chunk's whole extent): encoded from there.
      bool block = true;
      int64_t offset = 0;
      int64_t expect = static_cast<int64_t>(a.codec.itemsize);
      for (std::size_t d = nd; d-- > 0;) {
        const DimPlan& p = plans[ri][d];
        job.coords[d] = p.chunk_ids[pos[d]];
        job.scatter.runs[d] = &p.runs[pos[d]];
        const int64_t extent = std::min(a.chunks[d], a.shape[d] - job.coords[d] * a.chunks[d]);
        if (p.covered[pos[d]] != extent) job.full = false;
        if (extent != a.chunks[d]) job.edge = true;
        const auto& runs = p.runs[pos[d]];
        if (runs.size() != 1 || runs[0].dst != 0 || runs[0].len != a.chunks[d]) {
          block = false;
          continue;
        }
        if (a.chunks[d] != 1 && r.slab.strides[d] != expect) block = false;
        expect *= a.chunks[d];
        offset += runs[0].src * r.slab.strides[d];
      }
      job.direct = block && job.full && !job.edge && !swaps;
      if (job.direct) job.src_offset = offset;
      jobs.push_back(std::move(job));
      for (std::size_t d = nd; d-- > 0;) {
        if (++pos[d] < plans[ri][d].chunk_ids.size()) break;
        pos[d] = 0;
      }
    }
  }
}

// One thread budget shared by chunk parallelism and blosc's internal
// threads. With few large chunks (one per variable and step is typical)
// chunks compress at different speeds, and a core whose chunk finished early
// would idle until the slowest is done: give each large chunk up to
// 2 x threads / chunks internal threads (at most `threads`), so the cores
// stay busy until the last block of the batch. Small chunks (< 4 MiB) use one
// thread each: thread start-up would cost more.
int blosc_threads_for(const std::vector<WriteRequest>& requests, std::size_t njobs, std::size_t nthreads) {
  std::size_t max_chunk = 0;
  for (const auto& r : requests) max_chunk = std::max(max_chunk, r.array->chunk_nbytes());
  if (max_chunk < (std::size_t{4} << 20) || njobs == 0) return 1;
  return static_cast<int>(std::min(nthreads, std::max<std::size_t>(1, (2 * nthreads + njobs - 1) / njobs)));
}

}  // namespace e2fastio
