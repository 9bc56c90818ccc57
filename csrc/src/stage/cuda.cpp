#include "e2fastio/cuda.hpp"

#include "e2fastio/dynlib.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace e2fastio::cuda {

namespace {

int find_loaded(struct dl_phdr_info* info, size_t, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (info->dlpi_name && std::strstr(info->dlpi_name, "libcudart.so")) {
    *out = info->dlpi_name;
    return 1;
  }
  return 0;
}

struct Loaded {
  Api api;
  bool ok = false;
  std::string why;
};

using dynlib::bind;

Loaded load() {
  Loaded L;
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("E2FASTIO_CUDART")) candidates.emplace_back(env);
  std::string already;
  dl_iterate_phdr(find_loaded, &already);
  if (!already.empty()) candidates.push_back(already);
  if (!std::getenv("E2FASTIO_CUDART"))
    for (const char* n : {"libcudart.so.13", "libcudart.so.12", "libcudart.so"}) candidates.emplace_back(n);
  void* h = nullptr;
  for (const auto& c : candidates) {
    h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h) {
      L.api.path = c;
      break;
    }
  }
  if (!h) {
    L.why = "no CUDA runtime found (none loaded in the process, E2FASTIO_CUDART unset, libcudart not on the library path)";
    return L;
  }
  Api& a = L.api;
  bool ok = bind(h, "cudaHostAlloc", a.HostAlloc, L.why) && bind(h, "cudaFreeHost", a.FreeHost, L.why) &&
            bind(h, "cudaMalloc", a.Malloc, L.why) && bind(h, "cudaFree", a.Free, L.why) &&
            bind(h, "cudaStreamCreateWithFlags", a.StreamCreateWithFlags, L.why) &&
            bind(h, "cudaStreamDestroy", a.StreamDestroy, L.why) &&
            bind(h, "cudaStreamSynchronize", a.StreamSynchronize, L.why) &&
            bind(h, "cudaEventCreateWithFlags", a.EventCreateWithFlags, L.why) &&
            bind(h, "cudaEventDestroy", a.EventDestroy, L.why) && bind(h, "cudaEventRecord", a.EventRecord, L.why) &&
            bind(h, "cudaEventSynchronize", a.EventSynchronize, L.why) &&
            bind(h, "cudaEventQuery", a.EventQuery, L.why) &&
            bind(h, "cudaStreamWaitEvent", a.StreamWaitEvent, L.why) &&
            bind(h, "cudaMemcpyAsync", a.MemcpyAsync, L.why) && bind(h, "cudaMemcpy", a.Memcpy, L.why) &&
            bind(h, "cudaGetDevice", a.GetDevice, L.why) && bind(h, "cudaSetDevice", a.SetDevice, L.why) &&
            bind(h, "cudaGetErrorString", a.GetErrorString, L.why);
  if (!ok) {
    L.why = L.api.path + ": " + L.why;
    return L;
  }
  int dev = -1;
  if (a.GetDevice(&dev) != kSuccess) {
    L.why = L.api.path + ": no usable CUDA device";
    return L;
  }
  L.ok = true;
  return L;
}

const Loaded& loaded() {
  // Leaked on purpose: never call CUDA from static destructors.
  static const Loaded* L = new Loaded(load());
  return *L;
}

}  // namespace

const Api* api(std::string* why) {
  const Loaded& L = loaded();
  if (!L.ok && why) *why = L.why;
  return L.ok ? &L.api : nullptr;
}

bool available() { return api() != nullptr; }

void check(Error e, const char* what) {
  if (e == kSuccess) return;
  const Api* a = api();
  throw std::runtime_error(std::string(what) + " failed: " + (a ? a->GetErrorString(e) : "CUDA unavailable") +
                           " (error " + std::to_string(e) + ")");
}

}  // namespace e2fastio::cuda
