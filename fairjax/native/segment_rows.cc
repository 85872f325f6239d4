// Sums of rows by segment: out[seg[a], :] += x[a, :].
//
// out [N, D] starts at zero and every row a of x [S, D] is added to row
// seg[a] of out, in the order a = 0, 1, ..., S - 1 (each output row's
// terms in slot order, as `jax.ops.segment_sum`'s scatter-add adds them on
// the CPU). An id outside [0, N) is an error. ITFR's per-cell gradient
// segments (`fairjax.ops.segment_rows`, group_sam.cell_sam_rows): in XLA
// the scatter-add starts from a broadcast zero buffer that is copied for
// each of the two passes; here the zeroing and the sums are one call.
// Small: one thread. Denormals are flushed to zero, as XLA's CPU code does
// (flush_denormals.h).
#include <cstdint>
#include <cstring>
#include <string>

#include "flush_denormals.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error SegmentRowsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> seg,
                           ffi::ResultBuffer<ffi::F32> out) {
  fairjax_native::ScopedFlushDenormals flush;  // as XLA's own CPU code
  const auto xd = x.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 2 || od.size() != 2 || xd[1] != od[1] ||
      seg.element_count() != xd[0]) {
    return ffi::Error::InvalidArgument(
        "segment_rows: x must be [S, D], seg [S] and the result [N, D]");
  }
  const int64_t s = xd[0], n = od[0], dim = xd[1];
  const int32_t* id = seg.typed_data();
  for (int64_t a = 0; a < s; ++a) {
    if (id[a] < 0 || id[a] >= n) {
      return ffi::Error::InvalidArgument(
          "segment_rows: slot " + std::to_string(a) + " has segment id " +
          std::to_string(id[a]) + " outside [0, " + std::to_string(n) + ")");
    }
  }
  float* o = out->typed_data();
  const float* in = x.typed_data();
  std::memset(o, 0, static_cast<size_t>(n * dim) * sizeof(float));
  for (int64_t a = 0; a < s; ++a) {
    float* __restrict row = o + static_cast<int64_t>(id[a]) * dim;
    const float* __restrict src = in + a * dim;
    for (int64_t d = 0; d < dim; ++d) row[d] += src[d];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FairjaxSegmentRows, SegmentRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
