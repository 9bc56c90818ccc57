// The errors of background chunks, kept until the caller asks (Engine::check).
//
// The first error is kept as it was thrown (its type picks the Python
// exception); the ones after it are counted and the first kNamed of them
// named, so that one report says how much failed and where.
#pragma once

#include <cstddef>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

namespace e2fastio {

class BackgroundErrors {
 public:
  static constexpr std::size_t kNamed = 8;

  // Takes `e` (leaves it empty: no reference stays with the recording thread).
  void record(std::exception_ptr& e);

  // Throws the first error recorded since the last call, of its own type,
  // naming the later ones ("(and N more chunk(s) failed since: ...)"); then
  // nothing is recorded. Returns when nothing was.
  void rethrow_first();

  // In a forked child: what the parent's threads may have been changing is
  // leaked as it stands; the record starts empty.
  void abandon_after_fork() noexcept;

 private:
  std::mutex mu_;
  std::exception_ptr first_;
  std::size_t later_ = 0;
  std::vector<std::string> later_what_;
};

}  // namespace e2fastio
