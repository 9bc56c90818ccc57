// The device encode stage: chunks in device memory become Blosc1 zstd chunks
// in pinned host memory, compressed on the device by nvCOMP so that only the
// compressed bytes cross PCIe. Per submit, on the encoder's own CUDA stream
// (after the producer's pending work): one batched nvCOMP zstd call over
// every Blosc block of every chunk. The stage's thread ("e2fastio-device")
// then waits for it, reads the compressed sizes, writes each chunk's Blosc1
// header and block offsets on the host (blosc1.hpp), and copies each block's
// frame (or, when the frame is not smaller, the block itself) straight to its
// place in the chunk. The byte shuffle happens before, on the producer's
// stream (the caller passes shuffled data).
//
// Memory: `scratch_sets` (2) sets of device memory and a small pinned table
// each, grown to the largest submit (compressed output <= about 1.01x its raw
// bytes, plus nvCOMP's temp); a submit waits for a free set (backpressure).
// The device data must stay unchanged until the submit is done (done() >= its
// sequence number): the caller passes a private buffer.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "e2fastio/blosc1.hpp"

namespace e2fastio {

// One chunk: `src` (device) holds layout.nbytes bytes, shuffled per block when
// `shuffle`; the chunk is written to `dst` (host, layout.max_chunk_bytes()).
struct DeviceChunk {
  const std::uint8_t* src;
  std::uint8_t* dst;
  Blosc1Layout layout;
  bool shuffle;
};

struct DeviceEncodeStats {
  std::uint64_t chunks = 0;           // chunks compressed on the device
  std::uint64_t blocks = 0;
  std::uint64_t raw_blocks = 0;       // stored raw: the frame was not smaller than the block
  std::uint64_t failed_blocks = 0;    // nvCOMP reported a per-block error: stored raw (lossless)
  std::uint64_t memcpyed_chunks = 0;  // the whole chunk stored raw (compression would have grown it)
  std::uint64_t bytes_in = 0;         // raw bytes
  std::uint64_t bytes_to_host = 0;    // bytes copied device -> host (payloads)
};

// What a submit's chunks became: the size of each (same order), or the error.
struct DeviceEncoded {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  std::vector<std::size_t> cbytes;
  void finish(std::vector<std::size_t> sizes, std::exception_ptr err);
  void wait();  // until done; rethrows the error (every waiter sees it)
};

class DeviceEncoder {
 public:
  explicit DeviceEncoder(unsigned scratch_sets = 2);
  DeviceEncoder(const DeviceEncoder&) = delete;
  DeviceEncoder& operator=(const DeviceEncoder&) = delete;
  ~DeviceEncoder();  // finishes queued submits, stops the thread, frees device memory

  // Why nvCOMP cannot be used ("" when it can).
  static std::string unavailable_reason();
  // Queue `chunks`: returns at once with the result to wait on (the caller
  // waits only for a free scratch set). Throws (nothing queued) when nvCOMP
  // or CUDA refuses the launch. `seq` orders oldest_pending().
  std::shared_ptr<DeviceEncoded> submit(std::vector<DeviceChunk> chunks, void* producer_stream, std::uint64_t seq);
  // The oldest submit not yet done (UINT64_MAX: none).
  std::uint64_t oldest_pending();
  DeviceEncodeStats stats() const;
  // A forked child: leak the parent's thread, stream, memory and locks.
  void abandon_after_fork() noexcept;

 private:
  struct Scratch;
  struct Work;
  Scratch* acquire(std::size_t nblocks, std::size_t max_block, std::size_t total_bytes);
  void release(Scratch* s);
  void run();
  void finish_work(Work& w);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Scratch>> sets_;
  std::vector<Scratch*> free_;
  std::deque<std::unique_ptr<Work>> queue_;
  std::deque<std::uint64_t> pending_;  // submitted and not done, oldest first
  bool stop_ = false;
  void* stream_ = nullptr;
  std::thread thread_;
  DeviceEncodeStats stats_;
};

}  // namespace e2fastio
