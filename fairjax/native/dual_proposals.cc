// bfloat16 proposals of the exact dual top-K: the k2 best items per query.
//
// For queries u_b (float32 [B, d]) and local items v_i (float32 [n, d])
// with a float32 bias_i (-mu[g_i]; -inf for padding and groups outside
// `allowed`), the proposal score is
//   s'_bi = fl32( sum_j bf16(u_bj) bf16(v_ij) ) + bias_i,
// the products exact in float32 and summed in float32 (in the hardware's
// order), the bias added in float32. bf16(x) is zero for |x| < 2^-126 and
// x rounded to nearest even otherwise (as VCVTNE2PS2BF16 does). The kernel returns, per query, k2 items with the largest
// s': every item left out scores s' <= the smallest returned.
// Items whose global id is in the query's sorted exclusion row are never
// proposed. Also returned: max_i |v_i|^2 and max_i |v_i - bf16(v_i)|^2
// over the items with a finite bias (rounded up to float32), the item
// statistics of the proposal bound (`fairjax.retrieval.blocked`).
//
// The GEMM never leaves the cache: items are taken 32 at a time (converted
// to bfloat16 in the AMX "VNNI" layout, 2 x ceil(d / 32) tiles of 1 KB);
// each pair of 16-query tiles is multiplied with them by AMX TDPBF16PS
// into four 16 x 16 float32 tiles, which are stored to a 4 KB buffer,
// biased and compared with each query's running k2-th score: a score above
// it goes into the query's min-heap. Without AMX (not compiled for it, the
// OS refuses the tile state, or mode = 1) the same tiles are computed by a
// plain loop (the same products; sums in another order, which the bound
// allows). The items are cut into ranges of 32,768 (tasks on XLA's
// thread pool, taken by whichever thread is free); each task keeps its own
// heaps and raises a shared per-query bound, the largest k2-th score any
// task has seen, below which no task proposes (such an item scores at most
// the final k2-th). The heaps are then merged. Items strictly above the
// final k2-th score are always returned; which of the items tied with it
// fill the last slots may depend on timing, which the exact rescoring
// does not see (`fairjax.retrieval.blocked`). Queries are scanned 4,096
// at a time (the heaps take tasks x 4,096 x k2 entries at most).
// Denormals are flushed to zero while it runs, as XLA's CPU code does.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AMX_TILE__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#define FAIRJAX_AMX 1
#endif

#include "run_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kPanel = 32;  // items per panel: two 16-item tiles
constexpr int64_t kItemsPerTask = 32768;
constexpr int64_t kMaxTasks = 64;
// Queries scanned at once (a multiple of 32): bounds the heaps' memory,
// tasks x chunk x k2 entries, for large batches.
constexpr int64_t kQueriesPerChunk = 4096;

// float32 -> bfloat16 bits, round to nearest even; a subnormal input
// becomes a signed zero (as VCVTNE2PS2BF16 and the tile unit read it).
inline uint16_t ToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7F800000u) == 0) {
    return static_cast<uint16_t>((bits >> 16) & 0x8000u);
  }
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float FromBf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

#ifdef FAIRJAX_AMX
struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool AmxPermitted() {
  // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: once per process.
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}
#endif

struct Scan {
  const float* q;         // [B, d]
  const float* v;         // [n, d]
  const float* bias;      // [n]
  const int32_t* excl;    // [B, E] sorted
  int64_t b, d, n, e, k2, kb;  // kb: 32-wide K blocks
  int64_t bp;             // B rounded up to 32
  int32_t id_offset;
  bool amx;
  int64_t c0 = 0, c1 = 0;  // the query chunk being scanned
  std::vector<uint16_t> qp;  // [bp, 32 kb] bfloat16 queries
  float* out_s;           // [B, k2]
  int32_t* out_i;         // [B, k2]

  void PackQueries() {
    const int64_t kp = 32 * kb;
    qp.assign(bp * kp, 0);
    for (int64_t r = 0; r < b; ++r) {
      for (int64_t j = 0; j < d; ++j) qp[r * kp + j] = ToBf16(q[r * d + j]);
    }
  }

  // Items [p0, p0 + 32) -> tiles[nt][kb][pair][item][2]; their biases.
  // Returns false when no item of the panel has a finite bias.
  bool PackPanel(int64_t p0, uint16_t* tiles, float* pb, double& vmax2,
                 double& emax2) {
    bool any = false;
    for (int64_t i = 0; i < kPanel; ++i) {
      pb[i] = p0 + i < n ? bias[p0 + i] : kNegInf;
      any |= pb[i] != kNegInf;
    }
    if (!any) return false;
    std::memset(tiles, 0, 2 * kb * 512 * sizeof(uint16_t));
    for (int64_t i = 0; i < kPanel && p0 + i < n; ++i) {
      const float* row = v + (p0 + i) * d;
      uint16_t* t = tiles + (i / 16) * kb * 512 + (i % 16) * 2;
      const bool count = pb[i] != kNegInf;
#ifdef __AVX512BF16__
      PackRowVector(row, t, count, vmax2, emax2);
#else
      double s2 = 0, e2 = 0;
      for (int64_t j = 0; j < d; ++j) {
        const uint16_t h = ToBf16(row[j]);
        // block j / 32, pair (j % 32) / 2, element j % 2
        t[(j / 32) * 512 + ((j % 32) / 2) * 32 + (j % 2)] = h;
        const double x = row[j], err = x - static_cast<double>(FromBf16(h));
        s2 += x * x;
        e2 += err * err;
      }
      if (count) {
        vmax2 = std::max(vmax2, s2);
        emax2 = std::max(emax2, e2);
      }
#endif
    }
    return true;
  }

#ifdef __AVX512BF16__
  // One item row into its tile columns: per 32-wide block, 32 floats ->
  // 16 bfloat16 pairs (VCVTNE2PS2BF16: nearest even, subnormals zero),
  // scattered 64 bytes apart (one pair per tile row). With `count`, the
  // float32 |v|^2 and |v - bf16(v)|^2 (their rounding is far inside the
  // bound's 2^-10 margin).
  void PackRowVector(const float* row, uint16_t* t, bool count,
                     double& vmax2, double& emax2) const {
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1,
                         0),
        _mm512_set1_epi32(16));
    const __m512 tiny = _mm512_set1_ps(std::numeric_limits<float>::min());
    __m512 s2 = _mm512_setzero_ps(), e2 = _mm512_setzero_ps();
    for (int64_t k = 0; k < kb; ++k) {
      __m512 half[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t j0 = 32 * k + 16 * h;
        const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, d - j0));
        const __mmask16 m = static_cast<__mmask16>((1u << left) - 1u);
        __m512 x = _mm512_maskz_loadu_ps(m, row + std::min(j0, d));
        const __mmask16 sub = _mm512_cmp_ps_mask(_mm512_abs_ps(x), tiny,
                                                 _CMP_LT_OQ);
        x = _mm512_mask_mov_ps(x, sub, _mm512_setzero_ps());
        half[h] = x;
        if (count) {
          // x rounded to bfloat16, in float32: nearest even on the bits.
          const __m512i b = _mm512_castps_si512(x);
          const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16),
                                               _mm512_set1_epi32(1));
          const __m512i r = _mm512_and_si512(
              _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)),
                               odd),
              _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
          const __m512 e = _mm512_sub_ps(x, _mm512_castsi512_ps(r));
          const __m512 xo = _mm512_maskz_loadu_ps(m, row + std::min(j0, d));
          s2 = _mm512_fmadd_ps(xo, xo, s2);
          e2 = _mm512_fmadd_ps(e, e, e2);
          // flushed subnormals: their whole value is the error
          const __m512 f = _mm512_sub_ps(xo, x);
          e2 = _mm512_fmadd_ps(f, f, e2);
        }
      }
      const __m512bh pairs = _mm512_cvtne2ps_pbh(half[1], half[0]);
      _mm512_i32scatter_epi32(reinterpret_cast<int32_t*>(t + k * 512), rows,
                              reinterpret_cast<__m512i>(pairs), 4);
    }
    if (count) {
      vmax2 = std::max<double>(vmax2, _mm512_reduce_add_ps(s2));
      emax2 = std::max<double>(emax2, _mm512_reduce_add_ps(e2));
    }
  }
#endif

  // c[mi][nt][r][i]: scores of queries 16 (m + mi) + r and items nt 16 + i.
  void TilesPlain(int64_t m, const uint16_t* tiles, float* c) const {
    const int64_t kp = 32 * kb;
    for (int64_t mi = 0; mi < 2; ++mi) {
      for (int64_t nt = 0; nt < 2; ++nt) {
        float* out = c + (mi * 2 + nt) * 256;
        for (int64_t r = 0; r < 16; ++r) {
          const uint16_t* a = qp.data() + (16 * (m + mi) + r) * kp;
          for (int64_t i = 0; i < 16; ++i) {
            float s = 0.0f;
            for (int64_t k = 0; k < kb; ++k) {
              const uint16_t* t = tiles + (nt * kb + k) * 512 + i * 2;
              for (int64_t p = 0; p < 16; ++p) {
                s += FromBf16(a[32 * k + 2 * p]) * FromBf16(t[p * 32]);
                s += FromBf16(a[32 * k + 2 * p + 1]) * FromBf16(t[p * 32 + 1]);
              }
            }
            out[r * 16 + i] = s;
          }
        }
      }
    }
  }

#ifdef FAIRJAX_AMX
  void TilesAmx(int64_t m, const uint16_t* tiles, float* c) const {
    const int64_t kp = 32 * kb;
    const uint16_t* a0 = qp.data() + 16 * m * kp;
    const uint16_t* a1 = a0 + 16 * kp;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k = 0; k < kb; ++k) {
      _tile_loadd(4, a0 + 32 * k, kp * 2);
      _tile_loadd(5, a1 + 32 * k, kp * 2);
      _tile_loadd(6, tiles + k * 512, 64);
      _tile_loadd(7, tiles + (kb + k) * 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    _tile_stored(1, c + 256, 64);
    _tile_stored(2, c + 512, 64);
    _tile_stored(3, c + 768, 64);
  }
#endif

  // The four tiles of query tiles m, m + 1: AMX where it runs.
  void Tiles(int64_t m, const uint16_t* tiles, float* c) const {
#ifdef FAIRJAX_AMX
    if (amx) return TilesAmx(m, tiles, c);
#endif
    TilesPlain(m, tiles, c);
  }

  // Bit i set where s[i] + bias[i] > t (i < 16).
  static uint32_t Above(const float* s, const float* bias, float t) {
#ifdef __AVX512F__
    const __m512 x = _mm512_add_ps(_mm512_loadu_ps(s), _mm512_loadu_ps(bias));
    return _mm512_cmp_ps_mask(x, _mm512_set1_ps(t), _CMP_GT_OQ);
#else
    uint32_t mask = 0;
    for (int i = 0; i < 16; ++i) {
      mask |= static_cast<uint32_t>(s[i] + bias[i] > t) << i;
    }
    return mask;
#endif
  }

  bool Excluded(int64_t row, int32_t id) const {
    if (e == 0) return false;
    const int32_t* x = excl + row * e;
    return std::binary_search(x, x + e, id);
  }

  // One task's heaps: per query, up to k2 (score, id) of its item range.
  struct Part {
    std::vector<float> s;
    std::vector<int32_t> id;
    std::vector<int64_t> cnt;
    double vmax2 = 0, emax2 = 0;
  };
  std::vector<Part> parts;
  // [b] float bits: a lower bound on each query's final k2-th score (the
  // largest full heap's root of any task so far); an item at or below it
  // cannot be needed, whichever task meets it.
  std::unique_ptr<std::atomic<uint32_t>[]> shared;

  float Shared(int64_t row) const {
    const uint32_t bits = shared[row].load(std::memory_order_relaxed);
    float t;
    std::memcpy(&t, &bits, 4);
    return t;
  }

  void Raise(int64_t row, float t) {
    uint32_t bits;
    std::memcpy(&bits, &t, 4);
    uint32_t cur = shared[row].load(std::memory_order_relaxed);
    for (;;) {
      float c;
      std::memcpy(&c, &cur, 4);
      if (!(t > c)) return;
      if (shared[row].compare_exchange_weak(cur, bits,
                                            std::memory_order_relaxed)) {
        return;
      }
    }
  }

  // Items [p_lo, p_hi) (multiples of 32) against every query, into part.
  void Range(int64_t p_lo, int64_t p_hi, Part& part) {
    const int64_t rows = c1 - c0;  // local row lr = query c0 + lr
    part.s.assign(rows * k2, kNegInf);
    part.id.assign(rows * k2, -1);
    part.cnt.assign(rows, 0);
    std::vector<float> thr(rows, kNegInf);  // this task's own k2-th score
    alignas(64) uint16_t tiles[2 * 4 * 512];  // kb <= 4 (d <= 128)
    alignas(64) float c[4 * 256];
    alignas(64) float pb[kPanel];

    auto insert = [&](int64_t row, float sc, int32_t id) {
      float* h = part.s.data() + row * k2;  // row: local
      int32_t* hid = part.id.data() + row * k2;
      int64_t& n_in = part.cnt[row];
      if (n_in < k2) {
        h[n_in] = sc;
        hid[n_in] = id;
        if (++n_in < k2) return;
        // full: heapify, min at the root
        for (int64_t x = k2 / 2 - 1; x >= 0; --x) SiftDown(h, hid, x, k2);
      } else {
        h[0] = sc;
        hid[0] = id;
        SiftDown(h, hid, 0, k2);
      }
      thr[row] = h[0];
      Raise(row, h[0]);
    };

#ifdef FAIRJAX_AMX
    if (amx) {
      TileConfig cfg;
      for (int t = 0; t < 8; ++t) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
      }
      _tile_loadconfig(&cfg);
    }
#endif
    for (int64_t p0 = p_lo; p0 < p_hi; p0 += kPanel) {
      if (!PackPanel(p0, tiles, pb, part.vmax2, part.emax2)) continue;
      const int64_t m_end = std::min(bp, c0 + kQueriesPerChunk) / 16;
      for (int64_t m = c0 / 16; m < m_end; m += 2) {
        Tiles(m, tiles, c);
        for (int64_t mi = 0; mi < 2; ++mi) {
          for (int64_t r = 0; r < 16; ++r) {
            const int64_t query = 16 * (m + mi) + r;
            if (query >= c1) break;
            const int64_t row = query - c0;
            float t = std::max(thr[row], Shared(row));
            for (int64_t nt = 0; nt < 2; ++nt) {
              const float* sc = c + (mi * 2 + nt) * 256 + r * 16;
              const float* bb = pb + nt * 16;
              uint32_t mask = Above(sc, bb, t);
              while (mask) {
                const int i = __builtin_ctz(mask);
                mask &= mask - 1;
                const float x = sc[i] + bb[i];
                if (!(x > t)) continue;  // the threshold rose
                const int32_t id =
                    id_offset + static_cast<int32_t>(p0 + nt * 16 + i);
                if (Excluded(query, id)) continue;
                insert(row, x, id);
                t = std::max(thr[row], Shared(row));
              }
            }
          }
        }
      }
    }
#ifdef FAIRJAX_AMX
    if (amx) _tile_release();
#endif
  }

  // The k2 best of the parts' entries for queries [r0, r1) of the
  // chunk, sorted by (score desc, id asc), padded with (-inf, -1).
  void Merge(int64_t r0, int64_t r1) {
    std::vector<std::pair<float, int32_t>> all;
    auto before = [](const std::pair<float, int32_t>& x,
                     const std::pair<float, int32_t>& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    };
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t lr = row - c0;
      all.clear();
      for (const Part& part : parts) {
        for (int64_t x = 0; x < part.cnt[lr]; ++x) {
          all.emplace_back(part.s[lr * k2 + x], part.id[lr * k2 + x]);
        }
      }
      const int64_t len = std::min<int64_t>(k2, all.size());
      std::partial_sort(all.begin(), all.begin() + len, all.end(), before);
      for (int64_t x = 0; x < k2; ++x) {
        out_s[row * k2 + x] = x < len ? all[x].first : kNegInf;
        out_i[row * k2 + x] = x < len ? all[x].second : -1;
      }
    }
  }

  // Min-heap of len entries on (score asc, id desc): the root is the
  // entry a better item replaces first.
  static void SiftDown(float* h, int32_t* hid, int64_t x, int64_t len) {
    auto worse = [&](int64_t a, int64_t c) {
      return h[a] < h[c] || (h[a] == h[c] && hid[a] > hid[c]);
    };
    while (true) {
      const int64_t l = 2 * x + 1;
      int64_t best = x;
      if (l < len && worse(l, best)) best = l;
      if (l + 1 < len && worse(l + 1, best)) best = l + 1;
      if (best == x) return;
      std::swap(h[x], h[best]);
      std::swap(hid[x], hid[best]);
      x = best;
    }
  }
};

ffi::Error DualProposalsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                             ffi::Buffer<ffi::F32> v,
                             ffi::Buffer<ffi::F32> bias,
                             ffi::Buffer<ffi::S32> exclude,
                             ffi::Buffer<ffi::S32> id_offset,
                             ffi::ResultBuffer<ffi::F32> out_s,
                             ffi::ResultBuffer<ffi::S32> out_i,
                             ffi::ResultBuffer<ffi::F32> out_stats,
                             int64_t mode) {
  fairjax_native::ScopedFlushDenormals flush;
  const auto qd = q.dimensions(), vd = v.dimensions(), xd = exclude.dimensions();
  const auto sd = out_s->dimensions();
  if (qd.size() != 2 || vd.size() != 2 || qd[1] != vd[1] ||
      bias.element_count() != vd[0] || xd.size() != 2 || xd[0] != qd[0] ||
      sd.size() != 2 || sd[0] != qd[0] || id_offset.element_count() != 1 ||
      out_stats->element_count() != 2) {
    return ffi::Error::InvalidArgument(
        "dual_proposals: q must be [B, d], v [n, d], bias [n], exclude "
        "[B, E], id_offset [1], and the results [B, k2], [B, k2], [2]");
  }
  Scan scan;
  scan.q = q.typed_data();
  scan.v = v.typed_data();
  scan.bias = bias.typed_data();
  scan.excl = exclude.typed_data();
  scan.b = qd[0];
  scan.d = qd[1];
  scan.n = vd[0];
  scan.e = xd[1];
  scan.k2 = sd[1];
  scan.kb = (scan.d + 31) / 32;
  if (scan.kb > 4 || scan.k2 < 1) {
    return ffi::Error::InvalidArgument(
        "dual_proposals: needs 1 <= d <= 128 and k2 >= 1, got d = " +
        std::to_string(scan.d) + ", k2 = " + std::to_string(scan.k2));
  }
  scan.bp = (scan.b + 31) / 32 * 32;
  scan.id_offset = id_offset.typed_data()[0];
  scan.out_s = out_s->typed_data();
  scan.out_i = out_i->typed_data();
#ifdef FAIRJAX_AMX
  scan.amx = mode == 0 && AmxPermitted();
#else
  scan.amx = false;
#endif
  scan.PackQueries();
  // Item ranges of about kItemsPerTask (whole panels), taken by whichever
  // threads are free: two shards' calls on two cores share the work.
  const int64_t panels = (scan.n + kPanel - 1) / kPanel;
  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(kMaxTasks, (scan.n + kItemsPerTask - 1) /
                                          kItemsPerTask));
  scan.parts.resize(tasks);
  scan.shared.reset(new std::atomic<uint32_t>[kQueriesPerChunk]);
  uint32_t neg;
  std::memcpy(&neg, &kNegInf, 4);
  double vmax2 = 0, emax2 = 0;
  const int64_t chunks = std::max<int64_t>(
      1, (scan.b + kQueriesPerChunk - 1) / kQueriesPerChunk);
  for (int64_t c0 = 0; c0 < chunks * kQueriesPerChunk;
       c0 += kQueriesPerChunk) {
    scan.c0 = c0;
    scan.c1 = std::min(scan.b, c0 + kQueriesPerChunk);
    for (int64_t r = 0; r < kQueriesPerChunk; ++r) scan.shared[r].store(neg);
    fairjax_native::RunTasks(pool, tasks, [&scan, panels, tasks](int64_t t) {
      scan.Range(kPanel * (panels * t / tasks),
                 kPanel * (panels * (t + 1) / tasks), scan.parts[t]);
    });
    constexpr int64_t kRowsPerMerge = 64;
    fairjax_native::RunTasks(
        pool, (scan.c1 - c0 + kRowsPerMerge - 1) / kRowsPerMerge,
        [&scan, c0](int64_t t) {
          scan.Merge(c0 + t * kRowsPerMerge,
                     std::min(scan.c1, c0 + (t + 1) * kRowsPerMerge));
        });
    for (const auto& part : scan.parts) {
      vmax2 = std::max(vmax2, part.vmax2);
      emax2 = std::max(emax2, part.emax2);
    }
  }
  // Rounded up to float32: bounds, never below the double values.
  auto up = [](double x) {
    float f = static_cast<float>(x);
    return static_cast<double>(f) < x
               ? std::nextafter(f, std::numeric_limits<float>::infinity())
               : f;
  };
  out_stats->typed_data()[0] = up(vmax2);
  out_stats->typed_data()[1] = up(emax2);
  return ffi::Error::Success();
}

}  // namespace

// 1 when the AMX tiles are compiled in and the OS grants their state to
// this process (what mode 0 uses), else 0.
extern "C" int FairjaxDualProposalsAmx() {
#ifdef FAIRJAX_AMX
  return AmxPermitted() ? 1 : 0;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(FairjaxDualProposals, DualProposalsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("mode"));
