#include "e2fastio/engine.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "e2fastio/cuda.hpp"
#include "e2fastio/error.hpp"

namespace e2fastio {

namespace {

constexpr std::size_t kEncAlign = 4096;  // encoded bytes stay O_DIRECT-aligned

std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Build a fresh T over `obj` without destroying it: what it owned is leaked.
template <class T>
void leak_in_place(T& obj) {
  ::new (static_cast<void*>(std::addressof(obj))) T();
}

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

Engine::Engine(unsigned threads, std::size_t max_buffer_bytes, std::size_t ring_bytes)
    : pool_(threads),
      buffers_(std::make_unique<BufferPool>(ring_bytes > 0 && ring_bytes < max_buffer_bytes
                                                ? max_buffer_bytes - ring_bytes
                                                : max_buffer_bytes)),
      owner_pid_(static_cast<long>(::getpid())) {
  if (ring_bytes > 0) {
    E2F_EXPECT(ring_bytes < max_buffer_bytes, "the staging ring must be smaller than max_buffer_bytes");
    ring_ = std::make_unique<StagingRing>(ring_bytes, cuda::available());
    // Fault the start of the ring in on the pool while it is idle, 32 MiB per
    // task, so that the first writes copy at memcpy speed. Only the start:
    // the ring restarts at offset 0 whenever it drains, so a writer that the
    // pool keeps up with reuses the same (warm) pages, and RSS stays at what
    // is actually used.
    const std::size_t warm = std::min<std::size_t>(ring_->capacity(), std::size_t{128} << 20);
    for (std::size_t off = 0; off < warm; off += (32u << 20))
      pool_.submit([r = ring_.get(), off] { r->prefault(off, 32u << 20); });
  }
}

Engine::~Engine() {
  shutdown();
  // Every copy on the stream has completed: each job waited for its copy before
  // encoding, and the pool has run them all. (An abandoned engine has no stream.)
  if (copy_stream_) {
    if (const cuda::Api* api = cuda::api()) api->StreamDestroy(copy_stream_);
    copy_stream_ = nullptr;
  }
}

void Engine::shutdown() {
  // In a forked child nothing of the parent's may be joined, released or
  // locked: leak it all first (a no-op when already abandoned).
  if (!abandoned_ && static_cast<long>(::getpid()) != owner_pid_) abandon_after_fork();
  pool_.shutdown();
}

void Engine::abandon_after_fork() noexcept {
  if (abandoned_) return;
  abandoned_ = true;
  // The pool's queued tasks own ring slots, buffer leases, copy fences (CUDA
  // events) and sinks; the key-order waiters hold more such tasks. All of it
  // is leaked as it stands: a parent thread may have been changing any of
  // these containers, or held the lock guarding them, when fork() copied the
  // memory. Fresh, empty objects take their places.
  pool_.abandon_after_fork();
  leak_in_place(key_waiters_);
  leak_in_place(device_fences_);
  leak_in_place(bg_error_);
  leak_in_place(async_mu_);
  leak_in_place(async_cv_);
  pending_ = 0;
  // The ring's block may be page-locked memory of the parent's CUDA context,
  // and its lock and the buffer pool's may be held: neither is given back.
  (void)ring_.release();
  const std::size_t capacity = buffers_->capacity();  // const since construction
  (void)buffers_.release();
  buffers_ = std::make_unique<BufferPool>(capacity);  // empty: stats and trim() still work
  copy_stream_ = nullptr;  // the parent's stream: never destroyed here
}

bool Engine::inherited() const noexcept { return abandoned_ || static_cast<long>(::getpid()) != owner_pid_; }

void Engine::ensure_usable() const {
  if (inherited())
    throw std::runtime_error(
        "this engine was created in process " + std::to_string(owner_pid_) + " and inherited through fork() by " +
        std::to_string(static_cast<long>(::getpid())) +
        "; its threads and staging memory stay with the parent: create a new engine in the child");
}

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
  write_batch({Request{&a, sink, slab, index}});
}

namespace {

void validate_request(const Engine::Request& r) {
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

}  // namespace

// One chunk's work item, planned on the caller's thread.
struct Engine::Job {
  const Request* req;
  std::vector<int64_t> coords;
  Scatter scatter;
  bool full;
  bool edge;
  bool direct;  // the slab is exactly this chunk, C-contiguous: encode from it, no gather
};

// Events of one device-to-host copy: `ready` (recorded on the producer
// stream) and `done` (recorded on the copy stream after the copies).
struct CopyFence {
  cuda::Event ready = nullptr;
  cuda::Event done = nullptr;
  std::once_flag waited;
  std::exception_ptr error;
  ~CopyFence() {
    if (const cuda::Api* a = cuda::api()) {
      if (done) a->EventDestroy(done);
      if (ready) a->EventDestroy(ready);
    }
  }
  void wait() {
    std::call_once(waited, [this] {
      try {
        cuda::check(cuda::api()->EventSynchronize(done), "device-to-host copy (cudaEventSynchronize)");
      } catch (...) {
        error = std::current_exception();
      }
    });
    if (error) std::rethrow_exception(error);
  }
};

struct Engine::Batch {
  std::vector<ArraySpec> specs;
  std::vector<Request> requests;
  std::vector<std::vector<DimPlan>> plans;
  std::vector<Job> jobs;
  StagingRing* ring = nullptr;
  StagingRing::Slot slot;
  std::atomic<std::size_t> remaining{0};
  int blosc_threads = 1;
  std::shared_ptr<CopyFence> fence;  // device submits: chunks wait for the copy
  ~Batch() {
    if (ring && slot.id) ring->release(slot.id);
  }
};

namespace {

bool c_contiguous(const Slab& s) {
  int64_t st = static_cast<int64_t>(s.itemsize);
  for (std::size_t d = s.shape.size(); d-- > 0;) {
    if (s.shape[d] != 1 && s.strides[d] != st) return false;
    st *= s.shape[d];
  }
  return true;
}

// Plan the chunk jobs of `requests` (which must outlive the jobs).
void plan_jobs(const std::vector<Engine::Request>& requests, std::vector<std::vector<DimPlan>>& plans,
               std::vector<Engine::Job>& jobs);

}  // namespace

namespace {

void plan_jobs(const std::vector<Engine::Request>& requests, std::vector<std::vector<DimPlan>>& plans,
               std::vector<Engine::Job>& jobs) {
  plans.assign(requests.size(), {});
  for (std::size_t ri = 0; ri < requests.size(); ++ri) {
    const Engine::Request& r = requests[ri];
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
    const bool slab_contig = c_contiguous(r.slab);
    std::vector<std::size_t> pos(nd, 0);  // odometer over each dim's chunk list
    for (std::size_t i = 0; i < nchunks; ++i) {
      Engine::Job job{&r, std::vector<int64_t>(nd),
                      Scatter{&r.slab, std::vector<const std::vector<Run>*>(nd), dst_strides, a.codec.itemsize},
                      true, false, false};
      bool whole = nchunks == 1 && slab_contig;
      for (std::size_t d = 0; d < nd; ++d) {
        const DimPlan& p = plans[ri][d];
        job.coords[d] = p.chunk_ids[pos[d]];
        job.scatter.runs[d] = &p.runs[pos[d]];
        const int64_t extent = std::min(a.chunks[d], a.shape[d] - job.coords[d] * a.chunks[d]);
        if (p.covered[pos[d]] != extent) job.full = false;
        if (extent != a.chunks[d]) job.edge = true;
        const auto& runs = p.runs[pos[d]];
        whole = whole && r.slab.shape[d] == a.chunks[d] && runs.size() == 1 && runs[0].src == 0 && runs[0].dst == 0;
      }
      job.direct = whole && job.full && !job.edge && !(a.codec.big_endian && a.codec.itemsize > 1);
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
int blosc_threads_for(const std::vector<Engine::Request>& requests, std::size_t njobs, std::size_t nthreads) {
  std::size_t max_chunk = 0;
  for (const auto& r : requests) max_chunk = std::max(max_chunk, r.array->chunk_nbytes());
  if (max_chunk < (std::size_t{4} << 20) || njobs == 0) return 1;
  return static_cast<int>(std::min(nthreads, std::max<std::size_t>(1, (2 * nthreads + njobs - 1) / njobs)));
}

std::size_t job_staging_bytes(const Engine::Job& job) {
  const ArraySpec& a = *job.req->array;
  const std::size_t raw_n = a.chunk_nbytes();
  return (job.direct ? 0 : align_up(raw_n, kEncAlign)) + a.codec.max_encoded_size(raw_n);
}

}  // namespace

void Engine::run_job(const Job& job, Lease* lease, int blosc_threads) {
  const ArraySpec& a = *job.req->array;
  Sink& sink = *job.req->sink;
  const std::string key = a.chunk_key(job.coords);
  const std::size_t raw_n = a.chunk_nbytes();
  const std::size_t enc_cap = a.codec.max_encoded_size(raw_n);
  try {
    Lease local;
    const std::size_t need = job_staging_bytes(job);
    if (!lease && need > 0) {
      local = buffers_->acquire(need);
      lease = &local;
    }
    uint8_t* raw;
    uint8_t* enc;
    if (job.direct) {
      // The staged slab is this chunk: encode from it (never modified: no byte swap here).
      raw = const_cast<uint8_t*>(job.req->slab.data);
      enc = lease ? lease->data() : nullptr;
    } else {
      raw = lease->data();
      enc = raw + align_up(raw_n, kEncAlign);
      if (!job.full) {
        std::vector<uint8_t> existing;
        if (sink.read(key, existing))
          decode_chunk(a.codec, existing.data(), existing.size(), raw, raw_n, blosc_threads);
        else
          fill_with(raw, raw_n, a.fill_value);
        chunks_merged_.fetch_add(1);
      } else if (job.edge) {
        fill_with(raw, raw_n, a.fill_value);
      }
      job.scatter.copy(0, job.req->slab.data, raw);
    }
    const uint8_t* out = nullptr;
    std::size_t n = encode_chunk(a.codec, raw, raw_n, enc, enc_cap, blosc_threads, &out);
    sink.write(key, out, n);
    chunks_written_.fetch_add(1);
    bytes_in_.fetch_add(raw_n);
    bytes_out_.fetch_add(n);
  } catch (const IOError&) {
    failed_chunks_.fetch_add(1);
    throw;  // already names the key and carries errno
  } catch (const std::invalid_argument& e) {
    failed_chunks_.fetch_add(1);
    throw std::invalid_argument("chunk '" + key + "': " + e.what());
  } catch (const std::exception& e) {
    failed_chunks_.fetch_add(1);
    throw std::runtime_error("chunk '" + key + "' (" + sink.describe() + "): " + e.what());
  }
}

void Engine::validate_requests(const std::vector<Request>& requests) const {
  for (const auto& r : requests) {
    validate_request(r);
    E2F_EXPECT(staging_bytes_per_chunk(*r.array) <= buffers_->capacity(),
               "a chunk of array '" + r.array->path + "' needs " + std::to_string(staging_bytes_per_chunk(*r.array)) +
                   " bytes of encode buffers but " + (ring_ ? "only " : "max_buffer_bytes is ") +
                   std::to_string(buffers_->capacity()) +
                   (ring_ ? " of max_buffer_bytes are left beside the staging ring" : "") +
                   "; raise max_buffer_bytes or use smaller chunks");
  }
}

void Engine::write_batch(const std::vector<Request>& requests) {
  ensure_usable();
  // 1. Validate everything first: a bad request stores nothing.
  validate_requests(requests);
  // 2. Plan every chunk of every request.
  std::vector<std::vector<DimPlan>> plans;
  std::vector<Job> jobs;
  plan_jobs(requests, plans, jobs);
  if (jobs.empty()) return;
  const int blosc_threads = blosc_threads_for(requests, jobs.size(), pool_.size());
  // 3. Queue every chunk; leasing staging memory here (on the caller's
  //    thread) is the backpressure: it blocks while the pool is full.
  TaskGroup group;
  try {
    for (const Job& job : jobs) {
      const std::size_t need = job_staging_bytes(job);
      auto lease = std::make_shared<Lease>(need ? buffers_->acquire(need) : Lease());
      pool_.submit(group.wrap([this, &job, lease, blosc_threads]() {
        run_job(job, lease->data() ? lease.get() : nullptr, blosc_threads);
        lease->release();
      }));
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

// ------------------------------------------------------------------ non-blocking

void Engine::record_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lk(async_mu_);
  if (!bg_error_) bg_error_ = e;
}

std::shared_ptr<Engine::Batch> Engine::stage(const std::vector<Request>& requests, bool copy_host) {
  ensure_usable();
  E2F_EXPECT(ring_ != nullptr, "this engine was created without a staging ring (non-blocking writes are off)");
  validate_requests(requests);
  auto batch = std::make_shared<Batch>();
  batch->specs.reserve(requests.size());
  std::size_t total = 0;
  std::vector<std::size_t> offsets;
  for (const auto& r : requests) {
    batch->specs.push_back(*r.array);
    std::size_t n = r.slab.itemsize;
    for (auto e : r.slab.shape) n *= static_cast<std::size_t>(e);
    offsets.push_back(total);
    total += align_up(n, StagingRing::kAlign);
  }
  // Reserve ring space (blocks while the ring is full: backpressure).
  batch->ring = ring_.get();
  batch->slot = ring_->reserve(std::max<std::size_t>(total, 1));
  batch->requests.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    const std::size_t nd = r.slab.shape.size();
    Slab staged;
    staged.data = batch->slot.data + offsets[i];
    staged.shape = r.slab.shape;
    staged.itemsize = r.slab.itemsize;
    staged.strides.assign(nd, 0);
    int64_t st = static_cast<int64_t>(r.slab.itemsize);
    for (std::size_t d = nd; d-- > 0;) {
      staged.strides[d] = st;
      st *= r.slab.shape[d];
    }
    bool empty = false;
    for (auto e : r.slab.shape) empty = empty || e == 0;
    if (copy_host && !empty) {
      // Gather the (possibly strided) source into C order in the slot.
      std::vector<std::vector<Run>> whole(nd);
      Scatter sc{&r.slab, std::vector<const std::vector<Run>*>(nd), staged.strides, r.slab.itemsize};
      for (std::size_t d = 0; d < nd; ++d) {
        whole[d] = {Run{0, 0, r.slab.shape[d]}};
        sc.runs[d] = &whole[d];
      }
      sc.copy(0, r.slab.data, const_cast<uint8_t*>(staged.data));
    }
    batch->requests.push_back(Request{&batch->specs[i], r.sink, std::move(staged), r.index});
  }
  plan_jobs(batch->requests, batch->plans, batch->jobs);
  batch->blosc_threads = blosc_threads_for(batch->requests, batch->jobs.size(), pool_.size());
  batch->remaining = batch->jobs.size();
  return batch;
}

void Engine::dispatch_batch(const std::shared_ptr<Batch>& batch) {
  if (batch->jobs.empty()) return;
  {
    std::lock_guard<std::mutex> lk(async_mu_);
    pending_ += batch->jobs.size();
  }
  for (std::size_t j = 0; j < batch->jobs.size(); ++j) dispatch_ordered(batch, j);
}

void Engine::submit(const std::vector<Request>& requests) { dispatch_batch(stage(requests, true)); }

bool Engine::cuda_available() const { return cuda::available(); }

std::uint64_t Engine::submit_device(const std::vector<Request>& requests, void* producer_stream) {
  std::string why;
  const cuda::Api* api = cuda::api(&why);
  E2F_EXPECT(api != nullptr, "a device tensor was passed but the CUDA runtime is unavailable: " + why);
  for (const auto& r : requests) {
    int64_t st = static_cast<int64_t>(r.slab.itemsize);
    for (std::size_t d = r.slab.shape.size(); d-- > 0;) {
      E2F_EXPECT(r.slab.shape[d] <= 1 || r.slab.strides[d] == st, "device data must be C-contiguous");
      st *= r.slab.shape[d];
    }
  }
  auto batch = stage(requests, false);
  auto fence = std::make_shared<CopyFence>();
  {
    std::lock_guard<std::mutex> lk(async_mu_);
    if (!copy_stream_) cuda::check(api->StreamCreateWithFlags(&copy_stream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  bool copy_queued = false;  // from then on the ring slot may be written by the device
  try {
    cuda::check(api->EventCreateWithFlags(&fence->ready, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    cuda::check(api->EventCreateWithFlags(&fence->done, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    // 1. The copy waits for the producer's pending work (the kernels computing the data).
    cuda::check(api->EventRecord(fence->ready, producer_stream), "cudaEventRecord on the producer stream");
    cuda::check(api->StreamWaitEvent(copy_stream_, fence->ready, 0), "cudaStreamWaitEvent");
    // 2. Device -> pinned ring, on our stream.
    for (std::size_t i = 0; i < requests.size(); ++i) {
      std::size_t n = requests[i].slab.itemsize;
      for (auto e : requests[i].slab.shape) n *= static_cast<std::size_t>(e);
      if (n == 0) continue;
      cuda::check(api->MemcpyAsync(const_cast<uint8_t*>(batch->requests[i].slab.data), requests[i].slab.data, n,
                                   cuda::kMemcpyDeviceToHost, copy_stream_),
                  "cudaMemcpyAsync (device to host)");
      copy_queued = true;
    }
    cuda::check(api->EventRecord(fence->done, copy_stream_), "cudaEventRecord on the copy stream");
    // 3. Later work on the producer stream (which may free or overwrite the source) waits for the copy.
    cuda::check(api->StreamWaitEvent(producer_stream, fence->done, 0), "cudaStreamWaitEvent on the producer stream");
    batch->fence = fence;
    std::uint64_t seq;
    {
      std::lock_guard<std::mutex> lk(async_mu_);
      device_fences_.push_back(fence);
      seq = ++device_submits_;
    }
    if (batch->jobs.empty()) {
      // Nothing to encode, but the slot must outlive the copy.
      pool_.submit([batch]() noexcept {
        try {
          batch->fence->wait();
        } catch (...) {
        }
      });
    }
    dispatch_batch(batch);  // from here the queued jobs own the slot, and each waits for the copy
    return seq;
  } catch (...) {
    // Unwinding releases the slot (with `batch`, unless a queued job holds
    // it), and the next reservation may get the same memory: a copy already
    // queued must be finished first. The copy stream is synchronised (there
    // may be no event after the copies to wait on); that returns once the
    // stream's work is done or its context is lost (then no copy runs any
    // more). Its own status is secondary to the error being raised.
    if (copy_queued) (void)api->StreamSynchronize(copy_stream_);
    throw;
  }
}

std::uint64_t Engine::copies_done() {
  if (inherited()) return device_done_;  // never a CUDA call or a parent's lock in a child
  const cuda::Api* api = cuda::api();
  std::lock_guard<std::mutex> lk(async_mu_);
  while (api && !device_fences_.empty()) {
    auto* f = static_cast<CopyFence*>(device_fences_.front().get());
    if (api->EventQuery(f->done) != cuda::kSuccess) break;
    device_fences_.pop_front();
    ++device_done_;
  }
  return device_done_;
}

void Engine::dispatch_ordered(const std::shared_ptr<Batch>& batch, std::size_t j) {
  const Job& job = batch->jobs[j];
  // Chunks of one key (in one sink) run one at a time, in submission order.
  std::string order_key = std::to_string(reinterpret_cast<std::uintptr_t>(job.req->sink.get())) + ":" +
                          job.req->array->chunk_key(job.coords);
  auto task = [this, batch, j, order_key]() noexcept {
    try {
      if (batch->fence) batch->fence->wait();
      run_job(batch->jobs[j], nullptr, batch->blosc_threads);
    } catch (...) {
      record_error(std::current_exception());
    }
    job_finished(order_key);
  };
  std::lock_guard<std::mutex> lk(async_mu_);
  auto it = key_waiters_.find(order_key);
  if (it != key_waiters_.end()) {
    it->second.push_back(std::move(task));
  } else {
    key_waiters_.emplace(order_key, std::deque<std::function<void()>>{});
    pool_.submit(std::move(task));
  }
}

void Engine::job_finished(const std::string& order_key) {
  std::lock_guard<std::mutex> lk(async_mu_);
  auto it = key_waiters_.find(order_key);
  if (it != key_waiters_.end()) {
    if (it->second.empty()) {
      key_waiters_.erase(it);
    } else {
      pool_.submit(std::move(it->second.front()));
      it->second.pop_front();
    }
  }
  ++finished_;
  if (--pending_ == 0) async_cv_.notify_all();
  progress_cv_.notify_all();
}

void Engine::check() {
  if (inherited()) return;  // the parent's errors are the parent's to report
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lk(async_mu_);
    e = bg_error_;
    bg_error_ = nullptr;
  }
  if (e) std::rethrow_exception(e);
}

void Engine::flush() {
  if (inherited()) return;  // chunks pending at the fork are the parent's to store
  {
    std::unique_lock<std::mutex> lk(async_mu_);
    async_cv_.wait(lk, [this] { return pending_ == 0; });
  }
  check();
}

bool Engine::wait_idle(double timeout_seconds) {
  if (inherited()) return true;
  std::unique_lock<std::mutex> lk(async_mu_);
  return async_cv_.wait_for(lk, std::chrono::duration<double>(timeout_seconds), [this] { return pending_ == 0; });
}

std::uint64_t Engine::finished_chunks() const {
  std::lock_guard<std::mutex> lk(async_mu_);
  return finished_;
}

std::uint64_t Engine::wait_progress(std::uint64_t seen, double timeout_seconds) {
  std::unique_lock<std::mutex> lk(async_mu_);
  progress_cv_.wait_for(lk, std::chrono::duration<double>(std::max(0.0, timeout_seconds)),
                        [&] { return finished_ != seen || pending_ == 0; });
  return finished_;
}

std::size_t Engine::pending_chunks() const {
  if (inherited()) return 0;
  std::lock_guard<std::mutex> lk(async_mu_);
  return pending_;
}

RingStats Engine::ring_stats() const { return ring_ && !inherited() ? ring_->stats() : RingStats{}; }

}  // namespace e2fastio
