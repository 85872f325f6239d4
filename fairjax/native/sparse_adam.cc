// Dense Adam with coupled L2 whose gradient is a few rows of a table.
//
// One step of torch's Adam(weight_decay=l2), i.e. optax.chain(
// add_decayed_weights(l2), adam(lr, b1, b2, eps)), on a table p [N, D] with
// moments m, v [N, D], where the loss gradient is zero outside the rows
// `ids` [n] and grads [n, D] holds one gradient row per occurrence
// (duplicates add up, in the order given). Every row moves (the L2 term and
// the moments' decay are dense), so the result is the dense update's; only
// the gradient is never built as a table:
//
//   g = G + l2 * p,   m <- (1 - b1) g + b1 m,   v <- (1 - b2) g^2 + b2 v,
//   p <- p + (-lr) (m / c1) / (sqrt(v / c2) + eps),   c = 1 - b^t,
//
// with G the summed gradient rows (zero elsewhere); a1 and a2 are 1 - b1
// and 1 - b2 rounded once from double (as optax's Python floats are), and
// inv_c [2] holds 1 / c1 and 1 / c2 for this step (the divisions by c
// become products). p, m and v are updated in one pass (in place when XLA
// aliases them to the results), split over XLA's intra-op threads by blocks
// of rows. Rounding follows XLA's CPU code: built with -ffp-contract=fast,
// products and the adds after them become multiply-adds as XLA's LLVM
// backend makes them, and denormals are flushed to zero
// (flush_denormals.h), so a row without gradient comes out bit-identical to
// `update_rows(impl='jax')`'s. That matters for rows decaying towards zero
// (idle users under coupled L2 reach ~1e-33, where the flush and the
// contraction decide when a coordinate stops moving).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "flush_denormals.h"
#include "run_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowsPerTask = 256;

struct Pass {
  float* p;
  float* m;
  float* v;
  const float* p_in;
  const float* m_in;
  const float* v_in;
  const int32_t* head;  // [N]: the row's first gradient row in `grads`, or -1
  const int32_t* next;  // [n]: the same table row's next gradient row, or -1
  const float* grads;   // [n, D]
  int64_t rows, dim;
  float lr, b1, b2, a1, a2, eps, l2, inv_c1, inv_c2;

  static inline void Row(float* __restrict p, float* __restrict m,
                         float* __restrict v, const float* __restrict grad,
                         int64_t dim, const Pass& s) {
    for (int64_t d = 0; d < dim; ++d) {
      float g = s.l2 * p[d];
      if (grad != nullptr) g = grad[d] + g;
      const float mm = s.a1 * g + s.b1 * m[d];
      const float vv = s.a2 * (g * g) + s.b2 * v[d];
      const float u = (mm * s.inv_c1) / (std::sqrt(vv * s.inv_c2) + s.eps);
      m[d] = mm;
      v[d] = vv;
      p[d] = p[d] + (-s.lr) * u;
    }
  }

  void Rows(int64_t r0, int64_t r1) {
    const int64_t a = r0 * dim, b = r1 * dim;
    if (p != p_in) std::copy(p_in + a, p_in + b, p + a);  // not aliased
    if (m != m_in) std::copy(m_in + a, m_in + b, m + a);
    if (v != v_in) std::copy(v_in + a, v_in + b, v + a);
    std::vector<float> sum;  // a repeated row's gradient rows, added up
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t j = head[r];
      const float* grad = j >= 0 ? grads + j * dim : nullptr;
      if (j >= 0 && next[j] >= 0) {  // in the order given
        sum.assign(grad, grad + dim);
        for (int32_t k = next[j]; k >= 0; k = next[k]) {
          const float* g = grads + static_cast<int64_t>(k) * dim;
          for (int64_t d = 0; d < dim; ++d) sum[d] += g[d];
        }
        grad = sum.data();
      }
      Row(p + r * dim, m + r * dim, v + r * dim, grad, dim, *this);
    }
  }
};

ffi::Error SparseAdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> p,
                          ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> v,
                          ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::F32> grads,
                          ffi::Buffer<ffi::F32> inv_c,
                          ffi::ResultBuffer<ffi::F32> p_out,
                          ffi::ResultBuffer<ffi::F32> m_out,
                          ffi::ResultBuffer<ffi::F32> v_out, float lr, float b1,
                          float b2, float a1, float a2, float eps, float l2) {
  fairjax_native::ScopedFlushDenormals flush;  // as XLA's own CPU code
  const auto dims = p.dimensions();
  auto same = [&dims](ffi::Buffer<ffi::F32>& b) {
    const auto d = b.dimensions();
    return d.size() == 2 && d[0] == dims[0] && d[1] == dims[1];
  };
  if (dims.size() != 2 || !same(m) || !same(v)) {
    return ffi::Error::InvalidArgument(
        "sparse_adam: p, m and v must be [N, D] tables of one shape");
  }
  const int64_t rows = dims[0], dim = dims[1], n = ids.element_count();
  if (grads.element_count() != n * dim || inv_c.element_count() != 2) {
    return ffi::Error::InvalidArgument(
        "sparse_adam: grads must be [n, D] for ids [n]; inv_c must be [2]");
  }
  const int32_t* id = ids.typed_data();
  for (int64_t j = 0; j < n; ++j) {
    if (id[j] < 0 || id[j] >= rows) {
      return ffi::Error::InvalidArgument(
          "sparse_adam: row id " + std::to_string(id[j]) + " outside [0, " +
          std::to_string(rows) + ")");
    }
  }
  // Each table row's gradient rows as a chain in the order given (summed
  // in that order during the pass, deterministic). `head` is kept per
  // thread between calls (all -1; the touched entries are reset below):
  // no table-sized allocation per step.
  thread_local std::vector<int32_t> head, tail;
  if (static_cast<int64_t>(head.size()) < rows) {
    head.assign(rows, -1);
    tail.assign(rows, -1);
  }
  std::vector<int32_t> next(n, -1);
  for (int64_t j = 0; j < n; ++j) {
    const int32_t r = id[j];
    if (head[r] < 0) {
      head[r] = static_cast<int32_t>(j);
    } else {
      next[tail[r]] = static_cast<int32_t>(j);
    }
    tail[r] = static_cast<int32_t>(j);
  }
  Pass pass;
  pass.p = p_out->typed_data();
  pass.m = m_out->typed_data();
  pass.v = v_out->typed_data();
  pass.p_in = p.typed_data();
  pass.m_in = m.typed_data();
  pass.v_in = v.typed_data();
  pass.head = head.data();
  pass.next = next.data();
  pass.grads = grads.typed_data();
  pass.rows = rows;
  pass.dim = dim;
  pass.lr = lr;
  pass.b1 = b1;
  pass.b2 = b2;
  pass.a1 = a1;
  pass.a2 = a2;
  pass.eps = eps;
  pass.l2 = l2;
  pass.inv_c1 = inv_c.typed_data()[0];
  pass.inv_c2 = inv_c.typed_data()[1];
  fairjax_native::RunTasks(
      pool, (rows + kRowsPerTask - 1) / kRowsPerTask, [&pass](int64_t t) {
        pass.Rows(t * kRowsPerTask,
                  std::min(pass.rows, (t + 1) * kRowsPerTask));
      });
  for (int64_t j = 0; j < n; ++j) head[id[j]] = -1;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    FairjaxSparseAdam, SparseAdamImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Attr<float>("lr")
        .Attr<float>("b1")
        .Attr<float>("b2")
        .Attr<float>("a1")
        .Attr<float>("a2")
        .Attr<float>("eps")
        .Attr<float>("l2"));
