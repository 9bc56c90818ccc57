// Bindings of Zarr v3 sharding: ShardSink and the CRC-32C checksum.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "e2fastio/crc32c.hpp"
#include "e2fastio/shard_sink.hpp"
#include "registers.hpp"

namespace py = pybind11;

namespace e2fastio::py_bindings {

namespace {

template <class Fn>
std::uint32_t crc_of(py::buffer data, std::uint32_t crc, Fn fn) {
  py::buffer_info info = data.request();
  const auto* p = static_cast<const std::uint8_t*>(info.ptr);
  const auto n = static_cast<std::size_t>(info.size * info.itemsize);
  py::gil_scoped_release nogil;
  return fn(p, n, crc);
}

}  // namespace

void register_shard(py::module_& m) {
  m.def(
      "crc32c", [](py::buffer data, std::uint32_t crc) { return crc_of(data, crc, crc32c); }, py::arg("data"),
      py::arg("crc") = 0, "CRC-32C (Castagnoli) of a bytes-like object, continuing from `crc`.");
  m.def(
      "_crc32c_portable",
      [](py::buffer data, std::uint32_t crc) { return crc_of(data, crc, detail::crc32c_portable); },
      py::arg("data"), py::arg("crc") = 0);
  m.def(
      "_crc32c_hardware",
      [](py::buffer data, std::uint32_t crc) -> py::object {
        if (!detail::crc32c_hardware_available()) return py::none();
        return py::int_(crc_of(data, crc, detail::crc32c_hardware));
      },
      py::arg("data"), py::arg("crc") = 0, "The CPU instruction's result, or None where the CPU has none.");
  m.def("crc32c_implementation", [] { return std::string(crc32c_implementation()); });

  py::class_<ShardSink, Sink, std::shared_ptr<ShardSink>>(m, "ShardSink")
      .def(py::init<std::shared_ptr<Sink>, std::size_t, std::size_t>(), py::arg("inner"), py::arg("capacity_bytes"),
           py::arg("max_inflight"))
      .def(
          "add_array",
          [](ShardSink& s, const std::string& path, std::vector<int64_t> shape, std::vector<int64_t> chunks,
             std::vector<int64_t> shards, const std::string& separator, bool index_at_start) {
            if (separator.size() != 1) throw std::invalid_argument("separator must be '/' or '.'");
            ShardLayout l;
            l.path = path;
            l.separator = separator[0];
            l.shape = std::move(shape);
            l.chunks = std::move(chunks);
            l.shards = std::move(shards);
            l.index_at_start = index_at_start;
            s.add_array(l);
          },
          py::arg("path"), py::arg("shape"), py::arg("chunks"), py::arg("shards"), py::arg("separator") = "/",
          py::arg("index_at_start") = false,
          "Register a sharded array: its inner chunk keys are gathered into shard objects.")
      .def(
          "read",
          [](ShardSink& s, const std::string& key) -> py::object {
            std::vector<uint8_t> out;
            bool found;
            {
              py::gil_scoped_release nogil;
              found = s.read(key, out);
            }
            if (!found) return py::none();
            return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
          },
          py::arg("key"), "The stored bytes of an (inner chunk) key, or None.")
      .def("flush", &ShardSink::flush, py::call_guard<py::gil_scoped_release>(),
           py::arg("hold") = std::vector<std::pair<std::string, std::vector<int64_t>>>{},
           "Write out every shard under assembly (merging with stored ones) but those in `hold` (array path, "
           "shard coordinates), and wait for shard writes in flight.")
      .def_property_readonly("inner", &ShardSink::inner)
      .def("stats", [](const ShardSink& s) {
        auto st = s.stats();
        py::dict d;
        d["capacity"] = st.capacity;
        d["max_inflight"] = st.max_inflight;
        d["held_bytes"] = st.held_bytes;
        d["peak_held_bytes"] = st.peak_held_bytes;
        d["open_shards"] = st.open_shards;
        d["chunks_gathered"] = st.chunks_gathered;
        d["shards_written"] = st.shards_written;
        d["shards_merged"] = st.shards_merged;
        d["shards_spilled"] = st.shards_spilled;
        d["writer_waits"] = st.writer_waits;
        d["writer_wait_seconds"] = st.writer_wait_seconds;
        d["merged_by_array"] = st.merged_by_array;
        return d;
      });
}

}  // namespace e2fastio::py_bindings
