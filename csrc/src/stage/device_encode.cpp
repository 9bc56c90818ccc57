#include "e2fastio/device_encode.hpp"

#include <pthread.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

#include "e2fastio/cuda.hpp"
#include "e2fastio/error.hpp"
#include "e2fastio/nvcomp.hpp"

namespace e2fastio {

namespace {

std::size_t align_to(std::size_t n, std::size_t a) { return a > 1 ? (n + a - 1) / a * a : n; }

// Replace *p (device memory, or pinned device-accessible host memory) by a
// block of `need` bytes when it holds fewer; nothing may be using it.
void grow(void** p, std::size_t* cap, std::size_t need, bool pinned_host, const char* what) {
  if (*cap >= need) return;
  const cuda::Api* api = cuda::api();
  if (*p) cuda::check(pinned_host ? api->FreeHost(*p) : api->Free(*p), pinned_host ? "cudaFreeHost" : "cudaFree");
  *p = nullptr;
  *cap = 0;
  const std::string call = std::string(pinned_host ? "cudaHostAlloc (" : "cudaMalloc (") + what + ")";
  cuda::check(pinned_host ? api->HostAlloc(p, need, cuda::kHostAllocPortable | cuda::kHostAllocMapped)
                          : api->Malloc(p, need),
              call.c_str());
  *cap = need;
}

}  // namespace

void DeviceEncoded::finish(std::vector<std::size_t> sizes, std::exception_ptr err) {
  {
    std::lock_guard<std::mutex> lk(mu);
    cbytes = std::move(sizes);
    error = err;
    done = true;
  }
  cv.notify_all();
}

void DeviceEncoded::wait() {
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [this] { return done; });
  if (error) std::rethrow_exception(error);
}

// Device memory and a pinned table for one submit in flight.
struct DeviceEncoder::Scratch {
  void* out = nullptr;  // device: one slot of `out_stride` bytes per block
  std::size_t out_cap = 0, out_stride = 0;
  void* temp = nullptr;  // device: nvCOMP's workspace
  std::size_t temp_cap = 0;
  void* table = nullptr;  // pinned, device-accessible: nvCOMP's pointer, size and status arrays
  std::size_t table_cap = 0;
  cuda::Event ready = nullptr, compressed = nullptr, copied = nullptr;
  std::size_t nblocks = 0;
  const void** in_ptrs() const { return static_cast<const void**>(table); }
  std::size_t* in_bytes() const { return reinterpret_cast<std::size_t*>(static_cast<char*>(table) + 8 * nblocks); }
  void** out_ptrs() const { return reinterpret_cast<void**>(static_cast<char*>(table) + 16 * nblocks); }
  std::size_t* out_bytes() const { return reinterpret_cast<std::size_t*>(static_cast<char*>(table) + 24 * nblocks); }
  nvcomp::Status* statuses() const {
    return reinterpret_cast<nvcomp::Status*>(static_cast<char*>(table) + 32 * nblocks);
  }
  static std::size_t table_bytes(std::size_t n) { return 36 * n + 64; }
};

struct DeviceEncoder::Work {
  Scratch* scratch;
  std::vector<DeviceChunk> chunks;
  std::shared_ptr<DeviceEncoded> result;
  std::uint64_t seq;
};

DeviceEncoder::DeviceEncoder(unsigned scratch_sets) {
  E2F_EXPECT(scratch_sets >= 1, "scratch_sets must be at least 1");
  sets_.reserve(scratch_sets);
  for (unsigned i = 0; i < scratch_sets; ++i) {
    sets_.push_back(std::make_unique<Scratch>());
    free_.push_back(sets_.back().get());
  }
}

DeviceEncoder::~DeviceEncoder() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();  // it finishes what was queued first
  const cuda::Api* api = cuda::api();
  if (!api) return;
  for (auto& s : sets_) {
    if (s->out) api->Free(s->out);
    if (s->temp) api->Free(s->temp);
    if (s->table) api->FreeHost(s->table);
    for (cuda::Event e : {s->ready, s->compressed, s->copied})
      if (e) api->EventDestroy(e);
  }
  if (stream_) api->StreamDestroy(stream_);
}

std::string DeviceEncoder::unavailable_reason() {
  std::string why;
  if (!cuda::api(&why)) return why.empty() ? "no CUDA runtime" : why;
  if (!nvcomp::api(&why)) return why.empty() ? "nvCOMP unavailable" : why;
  return "";
}

DeviceEncoder::Scratch* DeviceEncoder::acquire(std::size_t nblocks, std::size_t max_block, std::size_t total) {
  const cuda::Api* api = cuda::api();
  const nvcomp::Api* nv = nvcomp::api();
  Scratch* s;
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [this] { return !free_.empty(); });  // backpressure: a set comes back once its copies are done
    s = free_.back();
    free_.pop_back();
  }
  try {
    // Nothing is in flight on a free set: its memory may be replaced.
    const nvcomp::ZstdOpts opts{};
    nvcomp::Alignments align{};
    nvcomp::check(nv->ZstdCompressGetRequiredAlignments(opts, &align), "nvcompBatchedZstdCompressGetRequiredAlignments");
    std::size_t max_out = 0;
    nvcomp::check(nv->ZstdCompressGetMaxOutputChunkSize(max_block, opts, &max_out),
                  "nvcompBatchedZstdCompressGetMaxOutputChunkSize");
    s->out_stride = align_to(max_out, std::max<std::size_t>(align.output, 8));
    const std::size_t out_need = s->out_stride * nblocks;
    grow(&s->out, &s->out_cap, out_need, false, "compressed blocks");
    std::size_t temp_need = 0;
    nvcomp::check(nv->ZstdCompressGetTempSize(nblocks, max_block, opts, &temp_need, total, stream_),
                  "nvcompBatchedZstdCompressGetTempSize");
    grow(&s->temp, &s->temp_cap, temp_need, false, "nvCOMP temp");
    grow(&s->table, &s->table_cap, Scratch::table_bytes(nblocks), true, "nvCOMP tables");
    for (cuda::Event* e : {&s->ready, &s->compressed, &s->copied})
      if (!*e) cuda::check(api->EventCreateWithFlags(e, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    s->nblocks = nblocks;
  } catch (...) {
    release(s);
    throw;
  }
  return s;
}

void DeviceEncoder::release(Scratch* s) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_.push_back(s);
  }
  cv_.notify_all();
}

std::shared_ptr<DeviceEncoded> DeviceEncoder::submit(std::vector<DeviceChunk> chunks, void* producer_stream,
                                                     std::uint64_t seq) {
  const std::string why = unavailable_reason();
  E2F_EXPECT(why.empty(), "device compression is unavailable: " + why);
  const cuda::Api* api = cuda::api();
  const nvcomp::Api* nv = nvcomp::api();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!stream_) cuda::check(api->StreamCreateWithFlags(&stream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  std::size_t nblocks = 0, max_block = 0, total = 0;
  for (const DeviceChunk& c : chunks) {
    E2F_EXPECT(!c.layout.memcpyed, "a chunk too small for compression cannot go to the device");
    nblocks += c.layout.nblocks;
    max_block = std::max(max_block, c.layout.blocksize);
    total += c.layout.nbytes;
  }
  auto result = std::make_shared<DeviceEncoded>();
  if (nblocks == 0) {
    result->finish(std::vector<std::size_t>(chunks.size(), 0), nullptr);
    return result;
  }
  Scratch* s = acquire(nblocks, max_block, total);
  std::size_t i = 0;
  for (const DeviceChunk& c : chunks)
    for (std::size_t b = 0; b < c.layout.nblocks; ++b, ++i) {
      s->in_ptrs()[i] = c.src + b * c.layout.blocksize;
      s->in_bytes()[i] = c.layout.block_bytes(b);
      s->out_ptrs()[i] = static_cast<char*>(s->out) + i * s->out_stride;
      s->out_bytes()[i] = 0;
      s->statuses()[i] = nvcomp::kSuccess;
    }
  bool launched = false;
  try {
    // After the producer's pending work (the shuffle), on our stream.
    cuda::check(api->EventRecord(s->ready, producer_stream), "cudaEventRecord on the producer stream");
    cuda::check(api->StreamWaitEvent(stream_, s->ready, 0), "cudaStreamWaitEvent");
    const nvcomp::ZstdOpts opts{};
    nvcomp::check(nv->ZstdCompressAsync(s->in_ptrs(), s->in_bytes(), max_block, nblocks, s->temp, s->temp_cap,
                                        s->out_ptrs(), s->out_bytes(), opts, s->statuses(), stream_),
                  "nvcompBatchedZstdCompressAsync");
    launched = true;
    cuda::check(api->EventRecord(s->compressed, stream_), "cudaEventRecord on the encoder stream");
  } catch (...) {
    // The set goes back only once nothing on the device still uses it.
    if (launched) (void)api->StreamSynchronize(stream_);
    release(s);
    throw;
  }
  auto work = std::make_unique<Work>(Work{s, std::move(chunks), result, seq});
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(std::move(work));
    pending_.push_back(seq);
    if (!thread_.joinable())
      thread_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "e2fastio-device");
        run();
      });
  }
  cv_.notify_all();
  return result;
}

void DeviceEncoder::run() {
  for (;;) {
    std::unique_ptr<Work> w;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      w = std::move(queue_.front());
      queue_.pop_front();
    }
    finish_work(*w);
  }
}

void DeviceEncoder::finish_work(Work& w) {
  const cuda::Api* api = cuda::api();
  Scratch* s = w.scratch;
  std::vector<std::size_t> sizes(w.chunks.size(), 0);
  std::exception_ptr err;
  DeviceEncodeStats add;
  bool copying = false;
  try {
    cuda::check(api->EventSynchronize(s->compressed), "nvCOMP zstd compression on the device (cudaEventSynchronize)");
    std::vector<std::size_t> frames;
    std::size_t i0 = 0;
    for (std::size_t c = 0; c < w.chunks.size(); ++c) {
      const DeviceChunk& ch = w.chunks[c];
      const Blosc1Layout& L = ch.layout;
      frames.assign(L.nblocks, 0);
      for (std::size_t b = 0; b < L.nblocks; ++b) {
        if (s->statuses()[i0 + b] == nvcomp::kSuccess)
          frames[b] = s->out_bytes()[i0 + b];
        else
          ++add.failed_blocks;  // stored raw below: lossless, counted
      }
      const Blosc1Chunk out = blosc1_zstd_assemble(L, ch.shuffle, frames.data(), ch.dst);
      for (const Blosc1Piece& p : out.pieces) {
        const void* src = p.raw ? static_cast<const void*>(ch.src + (out.memcpyed ? 0 : p.block * L.blocksize))
                                : static_cast<const void*>(static_cast<char*>(s->out) + (i0 + p.block) * s->out_stride);
        cuda::check(api->MemcpyAsync(ch.dst + p.dst_offset, src, p.nbytes, cuda::kMemcpyDeviceToHost, stream_),
                    "cudaMemcpyAsync (compressed blocks to host)");
        copying = true;
        add.bytes_to_host += p.nbytes;
      }
      sizes[c] = out.cbytes;
      add.blocks += L.nblocks;
      add.raw_blocks += out.raw_blocks;
      add.memcpyed_chunks += out.memcpyed ? 1 : 0;
      add.bytes_in += L.nbytes;
      i0 += L.nblocks;
    }
    add.chunks = w.chunks.size();
    cuda::check(api->EventRecord(s->copied, stream_), "cudaEventRecord on the encoder stream");
    cuda::check(api->EventSynchronize(s->copied), "device-to-host copy of compressed blocks (cudaEventSynchronize)");
    copying = false;
    // A memcpyed chunk holds the raw bytes: undo the shuffle the device got.
    std::vector<std::uint8_t> tmp;
    for (std::size_t c = 0; c < w.chunks.size(); ++c) {
      const DeviceChunk& ch = w.chunks[c];
      if (!ch.shuffle || ch.layout.typesize <= 1 || !(ch.dst[2] & 0x2)) continue;
      tmp.assign(ch.dst + kBlosc1HeaderBytes, ch.dst + kBlosc1HeaderBytes + ch.layout.nbytes);
      blosc1_unshuffle_chunk(ch.layout, tmp.data(), ch.dst + kBlosc1HeaderBytes);
    }
  } catch (...) {
    err = std::current_exception();
    if (copying) (void)api->StreamSynchronize(stream_);  // no copy may still land in the caller's memory
  }
  release(s);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!err) {
      stats_.chunks += add.chunks;
      stats_.blocks += add.blocks;
      stats_.raw_blocks += add.raw_blocks;
      stats_.failed_blocks += add.failed_blocks;
      stats_.memcpyed_chunks += add.memcpyed_chunks;
      stats_.bytes_in += add.bytes_in;
    }
    stats_.bytes_to_host += add.bytes_to_host;
    // Done before anyone waiting on the result sees it (submits finish in the order they were queued).
    if (!pending_.empty()) pending_.pop_front();
  }
  w.result->finish(std::move(sizes), err);
}

std::uint64_t DeviceEncoder::oldest_pending() {
  std::lock_guard<std::mutex> lk(mu_);
  return pending_.empty() ? std::numeric_limits<std::uint64_t>::max() : pending_.front();
}

DeviceEncodeStats DeviceEncoder::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void DeviceEncoder::abandon_after_fork() noexcept {
  // The thread is the parent's, the sets hold the parent's device memory, the
  // lock may be held by a parent thread: leak them and start empty.
  for (auto& s : sets_) (void)s.release();
  ::new (static_cast<void*>(&sets_)) std::vector<std::unique_ptr<Scratch>>();
  ::new (static_cast<void*>(&free_)) std::vector<Scratch*>();
  ::new (static_cast<void*>(&queue_)) std::deque<std::unique_ptr<Work>>();
  ::new (static_cast<void*>(&pending_)) std::deque<std::uint64_t>();
  ::new (static_cast<void*>(&thread_)) std::thread();
  ::new (static_cast<void*>(&mu_)) std::mutex();
  ::new (static_cast<void*>(&cv_)) std::condition_variable();
  stream_ = nullptr;
  stop_ = true;
}

}  // namespace e2fastio
