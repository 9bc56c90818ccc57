// The private extension module e2fastio._core. Bindings are thin: arguments
// are converted with the GIL held, then the GIL is released for all native work.
#include <pybind11/pybind11.h>

#include "e2fastio/error.hpp"
#include "registers.hpp"

namespace py = pybind11;

#ifndef E2FASTIO_VERSION
#define E2FASTIO_VERSION "dev"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "e2fastio native core: chunk pipeline, encoder pool, staging and sinks";
  m.attr("__version__") = E2FASTIO_VERSION;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const e2fastio::IOError& e) {
      py::object err = py::reinterpret_steal<py::object>(
          PyObject_CallFunction(PyExc_OSError, "is", e.error_code(), e.what()));
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });
  e2fastio::py_bindings::register_codec(m);
  e2fastio::py_bindings::register_sink(m);
  e2fastio::py_bindings::register_engine(m);
  e2fastio::py_bindings::register_shard(m);
}
