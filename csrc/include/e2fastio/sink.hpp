// Where encoded chunks go. Implementations are thread-safe: many encoder
// threads call write() at once. One file per sink: directory_sink.hpp,
// memory_sink.hpp, collect_sink.hpp, upload_sink.hpp, file_region_sink.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace e2fastio {

class Sink {
 public:
  virtual ~Sink() = default;
  // Read a whole object; false when it does not exist.
  virtual bool read(const std::string& key, std::vector<uint8_t>& out) = 0;
  // Store a whole object atomically (a reader never sees a torn object).
  virtual void write(const std::string& key, const uint8_t* data, std::size_t nbytes) = 0;
  virtual std::string describe() const = 0;
  // True when write() may wait on a device (local files: page-cache
  // allocation, O_DIRECT transfers, fsync). The engine then stores this
  // sink's chunks from its writer threads, so that no encoder thread waits
  // for the device. False (the default): stored on the encoder thread (a
  // memory copy, or a sink that queues the object for its own threads).
  virtual bool waits_on_device() const { return false; }
};

}  // namespace e2fastio
