#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "e2fastio/engine.hpp"
#include "e2fastio/error.hpp"
#include "e2fastio/host_memory.hpp"
#include "e2fastio/nvcomp.hpp"
#include "registers.hpp"

namespace py = pybind11;

namespace e2fastio::py_bindings {

namespace {

// Requests converted with the GIL held. The data arrays stay referenced by
// the caller's list for the whole (blocking part of the) call.
struct Converted {
  std::vector<ArraySpec> specs;
  std::vector<Engine::Request> requests;
};

// [int64 array per dimension] -> vectors (copied: the arrays may go away).
std::vector<std::vector<int64_t>> to_index(const py::handle& obj) {
  std::vector<std::vector<int64_t>> idx;
  for (const auto& ix : obj.cast<py::list>()) {
    auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(ix);
    E2F_EXPECT(a, "index entries must be integer arrays");
    idx.emplace_back(a.data(), a.data() + a.size());
  }
  return idx;
}

// [(ArraySpec, Sink, (device_ptr, shape, itemsize), index), ...]: C-contiguous device data.
Converted convert_device(const py::list& requests) {
  Converted c;
  c.specs.reserve(requests.size());
  for (const auto& item : requests) {
    auto t = item.cast<py::tuple>();
    E2F_EXPECT(t.size() == 4, "each request is (ArraySpec, Sink, (ptr, shape, itemsize), index)");
    c.specs.push_back(t[0].cast<ArraySpec>());
    auto dev = t[2].cast<py::tuple>();
    Slab slab;
    slab.data = reinterpret_cast<const uint8_t*>(dev[0].cast<std::uintptr_t>());
    slab.shape = dev[1].cast<std::vector<int64_t>>();
    slab.itemsize = dev[2].cast<std::size_t>();
    slab.strides.assign(slab.shape.size(), 0);
    int64_t st = static_cast<int64_t>(slab.itemsize);
    for (std::size_t d = slab.shape.size(); d-- > 0;) {
      slab.strides[d] = st;
      st *= slab.shape[d];
    }
    c.requests.push_back(Engine::Request{nullptr, t[1].cast<std::shared_ptr<Sink>>(), std::move(slab), to_index(t[3])});
  }
  for (std::size_t i = 0; i < c.requests.size(); ++i) c.requests[i].array = &c.specs[i];
  return c;
}

Converted convert(const py::list& requests) {
  Converted c;
  c.specs.reserve(requests.size());
  c.requests.reserve(requests.size());
  for (const auto& item : requests) {
    auto t = item.cast<py::tuple>();
    E2F_EXPECT(t.size() == 4, "each request is (ArraySpec, Sink, data, index)");
    c.specs.push_back(t[0].cast<ArraySpec>());
    auto sink = t[1].cast<std::shared_ptr<Sink>>();
    E2F_EXPECT(py::isinstance<py::array>(t[2]), "request data must be a numpy.ndarray");
    auto data = py::reinterpret_borrow<py::array>(t[2]);
    Slab slab;
    slab.data = static_cast<const uint8_t*>(data.data());
    slab.itemsize = static_cast<std::size_t>(data.itemsize());
    for (py::ssize_t d = 0; d < data.ndim(); ++d) {
      slab.shape.push_back(static_cast<int64_t>(data.shape(d)));
      slab.strides.push_back(static_cast<int64_t>(data.strides(d)));
    }
    c.requests.push_back(Engine::Request{nullptr, std::move(sink), std::move(slab), to_index(t[3])});
  }
  for (std::size_t i = 0; i < c.requests.size(); ++i) c.requests[i].array = &c.specs[i];
  return c;
}

}  // namespace

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
      .def("chunk_key", &ArraySpec::chunk_key)
      .def(
          "max_encoded_chunk_bytes",
          [](const ArraySpec& a) { return a.codec.max_encoded_size(a.chunk_nbytes()); },
          "The most bytes one encoded chunk of this array can take.");

  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine")
      .def(py::init<unsigned, std::size_t, std::size_t, int, bool, double>(), py::arg("threads"),
           py::arg("max_buffer_bytes"), py::arg("ring_bytes") = 0, py::arg("nice") = 0, py::arg("idle_sched") = false,
           py::arg("defer_busy_seconds") = 0.0)
      .def_property_readonly("defer_busy_seconds", &Engine::defer_busy_seconds)
      .def_property_readonly("busy_deferrals", &Engine::busy_deferrals)
      .def_property_readonly("threads", &Engine::threads)
      .def_property_readonly("nice", &Engine::nice)
      .def_property_readonly("idle_sched_threads", &Engine::idle_sched_threads)
      .def_property_readonly("writer_threads", &Engine::writer_threads)
      .def("staging_bytes_per_chunk", &Engine::staging_bytes_per_chunk)
      .def(
          "write_batch",
          [](Engine& e, const py::list& requests) {
            Converted c = convert(requests);
            py::gil_scoped_release nogil;
            e.write_batch(c.requests);
          },
          py::arg("requests"),
          "Write [(ArraySpec, Sink, data, index), ...] as one batch; returns when every chunk is stored.")
      .def(
          "submit",
          [](Engine& e, const py::list& requests) {
            Converted c = convert(requests);
            py::gil_scoped_release nogil;
            e.submit(c.requests);  // copies the data into the staging ring, then returns
          },
          py::arg("requests"),
          "Stage [(ArraySpec, Sink, data, index), ...] and return; chunks are stored in the background.")
      .def(
          "submit_device",
          [](Engine& e, const py::list& requests, std::uintptr_t stream, bool compress) {
            // requests: [(ArraySpec, Sink, (device_ptr, shape, itemsize), index), ...]
            Converted c = convert_device(requests);
            py::gil_scoped_release nogil;
            return e.submit_device(c.requests, reinterpret_cast<void*>(stream), compress);
          },
          py::arg("requests"), py::arg("stream"), py::arg("compress") = false,
          "Stage device data (C-contiguous, C pointers) through the pinned ring on the engine's copy stream; "
          "with compress=True, data laid out and shuffled as device_layout() says is compressed on the device "
          "(nvCOMP zstd into Blosc1 chunks) and only compressed bytes are copied.")
      .def(
          "device_layout",
          [](const Engine& e, const py::tuple& request) {
            py::list one;
            one.append(request);
            Converted c = convert_device(one);
            const DeviceLayout d = e.device_layout(c.requests[0]);
            py::dict out;
            out["ok"] = d.ok;
            out["why"] = d.why;
            out["nchunks"] = d.nchunks;
            out["chunk_nbytes"] = d.chunk_nbytes;
            out["blocksize"] = d.blocksize;
            out["typesize"] = d.typesize;
            out["shuffle"] = d.shuffle;
            return out;
          },
          py::arg("request"),
          "Whether (ArraySpec, Sink, (device_ptr, shape, itemsize), index) can be compressed on the device, "
          "and how its chunks and Blosc blocks lie in the data (or why not).")
      .def("device_encode_stats",
           [](const Engine& e) {
             const DeviceEncodeStats s = e.device_encode_stats();
             py::dict d;
             d["chunks"] = s.chunks;
             d["blocks"] = s.blocks;
             d["raw_blocks"] = s.raw_blocks;
             d["failed_blocks"] = s.failed_blocks;
             d["memcpyed_chunks"] = s.memcpyed_chunks;
             d["bytes_in"] = s.bytes_in;
             d["bytes_to_host"] = s.bytes_to_host;
             return d;
           })
      .def("copies_done", &Engine::copies_done, "Device submits whose copies completed (in order).")
      .def_property_readonly("cuda_available", &Engine::cuda_available)
      .def("flush", &Engine::flush, py::call_guard<py::gil_scoped_release>(),
           "Wait until every submitted chunk is stored; raise the first background error.")
      .def("wait_idle", &Engine::wait_idle, py::arg("timeout"), py::arg("help") = false,
           py::call_guard<py::gil_scoped_release>(),
           "Wait up to `timeout` seconds for every submitted chunk; False if some are still pending. With "
           "help=True the waiting thread runs queued chunk tasks itself meanwhile (never for a CollectSink "
           "this thread consumes).")
      .def_property_readonly("finished_chunks", &Engine::finished_chunks,
                             "Non-blocking chunks finished (stored or failed) so far.")
      .def("wait_progress", &Engine::wait_progress, py::arg("seen"), py::arg("timeout"),
           py::call_guard<py::gil_scoped_release>(),
           "Wait until more than `seen` chunks finished, none is pending, or `timeout` s; returns finished_chunks.")
      .def("check", &Engine::check, "Raise the first background error (once), if any.")
      .def_property_readonly("pending_chunks", &Engine::pending_chunks)
      .def_property_readonly("failed_chunks", &Engine::failed_chunks)
      .def_property_readonly("has_ring", &Engine::has_ring)
      .def("ring_stats",
           [](const Engine& e) {
             auto s = e.ring_stats();
             py::dict d;
             d["capacity"] = s.capacity;
             d["pinned"] = s.pinned;
             d["used_bytes"] = s.used_bytes;
             d["peak_used_bytes"] = s.peak_used_bytes;
             d["prefaulted_bytes"] = s.prefaulted_bytes;
             d["reservations"] = s.reservations;
             d["waits"] = s.waits;
             d["wait_seconds"] = s.wait_seconds;
             return d;
           })
      .def("stats",
           [](const Engine& e) {
             auto s = e.stats();
             py::dict d;
             d["chunks_written"] = s.chunks_written;
             d["chunks_merged"] = s.chunks_merged;
             d["bytes_in"] = s.bytes_in;
             d["bytes_out"] = s.bytes_out;
             d["bytes_from_device"] = s.bytes_from_device;
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

  m.def(
      "nvcomp_status",
      [](const std::vector<std::string>& candidates) {
        // The first call loads (or fails to load) nvCOMP for the process; later candidates are ignored.
        nvcomp::set_candidates(candidates);
        std::string why;
        const nvcomp::Api* nv = nvcomp::api(&why);
        py::dict d;
        d["available"] = nv != nullptr;
        d["path"] = nv ? nv->path : std::string();
        d["version"] = nv ? std::to_string(nv->version / 1000) + "." + std::to_string(nv->version % 1000 / 100) + "." +
                                std::to_string(nv->version % 100)
                          : std::string();
        d["reason"] = why;
        d["device_reason"] = DeviceEncoder::unavailable_reason();  // "" when CUDA and nvCOMP both work
        return d;
      },
      py::arg("candidates") = std::vector<std::string>{},
      "Load nvCOMP 6 (E2FASTIO_NVCOMP, then `candidates`, then libnvcomp.so.6) and say what was found.");
  m.def("host_cache_stats", [] {
    const host_memory::Stats s = host_memory::stats();
    py::dict d;
    d["limit"] = s.limit;
    d["cached_bytes"] = s.cached_bytes;
    d["cached_blocks"] = s.cached_blocks;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    return d;
  }, "The process-wide cache of staging memory that destroyed engines left warm for the next ones.");
  m.def("empty_host_cache", &host_memory::empty, py::call_guard<py::gil_scoped_release>(),
        "Free every cached staging block; returns the bytes freed.");
  m.def("set_host_cache_limit", &host_memory::set_limit, py::arg("nbytes"),
        py::call_guard<py::gil_scoped_release>(), "Cache at most nbytes of unused staging memory (0: none).");
}

}  // namespace e2fastio::py_bindings
