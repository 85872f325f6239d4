// Inner products of per-cell gradient segments with a [K, G, D] buffer.
//
// out[i, j] = sum over the segments k with cell[k] = i of
//             <h[k, :], c[key[k], j, :]>,
// for i, j in [0, G); segments with cell[k] outside [0, G) (padding) are
// skipped. This is ITFR's <h_i, C_j^prev> (`fairjax.ops.cell_dots`): the
// buffer rows of the touched keys are read in place, and nothing of size
// [segments, G, D] is built. Where the caller knows rows to be zero, it
// says so with classes: buffer row (key, j) is skipped when
// key_class[key] >= 0 and key_class[key] != cell_class[j] (ITFR on MF: a
// user's gradient rows are zero in the cells of the other user groups).
//
// Each product's D-sum runs in kLanes float lanes, which every block of
// kSegsPerTask segments adds into its own [G, G, kLanes] float partial; the
// partials' lanes are summed in double, in block and lane order, at the
// end. A fixed order: the result does not depend on the number of threads.
// While a segment is computed, the buffer row kAhead segments on is
// prefetched (rows are 3 KB apart at random: the hardware prefetcher alone
// waits on each). Denormals are flushed to zero, as XLA's CPU code does
// (flush_denormals.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "flush_denormals.h"
#include "lanes.h"
#include "run_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kSegsPerTask = 128;
constexpr int64_t kAhead = 2;  // segments ahead to prefetch
using fairjax_native::kLanes;
using fairjax_native::Lanes;
using fairjax_native::Load;
using fairjax_native::Store;

struct Pass {
  const float* c;
  const int32_t* key;
  const float* h;
  const int32_t* key_class;
  const int32_t* cell_class;
  const int32_t* cell_of;  // cell of each segment
  std::vector<int32_t> segs;  // segments with a cell in [0, G), in order
  int64_t cells, dim;
  std::vector<float> partial;  // [tasks, G, G, kLanes]

  const float* Row(int32_t seg) const {
    return c + static_cast<int64_t>(key[seg]) * cells * dim;
  }

  // partial[cell, j, :] += lanes of <h_seg, row_j> for the buffer rows j
  // not skipped: the products summed over D in kLanes float lanes.
  void Segment(int32_t seg, int32_t i, float* __restrict part) const {
    const float* __restrict row = Row(seg);
    const float* __restrict hk = h + static_cast<int64_t>(seg) * dim;
    float* __restrict o = part + static_cast<int64_t>(i) * cells * kLanes;
    const int32_t cls = key_class[key[seg]];
    const int64_t whole = dim - dim % kLanes;
    float tail[kLanes] = {};
    for (int64_t j = 0; j < cells; ++j) {
      if (cls >= 0 && cls != cell_class[j]) continue;
      const float* __restrict r = row + j * dim;
      Lanes acc = {};
      for (int64_t d = 0; d < whole; d += kLanes) acc += Load(r + d) * Load(hk + d);
      if (whole < dim) {
        for (int64_t d = whole; d < dim; ++d) tail[d - whole] = r[d] * hk[d];
        acc += Load(tail);
      }
      Store(o + j * kLanes, Load(o + j * kLanes) + acc);
    }
  }

  void Block(int64_t t) {
    float* part = partial.data() + t * cells * cells * kLanes;
    const int64_t n0 = t * kSegsPerTask;
    const int64_t n1 = std::min<int64_t>(segs.size(), n0 + kSegsPerTask);
    const int64_t bytes = cells * dim * static_cast<int64_t>(sizeof(float));
    for (int64_t n = n0; n < n1; ++n) {
      if (n + kAhead < n1) {
        const char* ahead = reinterpret_cast<const char*>(Row(segs[n + kAhead]));
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(ahead + b);
      }
      const int32_t seg = segs[n];
      Segment(seg, cell_of[seg], part);
    }
  }
};

ffi::Error CellDotsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> c,
                        ffi::Buffer<ffi::S32> key, ffi::Buffer<ffi::S32> cell,
                        ffi::Buffer<ffi::F32> h,
                        ffi::Buffer<ffi::S32> key_class,
                        ffi::Buffer<ffi::S32> cell_class,
                        ffi::ResultBuffer<ffi::F32> out) {
  fairjax_native::ScopedFlushDenormals flush;  // as XLA's own CPU code
  const auto dims = c.dimensions();
  if (dims.size() != 3) {
    return ffi::Error::InvalidArgument("cell_dots: c must be [K, G, D]");
  }
  const int64_t rows = dims[0], cells = dims[1], dim = dims[2];
  const int64_t n = key.element_count();
  if (cell.element_count() != n || h.element_count() != n * dim ||
      key_class.element_count() != rows ||
      cell_class.element_count() != cells) {
    return ffi::Error::InvalidArgument(
        "cell_dots: for c [K, G, D], key and cell must be [S], h [S, D], "
        "key_class [K] and cell_class [G]");
  }
  const int32_t* k = key.typed_data();
  const int32_t* g = cell.typed_data();
  Pass pass;
  pass.segs.reserve(n);
  for (int64_t s = 0; s < n; ++s) {
    if (g[s] < 0 || g[s] >= cells) continue;
    if (k[s] < 0 || k[s] >= rows) {
      return ffi::Error::InvalidArgument(
          "cell_dots: segment " + std::to_string(s) + " has row key " +
          std::to_string(k[s]) + " outside [0, " + std::to_string(rows) + ")");
    }
    pass.segs.push_back(static_cast<int32_t>(s));
  }
  pass.c = c.typed_data();
  pass.key = k;
  pass.cell_of = g;
  pass.h = h.typed_data();
  pass.key_class = key_class.typed_data();
  pass.cell_class = cell_class.typed_data();
  pass.cells = cells;
  pass.dim = dim;
  const int64_t tasks =
      (static_cast<int64_t>(pass.segs.size()) + kSegsPerTask - 1) /
      kSegsPerTask;
  pass.partial.assign(tasks * cells * cells * kLanes, 0.0f);
  fairjax_native::RunTasks(pool, tasks, [&pass](int64_t t) { pass.Block(t); });
  // out[e] = sum over lanes l of (sum over blocks t of partial[t, e, l]),
  // the block sums taken lane by lane in double, the lanes then in order.
  float* o = out->typed_data();
  std::vector<double> lanes(kLanes);
  for (int64_t e = 0; e < cells * cells; ++e) {
    std::fill(lanes.begin(), lanes.end(), 0.0);
    for (int64_t t = 0; t < tasks; ++t) {
      const float* p = pass.partial.data() + (t * cells * cells + e) * kLanes;
      for (int l = 0; l < kLanes; ++l) lanes[l] += p[l];
    }
    double s = 0.0;
    for (int l = 0; l < kLanes; ++l) s += lanes[l];
    o[e] = static_cast<float>(s);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FairjaxCellDots, CellDotsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
