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
  static constexpr std::int64_t kWindowNs = 2000000;     // 2 ms samples
  static constexpr std::int64_t kFirstLookNs = 1000000;  // after a write that follows a pause: judge after 1 ms

  explicit BusyGate(std::int64_t max_defer_ns) : max_defer_ns_(max_defer_ns) {}

  // The caller entered submit. A write after a pause (the caller was neither
  // computing nor writing: it waited for its step) says nothing about what it
  // does next, and the chunks it queues must not start on the strength of
  // that pause: they wait until the caller has been watched for 1 ms after
  // the write. A caller that writes in a loop (a quarter of the last window or
  // more inside submit) feeds us: its chunks start at once.
  void entering() {
    if (have_sample_ && !busy_ && !feeding_) {
      fresh_ = true;
      busy_ = true;
    }
  }
  // The submit returned; the samples are then (see may_start). The window restarts here when fresh.
  void submitted(std::int64_t wall_ns, std::int64_t caller_cpu_ns, std::int64_t in_submit_ns) {
    if (!have_sample_ || fresh_) {
      have_sample_ = true;
      fresh_ = true;
      busy_ = true;
      sample_wall_ = wall_ns;
      sample_cpu_ = caller_cpu_ns;
      sample_in_submit_ = in_submit_ns;
    }
  }

  // `wall_ns`: a monotonic clock; `caller_cpu_ns`: the caller's thread CPU
  // time outside submit; `in_submit_ns`: the wall time it spent inside submit
  // (the running call's so far included). `urgent`: a thread waits for the
  // chunks (flush, close, a half-full ring): start now, whatever the caller
  // does. Returns whether an encoder may start a chunk now. Not thread-safe
  // (the engine locks).
  bool may_start(std::int64_t wall_ns, std::int64_t caller_cpu_ns, std::int64_t in_submit_ns, bool urgent) {
    if (!have_sample_) {
      // The first call only sets the baseline; the caller is judged once a window has passed.
      have_sample_ = true;
      busy_ = true;
      sample_wall_ = wall_ns;
      sample_cpu_ = caller_cpu_ns;
      sample_in_submit_ = in_submit_ns;
    } else {
      const std::int64_t dt = wall_ns - sample_wall_;
      if (dt >= (fresh_ ? kFirstLookNs : kWindowNs)) {
        busy_ = (caller_cpu_ns - sample_cpu_) * 2 > dt;            // more than half of it on a CPU, its own work
        feeding_ = (in_submit_ns - sample_in_submit_) * 4 >= dt;  // a quarter of it or more inside submit
        fresh_ = false;
        sample_wall_ = wall_ns;
        sample_cpu_ = caller_cpu_ns;
        sample_in_submit_ = in_submit_ns;
      }
    }
    if (!busy_) {
      deferring_since_ = -1;
      return true;
    }
    if (urgent) return true;
    if (deferring_since_ < 0) deferring_since_ = wall_ns;
    return wall_ns - deferring_since_ > max_defer_ns_;  // busy for long: run beside it (nice 19)
  }

  // A new caller thread (or none): forget the samples of the old one.
  void reset() {
    have_sample_ = fresh_ = busy_ = feeding_ = false;
    deferring_since_ = -1;
  }

 private:
  std::int64_t max_defer_ns_;
  bool have_sample_ = false;
  bool fresh_ = false;    // watching the caller after a write that followed a pause
  bool busy_ = false;     // the last verdict: computing (or not yet known)
  bool feeding_ = false;  // the last window: writing in a loop
  std::int64_t sample_wall_ = 0, sample_cpu_ = 0, sample_in_submit_ = 0;
  std::int64_t deferring_since_ = -1;
};

}  // namespace e2fastio
