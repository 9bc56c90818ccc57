#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "e2fastio/collect_sink.hpp"
#include "e2fastio/directory_sink.hpp"
#include "e2fastio/file_region_sink.hpp"
#include "e2fastio/memory_sink.hpp"
#include "e2fastio/sink.hpp"
#include "e2fastio/upload_sink.hpp"
#include "registers.hpp"

namespace py = pybind11;

namespace e2fastio::py_bindings {

void register_sink(py::module_& m) {
  m.def("_temp_prefix", &e2fastio::detail::temp_prefix,
        "The start of this process's temporary chunk file names (DirectorySink).");
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

  py::class_<FileRegionSink, Sink, std::shared_ptr<FileRegionSink>>(m, "FileRegionSink")
      .def(py::init<std::string, std::uint64_t, std::string, std::vector<int64_t>, std::vector<int64_t>, std::size_t,
                    bool>(),
           py::arg("path"), py::arg("offset"), py::arg("array_path"), py::arg("shape"), py::arg("chunks"),
           py::arg("itemsize"), py::arg("direct_io") = true)
      .def_property_readonly("direct_io_active", &FileRegionSink::direct_io_active);

  py::class_<CollectSink, Sink, std::shared_ptr<CollectSink>>(m, "CollectSink")
      .def(py::init<std::size_t>(), py::arg("capacity_bytes"))
      .def_property_readonly("capacity", &CollectSink::capacity)
      .def_property_readonly("held_bytes", [](const CollectSink& s) { return s.stats().held_bytes; },
                             "Bytes of encoded chunks admitted and not yet popped.")
      .def(
          "pop",
          [](CollectSink& s) -> py::object {
            auto item = std::make_unique<CollectSink::Item>();
            if (!s.pop(*item)) return py::none();  // a short critical section: the GIL stays held
            // The array views the popped bytes where they are; the capsule owns them (no copy).
            CollectSink::Item* raw = item.get();
            py::capsule owner(raw, [](void* p) { delete static_cast<CollectSink::Item*>(p); });
            item.release();
            py::array_t<uint8_t> view({static_cast<py::ssize_t>(raw->data.size())}, {1}, raw->data.data(), owner);
            view.attr("flags").attr("writeable") = false;
            return py::make_tuple(raw->key, view);
          },
          "(key, read-only uint8 array) of the oldest collected chunk, or None when none is ready.")
      .def("close", &CollectSink::close, py::call_guard<py::gil_scoped_release>(),
           "No consumer any more: held chunks are dropped, waiting and later writers fail. Returns how many "
           "chunks it dropped.")
      .def("stats", [](const CollectSink& s) {
        auto st = s.stats();
        py::dict d;
        d["capacity"] = st.capacity;
        d["held_bytes"] = st.held_bytes;
        d["peak_held_bytes"] = st.peak_held_bytes;
        d["held_chunks"] = st.held_chunks;
        d["chunks_collected"] = st.chunks_collected;
        d["chunks_popped"] = st.chunks_popped;
        d["bytes_collected"] = st.bytes_collected;
        d["writer_waits"] = st.writer_waits;
        d["writer_wait_seconds"] = st.writer_wait_seconds;
        return d;
      });

  py::class_<UploadSink, Sink, std::shared_ptr<UploadSink>>(m, "UploadSink")
      .def(py::init<std::size_t, std::string>(), py::arg("capacity_bytes"), py::arg("description"))
      .def_property_readonly("capacity", &UploadSink::capacity)
      .def(
          "set_fetch",
          [](UploadSink& s, py::object fn) {
            if (fn.is_none()) {
              py::gil_scoped_release nogil;
              s.set_fetch(nullptr);
              return;
            }
            // The callable may be released on a native thread: take the GIL for that.
            std::shared_ptr<py::object> holder(new py::object(std::move(fn)), [](py::object* p) {
              py::gil_scoped_acquire gil;
              delete p;
            });
            s.set_fetch([holder](const std::string& key, std::vector<uint8_t>& out) {
              py::gil_scoped_acquire gil;
              py::object r = (*holder)(key);
              if (r.is_none()) return false;
              py::buffer_info info = py::reinterpret_borrow<py::buffer>(r).request();
              const auto* p = static_cast<const uint8_t*>(info.ptr);
              out.assign(p, p + info.size * info.itemsize);
              return true;
            });
          },
          py::arg("fetch"),
          "fetch(key) -> bytes-like or None: reads an object that is neither queued nor uploading.")
      .def(
          "next",
          [](UploadSink& s, double timeout) -> py::object {
            UploadSink::Item item;
            bool got;
            {
              py::gil_scoped_release nogil;
              got = s.next(timeout, item);
            }
            if (!got) return py::none();
            // Zero-copy view of the encoded bytes; the capsule keeps them alive.
            auto* keep = new UploadSink::Data(item.data);
            py::capsule owner(keep, [](void* p) { delete static_cast<UploadSink::Data*>(p); });
            py::array_t<uint8_t> view({static_cast<py::ssize_t>((*keep)->size())}, {1},
                                      (*keep)->data(), owner);
            view.attr("flags").attr("writeable") = false;
            return py::make_tuple(item.id, item.key, view);
          },
          py::arg("timeout"), "(id, key, uint8 array) of the next object to upload, or None on timeout/close.")
      .def("done", &UploadSink::done, py::arg("id"), py::arg("error") = std::string())
      .def("wait_idle", &UploadSink::wait_idle, py::arg("timeout"), py::call_guard<py::gil_scoped_release>())
      .def("take_errors", &UploadSink::take_errors)
      .def("close", &UploadSink::close, py::call_guard<py::gil_scoped_release>())
      .def("wake", &UploadSink::wake, py::call_guard<py::gil_scoped_release>(),
           "Make the pending next() (or else the next one) return None at once.")
      .def("stats", [](const UploadSink& s) {
        auto st = s.stats();
        py::dict d;
        d["objects_uploaded"] = st.objects_uploaded;
        d["bytes_uploaded"] = st.bytes_uploaded;
        d["objects_failed"] = st.objects_failed;
        d["objects_coalesced"] = st.objects_coalesced;
        d["queued_bytes"] = st.queued_bytes;
        d["peak_queued_bytes"] = st.peak_queued_bytes;
        d["queued_objects"] = st.queued_objects;
        d["in_flight"] = st.in_flight;
        d["backpressure_wait_seconds"] = st.backpressure_wait_seconds;
        return d;
      });

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
