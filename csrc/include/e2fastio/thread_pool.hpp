// A fixed pool of native worker threads. Workers never touch Python objects.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace e2fastio {

class ThreadPool {
 public:
  // The name every worker carries (Linux: /proc/<pid>/task/<tid>/comm); threads
  // that blosc starts from a worker inherit it.
  static constexpr const char* kThreadName = "e2fastio-pool";
  // `name`: the workers' thread name (at most 15 characters). `nice` > 0:
  // each worker lowers its own scheduling priority by that much (Linux: the
  // nice value is per thread; threads a worker starts inherit it), so that
  // work queued here yields the CPU to the threads that queued it. It cannot
  // be raised back later without privileges, hence fixed at construction.
  // `idle_sched` (with `nice` > 0): each worker also puts itself under
  // SCHED_IDLE (Linux), where it runs only on a core no normal thread wants.
  explicit ThreadPool(unsigned nthreads, const char* name = kThreadName, int nice = 0, bool idle_sched = false);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queue a task. Tasks must not throw (wrap them with TaskGroup::wrap).
  // Throws std::runtime_error on a pool abandoned after fork (no thread would run it).
  void submit(std::function<void()> task);
  // Run one queued task on the calling thread (a waiter lending a hand, at
  // its own priority); false when none is queued.
  bool run_one();
  // Tasks queued and not yet taken (read without the lock).
  std::size_t queued() const noexcept { return queued_.load(); }
  // Called (outside the pool's lock) after each task is queued: lets a waiter
  // that helps know there is work. Set before the first submit.
  void on_queued(std::function<void()> hook) { on_queued_ = std::move(hook); }
  // Optional, set before the first submit: consulted by a worker before it
  // takes a queued task; false means "not now", and the worker asks again
  // after `poll` (or when woken). run_one() (a waiter helping) never asks.
  void set_gate(std::function<bool()> may_start, std::chrono::microseconds poll) {
    gate_ = std::move(may_start);
    gate_poll_ = poll;
  }
  // Wake every idle worker (e.g. a gate just opened).
  void wake_all() {
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_.notify_all();
  }
  unsigned size() const noexcept { return static_cast<unsigned>(workers_.size()); }
  int nice() const noexcept { return nice_; }
  // Workers that run under SCHED_IDLE (they set it themselves as they start).
  unsigned idle_threads() const noexcept { return idle_threads_.load(); }
  // Finish queued work and join all workers. Idempotent.
  void shutdown();
  // In a forked child: forget the parent's worker threads and leak the queued
  // tasks (never run, never destroyed: their destructors release ring slots
  // and buffer leases under locks a vanished thread may hold, and destroy CUDA
  // events). Takes no lock; leaves an empty, stopped pool. Idempotent.
  void abandon_after_fork() noexcept;

 private:
  void run();
  const char* name_;
  int nice_;
  bool idle_sched_;
  std::atomic<unsigned> idle_threads_{0};
  std::size_t started_ = 0;  // workers that have set themselves up (guarded by mu_)
  std::condition_variable started_cv_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::atomic<std::size_t> queued_{0};
  std::function<void()> on_queued_;
  std::function<bool()> gate_;
  std::chrono::microseconds gate_poll_{1000};
  std::vector<std::thread> workers_;
  bool stop_ = false;
  bool abandoned_ = false;
};

// Tracks a set of tasks; remembers the first error; wait() rethrows it.
class TaskGroup {
 public:
  // Returns a no-throw task that runs fn and records its outcome here.
  std::function<void()> wrap(std::function<void()> fn);
  void wait();
  std::size_t pending() const;

 private:
  // Takes `err` under the lock and leaves it empty: the pool thread keeps no
  // reference that it would drop after the waiter was woken (libstdc++'s
  // exception reference counts are invisible to ThreadSanitizer).
  void finish(std::exception_ptr& err);
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::size_t pending_ = 0;
  std::exception_ptr first_error_;
};

}  // namespace e2fastio
