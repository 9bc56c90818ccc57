#include "e2fastio/fork_safe_mutex.hpp"

#include <pthread.h>

#include <unordered_set>

namespace e2fastio {

namespace {

// Never destroyed: mutexes in objects that outlive static destruction (and a
// fork during it) must still find them.
std::mutex& registry_mutex() {
  static auto* m = new std::mutex;
  return *m;
}

std::unordered_set<ForkSafeMutex*>& registry() {
  static auto* s = new std::unordered_set<ForkSafeMutex*>;
  return *s;
}

void before_fork() {
  registry_mutex().lock();
  for (ForkSafeMutex* m : registry()) m->lock();
}

void after_fork() {  // parent and child alike: the forking thread holds them all
  for (ForkSafeMutex* m : registry()) m->unlock();
  registry_mutex().unlock();
}

}  // namespace

ForkSafeMutex::ForkSafeMutex() {
  static const int installed = pthread_atfork(before_fork, after_fork, after_fork);
  (void)installed;
  std::lock_guard<std::mutex> lk(registry_mutex());
  registry().insert(this);
}

ForkSafeMutex::~ForkSafeMutex() {
  std::lock_guard<std::mutex> lk(registry_mutex());
  registry().erase(this);
}

}  // namespace e2fastio
