// DirectorySink: one file per object, written to a temporary and renamed.
#include "e2fastio/directory_sink.hpp"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // O_DIRECT
#endif
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "e2fastio/error.hpp"

namespace e2fastio {

namespace {

std::string parent_of(const std::string& path) {
  auto pos = path.rfind('/');
  return pos == std::string::npos ? std::string() : path.substr(0, pos);
}

// Unique per process and call: detail::temp_prefix() + pid + counter. Hidden
// (leading dot) so tools listing chunk directories skip it; same directory so
// rename() is atomic.
std::string temp_name_for(const std::string& path) {
  static std::atomic<unsigned long long> counter{0};
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return dir + detail::temp_prefix() + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) +
         "-" + base;
}

// Remove the temporary files in `dir` that writers on this machine (same tag)
// left behind when they died (a kill -9 between open and rename): their pid no
// longer exists. Files of live processes, of other machines or containers
// (another tag: a shared file system), and of older versions (no tag) are kept.
// Best effort: a failure here never fails a write.
void remove_stale_temps(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const std::string& mine = detail::temp_prefix();
  while (const dirent* e = ::readdir(d)) {
    const char* name = e->d_name;
    if (std::strncmp(name, mine.c_str(), mine.size()) != 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(name + mine.size(), &end, 10);
    if (end == name + mine.size() || *end != '-' || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    (void)::unlinkat(::dirfd(d), name, 0);
  }
  ::closedir(d);
}

// The directory holding the entry `path` ("." or "/" where parent_of says "").
std::string containing_dir(const std::string& path) {
  auto pos = path.rfind('/');
  if (pos == std::string::npos) return ".";
  return pos == 0 ? std::string("/") : path.substr(0, pos);
}

// fsync a directory, so that the entries made in it (renames, new
// subdirectories) survive a crash. Returns 0 or the errno.
int fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = 0;
  while (::fsync(fd) != 0) {
    if (errno == EINTR) continue;
    // Some file systems cannot fsync a directory (EINVAL): nothing to make durable there.
    if (errno != EINVAL && errno != EROFS) err = errno;
    break;
  }
  ::close(fd);
  return err;
}

void write_all(int fd, const uint8_t* data, std::size_t n, const std::string& what) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IOError("writing " + what, errno);
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace

namespace detail {

const std::string& temp_prefix() {
  static const std::string prefix = [] {
    std::string id;
    char host[256] = {0};
    if (::gethostname(host, sizeof(host) - 1) == 0) id += host;
    if (FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
      char buf[64];
      id += "|" + std::string(buf, std::fread(buf, 1, sizeof(buf), f));
      std::fclose(f);
    }
    char ns[128];
    const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof(ns));
    if (n > 0) id += "|" + std::string(ns, static_cast<std::size_t>(n));
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : id) {
      h ^= c;
      h *= 1099511628211ull;
    }
    char tag[17];
    std::snprintf(tag, sizeof(tag), "%016llx", static_cast<unsigned long long>(h));
    return std::string(".e2fastio-tmp-") + std::string(tag, 12) + "-";
  }();
  return prefix;
}

}  // namespace detail

DirectorySink::DirectorySink(std::string root, bool fsync, DirectIO direct)
    : root_(std::move(root)), fsync_(fsync), direct_(direct) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  ensure_dir(root_);
}

bool DirectorySink::known_dir(const std::string& dir) {
  std::lock_guard<ForkSafeMutex> lk(dirs_mu_);
  return made_dirs_.count(dir) > 0;
}

void DirectorySink::make_dirs(const std::string& dir, std::vector<std::string>& chain) {
  const std::string parent = parent_of(dir);
  const bool inside = dir.size() > root_.size() && dir.compare(0, root_.size(), root_) == 0 && dir[root_.size()] == '/';
  // Under the root, an unknown parent comes first: made, or (already there) synced all the same.
  bool parent_done = false;
  if (inside && !known_dir(parent)) {
    make_dirs(parent, chain);
    parent_done = true;
  }
  if (::mkdir(dir.c_str(), 0777) != 0) {
    int err = errno;
    if (err == ENOENT && !parent_done && !parent.empty()) {  // missing ancestors (of the root, or removed)
      make_dirs(parent, chain);
      if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) throw IOError("creating directory " + dir, errno);
    } else if (err != EEXIST) {
      throw IOError("creating directory " + dir, err);
    } else {
      struct stat st;
      if (::stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
        throw IOError("creating directory " + dir + " (a file of that name exists)", ENOTDIR);
    }
  }
  chain.push_back(dir);
}

void DirectorySink::ensure_dir(const std::string& dir, bool synced_by_caller) {
  if (dir.empty() || known_dir(dir)) return;
  std::vector<std::string> chain;  // a path of directories, outermost first
  make_dirs(dir, chain);
  if (fsync_) {
    // A chunk renamed into `dir` survives a crash only if every directory on
    // the way and its entry in its parent do: each directory of the chain is
    // synced (as the parent of the next one, after that was made), and so is
    // the parent of the outermost one, which holds its entry. Directories that
    // already existed are treated alike (made by another thread that may still
    // be syncing, or by a run without fsync): once per directory and sink,
    // cheap when there is nothing to write. `dir` itself is left to a caller
    // that syncs it anyway (after renaming a chunk into it). Remembered only
    // afterwards, so no thread skips a sync still in progress.
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      if (synced_by_caller && it == chain.rbegin()) continue;
      if (int err = fsync_dir(*it)) throw IOError("fsync of directory " + *it, err);
    }
    const std::string top_parent = containing_dir(chain.front());
    if (int err = fsync_dir(top_parent)) throw IOError("fsync of directory " + top_parent, err);
  }
  // The first time this sink uses a directory: temporaries of dead writers go.
  remove_stale_temps(dir);
  std::lock_guard<ForkSafeMutex> lk(dirs_mu_);
  made_dirs_.insert(chain.begin(), chain.end());
}

bool DirectorySink::read(const std::string& key, std::vector<uint8_t>& out) {
  const std::string path = root_ + "/" + key;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    throw IOError("opening chunk '" + key + "' at " + path, errno);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw IOError("reading chunk '" + key + "'", err);
  }
  out.resize(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::read(fd, out.data() + got, out.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int err = r < 0 ? errno : EIO;
      ::close(fd);
      throw IOError("reading chunk '" + key + "'", err);
    }
    got += static_cast<std::size_t>(r);
  }
  ::close(fd);
  return true;
}

int DirectorySink::open_temp(const std::string& key, const std::string& path, const std::string& tmp,
                             bool direct) {
  const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0);
  int fd = ::open(tmp.c_str(), flags, 0666);
  if (fd < 0 && errno == ENOENT) {
    // The directory was removed behind our back (e.g. an array was
    // overwritten through zarr-python): forget what we made and retry once.
    {
      std::lock_guard<ForkSafeMutex> lk(dirs_mu_);
      made_dirs_.clear();
    }
    ensure_parent_of_chunk(key, path);
    fd = ::open(tmp.c_str(), flags, 0666);
  }
  return fd;
}

void DirectorySink::ensure_parent_of_chunk(const std::string& key, const std::string& path) {
  try {
    ensure_dir(parent_of(path), /*synced_by_caller=*/true);  // write() syncs it after the rename
  } catch (const IOError& e) {
    throw IOError("writing chunk '" + key + "': " + e.context(), e.error_code());
  }
}

DirectAlignment DirectorySink::alignment_for(int fd) {
  if (!align_probed_.load(std::memory_order_acquire)) {
    // Racing first writers all probe the same file system and store the same figures.
    DirectAlignment a = detail::probe_direct_alignment(fd);
    align_offset_.store(a.offset, std::memory_order_relaxed);
    align_memory_.store(a.memory, std::memory_order_relaxed);
    if (a.offset == 0) direct_refused_ = true;  // the file system offers no direct I/O
    align_probed_.store(true, std::memory_order_release);
    return a;
  }
  return {align_offset_.load(std::memory_order_relaxed), align_memory_.load(std::memory_order_relaxed)};
}

void DirectorySink::write(const std::string& key, const uint8_t* data, std::size_t nbytes) {
  const std::string path = root_ + "/" + key;
  ensure_parent_of_chunk(key, path);
  const std::string tmp = temp_name_for(path);
  // Whether to try O_DIRECT; the alignment is known once the first such file is open.
  bool direct = direct_ != DirectIO::off && !direct_refused_.load() &&
                (direct_ == DirectIO::on || nbytes >= kDirectMin);
  if (direct && align_probed_.load(std::memory_order_acquire)) {
    const std::size_t off_align = align_offset_.load(std::memory_order_relaxed);
    const std::size_t mem_align = align_memory_.load(std::memory_order_relaxed);
    direct = off_align > 0 && nbytes >= off_align && reinterpret_cast<std::uintptr_t>(data) % mem_align == 0;
  }
  int fd = open_temp(key, path, tmp, direct);
  if (fd < 0 && direct && errno == EINVAL) {  // file system without O_DIRECT
    direct_refused_ = true;
    direct = false;
    fd = open_temp(key, path, tmp, false);
  }
  if (fd < 0) throw IOError("writing chunk '" + key + "': cannot create " + tmp, errno);
  try {
    std::size_t done = 0, body = 0, align = 0;
    if (direct) {
      const DirectAlignment a = alignment_for(fd);
      align = a.offset;
      body = static_cast<std::size_t>(detail::direct_span(0, nbytes, align).end);
      if (body == 0 || reinterpret_cast<std::uintptr_t>(data) % a.memory != 0) {
        direct = false;  // known only now (first file): write it all buffered
        int fl = ::fcntl(fd, F_GETFL);
        if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_DIRECT) != 0)
          throw IOError("writing chunk '" + key + "': clearing O_DIRECT on " + tmp, errno);
      }
    }
    if (direct) {
      ssize_t w = 0;
      while (done < body) {
        w = ::write(fd, data + done, body - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += static_cast<std::size_t>(w);
      }
      if (done < body && w < 0 && errno == EINVAL) {
        // Alignment the device does not accept: finish without O_DIRECT.
        if (direct_ == DirectIO::automatic) direct_refused_ = true;
      } else if (done < body) {
        throw IOError("writing chunk '" + key + "' to " + tmp, w < 0 ? errno : EIO);
      }
      int fl = ::fcntl(fd, F_GETFL);
      if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_DIRECT) != 0)
        throw IOError("writing chunk '" + key + "': clearing O_DIRECT on " + tmp, errno);
      done = done / align * align;  // the buffered rest starts on a page of its own
      if (::lseek(fd, static_cast<off_t>(done), SEEK_SET) < 0)
        throw IOError("writing chunk '" + key + "': seeking in " + tmp, errno);
    }
    write_all(fd, data + done, nbytes - done, "chunk '" + key + "' to " + tmp);
    if (fsync_ && ::fsync(fd) != 0) throw IOError("fsync of chunk '" + key + "'", errno);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw IOError("closing chunk '" + key + "'", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw IOError("renaming chunk '" + key + "' into place at " + path, err);
  }
  if (fsync_) {
    // The rename is an entry in the directory: durable only once the directory is synced.
    const std::string dir = containing_dir(path);
    if (int err = fsync_dir(dir)) throw IOError("fsync of the directory of chunk '" + key + "' (" + dir + ")", err);
  }
}

}  // namespace e2fastio
