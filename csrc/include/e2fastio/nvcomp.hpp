// nvCOMP, loaded at run time (never linked, never bundled: its licence allows
// redistribution only inside an application, so it comes from the user's
// nvidia-libnvcomp-cu12/-cu13 wheel). Only the batched zstd compressor of the
// 6.x C API is used, declared here with the types it needs. Candidates, in
// order: E2FASTIO_NVCOMP (a path; the tests point it at the fake runtime),
// the paths the Python layer found (set_candidates), then "libnvcomp.so.6" on
// the library path. Opened RTLD_LOCAL: its CPU companion exports lz4 and
// libdeflate symbols that must not bind to anything else in the process.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace e2fastio::nvcomp {

using Status = int;  // nvcompStatus_t
constexpr Status kSuccess = 0;
constexpr unsigned kMajor = 6;  // the major version we load (5.x exported other names)

struct Properties {  // nvcompProperties_t
  unsigned version;         // major * 1000 + minor * 100 + patch
  unsigned cudart_version;
};
struct Alignments {  // nvcompAlignmentRequirements_t
  std::size_t input, output, temp;
};
struct ZstdOpts {  // nvcompBatchedZstdCompressOpts_t: reserved, zeroed
  char reserved[64];
};

struct Api {
  Status (*GetProperties)(Properties*) = nullptr;
  const char* (*GetStatusString)(Status) = nullptr;
  Status (*ZstdCompressGetRequiredAlignments)(ZstdOpts, Alignments*) = nullptr;
  Status (*ZstdCompressGetTempSize)(std::size_t num_chunks, std::size_t max_chunk_bytes, ZstdOpts, std::size_t* temp_bytes,
                                    std::size_t max_total_bytes, void* stream) = nullptr;
  Status (*ZstdCompressGetMaxOutputChunkSize)(std::size_t max_chunk_bytes, ZstdOpts, std::size_t* max_out) = nullptr;
  Status (*ZstdCompressAsync)(const void* const* in_ptrs, const std::size_t* in_bytes, std::size_t max_chunk_bytes,
                              std::size_t num_chunks, void* temp, std::size_t temp_bytes, void* const* out_ptrs,
                              std::size_t* out_bytes, ZstdOpts, Status* statuses, void* stream) = nullptr;
  std::string path;      // the library the functions came from
  unsigned version = 0;  // from nvcompGetProperties
};

// Library paths to try after E2FASTIO_NVCOMP (the Python layer passes those of
// an installed nvidia-libnvcomp wheel); only before the first api() call counts.
void set_candidates(const std::vector<std::string>& paths);
// nvCOMP, or nullptr with the reason in *why. Loaded once per process; never throws.
const Api* api(std::string* why = nullptr);
// Throws std::runtime_error naming `what` and nvCOMP's status string.
void check(Status s, const char* what);

}  // namespace e2fastio::nvcomp
