#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "e2fastio/sink.hpp"
#include "registers.hpp"

namespace py = pybind11;

namespace e2fastio::py_bindings {

void register_sink(py::module_& m) {
  py::class_<Sink, std::shared_ptr<Sink>>(m, "Sink")
      .def("describe", &Sink::describe)
      .def(
          "write",
          [](Sink& s, const std::string& key, py::buffer data) {
            py::buffer_info info = data.request();
            const auto* p = static_cast<const uint8_t*>(info.ptr);
            std::size_t n = static_cast<std::size_t>(info.size * info.itemsize);
            py::gil_scoped_release nogil;
            s.write(key, p, n);
          },
          py::arg("key"), py::arg("data"));

  py::enum_<DirectIO>(m, "DirectIO")
      .value("off", DirectIO::off)
      .value("on", DirectIO::on)
      .value("automatic", DirectIO::automatic);

  py::class_<DirectorySink, Sink, std::shared_ptr<DirectorySink>>(m, "DirectorySink")
      .def(py::init<std::string, bool, DirectIO>(), py::arg("root"), py::arg("fsync") = false,
           py::arg("direct_io") = DirectIO::automatic)
      .def_property_readonly("root", &DirectorySink::root)
      .def_property_readonly("direct_io_active", &DirectorySink::direct_io_active);

  py::class_<CollectSink, Sink, std::shared_ptr<CollectSink>>(m, "CollectSink")
      .def(py::init<>())
      .def("take", [](CollectSink& s) {
        auto items = s.take();
        py::list out;
        for (auto& [k, v] : items)
          out.append(py::make_tuple(k, py::bytes(reinterpret_cast<const char*>(v.data()), v.size())));
        return out;
      }, "[(key, encoded bytes), ...] collected so far, oldest first (empties the sink).");

  py::class_<MemorySink, Sink, std::shared_ptr<MemorySink>>(m, "MemorySink")
      .def(py::init<>())
      .def(
          "get",
          [](const MemorySink& s, const std::string& key) -> py::object {
            auto v = s.get(key);
            if (!v) return py::none();
            return py::bytes(reinterpret_cast<const char*>(v->data()), v->size());
          },
          py::arg("key"))
      .def("erase", &MemorySink::erase, py::arg("key"))
      .def("__contains__", &MemorySink::contains)
      .def("__len__", &MemorySink::size)
      .def("keys", &MemorySink::keys)
      .def("nbytes", &MemorySink::nbytes)
      .def("clear", &MemorySink::clear);
}

}  // namespace e2fastio::py_bindings
