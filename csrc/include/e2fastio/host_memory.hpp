// Process-wide cache of large host blocks: staging rings and encode buffers.
//
// Each backend owns an engine, and each engine a staging ring (hundreds of MB)
// and a buffer pool. Without this cache every new backend would map fresh
// pages and fault them in again (about 0.5 GB/s on these VMs; page-locked
// memory from cudaHostAlloc is slower still to get), although the previous
// backend's memory was warm. Engines give their blocks back here when they
// are destroyed, and the next engine takes them.
//
// Bound: the cache holds at most limit() bytes of blocks nobody uses (default
// 1 GiB, one default engine's worth; set_limit() changes it, 0 turns caching
// off; the Python package applies E2FASTIO_HOST_CACHE_BYTES at import); a
// block given back beyond the limit is freed.
// empty() frees every cached block now (Python: e2fastio.empty_cache()).
// Blocks in use are bounded by their engines (max_buffer_bytes each), not here.
// A forked child forgets the page-locked blocks (they are not mapped there).
#pragma once

#include <cstddef>
#include <cstdint>

namespace e2fastio::host_memory {

constexpr std::size_t kBlockAlign = 4096;  // every block's start is aligned to this

struct Block {
  uint8_t* data = nullptr;
  std::size_t size = 0;  // bytes usable at data (a cached block may be larger than asked)
  bool pinned = false;   // page-locked, from the CUDA runtime (freed with cudaFreeHost)
  std::size_t warm = 0;  // bytes from the start its last owner knew to be faulted in (0 when fresh)
};

// A block of at least min_size and at most max_size bytes (4 KiB aligned):
// the smallest fitting cached block of the same kind, else a fresh one of
// min_size bytes. Pinned: {nullptr} when the CUDA runtime cannot give one (the
// caller falls back to pageable memory). Pageable: throws std::bad_alloc.
Block take(std::size_t min_size, std::size_t max_size, bool pinned);
// Cache `b` for the next take() if it fits under the limit, else free it.
void give(Block b) noexcept;
// Free every cached block; returns the bytes freed.
std::size_t empty() noexcept;

struct Stats {
  std::size_t limit = 0;
  std::size_t cached_bytes = 0;
  std::size_t cached_blocks = 0;
  std::uint64_t hits = 0;    // take() served from the cache
  std::uint64_t misses = 0;  // take() that allocated
};
Stats stats();
// Change the limit (frees cached blocks beyond it, oldest first).
void set_limit(std::size_t bytes);

}  // namespace e2fastio::host_memory
