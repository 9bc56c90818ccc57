// Device staging: device-to-host copies into the pinned staging ring on the
// engine's own CUDA stream, ordered after the producer's pending work, with a
// fence per submit that encoder threads wait on before reading the slot.
// The CUDA runtime is reached through the shim (cuda.hpp), loaded at run time.
#pragma once

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "e2fastio/cuda.hpp"

namespace e2fastio {

// Events of one submit's copies: `ready` (recorded on the producer stream)
// and `done` (recorded on the copy stream after the copies). wait() blocks
// until the copies landed and rethrows their error (every waiter sees it).
struct CopyFence {
  cuda::Event ready = nullptr;
  cuda::Event done = nullptr;
  std::once_flag waited;
  std::exception_ptr error;
  CopyFence() = default;
  CopyFence(const CopyFence&) = delete;
  CopyFence& operator=(const CopyFence&) = delete;
  ~CopyFence();
  void wait();
};

// One copy: `nbytes` of C-contiguous device memory at `src` to host `dst`.
struct DeviceCopy {
  void* dst;
  const void* src;
  std::size_t nbytes;
};

class DeviceStager {
 public:
  DeviceStager() = default;
  DeviceStager(const DeviceStager&) = delete;
  DeviceStager& operator=(const DeviceStager&) = delete;
  // Destroys the copy stream: the owner guarantees every copy has completed
  // (each job waited for its fence before its slot was released).
  ~DeviceStager();

  // Queue `copies` on the copy stream after the producer's pending work, and
  // make the producer stream wait for them (later work there may free or
  // overwrite the sources). Returns the submit's fence; `seq` (given by the
  // caller, increasing) names it in oldest_pending(). If a call fails after a
  // copy was queued, the copy stream is synchronised before the error
  // propagates: the caller releases the destination memory while unwinding,
  // and the device must no longer be writing into it.
  std::shared_ptr<CopyFence> copy(const std::vector<DeviceCopy>& copies, void* producer_stream, std::uint64_t seq);
  // The oldest submit whose copies have not completed (UINT64_MAX: none).
  std::uint64_t oldest_pending();
  // Bytes queued for copying from the device so far.
  std::uint64_t bytes_copied() const noexcept { return bytes_.load(); }
  // Leak the parent's stream, fences and lock in a forked child (see Engine::abandon_after_fork).
  void abandon_after_fork() noexcept;

 private:
  std::mutex mu_;
  void* stream_ = nullptr;
  std::deque<std::pair<std::uint64_t, std::shared_ptr<CopyFence>>> fences_;  // (seq, fence), oldest first
  std::atomic<std::uint64_t> bytes_{0};
};

}  // namespace e2fastio
