#include "e2fastio/engine.hpp"

#include "e2fastio/nvcomp.hpp"

#include <pthread.h>
#include <time.h>
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

}  // namespace

Engine::Engine(unsigned threads, std::size_t max_buffer_bytes, std::size_t ring_bytes, int nice, bool idle_sched,
               double defer_busy_seconds)
    : pool_(threads, ThreadPool::kThreadName, nice, idle_sched),
      // Started here, on the creator's thread, like the encoders: the same
      // priority, and no thread start inside the first write.
      writers_(std::make_unique<ThreadPool>(std::max(2u, pool_.size()), "e2fastio-write", nice, idle_sched)),
      buffers_(std::make_unique<BufferPool>(ring_bytes > 0 && ring_bytes < max_buffer_bytes
                                                ? max_buffer_bytes - ring_bytes
                                                : max_buffer_bytes)),
      owner_pid_(static_cast<long>(::getpid())) {
  // A thread helping in wait_idle() learns of queued work (see help_until_idle).
  pool_.on_queued([this] { wake_helpers(); });
  writers_->on_queued([this] { wake_helpers(); });
  E2F_EXPECT(defer_busy_seconds >= 0.0 && defer_busy_seconds <= 3600.0,
             "defer_busy_seconds must be between 0 and 3600");
  if (nice > 0 && defer_busy_seconds > 0.0) {
    defer_ns_ = static_cast<std::int64_t>(defer_busy_seconds * 1e9);
    gate_ = BusyGate(defer_ns_);
    pool_.set_gate([this] { return background_may_start(); }, std::chrono::microseconds(1000));
  }
  if (ring_bytes > 0) {
    E2F_EXPECT(ring_bytes < max_buffer_bytes, "the staging ring must be smaller than max_buffer_bytes");
    ring_ = std::make_unique<StagingRing>(ring_bytes, cuda::available());
    // Fault the start of the ring in on the pool while it is idle, 32 MiB per
    // task, so that the first writes copy at memcpy speed; pages a previous
    // engine left warm are skipped (StagingRing::prefault). Only the start:
    // the ring restarts at offset 0 whenever it drains, so a writer that the
    // pool keeps up with reuses the same (warm) pages. (Faulting only as far
    // as the writes reach instead was tried: 2.5 MiB instead of 130 MiB of RSS
    // for a small write in a fresh process, but the faults then land in the
    // first steps: docs/benchmarks.md, session 15.)
    const std::size_t warm = std::min<std::size_t>(ring_->capacity(), std::size_t{128} << 20);
    for (std::size_t off = 0; off < warm; off += (32u << 20))
      pool_.submit([r = ring_.get(), off] { r->prefault(off, 32u << 20); });
    ring_warm_ = warm;  // further pages: ahead of the writer, when it gets that far (warm_ring_ahead)
  }
}

Engine::~Engine() {
  // Every copy on the stream has completed once the pool has run all jobs
  // (each waited for its copy before encoding): the stager, destroyed after
  // this body, then destroys its stream. (An abandoned engine has none.)
  shutdown();
}

void Engine::shutdown() {
  // In a forked child nothing of the parent's may be joined, released or
  // locked: leak it all first (a no-op when already abandoned).
  if (!abandoned_ && static_cast<long>(::getpid()) != owner_pid_) abandon_after_fork();
  if (!abandoned_) {
    // Every chunk still queued is stored first: a stored chunk may queue its
    // same-key successor on the encoders, so the encoders stop only once
    // nothing is pending, and the writers after them.
    std::unique_lock<std::mutex> lk(async_mu_);
    async_cv_.wait(lk, [this] { return pending_ == 0; });
  }
  pool_.shutdown();
  writers_->shutdown();  // after the encoders: they queue stores until they stop
}

unsigned Engine::writer_threads() const { return inherited() ? 0 : writers_->size(); }

unsigned Engine::idle_sched_threads() const noexcept {
  return inherited() ? 0 : pool_.idle_threads() + writers_->idle_threads();
}

ThreadPool& Engine::writers() { return *writers_; }

ThreadPool* Engine::writers_for(const Sink& sink) { return sink.waits_on_device() ? &writers() : nullptr; }

void Engine::warm_ring_ahead(std::size_t end, std::size_t batch_bytes) {
  // A writer that the encoders keep up with reuses the ring's start (warm
  // since construction); one that runs ahead of them reaches fresh pages,
  // which fault in at ~0.5 GB/s on the caller's thread. Two batches ahead of
  // the newest slot are faulted in here, off the caller's thread; pages once
  // touched stay (the block returns to the process cache warm), so RSS grows
  // only as far as the backlog ever reached, plus that margin.
  if (!ring_ || ring_->pinned()) return;
  constexpr std::size_t kPiece = std::size_t{32} << 20;
  const std::size_t want = std::min(ring_->capacity(), end + 2 * batch_bytes);
  std::size_t from = ring_warm_.load();
  do {
    if (want <= from) return;
  } while (!ring_warm_.compare_exchange_weak(from, want));
  try {
    ThreadPool& w = writers();
    for (std::size_t off = from; off < want; off += kPiece)
      w.submit([r = ring_.get(), off, n = std::min(kPiece, want - off)] { r->prefault(off, n); });
  } catch (...) {
    // A preference only: the caller's copy faults the pages in instead.
  }
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
  writers_->abandon_after_fork();
  leak_in_place(key_waiters_);
  stager_.abandon_after_fork();
  encoder_.abandon_after_fork();
  leak_in_place(device_mu_);
  errors_.abandon_after_fork();
  leak_in_place(async_mu_);
  leak_in_place(async_cv_);
  pending_ = 0;
  pending_now_.store(0);
  leak_in_place(help_mu_);
  leak_in_place(help_cv_);
  // The ring's block may be page-locked memory of the parent's CUDA context,
  // and its lock and the buffer pool's may be held: neither is given back.
  (void)ring_.release();
  const std::size_t capacity = buffers_->capacity();  // const since construction
  (void)buffers_.release();
  buffers_ = std::make_unique<BufferPool>(capacity);  // empty: stats and trim() still work
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
  s.bytes_from_device = stager_.bytes_copied();
  return s;
}

void Engine::write(const ArraySpec& a, const std::shared_ptr<Sink>& sink, const Slab& slab,
                   const std::vector<std::vector<int64_t>>& index) {
  write_batch({Request{&a, sink, slab, index}});
}

struct Engine::Batch {
  std::vector<ArraySpec> specs;
  std::vector<Request> requests;
  std::vector<std::vector<DimPlan>> plans;
  std::vector<ChunkJob> jobs;
  StagingRing* ring = nullptr;
  StagingRing::Slot slot;
  std::atomic<std::size_t> remaining{0};
  int blosc_threads = 1;
  std::shared_ptr<CopyFence> fence;  // device submits: chunks wait for the copy
  // Compressed on the device: chunk j's Blosc1 bytes land at enc_dst[j] (in
  // the slot); chunks wait for `encoded`, which also gives their sizes.
  std::shared_ptr<DeviceEncoded> encoded;
  std::vector<uint8_t*> enc_dst;
  // Called as each job ends (stored or failed), before it counts as finished:
  // the last one gives the ring slot back, so that once flush() has seen
  // every job finish, every slot of that work is free again (the tasks'
  // closures, which also hold the batch, may be destroyed later).
  void job_done() {
    if (remaining.fetch_sub(1) == 1) release_slot();
  }
  void release_slot() {
    if (ring && slot.id) ring->release(slot.id);
    slot.id = 0;
  }
  ~Batch() { release_slot(); }
};

namespace {

std::size_t job_staging_bytes(const ChunkJob& job) {
  const ArraySpec& a = *job.req->array;
  const std::size_t raw_n = a.chunk_nbytes();
  return (job.direct ? 0 : align_up(raw_n, kEncAlign)) + a.codec.max_encoded_size(raw_n);
}

}  // namespace

std::shared_ptr<Lease> Engine::lease_for(const ChunkJob& job) {
  const std::size_t need = job_staging_bytes(job);
  return std::make_shared<Lease>(need ? buffers_->acquire(need) : Lease());
}

void Engine::rethrow_for_chunk(const std::string& key, const Sink& sink) {
  failed_chunks_.fetch_add(1);
  try {
    throw;
  } catch (const IOError&) {
    throw;  // already names the key and carries errno
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("chunk '" + key + "': " + e.what());
  } catch (const std::exception& e) {
    throw std::runtime_error("chunk '" + key + "' (" + sink.describe() + "): " + e.what());
  }
}

Engine::Encoded Engine::encode_job(const ChunkJob& job, Lease* lease, int blosc_threads) {
  const ArraySpec& a = *job.req->array;
  Sink& sink = *job.req->sink;
  Encoded res;
  res.key = a.chunk_key(job.coords);
  const std::size_t raw_n = a.chunk_nbytes();
  const std::size_t enc_cap = a.codec.max_encoded_size(raw_n);
  try {
    uint8_t* raw;
    uint8_t* enc;
    if (job.direct) {
      // The chunk is a block of the slab: encode from it (never modified: no byte swap here).
      raw = const_cast<uint8_t*>(job.req->slab.data + job.src_offset);
      enc = lease ? lease->data() : nullptr;
    } else {
      raw = lease->data();
      enc = raw + align_up(raw_n, kEncAlign);
      if (!job.full) {
        std::vector<uint8_t> existing;
        if (sink.read(res.key, existing))
          decode_chunk(a.codec, existing.data(), existing.size(), raw, raw_n, blosc_threads);
        else
          fill_with(raw, raw_n, a.fill_value);
        chunks_merged_.fetch_add(1);
      } else if (job.edge) {
        fill_with(raw, raw_n, a.fill_value);
      }
      job.scatter.copy(0, job.req->slab.data, raw);
    }
    res.nbytes = encode_chunk(a.codec, raw, raw_n, enc, enc_cap, blosc_threads, &res.data);
    res.raw_nbytes = raw_n;
  } catch (...) {
    rethrow_for_chunk(res.key, sink);
  }
  return res;
}

void Engine::store_job(const ChunkJob& job, const Encoded& enc) {
  Sink& sink = *job.req->sink;
  try {
    sink.write(enc.key, enc.data, enc.nbytes);
  } catch (...) {
    rethrow_for_chunk(enc.key, sink);
  }
  chunks_written_.fetch_add(1);
  bytes_in_.fetch_add(enc.raw_nbytes);
  bytes_out_.fetch_add(enc.nbytes);
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
  std::vector<ChunkJob> jobs;
  plan_jobs(requests, plans, jobs);
  if (jobs.empty()) return;
  const int blosc_threads = blosc_threads_for(requests, jobs.size(), pool_.size());
  // 3. Queue every chunk; leasing staging memory here (on the caller's
  //    thread) is the backpressure: it blocks while the pool is full.
  TaskGroup group;
  try {
    for (const ChunkJob& job : jobs) {
      auto lease = lease_for(job);
      pool_.submit(group.wrap([this, &job, &group, lease, blosc_threads]() {
        Encoded enc = encode_job(job, lease->data() ? lease.get() : nullptr, blosc_threads);
        if (ThreadPool* writers = writers_for(*job.req->sink)) {
          // Counted in the group before this task ends: wait() covers the store.
          auto store = group.wrap([this, &job, lease, enc = std::move(enc)]() {
            store_job(job, enc);
            lease->release();
          });
          try {
            writers->submit(store);
          } catch (...) {
            store();  // could not queue it: store it here (it reports to the group)
          }
          return;
        }
        store_job(job, enc);
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
  warm_ring_ahead(static_cast<std::size_t>(batch->slot.data - ring_->base()) + total, total);
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
    pending_now_.store(pending_);
  }
  for (std::size_t j = 0; j < batch->jobs.size(); ++j) dispatch_ordered(batch, j);
}

namespace {
std::int64_t ns_of(const timespec& t) { return std::int64_t{t.tv_sec} * 1000000000 + t.tv_nsec; }
std::int64_t cpu_ns(clockid_t c) {
  timespec t{};
  return ::clock_gettime(c, &t) == 0 ? ns_of(t) : -1;
}
std::int64_t wall_ns() {
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  return ns_of(t);
}
}  // namespace

void Engine::submit(const std::vector<Request>& requests) {
  if (defer_ns_ == 0) {
    dispatch_batch(stage(requests, true));
    return;
  }
  ensure_usable();  // before gate_mu_: in a forked child a vanished thread may have held it
  // The caller's time in here is feeding us, not competing with us: BusyGate leaves it out.
  clockid_t cid{};
  const std::int64_t entry = pthread_getcpuclockid(pthread_self(), &cid) == 0 ? cpu_ns(cid) : -1;
  const std::int64_t entry_wall = wall_ns();
  if (entry >= 0) {
    std::lock_guard<std::mutex> lk(gate_mu_);
    if (caller_clock_.exchange(static_cast<long>(cid)) != static_cast<long>(cid) || !has_caller_.load()) {
      gate_.reset();  // a new caller thread
      cpu_in_submit_ns_ = wall_in_submit_ns_ = 0;
    }
    submit_entry_cpu_ns_ = entry;
    submit_entry_wall_ns_ = entry_wall;
    gate_.entering();
    has_caller_.store(true);
  }
  struct Leave {
    Engine& e;
    clockid_t cid;
    std::int64_t entry, entry_wall;
    ~Leave() {
      if (entry < 0) return;
      const std::int64_t now = cpu_ns(cid), now_wall = wall_ns();
      std::lock_guard<std::mutex> lk(e.gate_mu_);
      if (now >= entry) e.cpu_in_submit_ns_ += now - entry;
      e.wall_in_submit_ns_ += now_wall - entry_wall;
      e.submit_entry_cpu_ns_ = e.submit_entry_wall_ns_ = -1;
      e.gate_.submitted(now_wall, now - e.cpu_in_submit_ns_, e.wall_in_submit_ns_);
    }
  } leave{*this, cid, entry, entry_wall};
  dispatch_batch(stage(requests, true));
}

bool Engine::background_may_start() {
  if (!has_caller_.load()) return true;
  bool urgent = waiters_.load() > 0;
  if (!urgent && ring_) {
    const RingStats rs = ring_->stats();
    urgent = rs.used_bytes * 2 > rs.capacity;  // half full: the caller would soon wait for space
  }
  const auto cid = static_cast<clockid_t>(caller_clock_.load());
  const std::int64_t cpu = cpu_ns(cid);
  if (cpu < 0) return true;  // the caller's thread is gone
  const std::int64_t now = wall_ns();
  std::lock_guard<std::mutex> lk(gate_mu_);
  std::int64_t outside = cpu - cpu_in_submit_ns_, inside = wall_in_submit_ns_;
  // A submit is running: its time so far is the caller feeding us too.
  if (submit_entry_cpu_ns_ >= 0 && cpu >= submit_entry_cpu_ns_) outside -= cpu - submit_entry_cpu_ns_;
  if (submit_entry_wall_ns_ >= 0 && now >= submit_entry_wall_ns_) inside += now - submit_entry_wall_ns_;
  const bool start = gate_.may_start(now, outside, inside, urgent);
  if (!start) busy_deferrals_.fetch_add(1);
  return start;
}

bool Engine::cuda_available() const { return cuda::available(); }

std::uint64_t Engine::submit_device(const std::vector<Request>& requests, void* producer_stream,
                                    bool compress_on_device) {
  std::string why;
  E2F_EXPECT(cuda::api(&why) != nullptr, "a device tensor was passed but the CUDA runtime is unavailable: " + why);
  for (const auto& r : requests) {
    int64_t st = static_cast<int64_t>(r.slab.itemsize);
    for (std::size_t d = r.slab.shape.size(); d-- > 0;) {
      E2F_EXPECT(r.slab.shape[d] <= 1 || r.slab.strides[d] == st, "device data must be C-contiguous");
      st *= r.slab.shape[d];
    }
  }
  if (compress_on_device) {
    std::vector<DeviceChunk> chunks;
    auto batch = stage_for_device_encode(requests, chunks);
    std::lock_guard<std::mutex> lk(device_mu_);
    const std::uint64_t seq = ++device_seq_;
    // If this throws, nothing was queued: unwinding releases the slot.
    batch->encoded = encoder_.submit(std::move(chunks), producer_stream, seq);
    dispatch_batch(batch);  // each chunk waits for its bytes to land in the slot
    return seq;
  }
  auto batch = stage(requests, false);
  std::vector<DeviceCopy> copies;
  copies.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    std::size_t n = requests[i].slab.itemsize;
    for (auto e : requests[i].slab.shape) n *= static_cast<std::size_t>(e);
    copies.push_back({const_cast<uint8_t*>(batch->requests[i].slab.data), requests[i].slab.data, n});
  }
  // If this throws, unwinding releases the slot (with `batch`) only after any
  // copy already queued into it has finished (the stager waits for that).
  std::uint64_t seq = 0;
  {
    std::lock_guard<std::mutex> lk(device_mu_);
    seq = ++device_seq_;
    batch->fence = stager_.copy(copies, producer_stream, seq);
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
}

std::uint64_t Engine::copies_done() {
  if (inherited()) return copies_done_.load();  // never a CUDA call or a parent's lock in a child
  std::lock_guard<std::mutex> lk(device_mu_);
  const std::uint64_t oldest = std::min(stager_.oldest_pending(), encoder_.oldest_pending());
  const std::uint64_t done = oldest == UINT64_MAX ? device_seq_ : oldest - 1;
  copies_done_.store(done);
  return done;
}

DeviceLayout Engine::device_layout(const Request& r) const {
  DeviceLayout d;
  auto no = [&d](std::string why) {
    d.ok = false;
    d.why = std::move(why);
    return d;
  };
  const CodecSpec& c = r.array->codec;
  if (!c.blosc || c.cname != "zstd") return no("the codec is not Blosc zstd (nvCOMP writes zstd blocks only)");
  if (c.shuffle == Shuffle::bit) return no("bitshuffle is done on the host");
  if (c.big_endian) return no("big-endian chunks are byte-swapped on the host");
  if (c.clevel == 0) return no("clevel 0 stores chunks uncompressed");
  try {
    validate_request(r);
  } catch (const std::exception& e) {
    return no(e.what());
  }
  int64_t st = static_cast<int64_t>(r.slab.itemsize);
  std::size_t total = r.slab.itemsize;
  for (std::size_t k = r.slab.shape.size(); k-- > 0;) {
    if (r.slab.shape[k] > 1 && r.slab.strides[k] != st) return no("the data is not C-contiguous");
    st *= r.slab.shape[k];
    total *= static_cast<std::size_t>(r.slab.shape[k]);
  }
  const std::vector<Request> one{r};
  std::vector<std::vector<DimPlan>> plans;
  std::vector<ChunkJob> jobs;
  plan_jobs(one, plans, jobs);
  const std::size_t n = r.array->chunk_nbytes();
  if (jobs.empty() || jobs.size() * n != total) return no("the data does not cover whole chunks");
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const ChunkJob& job = jobs[j];
    if (!job.direct || !job.full || job.edge)
      return no("a chunk is written in part, reaches past the array's end, or is not one block of the data");
    if (static_cast<std::size_t>(job.src_offset) != j * n) return no("the chunks are not in the data's order");
  }
  const Blosc1Layout L = blosc1_zstd_layout(n, c.typesize, c.clevel, c.blocksize);
  if (L.memcpyed) return no("chunks under 128 bytes are stored uncompressed");
  if (L.blocksize > (std::size_t{1} << 24)) return no("Blosc blocks over 16 MiB exceed nvCOMP's zstd chunk limit");
  const std::string unavailable = DeviceEncoder::unavailable_reason();
  if (!unavailable.empty()) return no(unavailable);
  nvcomp::Alignments align{};
  if (nvcomp::api()->ZstdCompressGetRequiredAlignments(nvcomp::ZstdOpts{}, &align) != nvcomp::kSuccess)
    return no("nvcompBatchedZstdCompressGetRequiredAlignments failed");
  const std::size_t a = std::max<std::size_t>(align.input, 1);
  if (reinterpret_cast<std::uintptr_t>(r.slab.data) % a || n % a || L.blocksize % a)
    return no("blocks would start off nvCOMP's " + std::to_string(a) + "-byte input alignment");
  d.ok = true;
  d.nchunks = jobs.size();
  d.chunk_nbytes = n;
  d.blocksize = L.blocksize;
  d.typesize = L.typesize;
  d.shuffle = c.shuffle == Shuffle::byte;
  return d;
}

std::shared_ptr<Engine::Batch> Engine::stage_for_device_encode(const std::vector<Request>& requests,
                                                               std::vector<DeviceChunk>& chunks) {
  ensure_usable();
  E2F_EXPECT(ring_ != nullptr, "this engine was created without a staging ring (non-blocking writes are off)");
  validate_requests(requests);
  std::vector<Blosc1Layout> layouts;
  std::size_t total = 0;
  for (const auto& r : requests) {
    const DeviceLayout d = device_layout(r);
    E2F_EXPECT(d.ok, "array '" + r.array->path + "' cannot be compressed on the device: " + d.why);
    layouts.push_back(blosc1_zstd_layout(d.chunk_nbytes, r.array->codec.typesize, r.array->codec.clevel,
                                         r.array->codec.blocksize));
    total += d.nchunks * align_up(layouts.back().max_chunk_bytes(), StagingRing::kAlign);
  }
  auto batch = std::make_shared<Batch>();
  batch->specs.reserve(requests.size());
  for (const auto& r : requests) batch->specs.push_back(*r.array);
  // The slot holds each chunk at its largest (a memcpyed chunk); only the
  // compressed bytes are copied into it.
  batch->ring = ring_.get();
  batch->slot = ring_->reserve(std::max<std::size_t>(total, 1));
  warm_ring_ahead(static_cast<std::size_t>(batch->slot.data - ring_->base()) + total, total);
  batch->requests.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i)
    batch->requests.push_back(Request{&batch->specs[i], requests[i].sink, requests[i].slab, requests[i].index});
  plan_jobs(batch->requests, batch->plans, batch->jobs);
  uint8_t* dst = const_cast<uint8_t*>(batch->slot.data);
  std::size_t r = 0;
  for (const ChunkJob& job : batch->jobs) {
    while (job.req != &batch->requests[r]) ++r;
    const Blosc1Layout& L = layouts[r];
    chunks.push_back({job.req->slab.data + job.src_offset, dst, L, batch->requests[r].array->codec.shuffle == Shuffle::byte});
    batch->enc_dst.push_back(dst);
    dst += align_up(L.max_chunk_bytes(), StagingRing::kAlign);
  }
  batch->remaining = batch->jobs.size();
  return batch;
}

void Engine::dispatch_ordered(const std::shared_ptr<Batch>& batch, std::size_t j) {
  const ChunkJob& job = batch->jobs[j];
  // Chunks of one key (in one sink) run one at a time, in submission order.
  std::string order_key = std::to_string(reinterpret_cast<std::uintptr_t>(job.req->sink.get())) + ":" +
                          job.req->array->chunk_key(job.coords);
  auto task = [this, batch, j, order_key]() noexcept {
    std::exception_ptr err;
    try {
      if (batch->fence) batch->fence->wait();
      const ChunkJob& job = batch->jobs[j];
      std::shared_ptr<Lease> lease;
      Encoded enc;
      if (batch->encoded) {
        // Compressed on the device: the chunk already lies in the slot.
        enc.key = job.req->array->chunk_key(job.coords);
        try {
          batch->encoded->wait();
        } catch (...) {
          rethrow_for_chunk(enc.key, *job.req->sink);
        }
        enc.data = batch->enc_dst[j];
        enc.nbytes = batch->encoded->cbytes[j];
        enc.raw_nbytes = job.req->array->chunk_nbytes();
        lease = std::make_shared<Lease>();
      } else {
        lease = lease_for(job);  // on the encoder: waits while the pool is full
        enc = encode_job(job, lease->data() ? lease.get() : nullptr, batch->blosc_threads);
      }
      if (ThreadPool* writers = writers_for(*job.req->sink)) {
        // The store finishes the job: the batch (ring slot, spec, sink) and
        // the lease (encoded bytes) live until then.
        std::function<void()> store = [this, batch, j, order_key, lease, enc = std::move(enc)]() noexcept {
          std::exception_ptr err;
          try {
            store_job(batch->jobs[j], enc);
          } catch (...) {
            err = std::current_exception();
          }  // as below: no reference left once the error is handed over
          if (err) errors_.record(err);
          lease->release();
          batch->job_done();
          job_finished(order_key);
        };
        try {
          writers->submit(store);
        } catch (...) {
          store();  // could not queue it: store it here
        }
        return;
      }
      store_job(job, enc);
    } catch (...) {
      err = std::current_exception();
    }  // the handler's reference is dropped here, before the error is handed over
    if (err) errors_.record(err);
    batch->job_done();
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
  pending_now_.store(--pending_);
  if (pending_ == 0) {
    async_cv_.notify_all();
    wake_helpers();
  }
  progress_cv_.notify_all();
}

void Engine::check() {
  if (inherited()) return;  // the parent's errors are the parent's to report
  errors_.rethrow_first();
}

void Engine::flush() {
  if (inherited()) return;  // chunks pending at the fork are the parent's to store
  {
    const Waiting waiting(*this);
    std::unique_lock<std::mutex> lk(async_mu_);
    async_cv_.wait(lk, [this] { return pending_ == 0; });
  }
  check();
}

bool Engine::wait_idle(double timeout_seconds, bool help) {
  if (inherited()) return true;
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(
          std::min(std::max(0.0, timeout_seconds), 1e9)));
  const Waiting waiting(*this);
  if (help) help_until_idle(deadline);
  std::unique_lock<std::mutex> lk(async_mu_);
  return async_cv_.wait_until(lk, deadline, [this] { return pending_ == 0; });
}

void Engine::wake_helpers() {
  { std::lock_guard<std::mutex> lk(help_mu_); }  // a helper checks its condition under this lock: no lost wake-up
  help_cv_.notify_all();
}

void Engine::help_until_idle(std::chrono::steady_clock::time_point deadline) {
  while (pending_now_.load() != 0 && std::chrono::steady_clock::now() < deadline) {
    // Stores first: they finish chunks and give their memory back.
    if (writers_->run_one() || pool_.run_one()) continue;
    std::unique_lock<std::mutex> lk(help_mu_);
    help_cv_.wait_until(lk, deadline, [this] {
      return pending_now_.load() == 0 || pool_.queued() != 0 || writers_->queued() != 0;
    });
  }
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
