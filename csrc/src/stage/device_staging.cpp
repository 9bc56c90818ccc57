#include "e2fastio/device_staging.hpp"

#include <new>
#include <string>

#include "e2fastio/error.hpp"

namespace e2fastio {

CopyFence::~CopyFence() {
  if (const cuda::Api* a = cuda::api()) {
    if (done) a->EventDestroy(done);
    if (ready) a->EventDestroy(ready);
  }
}

void CopyFence::wait() {
  std::call_once(waited, [this] {
    try {
      cuda::check(cuda::api()->EventSynchronize(done), "device-to-host copy (cudaEventSynchronize)");
    } catch (...) {
      error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

DeviceStager::~DeviceStager() {
  if (stream_) {
    if (const cuda::Api* api = cuda::api()) api->StreamDestroy(stream_);
    stream_ = nullptr;
  }
}

std::shared_ptr<CopyFence> DeviceStager::copy(const std::vector<DeviceCopy>& copies, void* producer_stream,
                                              std::uint64_t seq) {
  std::string why;
  const cuda::Api* api = cuda::api(&why);
  E2F_EXPECT(api != nullptr, "a device tensor was passed but the CUDA runtime is unavailable: " + why);
  void* stream;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!stream_) cuda::check(api->StreamCreateWithFlags(&stream_, cuda::kStreamNonBlocking), "cudaStreamCreateWithFlags");
    stream = stream_;
  }
  auto fence = std::make_shared<CopyFence>();
  bool copy_queued = false;  // from then on the destination may be written by the device
  try {
    cuda::check(api->EventCreateWithFlags(&fence->ready, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    cuda::check(api->EventCreateWithFlags(&fence->done, cuda::kEventDisableTiming), "cudaEventCreateWithFlags");
    // 1. The copy waits for the producer's pending work (the kernels computing the data).
    cuda::check(api->EventRecord(fence->ready, producer_stream), "cudaEventRecord on the producer stream");
    cuda::check(api->StreamWaitEvent(stream, fence->ready, 0), "cudaStreamWaitEvent");
    // 2. Device -> pinned host memory, on our stream.
    for (const DeviceCopy& c : copies) {
      if (c.nbytes == 0) continue;
      cuda::check(api->MemcpyAsync(c.dst, c.src, c.nbytes, cuda::kMemcpyDeviceToHost, stream),
                  "cudaMemcpyAsync (device to host)");
      copy_queued = true;
      bytes_.fetch_add(c.nbytes);
    }
    cuda::check(api->EventRecord(fence->done, stream), "cudaEventRecord on the copy stream");
    // 3. Later work on the producer stream (which may free or overwrite the source) waits for the copy.
    cuda::check(api->StreamWaitEvent(producer_stream, fence->done, 0), "cudaStreamWaitEvent on the producer stream");
  } catch (...) {
    // The stream is synchronised (there may be no event after the copies to
    // wait on); that returns once its work is done or its context is lost
    // (then no copy runs any more). Its own status is secondary to the error
    // being raised.
    if (copy_queued) (void)api->StreamSynchronize(stream);
    throw;
  }
  std::lock_guard<std::mutex> lk(mu_);
  fences_.emplace_back(seq, fence);
  return fence;
}

std::uint64_t DeviceStager::oldest_pending() {
  const cuda::Api* api = cuda::api();
  std::lock_guard<std::mutex> lk(mu_);
  while (api && !fences_.empty()) {
    if (api->EventQuery(fences_.front().second->done) != cuda::kSuccess) break;
    fences_.pop_front();
  }
  return fences_.empty() ? UINT64_MAX : fences_.front().first;
}

void DeviceStager::abandon_after_fork() noexcept {
  // Fences hold the parent's CUDA events, the lock may be held by a parent
  // thread, the stream is the parent's: build fresh members over them.
  ::new (static_cast<void*>(&fences_)) std::deque<std::pair<std::uint64_t, std::shared_ptr<CopyFence>>>();
  ::new (static_cast<void*>(&mu_)) std::mutex();
  stream_ = nullptr;
}

}  // namespace e2fastio
