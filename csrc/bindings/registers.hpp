#pragma once
#include <pybind11/pybind11.h>

namespace e2fastio::py_bindings {
void register_codec(pybind11::module_& m);
void register_sink(pybind11::module_& m);
void register_engine(pybind11::module_& m);
void register_shard(pybind11::module_& m);
}  // namespace e2fastio::py_bindings
