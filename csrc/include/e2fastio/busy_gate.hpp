// When a background engine's encoders may start a queued chunk: not while the
// thread that feeds the engine (the caller) is busy with its own CPU work.
//
// A model step that computes on the CPU (pre- and post-processing, a sampler,
// torch ops) runs about 10% slower while encoders compress beside it, even
// with the encoders on the other core (docs/benchmarks.md, session 14); the
// same compression in the caller's idle time (a GPU step, a sleep, waiting in
// flush) costs it nothing. So the encoders sample the caller's thread CPU
// clock, leaving out the time it spends inside our own submit (copying into
// the ring is feeding us, not competing with us), and while that says "busy"
// (more than half of a 2 ms window on a CPU) they leave queued chunks where
// they are, for at most `max_defer_ns` per busy stretch. The policy is pure
// arithmetic on the samples it is given, so tests drive it with their own.
#pragma once

#include <cstdint>

namespace e2fastio {

class BusyGate {
 public:
  static constexpr std::int64_t kWindowNs = 2000000;  // 2 ms samples

  explicit BusyGate(std::int64_t max_defer_ns) : max_defer_ns_(max_defer_ns) {}

  // `wall_ns`: a monotonic clock; `caller_cpu_ns`: the caller's thread CPU
  // time outside submit. `urgent`: a thread waits for the chunks (flush,
  // close, a full ring): start now, whatever the caller does. Returns whether
  // an encoder may start a chunk now. Not thread-safe (the engine locks).
  bool may_start(std::int64_t wall_ns, std::int64_t caller_cpu_ns, bool urgent) {
    if (!have_sample_) {
      // The first sample only sets the baseline; until a window has passed
      // the caller is taken as busy (at most 2 ms of delay when it is not).
      have_sample_ = true;
      sample_wall_ = wall_ns;
      sample_cpu_ = caller_cpu_ns;
      busy_ = true;
    } else if (wall_ns - sample_wall_ >= kWindowNs) {
      busy_ = (caller_cpu_ns - sample_cpu_) * 2 > (wall_ns - sample_wall_);
      sample_wall_ = wall_ns;
      sample_cpu_ = caller_cpu_ns;
    }
    if (!busy_) {
      deferring_since_ = -1;
      return true;
    }
    if (urgent) return true;
    if (deferring_since_ < 0) deferring_since_ = wall_ns;
    if (wall_ns - deferring_since_ > max_defer_ns_) return true;  // busy for long: run beside it (nice 19)
    ++deferrals_;
    return false;
  }

  // A new caller thread (or none): forget the samples of the old one.
  void reset() {
    have_sample_ = false;
    busy_ = false;
    deferring_since_ = -1;
  }
  std::int64_t max_defer_ns() const noexcept { return max_defer_ns_; }
  std::uint64_t deferrals() const noexcept { return deferrals_; }

 private:
  std::int64_t max_defer_ns_;
  bool have_sample_ = false;
  bool busy_ = false;
  std::int64_t sample_wall_ = 0, sample_cpu_ = 0;
  std::int64_t deferring_since_ = -1;
  std::uint64_t deferrals_ = 0;
};

}  // namespace e2fastio
