#include "e2fastio/engine.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "e2fastio/error.hpp"

namespace e2fastio {

namespace {

constexpr std::size_t kEncAlign = 64;

std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// A run of consecutive slab positions landing on consecutive chunk offsets.
struct Run {
  int64_t src;
  int64_t dst;
  int64_t len;
};

// For one dimension: which chunks the selection touches, and how.
struct DimPlan {
  std::vector<int64_t> chunk_ids;            // sorted
  std::vector<std::vector<Run>> runs;        // per chunk id
  std::vector<int64_t> covered;              // offsets covered, per chunk id
};

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

void fill_with(uint8_t* raw, std::size_t nbytes, const std::vector<uint8_t>& fill) {
  const std::size_t is = fill.size();
  if (std::all_of(fill.begin(), fill.end(), [](uint8_t b) { return b == 0; })) {
    std::memset(raw, 0, nbytes);
    return;
  }
  for (std::size_t off = 0; off + is <= nbytes; off += is) std::memcpy(raw + off, fill.data(), is);
}

struct Scatter {
  const Slab* slab;
  std::vector<const std::vector<Run>*> runs;  // per dimension, for one chunk
  std::vector<int64_t> dst_strides;           // chunk C-order strides in bytes
  std::size_t itemsize;

  void copy(std::size_t d, const uint8_t* src, uint8_t* dst) const {
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
};

}  // namespace

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

Engine::Engine(unsigned threads, std::size_t max_buffer_bytes) : pool_(threads), buffers_(max_buffer_bytes) {}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() { pool_.shutdown(); }

std::size_t Engine::staging_bytes_per_chunk(const ArraySpec& a) const {
  const std::size_t n = a.chunk_nbytes();
  return align_up(n, kEncAlign) + a.codec.max_encoded_size(n);
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.chunks_written = chunks_written_.load();
  s.chunks_merged = chunks_merged_.load();
  s.bytes_in = bytes_in_.load();
  s.bytes_out = bytes_out_.load();
  return s;
}

void Engine::write(const ArraySpec& a, const std::shared_ptr<Sink>& sink, const Slab& slab,
                   const std::vector<std::vector<int64_t>>& index) {
  a.validate();
  E2F_EXPECT(sink != nullptr, "no sink");
  const std::size_t nd = a.shape.size();
  E2F_EXPECT(slab.shape.size() == nd && slab.strides.size() == nd && index.size() == nd,
             "data has " + std::to_string(slab.shape.size()) + " dimensions but array '" + a.path + "' has " +
                 std::to_string(nd));
  E2F_EXPECT(slab.itemsize == a.codec.itemsize, "data itemsize " + std::to_string(slab.itemsize) +
                                                    " does not match array '" + a.path + "' itemsize " +
                                                    std::to_string(a.codec.itemsize));
  for (std::size_t d = 0; d < nd; ++d) {
    E2F_EXPECT(static_cast<int64_t>(index[d].size()) == slab.shape[d],
               "dimension " + std::to_string(d) + ": data has " + std::to_string(slab.shape[d]) +
                   " positions but the selection has " + std::to_string(index[d].size()));
    for (auto t : index[d])
      E2F_EXPECT(t >= 0 && t < a.shape[d], "dimension " + std::to_string(d) + ": index " + std::to_string(t) +
                                               " out of range [0, " + std::to_string(a.shape[d]) + ")");
    if (slab.shape[d] == 0) return;
  }

  std::vector<DimPlan> plans;
  plans.reserve(nd);
  std::size_t nchunks = 1;
  for (std::size_t d = 0; d < nd; ++d) {
    plans.push_back(plan_dimension(index[d], a.chunks[d]));
    nchunks *= plans.back().chunk_ids.size();
  }

  const std::size_t raw_n = a.chunk_nbytes();
  const std::size_t enc_off = align_up(raw_n, kEncAlign);
  const std::size_t staging = staging_bytes_per_chunk(a);
  const std::size_t enc_cap = a.codec.max_encoded_size(raw_n);
  // One thread budget: chunk parallelism first, the rest inside blosc.
  const unsigned nthreads = pool_.size();
  const int blosc_threads =
      static_cast<int>(std::max<std::size_t>(1, nthreads / std::max<std::size_t>(1, std::min<std::size_t>(nchunks, nthreads))));

  std::vector<int64_t> dst_strides(nd);
  {
    int64_t s = static_cast<int64_t>(a.codec.itemsize);
    for (std::size_t d = nd; d-- > 0;) {
      dst_strides[d] = s;
      s *= a.chunks[d];
    }
  }

  TaskGroup group;
  std::vector<std::size_t> pos(nd, 0);  // position in each dim's chunk list
  try {
    for (std::size_t i = 0; i < nchunks; ++i) {
      std::vector<int64_t> cc(nd);
      bool full = true, edge = false;
      Scatter sc{&slab, std::vector<const std::vector<Run>*>(nd), dst_strides, a.codec.itemsize};
      const uint8_t* src = slab.data;
      for (std::size_t d = 0; d < nd; ++d) {
        cc[d] = plans[d].chunk_ids[pos[d]];
        sc.runs[d] = &plans[d].runs[pos[d]];
        const int64_t extent = std::min(a.chunks[d], a.shape[d] - cc[d] * a.chunks[d]);
        if (plans[d].covered[pos[d]] != extent) full = false;
        if (extent != a.chunks[d]) edge = true;
      }
      auto lease = std::make_shared<Lease>(buffers_.acquire(staging));
      std::string key = a.chunk_key(cc);
      pool_.submit(group.wrap([this, &a, sink, sc = std::move(sc), src, lease, key = std::move(key), full, edge,
                               raw_n, enc_off, enc_cap, blosc_threads]() {
        uint8_t* raw = lease->data();
        try {
          if (!full) {
            std::vector<uint8_t> existing;
            if (sink->read(key, existing))
              decode_chunk(a.codec, existing.data(), existing.size(), raw, raw_n, blosc_threads);
            else
              fill_with(raw, raw_n, a.fill_value);
            chunks_merged_.fetch_add(1);
          } else if (edge) {
            fill_with(raw, raw_n, a.fill_value);
          }
          sc.copy(0, src, raw);
          const uint8_t* out = nullptr;
          std::size_t n = encode_chunk(a.codec, raw, raw_n, raw + enc_off, enc_cap, blosc_threads, &out);
          sink->write(key, out, n);
          chunks_written_.fetch_add(1);
          bytes_in_.fetch_add(raw_n);
          bytes_out_.fetch_add(n);
        } catch (const IOError&) {
          throw;  // already names the key and carries errno
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument("chunk '" + key + "': " + e.what());
        } catch (const std::exception& e) {
          throw std::runtime_error("chunk '" + key + "' (" + sink->describe() + "): " + e.what());
        }
        lease->release();
      }));
      // Advance the odometer over chunk ids (last dimension fastest).
      for (std::size_t d = nd; d-- > 0;) {
        if (++pos[d] < plans[d].chunk_ids.size()) break;
        pos[d] = 0;
      }
    }
  } catch (...) {
    try {
      group.wait();  // tasks reference this frame: never leave before they finish
    } catch (...) {
    }
    throw;
  }
  group.wait();
}

}  // namespace e2fastio
