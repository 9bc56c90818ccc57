// Error types of the core. Each maps to one Python exception type in the
// bindings: std::invalid_argument -> ValueError, IOError -> OSError (with
// errno), std::runtime_error -> RuntimeError.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace e2fastio {

class IOError : public std::runtime_error {
 public:
  IOError(const std::string& context, int err)
      : std::runtime_error(context + ": " + std::strerror(err)), context_(context), errno_(err) {}
  int error_code() const noexcept { return errno_; }
  const std::string& context() const noexcept { return context_; }

 private:
  std::string context_;
  int errno_;
};

}  // namespace e2fastio

// Lazy-message checks: the message expression is only evaluated on failure.
#define E2F_EXPECT(cond, msg)                                                  \
  do {                                                                         \
    if (!(cond)) throw std::invalid_argument(std::string() + msg);             \
  } while (0)

#define E2F_FAIL(msg) throw std::runtime_error(std::string() + msg)
