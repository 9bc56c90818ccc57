// A directory store: one file per object, written atomically.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "e2fastio/direct_io.hpp"
#include "e2fastio/fork_safe_mutex.hpp"
#include "e2fastio/sink.hpp"

namespace e2fastio {

// A directory store: key "a/c/0/1" is the file <root>/a/c/0/1. Each object is
// written to a hidden temporary file in the same directory and renamed over
// the target, so neither a reader nor a crash sees a partial chunk.
// With fsync, write() returns once the chunk survives a crash: the file is
// fsynced before the rename, its directory after it, and every directory on
// the way from the root the first time this sink uses it (with its parent,
// which holds its entry).
// Direct I/O (O_DIRECT) bypasses the page cache for the aligned body of
// large objects: on these VMs fresh page-cache pages fault in at ~0.5 GB/s
// while O_DIRECT writes reach the device at ~1.6-2.6 GB/s, and the data needs
// no later writeback. The body is aligned as DirectAlignment says (probed on
// the first file); falls back to buffered writes when the buffer is not
// aligned or the file system refuses O_DIRECT (tmpfs, some network FS).
enum class DirectIO : int { off = 0, on = 1, automatic = 2 };

namespace detail {
// ".e2fastio-tmp-<tag>-": the start of this process's temporary file names;
// <tag> names the machine, its boot and the pid namespace, so that a pid in a
// name is judged only where it means the same process.
const std::string& temp_prefix();
}  // namespace detail

class DirectorySink : public Sink {
 public:
  static constexpr std::size_t kDirectMin = 1 << 20;  // automatic: objects of at least 1 MiB

  explicit DirectorySink(std::string root, bool fsync = false, DirectIO direct = DirectIO::automatic);
  bool read(const std::string& key, std::vector<uint8_t>& out) override;
  void write(const std::string& key, const uint8_t* data, std::size_t nbytes) override;
  std::string describe() const override { return "directory " + root_; }
  bool waits_on_device() const override { return true; }
  const std::string& root() const noexcept { return root_; }
  // Whether O_DIRECT was used for the last eligible object (false once refused).
  bool direct_io_active() const noexcept { return direct_ != DirectIO::off && !direct_refused_.load(); }

 private:
  // Make `dir` (and what it needs above it); with fsync, make them durable,
  // `dir`'s own contents excepted when `synced_by_caller`.
  void ensure_dir(const std::string& dir, bool synced_by_caller = false);
  bool known_dir(const std::string& dir);
  // mkdir `dir` and whatever it needs above it; appends each directory handled to `chain`, outermost first.
  void make_dirs(const std::string& dir, std::vector<std::string>& chain);
  void ensure_parent_of_chunk(const std::string& key, const std::string& path);  // errors name the key
  int open_temp(const std::string& key, const std::string& path, const std::string& tmp, bool direct);
  DirectAlignment alignment_for(int fd);  // probed once, on the first file opened for direct I/O
  std::string root_;
  bool fsync_;
  DirectIO direct_;
  std::atomic<bool> direct_refused_{false};
  std::atomic<bool> align_probed_{false};
  std::atomic<std::size_t> align_offset_{0}, align_memory_{0};
  ForkSafeMutex dirs_mu_;
  std::unordered_set<std::string> made_dirs_;
};

}  // namespace e2fastio
