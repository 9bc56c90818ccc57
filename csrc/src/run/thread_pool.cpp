#include "e2fastio/thread_pool.hpp"

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#endif

#include <new>
#include <stdexcept>
#include <utility>

namespace e2fastio {

ThreadPool::ThreadPool(unsigned nthreads, const char* name, int nice, bool idle_sched)
    : name_(name), nice_(std::max(0, nice)), idle_sched_(idle_sched) {
  if (nthreads == 0) nthreads = 1;
  workers_.reserve(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) workers_.emplace_back([this] { run(); });
  // Returns once every worker has named itself and set its priority: what
  // stats report is then true from the start.
  std::unique_lock<std::mutex> lk(mu_);
  started_cv_.wait(lk, [&] { return started_ == workers_.size(); });
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::submit(std::function<void()> task) {
  if (abandoned_)
    throw std::runtime_error("this thread pool was inherited through fork() and has no threads in this process; "
                             "create a new engine in the child");
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(std::move(task));
    queued_.fetch_add(1);
  }
  cv_.notify_one();
  if (on_queued_) on_queued_();
}

bool ThreadPool::run_one() {
  std::function<void()> task;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (queue_.empty() || abandoned_) return false;
    task = std::move(queue_.front());
    queue_.pop_front();
    queued_.fetch_sub(1);
  }
  task();
  return true;
}

void ThreadPool::run() {
#ifdef __linux__
  // Named, so that top -H, py-spy and the tests can tell ours from others'.
  pthread_setname_np(pthread_self(), name_);
  if (nice_ > 0) {
    // PRIO_PROCESS with a thread id sets that one thread's nice value (Linux).
    // Relative to what the thread inherited, capped at 19; a refusal leaves
    // the priority as it was (never an error: it is a preference).
    const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
    errno = 0;
    const int cur = ::getpriority(PRIO_PROCESS, tid);
    if (errno == 0) (void)::setpriority(PRIO_PROCESS, tid, std::min(19, cur + nice_));
    if (idle_sched_) {
      // SCHED_IDLE: this thread runs on a core only when no normal thread
      // wants it, and never preempts one when it wakes; the nice value above
      // stays as the fallback where the policy is refused.
      sched_param param{};
      if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) == 0) idle_threads_.fetch_add(1);
    }
  }
#endif
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++started_;
  }
  started_cv_.notify_all();
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      if (gate_ && !stop_) {
        lk.unlock();
        const bool now = gate_();  // outside the lock: it may read clocks, take other locks
        lk.lock();
        if (!now) {
          cv_.wait_for(lk, gate_poll_);
          continue;
        }
        if (queue_.empty()) continue;  // another thread took it meanwhile
      }
      task = std::move(queue_.front());
      queue_.pop_front();
      queued_.fetch_sub(1);
    }
    task();
  }
}

void ThreadPool::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

void ThreadPool::abandon_after_fork() noexcept {
  if (abandoned_) return;
  // Only the thread that called fork() exists in the child. Everything else
  // here may be mid-update by a parent thread that vanished at the fork: the
  // queue (a worker popping it under mu_), the lock itself, the condition
  // variable's waiters. Fresh objects are built over the old ones without
  // running a destructor, so nothing is read, locked, joined or destroyed:
  // the queued tasks, and all they own, are leaked (a leak in the child only).
  // No detach either: the threads' handles name threads of the parent.
  ::new (static_cast<void*>(&workers_)) std::vector<std::thread>();
  ::new (static_cast<void*>(&queue_)) std::deque<std::function<void()>>();
  queued_.store(0);
  ::new (static_cast<void*>(&mu_)) std::mutex();
  ::new (static_cast<void*>(&cv_)) std::condition_variable();
  ::new (static_cast<void*>(&started_cv_)) std::condition_variable();
  stop_ = true;
  abandoned_ = true;
}

std::function<void()> TaskGroup::wrap(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++pending_;
  }
  return [this, fn = std::move(fn)]() noexcept {
    std::exception_ptr err;
    try {
      fn();
    } catch (...) {
      err = std::current_exception();
    }  // the handler's own reference is dropped here, before finish() wakes the waiter
    finish(err);
  };
}

void TaskGroup::finish(std::exception_ptr& err) {
  std::lock_guard<std::mutex> lk(mu_);
  if (err && !first_error_) first_error_ = std::move(err);
  err = nullptr;
  if (--pending_ == 0) cv_.notify_all();
}

void TaskGroup::wait() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [this] { return pending_ == 0; });
  if (first_error_) {
    auto e = first_error_;
    first_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

std::size_t TaskGroup::pending() const {
  std::lock_guard<std::mutex> lk(mu_);
  return pending_;
}

}  // namespace e2fastio
