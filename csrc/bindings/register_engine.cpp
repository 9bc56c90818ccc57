#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "e2fastio/engine.hpp"
#include "e2fastio/error.hpp"
#include "registers.hpp"

namespace py = pybind11;

namespace e2fastio::py_bindings {

void register_engine(py::module_& m) {
  py::class_<ArraySpec>(m, "ArraySpec")
      .def(py::init<>())
      .def_readwrite("path", &ArraySpec::path)
      .def_readwrite("shape", &ArraySpec::shape)
      .def_readwrite("chunks", &ArraySpec::chunks)
      .def_readwrite("codec", &ArraySpec::codec)
      .def_property(
          "fill_value", [](const ArraySpec& a) { return py::bytes(reinterpret_cast<const char*>(a.fill_value.data()), a.fill_value.size()); },
          [](ArraySpec& a, py::bytes b) {
            std::string_view s = b;
            a.fill_value.assign(s.begin(), s.end());
          })
      .def_property(
          "separator", [](const ArraySpec& a) { return std::string(1, a.separator); },
          [](ArraySpec& a, const std::string& s) {
            E2F_EXPECT(s.size() == 1, "separator must be one character");
            a.separator = s[0];
          })
      .def("validate", &ArraySpec::validate)
      .def("chunk_nbytes", &ArraySpec::chunk_nbytes)
      .def("chunk_key", &ArraySpec::chunk_key);

  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine")
      .def(py::init<unsigned, std::size_t>(), py::arg("threads"), py::arg("max_buffer_bytes"))
      .def_property_readonly("threads", &Engine::threads)
      .def("staging_bytes_per_chunk", &Engine::staging_bytes_per_chunk)
      .def(
          "write",
          [](Engine& e, const ArraySpec& a, const std::shared_ptr<Sink>& sink, const py::array& data,
             const std::vector<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>& index) {
            Slab slab;
            slab.data = static_cast<const uint8_t*>(data.data());
            slab.itemsize = static_cast<std::size_t>(data.itemsize());
            for (py::ssize_t d = 0; d < data.ndim(); ++d) {
              slab.shape.push_back(static_cast<int64_t>(data.shape(d)));
              slab.strides.push_back(static_cast<int64_t>(data.strides(d)));
            }
            std::vector<std::vector<int64_t>> idx;
            idx.reserve(index.size());
            for (auto& ix : index) idx.emplace_back(ix.data(), ix.data() + ix.size());
            // `data` stays referenced by the caller's frame for the whole call.
            py::gil_scoped_release nogil;
            e.write(a, sink, slab, idx);
          },
          py::arg("array"), py::arg("sink"), py::arg("data"), py::arg("index"),
          "Write `data` at the orthogonal selection `index`; returns when every chunk is stored.")
      .def("stats",
           [](const Engine& e) {
             auto s = e.stats();
             py::dict d;
             d["chunks_written"] = s.chunks_written;
             d["chunks_merged"] = s.chunks_merged;
             d["bytes_in"] = s.bytes_in;
             d["bytes_out"] = s.bytes_out;
             return d;
           })
      .def("buffer_stats",
           [](Engine& e) {
             auto s = e.buffers().stats();
             py::dict d;
             d["capacity"] = s.capacity;
             d["leased_bytes"] = s.leased_bytes;
             d["cached_bytes"] = s.cached_bytes;
             d["peak_bytes"] = s.peak_bytes;
             d["allocations"] = s.allocations;
             d["reuses"] = s.reuses;
             d["waits"] = s.waits;
             d["wait_seconds"] = s.wait_seconds;
             return d;
           })
      .def("trim", [](Engine& e) { e.buffers().trim(); })
      .def("shutdown", &Engine::shutdown, py::call_guard<py::gil_scoped_release>())
      .def("abandon_after_fork", &Engine::abandon_after_fork);
}

}  // namespace e2fastio::py_bindings
