// Binding functions of a library opened at run time (the CUDA runtime, nvCOMP):
// one dlsym per slot, the first missing name reported with a hint.
#pragma once

#include <dlfcn.h>

#include <string>

namespace e2fastio::dynlib {

template <class F>
bool bind(void* handle, const char* name, F*& slot, std::string& why, const std::string& hint = "") {
  slot = reinterpret_cast<F*>(dlsym(handle, name));
  if (!slot) why = std::string("symbol ") + name + " missing" + hint;
  return slot != nullptr;
}

}  // namespace e2fastio::dynlib
