// The C++ tests' tiny harness (no external framework: the build must work
// offline): TEST(name) registers a test, CHECK(cond) counts a failed check and
// goes on, throws<E>(f, needle) says whether f throws E naming `needle`.
// Every test file includes it; test_main.cpp runs the registry.
#pragma once

#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace e2f_test {

inline int g_failures = 0;
inline std::vector<std::pair<std::string, std::function<void()>>>& registry() {
  static std::vector<std::pair<std::string, std::function<void()>>> r;
  return r;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { registry().emplace_back(name, std::move(fn)); }
};

template <class E, class F>
bool throws(F&& f, const char* needle = nullptr) {
  try {
    f();
  } catch (const E& e) {
    if (needle && std::string(e.what()).find(needle) == std::string::npos) {
      std::cerr << "  exception text '" << e.what() << "' lacks '" << needle << "'\n";
      return false;
    }
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

}  // namespace e2f_test

#define TEST(name)                                    \
  void name();                                        \
  e2f_test::Register reg_##name(#name, name);         \
  void name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n";     \
      ++e2f_test::g_failures;                                                        \
    }                                                                                \
  } while (0)
