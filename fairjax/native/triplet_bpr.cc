// Per-example BPR on gathered (u, i, j) rows and the gradient of its
// weighted sum, in one pass (`fairjax.ops.triplet_bpr`).
//
// x [3B, D] holds e_u (rows 0 .. B - 1), e_i (B .. 2B - 1) and e_j
// (2B .. 3B - 1); w [B] weighs each example. With `cosine` every row is
// scaled by r = 1 / sqrt(max(||x||^2, eps)) (models.mf.normalize_rows) and
// the score difference divided by tau; else the scores are dot products:
//
//   z_b    = (s(u_b, j_b) - s(u_b, i_b)) [/ tau]
//   loss_b = softplus(z_b)
//   grad   = d(sum_b w_b loss_b) / dx                              [3B, D]
//
// With g_b = w_b sigmoid(z_b) [/ tau], the normalised rows' gradients are
// g_b (n_j - n_i), -g_b n_u and g_b n_u, and each is taken back through
// the scaling: r g - live r^3 <x, g> x, where live = 1 above the floor, 1/2
// at it and 0 below (jnp.maximum's gradient). This is ITFR's per-cell
// pass (group_sam.cell_sam_rows), run twice a step; in XLA the same
// formula is a dozen fusions over [3B, D] arrays, each a pass through
// memory. Here each example's three rows are read once and its three
// gradient rows written once. Examples are split over XLA's CPU threads
// in fixed blocks; every example's result depends on its own rows only.
// Row sums run in kLanes float lanes, then the lanes in order. Denormals
// are flushed to zero, as XLA's CPU code does (flush_denormals.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "flush_denormals.h"
#include "lanes.h"
#include "run_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kExamplesPerTask = 128;

using fairjax_native::kLanes;
using fairjax_native::Lanes;
using fairjax_native::Load;
using fairjax_native::Store;

// The sum of v's lanes, pairwise (halves added until one lane is left).
inline float LaneSum(Lanes v) {
  float a[kLanes];
  std::memcpy(a, &v, sizeof(a));
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) a[l] += a[l + width];
  }
  return a[0];
}

struct Triplets {
  const float* x;
  const float* w;
  float* loss;
  float* grad;
  int64_t batch, dim;
  bool cosine;
  float tau, eps;

  // Example b. Every quantity comes from five inner products of the raw
  // rows u, i, j: ||u||^2, ||i||^2, ||j||^2, <u, i>, <u, j>. With scales
  // r_k (1 without `cosine`) the scores are r_u r_i <u, i> and r_u r_j
  // <u, j>; the normalised rows' gradients are g (r_j j - r_i i), -g r_u u
  // and g r_u u, and their inner products with the raw rows (for the
  // scaling's gradient) follow from the same five numbers.
  void Example(int64_t b) const {
    const int64_t dim = this->dim;
    const int64_t whole = dim - dim % kLanes;
    const float* __restrict u = x + b * dim;
    const float* __restrict i = x + (batch + b) * dim;
    const float* __restrict j = x + (2 * batch + b) * dim;
    float* __restrict gu = grad + b * dim;
    float* __restrict gi = grad + (batch + b) * dim;
    float* __restrict gj = grad + (2 * batch + b) * dim;
    Lanes a_uu = {}, a_ii = {}, a_jj = {}, a_ui = {}, a_uj = {};
    for (int64_t d = 0; d < whole; d += kLanes) {
      const Lanes vu = Load(u + d), vi = Load(i + d), vj = Load(j + d);
      a_uu += vu * vu;
      a_ii += vi * vi;
      a_jj += vj * vj;
      a_ui += vu * vi;
      a_uj += vu * vj;
    }
    float uu = LaneSum(a_uu), ii = LaneSum(a_ii), jj = LaneSum(a_jj);
    float ui = LaneSum(a_ui), uj = LaneSum(a_uj);
    for (int64_t d = whole; d < dim; ++d) {
      uu += u[d] * u[d];
      ii += i[d] * i[d];
      jj += j[d] * j[d];
      ui += u[d] * i[d];
      uj += u[d] * j[d];
    }
    float ru = 1.0f, ri = 1.0f, rj = 1.0f;
    if (cosine) {
      ru = 1.0f / std::sqrt(std::max(uu, eps));
      ri = 1.0f / std::sqrt(std::max(ii, eps));
      rj = 1.0f / std::sqrt(std::max(jj, eps));
    }
    float z = ru * rj * uj - ru * ri * ui;
    if (cosine) z = z / tau;
    // softplus(z) = max(z, 0) + log1p(t) (as jnp.logaddexp(z, 0)) and
    // sigmoid(z) = 1 / (1 + t) or t / (1 + t), from one t = exp(-|z|);
    // log1p(t) = log(1 + t) t / ((1 + t) - 1), the rounding of 1 + t
    // corrected (t itself where 1 + t rounds to 1).
    const float t = std::exp(-std::fabs(z));
    const float up = 1.0f + t;
    const float log1p_t = up == 1.0f ? t : std::log(up) * (t / (up - 1.0f));
    loss[b] = std::max(z, 0.0f) + log1p_t;
    float g = w[b] * ((z >= 0.0f ? 1.0f : t) / up);
    if (cosine) g = g / tau;
    // Through the scaling x -> r x a gradient gn becomes
    // r gn - live r^3 <x, gn> x (live: jnp.maximum's gradient at the floor).
    float cu = 0.0f, ci = 0.0f, cj = 0.0f;
    if (cosine) {
      const float e = eps;
      const auto live = [e](float sq) {
        return sq > e ? 1.0f : (sq == e ? 0.5f : 0.0f);
      };
      cu = live(uu) * ru * ru * ru * (g * (rj * uj - ri * ui));
      ci = live(ii) * ri * ri * ri * (-g * ru * ui);
      cj = live(jj) * rj * rj * rj * (g * ru * uj);
    }
    // gu = a j - c i - cu u, gi = -e u - ci i, gj = f u - cj j.
    const float a = ru * g * rj, c = ru * g * ri;
    const float e = ri * g * ru, f = rj * g * ru;
    for (int64_t d = 0; d < whole; d += kLanes) {
      const Lanes vu = Load(u + d), vi = Load(i + d), vj = Load(j + d);
      Store(gu + d, a * vj - c * vi - cu * vu);
      Store(gi + d, -e * vu - ci * vi);
      Store(gj + d, f * vu - cj * vj);
    }
    for (int64_t d = whole; d < dim; ++d) {
      gu[d] = a * j[d] - c * i[d] - cu * u[d];
      gi[d] = -e * u[d] - ci * i[d];
      gj[d] = f * u[d] - cj * j[d];
    }
  }

  void Block(int64_t t) const {
    const int64_t b1 = std::min(batch, (t + 1) * kExamplesPerTask);
    for (int64_t b = t * kExamplesPerTask; b < b1; ++b) Example(b);
  }
};

ffi::Error TripletBprImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> w,
                          ffi::ResultBuffer<ffi::F32> loss,
                          ffi::ResultBuffer<ffi::F32> grad, int32_t cosine,
                          float tau, float eps) {
  fairjax_native::ScopedFlushDenormals flush;  // as XLA's own CPU code
  const auto xd = x.dimensions();
  const int64_t batch = w.element_count();
  if (xd.size() != 2 || xd[0] != 3 * batch ||
      loss->element_count() != batch ||
      grad->element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument(
        "triplet_bpr: x must be [3B, D] for w [B]; the results [B] and "
        "[3B, D]");
  }
  Triplets job{x.typed_data(), w.typed_data(), loss->typed_data(),
               grad->typed_data(), batch, xd[1], cosine != 0, tau, eps};
  const int64_t tasks = (batch + kExamplesPerTask - 1) / kExamplesPerTask;
  fairjax_native::RunTasks(pool, tasks, [&job](int64_t t) { job.Block(t); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FairjaxTripletBpr, TripletBprImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("cosine")
                                  .Attr<float>("tau")
                                  .Attr<float>("eps"));
