// Running the chunk pipeline: plan (plan.hpp) -> stage (staging ring, device
// copies) -> encode on the pool (codec.hpp) -> sink (one file per sink).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "e2fastio/background_errors.hpp"
#include "e2fastio/buffer_pool.hpp"
#include "e2fastio/busy_gate.hpp"
#include "e2fastio/codec.hpp"
#include "e2fastio/device_encode.hpp"
#include "e2fastio/device_staging.hpp"
#include "e2fastio/plan.hpp"
#include "e2fastio/sink.hpp"
#include "e2fastio/staging_ring.hpp"
#include "e2fastio/thread_pool.hpp"

namespace e2fastio {

struct EngineStats {
  std::uint64_t chunks_written = 0;
  std::uint64_t chunks_merged = 0;   // partial chunks read-modify-written
  std::uint64_t bytes_in = 0;        // raw bytes encoded
  std::uint64_t bytes_out = 0;       // encoded bytes stored
  std::uint64_t bytes_from_device = 0;  // raw bytes copied device -> host (device submits not compressed there)
};

// Whether one request can be compressed on the device (Engine::device_layout):
// its chunks tile the data in order (chunk j is bytes [j * chunk_nbytes, ...)),
// each whole and inside the array, the codec is Blosc zstd with byte shuffle
// or none, and every block starts where nvCOMP can read it. The caller
// shuffles each chunk's blocks (blosc1_shuffle_block) before submitting.
struct DeviceLayout {
  bool ok = false;
  std::string why;  // when not ok
  std::size_t nchunks = 0, chunk_nbytes = 0, blocksize = 0, typesize = 1;
  bool shuffle = false;
};

class Engine {
 public:
  // `ring_bytes` > 0 enables non-blocking submits: that much of
  // `max_buffer_bytes` becomes the staging ring, the rest encode buffers.
  // `nice` > 0 lowers the scheduling priority of the engine's threads
  // (encoders and writers) by that much, for background work that must not
  // slow the thread that submits it (see ThreadPool); with `idle_sched` they
  // also run under SCHED_IDLE (Linux): only on cores no normal thread wants.
  //
  // Threads: `threads` encoder threads ("e2fastio-pool") plan nothing, they
  // gather, encode and, for sinks whose writes wait on a device
  // (Sink::waits_on_device, e.g. local files), hand the encoded chunk to the
  // writer stage: max(2, threads) writer threads ("e2fastio-write"), which
  // store it (and fault the staging ring's pages in ahead of the caller). An encoder thread therefore
  // never waits for the disk; the encoded bytes stay in their BufferPool
  // lease until stored, so max_buffer_bytes still bounds them, and encoders
  // wait for a lease (backpressure) when writers fall behind. A chunk counts
  // as done (write_batch returns, flush() returns, its same-key successor
  // starts) only once it is stored.
  // `defer_busy_seconds` > 0 (with `nice` > 0): encoders leave queued chunks
  // while the thread that submits is busy with its own CPU work, for at most
  // that long per busy stretch (BusyGate); a thread in flush()/wait_idle() or
  // a half-full ring makes them start at once.
  Engine(unsigned threads, std::size_t max_buffer_bytes, std::size_t ring_bytes = 0, int nice = 0,
         bool idle_sched = false, double defer_busy_seconds = 0.0);
  ~Engine();

  // Write `slab` at the orthogonal selection `index[d]` (one target index per
  // slab position along each dimension; unique, in range). Blocks until every
  // touched chunk is stored; rethrows the first error (with its chunk key).
  void write(const ArraySpec& array, const std::shared_ptr<Sink>& sink, const Slab& slab,
             const std::vector<std::vector<int64_t>>& index);

  // Several writes (e.g. one per variable of a model step) as one batch: all
  // are validated first, then every chunk of every request is queued at once,
  // so chunks of different arrays compress in parallel. Blocks until all are
  // stored; every chunk is attempted even if another fails; the first error
  // is rethrown.
  using Request = WriteRequest;
  void write_batch(const std::vector<Request>& requests);
  struct Batch;  // one non-blocking submit's staged data and jobs (engine.cpp)

  // Non-blocking: copy every slab into the staging ring (waiting only while
  // the ring is full), queue the chunks and return. The caller may reuse its
  // memory at once. Chunks of the same key are stored in submission order.
  // Background errors are kept and rethrown (once) by check()/flush().
  void submit(const std::vector<Request>& requests);
  // Non-blocking, from device memory: each request's slab.data is a device
  // pointer to C-contiguous data. An event recorded on `producer_stream` makes
  // the engine's copy stream wait for the producer's pending work; the
  // device-to-host copy into the (pinned) ring runs on the copy stream; the
  // producer stream then waits for the copy, so later work there may free or
  // overwrite the source. Encoder threads start on a chunk only after its
  // copy completed. Returns a sequence number for copies_done().
  //
  // With `compress_on_device`, each request's data must be laid out as
  // device_layout() says and already shuffled per block: nvCOMP compresses
  // every block on the device (DeviceEncoder), only compressed bytes are
  // copied, and the chunks are stored as Blosc1 zstd chunks. The device data
  // must then stay unchanged until copies_done() reaches the returned number.
  std::uint64_t submit_device(const std::vector<Request>& requests, void* producer_stream,
                              bool compress_on_device = false);
  // How many device submits (in order) have completed their copies.
  std::uint64_t copies_done();
  DeviceLayout device_layout(const Request& r) const;
  DeviceEncodeStats device_encode_stats() const { return encoder_.stats(); }
  bool cuda_available() const;

  void flush();           // wait until every submitted chunk is stored, then check()
  // False when chunks are still pending after the timeout. With `help`, the
  // waiting thread runs queued chunk tasks (encode, store) itself meanwhile,
  // at its own priority, so that progress never rests on background threads
  // alone (they may run at nice 19 or under SCHED_IDLE on a busy machine). A
  // task started before the deadline runs to its end. Only for sinks whose
  // writes never wait on the waiting thread (not a CollectSink it consumes).
  bool wait_idle(double timeout_seconds, bool help = false);
  // Non-blocking progress: chunks finished (stored or failed) so far. A
  // consumer of a CollectSink waits with wait_progress() instead of polling:
  // every chunk written to a sink ends its job, so "a chunk may be ready"
  // and "nothing is pending" are both seen here.
  std::uint64_t finished_chunks() const;
  // Wait until more than `seen` chunks have finished, nothing is pending, or
  // the timeout passes; returns finished_chunks().
  std::uint64_t wait_progress(std::uint64_t seen, double timeout_seconds);
  // Rethrow the first background error, if any (its type kept), naming the
  // chunks that failed after it; then forget them.
  void check();
  std::size_t pending_chunks() const;
  std::uint64_t failed_chunks() const noexcept { return failed_chunks_.load(); }
  bool has_ring() const noexcept { return ring_ != nullptr; }
  RingStats ring_stats() const;

  // Bytes of staging one chunk of `array` needs (raw + encode buffer).
  std::size_t staging_bytes_per_chunk(const ArraySpec& array) const;

  unsigned threads() const noexcept { return pool_.size(); }
  int nice() const noexcept { return pool_.nice(); }
  // Engine threads (encoders and writers) running under SCHED_IDLE.
  unsigned idle_sched_threads() const noexcept;
  double defer_busy_seconds() const noexcept { return static_cast<double>(defer_ns_) / 1e9; }
  // Times an encoder left a queued chunk because the caller was busy.
  std::uint64_t busy_deferrals() const noexcept { return busy_deferrals_.load(); }
  unsigned writer_threads() const;  // 0 once shut down
  BufferPool& buffers() noexcept { return *buffers_; }
  EngineStats stats() const;
  void shutdown();
  // In a forked child, for an engine inherited from the parent: leak all its
  // state (queued tasks, key-order waiters, device fences, staging ring,
  // buffer pool, copy stream, locks), never running, destroying or locking
  // any of it, since the parent's threads may have held its locks or been
  // updating it at the fork. What is left is empty: flush() and check()
  // return at once, new writes raise a clear error, and the destructor
  // releases nothing of the parent's. shutdown() and the destructor do this
  // by themselves in a process other than the one that created the engine.
  // Takes no lock; call it from the only thread of a fresh child (e.g. an
  // at-fork child handler).
  void abandon_after_fork() noexcept;
  // True once abandoned, or in a forked child of the process that created it.
  bool inherited() const noexcept;

 private:
  // One chunk: encode_job gathers and encodes it into `lease` (merging with
  // the stored chunk when partial); store_job hands the result to the sink.
  // Errors from either name the chunk key (and count as failed chunks).
  struct Encoded {
    std::string key;
    const uint8_t* data = nullptr;
    std::size_t nbytes = 0;
    std::size_t raw_nbytes = 0;
  };
  Encoded encode_job(const ChunkJob& job, Lease* lease, int blosc_threads);
  void store_job(const ChunkJob& job, const Encoded& enc);
  [[noreturn]] void rethrow_for_chunk(const std::string& key, const Sink& sink);  // inside a catch block
  std::shared_ptr<Lease> lease_for(const ChunkJob& job);  // blocks while the pool is full
  // The writer stage for `sink`'s chunks; nullptr when the sink is stored on
  // the encoder thread.
  ThreadPool* writers_for(const Sink& sink);
  ThreadPool& writers();  // the writer stage
  // Fault the ring's pages in ahead of a slot that ends at `end`, on the
  // writer threads, so that the caller's copies land in warm memory.
  void warm_ring_ahead(std::size_t end, std::size_t batch_bytes);
  void validate_requests(const std::vector<Request>& requests) const;
  void dispatch_ordered(const std::shared_ptr<Batch>& batch, std::size_t j);
  void job_finished(const std::string& order_key);
  std::shared_ptr<Batch> stage(const std::vector<Request>& requests, bool copy_host);
  std::shared_ptr<Batch> stage_for_device_encode(const std::vector<Request>& requests,
                                                 std::vector<DeviceChunk>& chunks);
  void dispatch_batch(const std::shared_ptr<Batch>& batch);
  void ensure_usable() const;  // refuse new work on an inherited engine
  void wake_helpers();         // a task was queued, or nothing is pending any more
  // Run queued tasks on this thread until nothing is pending or `deadline`.
  void help_until_idle(std::chrono::steady_clock::time_point deadline);

  ThreadPool pool_;
  std::unique_ptr<ThreadPool> writers_;  // never null; a pointer, so that abandoning leaves it in place
  std::unique_ptr<BufferPool> buffers_;  // a pointer, so that a forked child can leak the parent's
  std::unique_ptr<StagingRing> ring_;
  std::atomic<std::size_t> ring_warm_{0};  // ring bytes [0, ring_warm_) are faulted in (or queued to be)
  std::atomic<std::uint64_t> chunks_written_{0}, chunks_merged_{0}, bytes_in_{0}, bytes_out_{0};
  std::atomic<std::uint64_t> failed_chunks_{0};
  // Non-blocking bookkeeping.
  mutable std::mutex async_mu_;
  std::condition_variable async_cv_;
  std::size_t pending_ = 0;
  std::atomic<std::size_t> pending_now_{0};  // pending_, readable without async_mu_ (helpers)
  std::mutex help_mu_;
  std::condition_variable help_cv_;
  std::uint64_t finished_ = 0;
  std::condition_variable progress_cv_;
  BackgroundErrors errors_;  // of background chunks, until check()
  std::unordered_map<std::string, std::deque<std::function<void()>>> key_waiters_;
  DeviceStager stager_;     // device-to-host copies and their fences
  DeviceEncoder encoder_;   // chunks compressed on the device (nvCOMP), and their copies
  std::mutex device_mu_;    // device submits take their sequence numbers in order under it
  std::uint64_t device_seq_ = 0;
  std::atomic<std::uint64_t> copies_done_{0};  // as last computed (a forked child reads only this)
  // Deferral (background engines with defer_busy_seconds > 0): encoders
  // leave queued chunks while the caller (the thread that last submitted) is
  // busy with its own CPU work; see BusyGate.
  bool background_may_start();
  std::int64_t defer_ns_ = 0;
  std::atomic<int> waiters_{0};        // threads in flush() or wait_idle() (Waiting)
  struct Waiting {                     // counts a waiting thread and wakes the encoders: the gate opens
    Engine& e;
    explicit Waiting(Engine& engine) : e(engine) {
      e.waiters_.fetch_add(1);
      e.pool_.wake_all();
    }
    ~Waiting() { e.waiters_.fetch_sub(1); }
  };
  std::atomic<bool> has_caller_{false};
  std::atomic<long> caller_clock_{0};  // clockid_t of the caller's thread CPU clock
  std::mutex gate_mu_;  // only encoders and submit take it (never an inherited engine's: see submit)
  BusyGate gate_{0};
  // The caller's time inside submit (guarded by gate_mu_): CPU and wall time
  // of finished calls, and the running call's start (-1: none running).
  std::int64_t cpu_in_submit_ns_ = 0, wall_in_submit_ns_ = 0;
  std::int64_t submit_entry_cpu_ns_ = -1, submit_entry_wall_ns_ = -1;
  std::atomic<std::uint64_t> busy_deferrals_{0};
  // Fork: the process that created the engine, and whether it was abandoned.
  const long owner_pid_;
  bool abandoned_ = false;
};

}  // namespace e2fastio
