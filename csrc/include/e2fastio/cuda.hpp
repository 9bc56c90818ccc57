// The CUDA runtime, loaded at run time (never linked): the same build runs
// with and without a GPU. We use whichever libcudart the process already has
// (e.g. the one torch loaded), or E2FASTIO_CUDART (a path; the tests point it
// at a fake runtime that implements the same functions on the host), or a
// libcudart on the library path. Only the few types we need are declared.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace e2fastio::cuda {

using Error = int;
using Stream = void*;
using Event = void*;
constexpr Error kSuccess = 0;
constexpr unsigned kHostAllocPortable = 1;
constexpr unsigned kHostAllocMapped = 2;  // device-accessible (the same address under unified addressing)
constexpr unsigned kEventDisableTiming = 2;
constexpr unsigned kStreamNonBlocking = 1;
constexpr int kMemcpyDeviceToHost = 2;
constexpr int kMemcpyDeviceToDevice = 3;

struct Api {
  Error (*HostAlloc)(void**, std::size_t, unsigned) = nullptr;
  Error (*FreeHost)(void*) = nullptr;
  Error (*Malloc)(void**, std::size_t) = nullptr;
  Error (*Free)(void*) = nullptr;
  Error (*StreamCreateWithFlags)(Stream*, unsigned) = nullptr;
  Error (*StreamDestroy)(Stream) = nullptr;
  Error (*StreamSynchronize)(Stream) = nullptr;
  Error (*EventCreateWithFlags)(Event*, unsigned) = nullptr;
  Error (*EventDestroy)(Event) = nullptr;
  Error (*EventRecord)(Event, Stream) = nullptr;
  Error (*EventSynchronize)(Event) = nullptr;
  Error (*EventQuery)(Event) = nullptr;
  Error (*StreamWaitEvent)(Stream, Event, unsigned) = nullptr;
  Error (*MemcpyAsync)(void*, const void*, std::size_t, int, Stream) = nullptr;
  Error (*Memcpy)(void*, const void*, std::size_t, int) = nullptr;
  Error (*GetDevice)(int*) = nullptr;
  Error (*SetDevice)(int) = nullptr;
  const char* (*GetErrorString)(Error) = nullptr;
  std::string path;  // the library the functions came from
};

// The runtime, or nullptr (with the reason in *why). Loaded once per process;
// never crashes, never throws.
const Api* api(std::string* why = nullptr);
bool available();
// Throws std::runtime_error naming `what` and CUDA's error string.
void check(Error e, const char* what);

}  // namespace e2fastio::cuda
