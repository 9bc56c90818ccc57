// A mutex that fork() leaves unlocked and consistent in the child.
//
// A forked child has only the thread that called fork(); a lock that an
// encoder thread held at that moment would stay locked forever there, and a
// child writing through the same sink would hang. A pthread_atfork handler
// takes every live ForkSafeMutex before the fork (waiting for the short
// critical sections in progress to end) and releases them all in the parent
// and in the child, so the child sees them unlocked and the data they guard
// whole.
//
// For leaf locks only: while holding one, a thread must not wait for anything
// else (another lock, a condition, the Python GIL), or the fork could wait
// forever. Sinks' bookkeeping locks qualify; locks paired with condition
// variables do not.
#pragma once

#include <mutex>

namespace e2fastio {

class ForkSafeMutex {
 public:
  ForkSafeMutex();
  ~ForkSafeMutex();
  ForkSafeMutex(const ForkSafeMutex&) = delete;
  ForkSafeMutex& operator=(const ForkSafeMutex&) = delete;

  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }
  bool try_lock() { return mu_.try_lock(); }

 private:
  std::mutex mu_;
};

}  // namespace e2fastio
