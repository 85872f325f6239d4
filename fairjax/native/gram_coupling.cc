// Per-cell products with a dense Gram matrix: out = K J, K block diagonal.
//
// Entries a = 0 .. M - 1 carry a key (a row of the Gram matrix gram [N, N])
// and a cell; K[a, b] = gram[key_a, key_b] when a and b share a cell in
// [0, G), else 0. ITFR on LightGCN applies K to the cells' gradient
// segments twice a step (`fairjax.ops.gram_coupling`,
// group_sam.cell_sam_rows): the blocks K_g = gram[k_g, k_g] are read from
// the [N, N] matrix once a step and kept (FairjaxGramBlocks), then each
// pass multiplies them (FairjaxGramApply). XLA's gather of the same blocks
// costs about the same per element whether a place is used or not, so its
// static per-cell capacities cost their square; here only the entries
// present are read, with the next row's entries prefetched.
//
// Layout: the entries of cell g, in increasing index order, are cell g's
// rows and columns; block g (n_g x n_g, row-major) starts at sum_{h < g}
// n_h^2 in `blocks`. A block that does not fit in `blocks` (its static size
// is a budget) is not stored: FairjaxGramApply reads it from the Gram
// matrix instead (slower, the same values).
//
// out[a] = sum over b of cell(a), in increasing b, of K[a, b] J[b], as a
// chain of multiply-adds from zero (the same for every thread count); 0 for
// an entry outside [0, G). Both calls split the rows over XLA's intra-op
// threads. Denormals are flushed to zero, as XLA's CPU code does.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "run_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowsPerTask = 32;

// The entries grouped by cell, and each block's place.
struct Layout {
  int64_t cells = 0;
  std::vector<int64_t> start;     // [G + 1]: cell g's entries at [start[g], start[g + 1])
  std::vector<int32_t> entry;     // entries, by cell then index
  std::vector<int32_t> key;       // their keys
  std::vector<int64_t> offset;    // [G]: block g's first float in `blocks`
  std::vector<char> stored;       // [G]: block g fits in `blocks`
  std::vector<int32_t> outside;   // entries of no cell

  int64_t size(int64_t g) const { return start[g + 1] - start[g]; }

  // Row chunks (cell, first row, end row) of at most kRowsPerTask rows.
  std::vector<int64_t> Chunks() const {
    std::vector<int64_t> t;
    for (int64_t g = 0; g < cells; ++g) {
      for (int64_t r = 0; r < size(g); r += kRowsPerTask) {
        t.insert(t.end(), {g, r, std::min(size(g), r + kRowsPerTask)});
      }
    }
    return t;
  }
};

ffi::Error MakeLayout(ffi::Buffer<ffi::F32>& gram, ffi::Buffer<ffi::S32>& keys,
                      ffi::Buffer<ffi::S32>& cells, int64_t num_cells,
                      int64_t budget, Layout* lay) {
  const auto gd = gram.dimensions();
  if (gd.size() != 2 || gd[0] != gd[1]) {
    return ffi::Error::InvalidArgument("gram_coupling: gram must be [N, N]");
  }
  const int64_t m = keys.element_count();
  if (cells.element_count() != m) {
    return ffi::Error::InvalidArgument(
        "gram_coupling: keys and cells must both be [M]");
  }
  if (num_cells < 0) {
    return ffi::Error::InvalidArgument("gram_coupling: num_cells < 0");
  }
  const int64_t n = gd[0];
  const int32_t* k = keys.typed_data();
  const int32_t* c = cells.typed_data();
  lay->cells = num_cells;
  lay->start.assign(num_cells + 1, 0);
  for (int64_t a = 0; a < m; ++a) {
    if (c[a] >= 0 && c[a] < num_cells) {
      if (k[a] < 0 || k[a] >= n) {
        return ffi::Error::InvalidArgument(
            "gram_coupling: entry " + std::to_string(a) + " has key " +
            std::to_string(k[a]) + " outside [0, " + std::to_string(n) + ")");
      }
      ++lay->start[c[a] + 1];
    } else {
      lay->outside.push_back(static_cast<int32_t>(a));
    }
  }
  for (int64_t g = 0; g < num_cells; ++g) lay->start[g + 1] += lay->start[g];
  lay->entry.resize(lay->start[num_cells]);
  lay->key.resize(lay->start[num_cells]);
  std::vector<int64_t> fill(lay->start.begin(), lay->start.end() - 1);
  for (int64_t a = 0; a < m; ++a) {
    if (c[a] >= 0 && c[a] < num_cells) {
      const int64_t at = fill[c[a]]++;
      lay->entry[at] = static_cast<int32_t>(a);
      lay->key[at] = k[a];
    }
  }
  lay->offset.assign(num_cells, 0);
  lay->stored.assign(num_cells, 0);
  int64_t used = 0;
  for (int64_t g = 0; g < num_cells; ++g) {
    const int64_t sq = lay->size(g) * lay->size(g);
    lay->offset[g] = used;
    if (used + sq <= budget) {
      lay->stored[g] = 1;
      used += sq;
    }
  }
  return ffi::Error::Success();
}

// Row i of block g (n = its size) into dst [n]; the next row's entries are
// prefetched (the reads are scattered over a matrix far larger than cache).
inline void GatherRow(const float* gram, int64_t n_total, const int32_t* key,
                      int64_t n, int64_t i, float* __restrict dst) {
  const float* src = gram + static_cast<int64_t>(key[i]) * n_total;
#if defined(__AVX512F__) || defined(__SSE__)
  if (i + 1 < n) {
    const float* next = gram + static_cast<int64_t>(key[i + 1]) * n_total;
    for (int64_t j = 0; j < n; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(next + key[j]), _MM_HINT_T0);
    }
  }
#endif
  for (int64_t j = 0; j < n; ++j) dst[j] = src[key[j]];
}

ffi::Error GramBlocksImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gram,
                          ffi::Buffer<ffi::S32> keys,
                          ffi::Buffer<ffi::S32> cells,
                          ffi::ResultBuffer<ffi::F32> blocks,
                          int64_t num_cells) {
  Layout lay;
  if (auto e = MakeLayout(gram, keys, cells, num_cells,
                          blocks->element_count(), &lay);
      e.failure()) {
    return e;
  }
  const std::vector<int64_t> chunks = lay.Chunks();
  const float* g = gram.typed_data();
  const int64_t n_total = gram.dimensions()[0];
  float* out = blocks->typed_data();
  fairjax_native::RunTasks(
      pool, static_cast<int64_t>(chunks.size() / 3), [&](int64_t t) {
        const int64_t cell = chunks[3 * t], r0 = chunks[3 * t + 1],
                      r1 = chunks[3 * t + 2];
        if (!lay.stored[cell]) return;
        const int64_t n = lay.size(cell);
        const int32_t* key = lay.key.data() + lay.start[cell];
        for (int64_t i = r0; i < r1; ++i) {
          GatherRow(g, n_total, key, n, i, out + lay.offset[cell] + i * n);
        }
      });
  return ffi::Error::Success();
}

#if defined(__AVX512F__)
constexpr int kMicroRows = 6;  // output rows per register block (24 sums)

// Columns [c0, c0 + 64) under `mask` of kMicroRows output rows, o[r]
// pointing at row r's column c0: o[r] = sum_j k[r][j] J[entry[j]]. Every
// row is stored (the caller points rows it does not need at a scratch
// row), so the sums stay in registers.
inline void MicroBlock(const float* const* k, int64_t n, const int32_t* entry,
                       const float* j_in, int64_t d, int64_t c0,
                       const __mmask16* mask, float* const* o) {
  __m512 acc[kMicroRows][4];
  for (int r = 0; r < kMicroRows; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* x = j_in + static_cast<int64_t>(entry[j]) * d + c0;
    __m512 v[4];
    for (int q = 0; q < 4; ++q) v[q] = _mm512_maskz_loadu_ps(mask[q], x + 16 * q);
    for (int r = 0; r < kMicroRows; ++r) {
      const __m512 b = _mm512_set1_ps(k[r][j]);
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_fmadd_ps(b, v[q], acc[r][q]);
    }
  }
  for (int r = 0; r < kMicroRows; ++r)
    for (int q = 0; q < 4; ++q) _mm512_mask_storeu_ps(o[r] + 16 * q, mask[q], acc[r][q]);
}
#endif

// Rows row_entry[0 .. rows) of out, for a cell with entries entry[0 .. n):
// out[row_entry[i]] = sum_j kr[i][j] J[entry[j]].
void ApplyRows(const float* const* kr, int64_t rows, const int32_t* row_entry,
               int64_t n, const int32_t* entry, const float* j_in, int64_t d,
               float* out) {
#if defined(__AVX512F__)
  constexpr int64_t kW = 64;  // columns per pass: 4 vectors of 16
  float spare[kW];  // where a last register block's extra rows are stored
  for (int64_t c0 = 0; c0 < d; c0 += kW) {
    const int64_t w = std::min(kW, d - c0);
    __mmask16 mask[4];
    for (int q = 0; q < 4; ++q) {
      const int64_t left = std::clamp<int64_t>(w - 16 * q, 0, 16);
      mask[q] = static_cast<__mmask16>((1u << left) - 1u);
    }
    for (int64_t i = 0; i < rows; i += kMicroRows) {
      const float* k[kMicroRows];
      float* o[kMicroRows];
      for (int r = 0; r < kMicroRows; ++r) {
        const bool live = i + r < rows;
        k[r] = kr[live ? i + r : i];
        o[r] = live ? out + static_cast<int64_t>(row_entry[i + r]) * d + c0
                    : spare;
      }
      MicroBlock(k, n, entry, j_in, d, c0, mask, o);
    }
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    float* o = out + static_cast<int64_t>(row_entry[i]) * d;
    for (int64_t c = 0; c < d; ++c) o[c] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float* x = j_in + static_cast<int64_t>(entry[j]) * d;
      const float kij = kr[i][j];
      for (int64_t c = 0; c < d; ++c) o[c] = kij * x[c] + o[c];
    }
  }
#endif
}

ffi::Error GramApplyImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gram,
                         ffi::Buffer<ffi::S32> keys, ffi::Buffer<ffi::S32> cells,
                         ffi::Buffer<ffi::F32> blocks, ffi::Buffer<ffi::F32> j,
                         ffi::ResultBuffer<ffi::F32> out, int64_t num_cells) {
  Layout lay;
  if (auto e = MakeLayout(gram, keys, cells, num_cells, blocks.element_count(),
                          &lay);
      e.failure()) {
    return e;
  }
  const auto jd = j.dimensions();
  const int64_t m = keys.element_count();
  const auto od = out->dimensions();
  if (jd.size() != 2 || jd[0] != m || od.size() != 2 || od[0] != m ||
      od[1] != jd[1]) {
    return ffi::Error::InvalidArgument(
        "gram_coupling: J and the result must be [M, d] with M = len(keys)");
  }
  const int64_t d = jd[1];
  float* o = out->typed_data();
  for (int32_t a : lay.outside) std::memset(o + a * d, 0, d * sizeof(float));
  const std::vector<int64_t> chunks = lay.Chunks();
  const float* g = gram.typed_data();
  const float* b = blocks.typed_data();
  const int64_t n_total = gram.dimensions()[0];
  fairjax_native::RunTasks(
      pool, static_cast<int64_t>(chunks.size() / 3), [&](int64_t t) {
        const int64_t cell = chunks[3 * t], r0 = chunks[3 * t + 1],
                      r1 = chunks[3 * t + 2];
        const int64_t n = lay.size(cell);
        const int32_t* key = lay.key.data() + lay.start[cell];
        const int32_t* entry = lay.entry.data() + lay.start[cell];
        std::vector<float> scratch;  // the rows of a block not stored
        const float* kr[kRowsPerTask];
        if (lay.stored[cell]) {
          for (int64_t i = r0; i < r1; ++i) kr[i - r0] = b + lay.offset[cell] + i * n;
        } else {
          scratch.resize((r1 - r0) * n);
          for (int64_t i = r0; i < r1; ++i) {
            GatherRow(g, n_total, key, n, i, scratch.data() + (i - r0) * n);
            kr[i - r0] = scratch.data() + (i - r0) * n;
          }
        }
        ApplyRows(kr, r1 - r0, entry + r0, n, entry, j.typed_data(), d, o);
      });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FairjaxGramBlocks, GramBlocksImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("num_cells"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FairjaxGramApply, GramApplyImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("num_cells"));
