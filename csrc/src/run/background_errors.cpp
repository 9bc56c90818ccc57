#include "e2fastio/background_errors.hpp"

#include <new>
#include <stdexcept>
#include <utility>

#include "e2fastio/error.hpp"

namespace e2fastio {

namespace {

// Build a fresh T over `obj` without destroying it: what it owned is leaked.
template <typename T>
void leak_in_place(T& obj) {
  new (&obj) T();
}

}  // namespace

void BackgroundErrors::record(std::exception_ptr& e) {
  std::string what;  // kept if it is not the first (built outside the lock; errors are rare)
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    what = x.what();
  } catch (...) {
    what = "unknown error";
  }
  std::lock_guard<std::mutex> lk(mu_);
  if (!first_) {
    first_ = std::move(e);  // no reference left with this thread once the lock is released
  } else {
    ++later_;
    if (later_what_.size() < kNamed) later_what_.push_back(std::move(what));
  }
  e = nullptr;
}

void BackgroundErrors::rethrow_first() {
  std::exception_ptr e;
  std::size_t later = 0;
  std::vector<std::string> named;
  {
    std::lock_guard<std::mutex> lk(mu_);
    std::swap(e, first_);
    std::swap(later, later_);
    named.swap(later_what_);
  }
  if (!e) return;
  if (later == 0) std::rethrow_exception(e);
  std::string more = " (and " + std::to_string(later) + " more chunk(s) failed since: ";
  for (std::size_t i = 0; i < named.size(); ++i) more += (i ? "; " : "") + named[i];
  more += later > named.size() ? "; ...)" : ")";
  try {
    std::rethrow_exception(e);
  } catch (const IOError& x) {
    throw IOError(x.context() + more, x.error_code());
  } catch (const std::invalid_argument& x) {
    throw std::invalid_argument(x.what() + more);
  } catch (const std::exception& x) {
    throw std::runtime_error(x.what() + more);
  }
}

void BackgroundErrors::abandon_after_fork() noexcept {
  leak_in_place(first_);
  leak_in_place(later_what_);
  later_ = 0;
  leak_in_place(mu_);
}

}  // namespace e2fastio
