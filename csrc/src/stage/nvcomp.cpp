#include "e2fastio/nvcomp.hpp"

#include "e2fastio/dynlib.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <stdexcept>

namespace e2fastio::nvcomp {

namespace {

std::mutex g_candidates_mu;
std::vector<std::string>& candidates() {
  static auto* v = new std::vector<std::string>;
  return *v;
}

struct Loaded {
  Api api;
  bool ok = false;
  std::string why;
};

template <class F>
bool bind(void* h, const char* name, F*& slot, std::string& why) {
  return dynlib::bind(h, name, slot, why, " (not nvCOMP " + std::to_string(kMajor) + ".x?)");
}

Loaded load() {
  Loaded L;
  std::vector<std::string> tries;
  if (const char* env = std::getenv("E2FASTIO_NVCOMP")) {
    tries.emplace_back(env);
  } else {
    std::lock_guard<std::mutex> lk(g_candidates_mu);
    tries = candidates();
    tries.push_back("libnvcomp.so." + std::to_string(kMajor));
  }
  void* h = nullptr;
  std::string errors;
  for (const auto& c : tries) {
    h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h) {
      L.api.path = c;
      break;
    }
    const char* e = dlerror();
    errors += (errors.empty() ? "" : "; ") + std::string(e ? e : c.c_str());
  }
  if (!h) {
    L.why = "nvCOMP " + std::to_string(kMajor) + ".x not found (pip install nvidia-libnvcomp-cu12 or -cu13, "
            "or set E2FASTIO_NVCOMP): " + errors;
    return L;
  }
  Api& a = L.api;
  const bool ok = bind(h, "nvcompGetProperties", a.GetProperties, L.why) &&
                  bind(h, "nvcompGetStatusString", a.GetStatusString, L.why) &&
                  bind(h, "nvcompBatchedZstdCompressGetRequiredAlignments", a.ZstdCompressGetRequiredAlignments, L.why) &&
                  bind(h, "nvcompBatchedZstdCompressGetTempSize", a.ZstdCompressGetTempSize, L.why) &&
                  bind(h, "nvcompBatchedZstdCompressGetMaxOutputChunkSize", a.ZstdCompressGetMaxOutputChunkSize, L.why) &&
                  bind(h, "nvcompBatchedZstdCompressAsync", a.ZstdCompressAsync, L.why);
  if (!ok) {
    L.why = a.path + ": " + L.why;
    return L;  // the handle stays open: dlclose of a CUDA library at this point is not worth the risk
  }
  Properties p{};
  if (a.GetProperties(&p) != kSuccess) {
    L.why = a.path + ": nvcompGetProperties failed";
    return L;
  }
  a.version = p.version;
  if (p.version / 1000 != kMajor) {
    L.why = a.path + ": nvCOMP " + std::to_string(p.version / 1000) + "." + std::to_string(p.version % 1000 / 100) +
            " found, " + std::to_string(kMajor) + ".x needed";
    return L;
  }
  L.ok = true;
  return L;
}

const Loaded& loaded() {
  static const Loaded* L = new Loaded(load());  // leaked: never unloaded
  return *L;
}

}  // namespace

void set_candidates(const std::vector<std::string>& paths) {
  std::lock_guard<std::mutex> lk(g_candidates_mu);
  candidates() = paths;
}

const Api* api(std::string* why) {
  const Loaded& L = loaded();
  if (!L.ok && why) *why = L.why;
  return L.ok ? &L.api : nullptr;
}

void check(Status s, const char* what) {
  if (s == kSuccess) return;
  const Api* a = api();
  throw std::runtime_error(std::string(what) + " failed: " + (a ? a->GetStatusString(s) : "nvCOMP unavailable") +
                           " (nvcompStatus " + std::to_string(s) + ")");
}

}  // namespace e2fastio::nvcomp
