// The device encode stage through the fake CUDA runtime and its fake nvCOMP
// (loaded by path, as the real ones are): chunks compressed "on the device"
// become Blosc1 chunks that c-blosc decodes exactly; ordering after the
// producer, per-block failures stored raw, launch failures raised with
// nothing stored, and the requests it must refuse.
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "e2fastio/blosc1.hpp"
#include "e2fastio/codec.hpp"
#include "e2fastio/cuda.hpp"
#include "e2fastio/engine.hpp"
#include "e2fastio/memory_sink.hpp"
#include "harness.hpp"

using namespace e2fastio;

namespace {

struct Fake {
  void* h = dlopen(E2FASTIO_FAKE_CUDART, RTLD_NOW);
  template <class F>
  F* fn(const char* name) {
    return reinterpret_cast<F*>(dlsym(h, name));
  }
};

ArraySpec grid_array(int64_t members, int64_t lat, int64_t lon, const char* cname = "zstd") {
  ArraySpec a;
  a.path = "t2m";
  a.shape = {members, lat, lon};
  a.chunks = {1, lat, lon};
  a.codec.itemsize = 4;
  a.codec.blosc = true;
  a.codec.cname = cname;
  a.codec.clevel = 3;
  a.codec.typesize = 4;
  a.codec.shuffle = Shuffle::byte;
  a.fill_value.assign(4, 0);
  return a;
}

std::vector<int64_t> range(int64_t n) {
  std::vector<int64_t> v(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

// Weather-like floats, with member `noisy` (if any) pure noise (it will not compress).
std::vector<float> fields(int64_t members, int64_t per, int64_t noisy = -1) {
  std::vector<float> out(static_cast<std::size_t>(members * per));
  std::mt19937 rng(42);
  for (int64_t m = 0; m < members; ++m) {
    float v = 270.0f + static_cast<float>(m);
    for (int64_t i = 0; i < per; ++i) {
      float& x = out[static_cast<std::size_t>(m * per + i)];
      if (m == noisy) {
        std::uint32_t bits = rng();
        std::memcpy(&x, &bits, 4);
      } else {
        v += static_cast<float>(static_cast<int>(rng() % 3) - 1) * 0.125f;
        x = v;
      }
    }
  }
  return out;
}

// The caller's part: shuffle each chunk's blocks (on the device, in the real path).
std::vector<std::uint8_t> shuffled_like_the_caller(const std::vector<float>& data, const DeviceLayout& d) {
  std::vector<std::uint8_t> out(data.size() * 4);
  const auto* raw = reinterpret_cast<const std::uint8_t*>(data.data());
  const Blosc1Layout L = blosc1_zstd_layout(d.chunk_nbytes, d.typesize, 3, 0);
  for (std::size_t c = 0; c < d.nchunks; ++c)
    blosc1_shuffle_chunk(L, raw + c * d.chunk_nbytes, out.data() + c * d.chunk_nbytes);
  return out;
}

// Two members of a 181 x 360 grid (two Blosc blocks a chunk), "device" data shuffled as the caller does.
struct TwoMembers {
  ArraySpec a = grid_array(2, 181, 360);
  std::vector<float> data = fields(2, 181 * 360);
  std::vector<std::uint8_t> dev;
  Slab slab;
  std::shared_ptr<MemorySink> mem;
  // The write of both members, from the shuffled "device" data.
  Engine::Request request() const { return {&a, mem, slab, {range(2), range(181), range(360)}}; }
  TwoMembers(const Engine& eng, std::shared_ptr<MemorySink> sink) : mem(std::move(sink)) {
    Slab probe{reinterpret_cast<const std::uint8_t*>(data.data()), {2, 181, 360}, {181 * 360 * 4, 360 * 4, 4}, 4};
    dev = shuffled_like_the_caller(data, eng.device_layout({&a, mem, probe, {range(2), range(181), range(360)}}));
    slab = Slab{dev.data(), {2, 181, 360}, {181 * 360 * 4, 360 * 4, 4}, 4};
  }
};

bool chunks_read_back(MemorySink& sink, const ArraySpec& a, const std::vector<float>& data) {
  const std::size_t n = a.chunk_nbytes();
  std::vector<std::uint8_t> enc, raw(n);
  for (int64_t m = 0; m < a.shape[0]; ++m) {
    if (!sink.read(a.chunk_key({m, 0, 0}), enc)) return false;
    decode_chunk(a.codec, enc.data(), enc.size(), raw.data(), n, 1);
    if (std::memcmp(raw.data(), reinterpret_cast<const std::uint8_t*>(data.data()) + static_cast<std::size_t>(m) * n,
                    n) != 0)
      return false;
  }
  return true;
}

TEST(device_encode_compresses_after_the_producer_and_chunks_decode_exactly) {
  const cuda::Api* api = cuda::api();
  CHECK(api != nullptr);
  if (!api) return;
  Fake fake;
  auto hold = fake.fn<void(void*, int)>("fake_cuda_hold_stream");
  auto blocks = fake.fn<unsigned long long()>("fake_nvcomp_blocks");
  auto misuse = fake.fn<unsigned long long()>("fake_nvcomp_misuse");
  Engine eng(2, 64 << 20, 32 << 20);
  auto mem = std::make_shared<MemorySink>();
  const ArraySpec a = grid_array(4, 181, 360);  // 260 KB chunks: a 128 KiB block and a shorter one
  const std::vector<float> data = fields(4, 181 * 360, /*noisy=*/3);
  Slab probe{reinterpret_cast<const std::uint8_t*>(data.data()), {4, 181, 360}, {181 * 360 * 4, 360 * 4, 4}, 4};
  const DeviceLayout d = eng.device_layout({&a, mem, probe, {range(4), range(181), range(360)}});
  if (!d.ok) std::cerr << "  " << d.why << "\n";
  CHECK(d.ok && d.nchunks == 4 && d.chunk_nbytes == 181 * 360 * 4 && d.blocksize == 131072 && d.shuffle);
  const std::vector<std::uint8_t> dev = shuffled_like_the_caller(data, d);  // "device" memory
  Slab s{dev.data(), {4, 181, 360}, {181 * 360 * 4, 360 * 4, 4}, 4};
  cuda::Stream producer = nullptr;
  CHECK(api->StreamCreateWithFlags(&producer, 0) == 0);
  hold(producer, 1);  // the shuffle is still running on the producer
  const auto blocks_before = blocks();
  const std::uint64_t seq = eng.submit_device({{&a, mem, s, {range(4), range(181), range(360)}}}, producer, true);
  CHECK(blocks() == blocks_before);  // nothing compressed while the producer's work is pending
  CHECK(eng.copies_done() < seq);
  CHECK(mem->size() == 0);
  hold(producer, 0);
  eng.flush();
  CHECK(eng.copies_done() == seq);
  CHECK(chunks_read_back(*mem, a, data));
  const DeviceEncodeStats st = eng.device_encode_stats();
  CHECK(st.chunks == 4 && st.blocks == 8 && st.memcpyed_chunks == 1 && st.failed_blocks == 0);
  CHECK(st.bytes_in == 4 * d.chunk_nbytes);
  // Three smooth chunks went over compressed, the noisy one raw: less than the raw bytes in all.
  CHECK(st.bytes_to_host < st.bytes_in && st.bytes_to_host > d.chunk_nbytes);
  CHECK(eng.stats().bytes_from_device == 0);  // nothing went the raw-copy way
  CHECK(misuse() == 0);
  CHECK(eng.ring_stats().used_bytes == 0);
  api->StreamDestroy(producer);
}

TEST(device_encode_stores_a_block_nvcomp_failed_on_raw_and_loses_nothing) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  Fake fake;
  auto fail_block = fake.fn<void(long long)>("fake_nvcomp_fail_block");
  Engine eng(2, 64 << 20, 32 << 20);
  auto mem = std::make_shared<MemorySink>();
  const TwoMembers w(eng, mem);
  fail_block(2);  // the second block of this submit
  eng.submit_device({w.request()}, nullptr, true);
  eng.flush();
  fail_block(0);
  CHECK(chunks_read_back(*mem, w.a, w.data));
  const DeviceEncodeStats st = eng.device_encode_stats();
  CHECK(st.failed_blocks == 1 && st.raw_blocks >= 1 && st.memcpyed_chunks == 0);
}

TEST(device_encode_launch_failure_raises_stores_nothing_and_frees_its_slot) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  Fake fake;
  auto fail_call = fake.fn<void(const char*, int, int)>("fake_cuda_fail_call");
  Engine eng(2, 64 << 20, 32 << 20);
  auto mem = std::make_shared<MemorySink>();
  const TwoMembers w(eng, mem);
  fail_call("nvcompBatchedZstdCompressAsync", 1, 0);
  CHECK(e2f_test::throws<std::runtime_error>(
      [&] { eng.submit_device({w.request()}, nullptr, true); },
      "nvcompBatchedZstdCompressAsync"));
  eng.flush();
  CHECK(mem->size() == 0);
  CHECK(eng.ring_stats().used_bytes == 0);
  // The engine goes on: the next submit compresses and stores.
  eng.submit_device({w.request()}, nullptr, true);
  eng.flush();
  CHECK(chunks_read_back(*mem, w.a, w.data));
}

TEST(device_encode_copy_failure_surfaces_at_flush_naming_the_chunk) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  Fake fake;
  auto fail_copy = fake.fn<void()>("fake_cuda_fail_next_copy_async");
  Engine eng(2, 64 << 20, 32 << 20);
  auto mem = std::make_shared<MemorySink>();
  const TwoMembers w(eng, mem);
  // A fresh stream fails its copies from the first failed one on (a sticky device error).
  fail_copy();
  eng.submit_device({w.request()}, nullptr, true);
  CHECK(e2f_test::throws<std::runtime_error>([&] { eng.flush(); }, "t2m/c/"));
  CHECK(mem->size() == 0);
  CHECK(eng.ring_stats().used_bytes == 0);
}

TEST(device_encode_memory_is_two_scratch_sets_reused_and_freed_with_the_engine) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  Fake fake;
  auto hold = fake.fn<void(void*, int)>("fake_cuda_hold_stream");
  auto device_bytes = fake.fn<long long()>("fake_cuda_device_bytes");
  const long long before = device_bytes();
  auto engine = std::make_unique<Engine>(2, 64 << 20, 32 << 20);
  auto mem = std::make_shared<MemorySink>();
  const TwoMembers w(*engine, mem);
  cuda::Stream producer = nullptr;
  CHECK(api->StreamCreateWithFlags(&producer, 0) == 0);
  hold(producer, 1);  // nothing compresses: every submit keeps its scratch set
  engine->submit_device({w.request()}, producer, true);
  const long long one_set = device_bytes() - before;
  CHECK(one_set > 0);
  engine->submit_device({w.request()}, producer, true);
  CHECK(device_bytes() - before == 2 * one_set);
  // A third submit waits for a set (backpressure), allocating nothing meanwhile.
  std::thread third([&] { engine->submit_device({w.request()}, producer, true); });
  CHECK(device_bytes() - before <= 2 * one_set);
  hold(producer, 0);
  third.join();
  engine->flush();
  CHECK(device_bytes() - before == 2 * one_set);  // reused, not grown
  CHECK(chunks_read_back(*mem, w.a, w.data));
  CHECK(engine->device_encode_stats().chunks == 6);
  engine.reset();
  CHECK(device_bytes() == before);  // freed with the engine
  api->StreamDestroy(producer);
}

TEST(device_layout_says_why_a_write_goes_the_host_way) {
  const cuda::Api* api = cuda::api();
  if (!api) return;
  Engine eng(2, 64 << 20, 32 << 20);
  auto mem = std::make_shared<MemorySink>();
  const std::vector<float> data = fields(4, 181 * 360);
  Slab all{reinterpret_cast<const std::uint8_t*>(data.data()), {4, 181, 360}, {181 * 360 * 4, 360 * 4, 4}, 4};
  const ArraySpec lz4 = grid_array(4, 181, 360, "lz4");
  CHECK(eng.device_layout({&lz4, mem, all, {range(4), range(181), range(360)}}).why.find("zstd") != std::string::npos);
  ArraySpec bit = grid_array(4, 181, 360);
  bit.codec.shuffle = Shuffle::bit;
  CHECK(eng.device_layout({&bit, mem, all, {range(4), range(181), range(360)}}).why.find("bitshuffle") !=
        std::string::npos);
  const ArraySpec a = grid_array(4, 181, 360);
  // Members written in reverse: the chunks are not in the data's order.
  CHECK(eng.device_layout({&a, mem, all, {{3, 2, 1, 0}, range(181), range(360)}}).why.find("order") !=
        std::string::npos);
  // Half the longitudes: each chunk written in part.
  Slab half{reinterpret_cast<const std::uint8_t*>(data.data()), {4, 181, 180}, {181 * 180 * 4, 180 * 4, 4}, 4};
  CHECK(!eng.device_layout({&a, mem, half, {range(4), range(181), range(180)}}).ok);
  // And a submit that insists is refused by name, storing nothing.
  CHECK(e2f_test::throws<std::invalid_argument>(
      [&] { eng.submit_device({{&lz4, mem, all, {range(4), range(181), range(360)}}}, nullptr, true); }, "t2m"));
  CHECK(mem->size() == 0);
}

}  // namespace
