#include "e2fastio/shard_sink.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include "e2fastio/crc32c.hpp"
#include "e2fastio/error.hpp"

namespace e2fastio {

namespace {

void put_le64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t get_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

// ------------------------------------------------------------------ layout

void ShardLayout::validate() const {
  const std::string what = "sharded array '" + path + "'";
  E2F_EXPECT(!shape.empty(), what + " must have at least one dimension");
  E2F_EXPECT(shape.size() == chunks.size() && shape.size() == shards.size(),
             what + ": shape, chunks and shards differ in length");
  for (std::size_t d = 0; d < shape.size(); ++d) {
    E2F_EXPECT(shape[d] >= 0, what + ": negative shape");
    E2F_EXPECT(chunks[d] >= 1 && shards[d] >= 1, what + ": chunk and shard sizes must be >= 1");
    E2F_EXPECT(shards[d] % chunks[d] == 0, what + ": shard size " + std::to_string(shards[d]) + " along dimension " +
                                               std::to_string(d) + " is not a multiple of the chunk size " +
                                               std::to_string(chunks[d]));
  }
  E2F_EXPECT(separator == '/' || separator == '.', "chunk key separator must be '/' or '.'");
  E2F_EXPECT(chunks_per_shard() <= (std::size_t{1} << 32), what + ": too many inner chunks per shard");
}

std::size_t ShardLayout::chunks_per_shard() const {
  std::size_t n = 1;
  for (std::size_t d = 0; d < chunks.size(); ++d) n *= static_cast<std::size_t>(shards[d] / chunks[d]);
  return n;
}

std::string ShardLayout::shard_key(const std::vector<int64_t>& shard) const {
  std::string key = path.empty() ? std::string("c") : path + "/c";
  for (auto c : shard) {
    key += separator;
    key += std::to_string(c);
  }
  return key;
}

bool ShardLayout::locate(const std::string& key, std::vector<int64_t>& shard, std::size_t& pos) const {
  const std::string prefix = path.empty() ? std::string("c") : path + "/c";
  if (key.compare(0, prefix.size(), prefix) != 0) return false;
  std::size_t i = prefix.size();
  const std::size_t nd = shape.size();
  shard.assign(nd, 0);
  pos = 0;
  for (std::size_t d = 0; d < nd; ++d) {
    if (i >= key.size() || key[i] != separator) return false;
    ++i;
    const std::size_t start = i;
    int64_t v = 0;
    while (i < key.size() && key[i] >= '0' && key[i] <= '9' && i - start < 18) v = v * 10 + (key[i++] - '0');
    if (i == start) return false;
    const int64_t per = shards[d] / chunks[d];
    E2F_EXPECT(v * chunks[d] < shape[d], "chunk key '" + key + "' lies outside array '" + path + "'");
    shard[d] = v / per;
    pos = pos * static_cast<std::size_t>(per) + static_cast<std::size_t>(v % per);
  }
  return i == key.size();
}

std::size_t ShardLayout::chunks_in_bounds(const std::vector<int64_t>& shard) const {
  std::size_t n = 1;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    const int64_t per = shards[d] / chunks[d];
    const int64_t left = shape[d] - shard[d] * shards[d];
    if (left <= 0) return 0;
    n *= static_cast<std::size_t>(std::min(per, (left + chunks[d] - 1) / chunks[d]));
  }
  return n;
}

// ------------------------------------------------------------------ format

namespace shard_format {

Bytes assemble(const std::vector<Piece>& chunks, bool index_at_start) {
  const std::size_t n = chunks.size(), index_n = 16 * n + 4;
  std::size_t body = 0;
  for (const auto& c : chunks)
    if (c.present) body += c.nbytes;
  Bytes out(index_n + body);
  std::uint8_t* index = index_at_start ? out.data() : out.data() + body;
  std::size_t off = index_at_start ? index_n : 0;
  for (std::size_t i = 0; i < n; ++i) {
    const Piece& c = chunks[i];
    if (!c.present) {
      put_le64(index + 16 * i, kAbsent);
      put_le64(index + 16 * i + 8, kAbsent);
      continue;
    }
    if (c.nbytes) std::memcpy(out.data() + off, c.data, c.nbytes);
    put_le64(index + 16 * i, off);
    put_le64(index + 16 * i + 8, c.nbytes);
    off += c.nbytes;
  }
  const std::uint32_t crc = crc32c(index, 16 * n);
  for (int b = 0; b < 4; ++b) index[16 * n + static_cast<std::size_t>(b)] = static_cast<std::uint8_t>(crc >> (8 * b));
  return out;
}

std::vector<Entry> parse_index(const std::uint8_t* data, std::size_t nbytes, std::size_t nchunks,
                               bool index_at_start) {
  const std::size_t index_n = 16 * nchunks + 4;
  if (nbytes < index_n)
    E2F_FAIL("the object has " + std::to_string(nbytes) + " bytes, fewer than its index (" + std::to_string(index_n) +
             ")");
  const std::uint8_t* index = index_at_start ? data : data + (nbytes - index_n);
  std::uint32_t stored = 0;
  for (int b = 3; b >= 0; --b) stored = (stored << 8) | index[16 * nchunks + static_cast<std::size_t>(b)];
  if (crc32c(index, 16 * nchunks) != stored) E2F_FAIL("the checksum (crc32c) of its index does not match");
  std::vector<Entry> out(nchunks);
  for (std::size_t i = 0; i < nchunks; ++i) {
    Entry e{get_le64(index + 16 * i), get_le64(index + 16 * i + 8)};
    if (e.present() && (e.offset > nbytes || e.nbytes > nbytes - e.offset))
      E2F_FAIL("index entry " + std::to_string(i) + " points outside the object");
    out[i] = e;
  }
  return out;
}

}  // namespace shard_format

// ------------------------------------------------------------------ sink

ShardSink::ShardSink(std::shared_ptr<Sink> inner, std::size_t capacity_bytes, std::size_t max_inflight)
    : inner_(std::move(inner)), capacity_(capacity_bytes), max_inflight_(max_inflight) {
  E2F_EXPECT(inner_ != nullptr, "ShardSink needs a sink to write shards to");
  E2F_EXPECT(max_inflight_ >= 1, "max_inflight_shards must be at least 1 but got " + std::to_string(max_inflight));
  stats_.capacity = capacity_;
  stats_.max_inflight = max_inflight_;
}

void ShardSink::add_array(const ShardLayout& layout) {
  layout.validate();
  auto l = std::make_shared<const ShardLayout>(layout);
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& kv : open_)
    E2F_EXPECT(kv.second.layout->path != layout.path || kv.second.held == 0,
               "array '" + layout.path + "' still has shards under assembly: flush before replacing it");
  layouts_[layout.path] = std::move(l);
}

const ShardLayout* ShardSink::find_layout(const std::string& key, std::vector<int64_t>& shard, std::size_t& pos,
                                          std::shared_ptr<const ShardLayout>& keep) const {
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& kv : layouts_) {
    if (kv.second->locate(key, shard, pos)) {
      keep = kv.second;
      return keep.get();
    }
  }
  return nullptr;
}

ShardSink::PendingPtr ShardSink::take(const std::string& key, Open& o, bool keep_seen) {
  auto p = std::make_shared<Pending>();
  p->key = key;
  p->layout = o.layout;
  p->merge = o.held < o.in_bounds;
  p->bytes = o.bytes;
  p->chunks.swap(o.chunks);
  o.chunks.assign(p->chunks.size(), nullptr);
  open_bytes_ -= o.bytes;
  writing_bytes_ += o.bytes;
  o.bytes = 0;
  o.held = 0;
  if (!keep_seen) {
    std::fill(o.seen.begin(), o.seen.end(), 0);
    o.seen_count = 0;
  }
  writing_[key].push_back(p);
  return p;
}

void ShardSink::write(const std::string& key, const uint8_t* data, std::size_t nbytes) {
  std::vector<int64_t> shard;
  std::size_t pos = 0;
  std::shared_ptr<const ShardLayout> layout;
  if (!find_layout(key, shard, pos, layout)) {
    inner_->write(key, data, nbytes);
    return;
  }
  auto d = std::make_shared<const std::vector<uint8_t>>(data, data + nbytes);
  const std::string skey = layout->shard_key(shard);
  std::vector<PendingPtr> todo;
  {
    std::unique_lock<std::mutex> lk(mu_);
    // Backpressure: while shard writes in flight hold the memory this chunk
    // needs, wait for them (they depend on nothing but the store).
    if (held_ + nbytes > capacity_ && writing_bytes_ > 0) {
      const auto t0 = std::chrono::steady_clock::now();
      ++stats_.writer_waits;
      cv_.wait(lk, [&] { return !(held_ + nbytes > capacity_ && writing_bytes_ > 0); });
      stats_.writer_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    Open& o = open_[skey];
    if (!o.layout) {
      o.layout = layout;
      o.coords = shard;
      o.chunks.assign(layout->chunks_per_shard(), nullptr);
      o.seen.assign(o.chunks.size(), 0);
      o.in_bounds = layout->chunks_in_bounds(shard);
    }
    if (o.chunks[pos]) {  // written again before its shard was: the newer bytes win
      const std::size_t old = o.chunks[pos]->size();
      o.bytes -= old;
      open_bytes_ -= old;
      held_ -= old;
    } else {
      if (o.held == 0) o.since = ++seq_;
      ++o.held;
    }
    o.chunks[pos] = d;
    o.bytes += nbytes;
    open_bytes_ += nbytes;
    held_ += nbytes;
    stats_.peak_held_bytes = std::max(stats_.peak_held_bytes, held_);
    ++stats_.chunks_gathered;
    if (!o.seen[pos]) {
      o.seen[pos] = 1;
      ++o.seen_count;
    }
    if (o.seen_count >= o.in_bounds) {
      todo.push_back(take(skey, o, false));
      open_.erase(skey);
    }
    // Over the bound: write out the oldest shards under assembly, incomplete.
    while (held_ > capacity_ && open_bytes_ > 0) {
      auto victim = open_.end();
      for (auto it = open_.begin(); it != open_.end(); ++it)
        if (it->second.held > 0 && (victim == open_.end() || it->second.since < victim->second.since)) victim = it;
      if (victim == open_.end()) break;
      todo.push_back(take(victim->first, victim->second, true));
      ++stats_.shards_spilled;
    }
  }
  emit_all(todo);
}

void ShardSink::emit_all(const std::vector<PendingPtr>& todo) {
  // Several shards (a flush at close writes every incomplete one): up to
  // max_inflight of them at once, the calling thread and short-lived helpers
  // taking the next one in turn, so the tail of a run is not one shard after
  // another on one thread.
  std::atomic<std::size_t> next{0};
  std::mutex err_mu;
  std::exception_ptr first;
  auto work = [&]() {
    for (std::size_t i; (i = next.fetch_add(1)) < todo.size();) {
      std::exception_ptr err;
      try {
        emit(todo[i]);
      } catch (...) {
        err = std::current_exception();
      }
      if (err) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!first) first = std::move(err);
        err = nullptr;
      }
    }
  };
  const std::size_t helpers = std::min(max_inflight_, todo.size()) - (todo.empty() ? 0 : 1);
  std::vector<std::thread> threads;
  threads.reserve(helpers);
  try {
    for (std::size_t h = 0; h < helpers; ++h) threads.emplace_back(work);
  } catch (...) {
    // No thread to spare: the ones started and this one finish the list.
  }
  work();
  for (auto& th : threads) th.join();
  if (first) std::rethrow_exception(first);
}

void ShardSink::emit(const PendingPtr& p) {
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return writing_[p->key].front() == p && in_flight_ < max_inflight_; });
    ++in_flight_;
  }
  std::size_t extra = 0;
  bool merged = false;
  std::exception_ptr err;
  try {
    const ShardLayout& l = *p->layout;
    const std::size_t n = l.chunks_per_shard();
    std::vector<shard_format::Piece> pieces(n);
    for (std::size_t i = 0; i < n; ++i)
      if (p->chunks[i]) pieces[i] = {p->chunks[i]->data(), p->chunks[i]->size(), true};
    std::vector<std::uint8_t> stored;
    if (p->merge && inner_->read(p->key, stored)) {
      std::vector<shard_format::Entry> index;
      try {
        index = shard_format::parse_index(stored.data(), stored.size(), n, l.index_at_start);
      } catch (const std::exception& e) {
        E2F_FAIL("shard '" + p->key + "' in " + inner_->describe() + " cannot be merged with: " + e.what());
      }
      for (std::size_t i = 0; i < n; ++i)
        if (!pieces[i].present && index[i].present())
          pieces[i] = {stored.data() + index[i].offset, static_cast<std::size_t>(index[i].nbytes), true};
      merged = true;
    }
    shard_format::Bytes object = shard_format::assemble(pieces, l.index_at_start);
    {
      std::lock_guard<std::mutex> lk(mu_);
      extra = object.size() + stored.size();
      held_ += extra;
      stats_.peak_held_bytes = std::max(stats_.peak_held_bytes, held_);
    }
    inner_->write(p->key, object.data(), object.size());
  } catch (const IOError&) {
    err = std::current_exception();  // names the shard's key (or file) and carries errno
  } catch (const std::exception& e) {
    const std::string what = e.what();
    err = what.find(p->key) != std::string::npos
              ? std::current_exception()
              : std::make_exception_ptr(std::runtime_error("shard '" + p->key + "': " + what));
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    --in_flight_;
    auto it = writing_.find(p->key);
    it->second.pop_front();
    if (it->second.empty()) writing_.erase(it);
    held_ -= p->bytes + extra;
    writing_bytes_ -= p->bytes;
    if (!err) {
      ++stats_.shards_written;
      if (merged) {
        ++stats_.shards_merged;
        ++stats_.merged_by_array[p->layout->path];
      }
    }
  }
  cv_.notify_all();
  if (err) std::rethrow_exception(err);
}

bool ShardSink::read(const std::string& key, std::vector<uint8_t>& out) {
  std::vector<int64_t> shard;
  std::size_t pos = 0;
  std::shared_ptr<const ShardLayout> layout;
  if (!find_layout(key, shard, pos, layout)) return inner_->read(key, out);
  const std::string skey = layout->shard_key(shard);
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto o = open_.find(skey);
    if (o != open_.end() && o->second.chunks[pos]) {
      out = *o->second.chunks[pos];
      return true;
    }
    auto w = writing_.find(skey);
    if (w != writing_.end()) {
      for (auto it = w->second.rbegin(); it != w->second.rend(); ++it) {
        if ((*it)->chunks[pos]) {
          out = *(*it)->chunks[pos];
          return true;
        }
      }
    }
  }
  std::vector<std::uint8_t> stored;
  if (!inner_->read(skey, stored)) return false;
  std::vector<shard_format::Entry> index;
  try {
    index = shard_format::parse_index(stored.data(), stored.size(), layout->chunks_per_shard(),
                                      layout->index_at_start);
  } catch (const std::exception& e) {
    E2F_FAIL("shard '" + skey + "' in " + inner_->describe() + " cannot be read: " + e.what());
  }
  const auto& e = index[pos];
  if (!e.present()) return false;
  out.assign(stored.begin() + static_cast<std::ptrdiff_t>(e.offset),
             stored.begin() + static_cast<std::ptrdiff_t>(e.offset + e.nbytes));
  return true;
}

void ShardSink::flush(const std::vector<std::pair<std::string, std::vector<int64_t>>>& hold) {
  std::vector<PendingPtr> todo;
  {
    std::lock_guard<std::mutex> lk(mu_);
    std::unordered_set<std::string> keep;
    for (const auto& [path, shard] : hold) {
      auto it = layouts_.find(path);
      E2F_EXPECT(it != layouts_.end(), "flush: '" + path + "' is not a sharded array of this sink");
      keep.insert(it->second->shard_key(shard));
    }
    for (auto it = open_.begin(); it != open_.end();) {
      if (keep.count(it->first)) {
        ++it;
        continue;
      }
      if (it->second.held > 0) todo.push_back(take(it->first, it->second, false));
      it = open_.erase(it);
    }
  }
  std::exception_ptr first;
  try {
    emit_all(todo);
  } catch (...) {
    first = std::current_exception();
  }
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return writing_.empty(); });
  }
  if (first) std::rethrow_exception(first);
}

ShardSink::Stats ShardSink::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  Stats s = stats_;
  s.held_bytes = held_;
  std::size_t open = 0;
  for (const auto& kv : open_) open += kv.second.held > 0 ? 1 : 0;
  s.open_shards = open;
  return s;
}

}  // namespace e2fastio
