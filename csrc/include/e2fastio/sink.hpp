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
};

}  // namespace e2fastio
