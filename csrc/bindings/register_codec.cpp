#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "e2fastio/codec.hpp"
#include "e2fastio/cuda.hpp"
#include "e2fastio/error.hpp"
#include "registers.hpp"

namespace py = pybind11;

namespace e2fastio::py_bindings {

void register_codec(py::module_& m) {
  py::enum_<Shuffle>(m, "Shuffle")
      .value("noshuffle", Shuffle::none)
      .value("shuffle", Shuffle::byte)
      .value("bitshuffle", Shuffle::bit);

  py::class_<CodecSpec>(m, "CodecSpec")
      .def(py::init<>())
      .def_readwrite("itemsize", &CodecSpec::itemsize)
      .def_readwrite("big_endian", &CodecSpec::big_endian)
      .def_readwrite("blosc", &CodecSpec::blosc)
      .def_readwrite("cname", &CodecSpec::cname)
      .def_readwrite("clevel", &CodecSpec::clevel)
      .def_readwrite("shuffle", &CodecSpec::shuffle)
      .def_readwrite("typesize", &CodecSpec::typesize)
      .def_readwrite("blocksize", &CodecSpec::blocksize)
      .def_readwrite("deflate", &CodecSpec::deflate)
      .def_readwrite("deflate_level", &CodecSpec::deflate_level)
      .def_readwrite("hdf5_shuffle", &CodecSpec::hdf5_shuffle)
      .def("validate", &CodecSpec::validate)
      .def("__repr__", [](const CodecSpec& c) {
        return "CodecSpec(itemsize=" + std::to_string(c.itemsize) + ", blosc=" + (c.blosc ? "True" : "False") +
               ", cname='" + c.cname + "', clevel=" + std::to_string(c.clevel) +
               ", shuffle=" + std::to_string(static_cast<int>(c.shuffle)) + ", typesize=" +
               std::to_string(c.typesize) + ", blocksize=" + std::to_string(c.blocksize) + ")";
      });

  m.def(
      "encode_chunk",
      [](const CodecSpec& spec, py::buffer data, int threads) {
        py::buffer_info info = data.request();
        E2F_EXPECT(PyBuffer_IsContiguous(info.view(), 'C'), "data must be C-contiguous");
        std::size_t n = static_cast<std::size_t>(info.size * info.itemsize);
        spec.validate();
        std::vector<uint8_t> raw(static_cast<const uint8_t*>(info.ptr), static_cast<const uint8_t*>(info.ptr) + n);
        std::vector<uint8_t> out(spec.max_encoded_size(n) + 1);
        const uint8_t* ptr = nullptr;
        std::size_t k;
        {
          py::gil_scoped_release nogil;
          k = encode_chunk(spec, raw.data(), n, out.data(), out.size(), threads, &ptr);
        }
        return py::bytes(reinterpret_cast<const char*>(ptr), k);
      },
      py::arg("spec"), py::arg("data"), py::arg("threads") = 1,
      "Encode one C-contiguous chunk exactly as the core stores it.");

  m.def(
      "decode_chunk",
      [](const CodecSpec& spec, py::bytes encoded, std::size_t nbytes) {
        std::string_view enc = encoded;
        py::bytearray out(nullptr, 0);
        std::vector<uint8_t> raw(nbytes);
        decode_chunk(spec, reinterpret_cast<const uint8_t*>(enc.data()), enc.size(), raw.data(), nbytes, 1);
        return py::bytes(reinterpret_cast<const char*>(raw.data()), raw.size());
      },
      py::arg("spec"), py::arg("encoded"), py::arg("nbytes"));

  m.def("blosc_version", &blosc_version);
  m.def("deflate_library", &deflate_library);
  m.def("cuda_info", [] {
    std::string why;
    const cuda::Api* a = cuda::api(&why);
    py::dict d;
    d["available"] = a != nullptr;
    d["runtime"] = a ? py::cast(a->path) : py::none();
    d["reason"] = a ? py::none() : py::cast(why);
    return d;
  }, "Whether a CUDA runtime was found (loaded at run time, never linked), and from where.");
}

}  // namespace e2fastio::py_bindings
