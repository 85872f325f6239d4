"""Retrieval benchmark: sharded exact dual top-K vs baselines, same run.

Measures on a synthetic catalog already sharded over `shards` devices:
  * dual_topk (FairSync query [u; -mu]): queries/s and the score-FLOP rate
    2 N d per query, against a same-run 4096 x 4096 float32 SGEMM in JAX
    and against the same blocked GEMMs without any selection (the three
    timed in interleaved rounds: the selection's share of the time);
  * plain top-K without the mu term (the mu-term overhead);
  * FairSync's pace-repair retrieval: two groups allowed on the catalog
    laid out by group (`shard_items_by_group`, `sharded_topk(allowed=)`),
    against the full dual top-K;
  * a straightforward jitted block-and-merge (lax.top_k over running list +
    whole block, every block);
  * faiss-cpu IndexFlatIP on the augmented vectors [v; A] / [u; -mu], when
    `faiss` imports (optional dependency `fairjax[bench]`).
On CPU, emulate devices before JAX starts, e.g.
  XLA_FLAGS=--xla_force_host_platform_device_count=2
Progress goes to stderr; `run` returns the figures as a dict.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fairjax.ops import bf16_proposals
from fairjax.retrieval import blocked, sharded


def _log(msg: str) -> None:
  print(f"[bench.retrieval] {msg}", file=sys.stderr, flush=True)


def _time(fn, repeats: int = 2) -> float:
  """Best wall time of `repeats` calls after one warm-up (compile) call."""
  return _time_interleaved([fn], repeats)[0]


def _time_interleaved(fns, rounds: int = 5) -> list[float]:
  """Best wall time of each of `fns` over `rounds` rounds that call them in
  turn (after one warm-up call each): drift in the machine's load reaches
  every function alike, which sequential timing does not give."""
  for fn in fns:
    jax.block_until_ready(fn())
  best = [float("inf")] * len(fns)
  for _ in range(rounds):
    for j, fn in enumerate(fns):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      best[j] = min(best[j], time.perf_counter() - t0)
  return best


def _gemm_only_fn(mesh, block: int, dtype=jnp.float32):
  """The same blocked GEMMs (+ mu bias) with no top-K: the loop's ceiling
  (dtype: the operands', as `blocked.block_scores`)."""
  from jax import lax  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  def local(q, emb, grp, mu):
    def body(i, acc):
      v = lax.dynamic_slice_in_dim(emb, i * block, block)
      g = lax.dynamic_slice_in_dim(grp, i * block, block)
      s = blocked.block_scores(q, v, -mu[jnp.maximum(g, 0)], dtype)
      return acc + s[0, 0]
    return lax.fori_loop(0, emb.shape[0] // block, body, 0.0)[None]

  return jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(sharded.AXIS), P(sharded.AXIS), P()),
      out_specs=P(sharded.AXIS), check_vma=False))


def _exact_reference(v, grp, u, mu, k, items_per_step: int = 50_000):
  """Top-k of `blocked.exact_scores_numpy` (score desc, id asc): the
  values the bf16 path must return bit for bit."""
  best_s = np.full((u.shape[0], 0), -np.inf, np.float32)
  best_i = np.zeros((u.shape[0], 0), np.int64)
  for lo in range(0, v.shape[0], items_per_step):
    hi = lo + items_per_step
    s = blocked.exact_scores_numpy(u, v[lo:hi], -mu[grp[lo:hi]])
    ids = np.broadcast_to(np.arange(lo, lo + s.shape[1]), s.shape)
    all_s = np.concatenate([best_s, s], 1)
    all_i = np.concatenate([best_i, ids], 1)
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    best_s = np.take_along_axis(all_s, order, 1)
    best_i = np.take_along_axis(all_i, order, 1)
  return best_s, best_i


def _faiss_search(v, grp, u, mu, k, num_groups):
  # The OpenBLAS inside faiss-cpu's wheels takes recent Xeons (Sapphire
  # Rapids) for a generic "Prescott" core and runs its slowest kernels
  # (IndexFlatIP 3x slower here); unless the user chose a core, use the
  # AVX2 kernels. It is read when faiss loads its BLAS, after NumPy's.
  os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
  try:
    import faiss  # noqa: PLC0415
  except ImportError:
    return None
  keys = np.concatenate([v, np.eye(num_groups, dtype=np.float32)[grp]], 1)
  queries = np.concatenate([u, np.broadcast_to(-mu, (u.shape[0],
                                                     num_groups))], 1)
  index = faiss.IndexFlatIP(keys.shape[1])
  index.add(np.ascontiguousarray(keys))
  queries = np.ascontiguousarray(queries, np.float32)
  index.search(queries[:8], k)
  t0 = time.perf_counter()
  _, ids = index.search(queries, k)
  return (time.perf_counter() - t0, ids, faiss.omp_get_max_threads(),
          faiss.__version__)


def run(num_items: int = 1_000_000, dim: int = 64, num_groups: int = 18,
        k: int = 50, num_queries: int = 1024, shards: int = 2,
        seed: int = 0, sgemm_size: int = 4096) -> dict:
  """Runs the benchmark; returns its figures (see module doc).

  Keys: devices, shards, block, sgemm_gflops, dual_s, dual_qps,
  dual_gflops, dual_vs_sgemm, plain_s, mu_zero_s, mu_overhead (cost of the
  mu term on the same scores: dual path with mu = 0 vs plain), dual_vs_plain
  (with the benchmark's random mu, which also changes which items win and so
  the pruning), gemm_loop_s (the same blocked GEMMs without any top-K: the
  ceiling), dual_vs_gemm_loop, selection_s (dual_s - gemm_loop_s: what the
  top-K selection adds to the GEMMs), selection_share (selection_s /
  dual_s), selection_over_gemm (selection_s / gemm_loop_s; the target is at
  most about 2/3), repair_s / repair_vs_dual /
  repair_item_share (the pace repair's second retrieval: two groups allowed
  on the catalog laid out by group, and the share of items they hold),
  blockmerge_s, speedup_vs_blockmerge,
  exact_vs_blockmerge, faiss_s / faiss_qps / speedup_vs_faiss /
  faiss_agreement / faiss_threads (None without faiss). The same dual top-K
  with precision="bf16" (bfloat16 proposals, exact rescoring): bf16_s,
  bf16_qps, bf16_vs_sgemm, bf16_gemm_loop_s (the bf16 GEMMs alone),
  bf16_over_gemm_loop and bf16_selection_over_gemm (against the float32
  GEMM loop), bf16_selection_over_bf16_gemm (against its own GEMMs),
  bf16_exact (its first 16 rows equal a NumPy run of `exact_scores`'
  formula, scores and ids), bf16_ids_equal_fp32 / bf16_set_agreement_fp32
  (against the float32 path: they differ only where scores are within
  float32 rounding), bf16_speedup_vs_faiss. bf16_proposal_impl: who made
  the bf16 proposals ("native": the AMX kernel of
  `fairjax.ops.bf16_proposals`, on a CPU with AMX-BF16; "jax": XLA's
  bfloat16 GEMM and the blocked scan); bf16_amx: whether its AMX tiles ran; bf16_xla_s / bf16_xla_vs_sgemm /
  bf16_xla_speedup_vs_faiss: the "jax" proposals in the same run (equal to
  bf16_s when those are the default).
  """
  devs = jax.devices()
  shards = min(shards, len(devs))
  mesh = jax.make_mesh((shards,), (sharded.AXIS,), devices=devs[:shards],
                       axis_types=(jax.sharding.AxisType.Explicit,))
  _log(f"{len(devs)} devices, mesh {shards} shards; N={num_items} d={dim} "
       f"G={num_groups} K={k} B={num_queries}")
  rng = np.random.default_rng(seed)
  v = rng.standard_normal((num_items, dim), dtype=np.float32)
  grp = rng.integers(0, num_groups, num_items).astype(np.int32)
  u = rng.standard_normal((num_queries, dim), dtype=np.float32)
  mu = (0.5 * rng.standard_normal(num_groups)).astype(np.float32)
  t0 = time.perf_counter()
  items = sharded.shard_items(v, grp, mesh, num_groups=num_groups)
  jax.block_until_ready(items.emb)
  _log(f"placed items in {time.perf_counter() - t0:.2f}s (block "
       f"{items.block}, padded N {items.emb.shape[0]})")
  q = sharded.replicate(u, mesh)
  mu_r = sharded.replicate(mu, mesh)
  kw = dict(mesh=mesh, k=k, block=items.block)
  flops = 2.0 * num_items * dim * num_queries

  # SGEMM, the dual top-K and the same blocked GEMMs without selection are
  # timed in interleaved rounds (best of 3 each), so the ratios between
  # them see the same machine load.
  n_mm = sgemm_size
  a = jax.random.normal(jax.random.PRNGKey(0), (n_mm, n_mm), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n_mm, n_mm), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  gemm_fn = _gemm_only_fn(mesh, items.block)
  gemm16_fn = _gemm_only_fn(mesh, items.block, jnp.bfloat16)
  _log(f"SGEMM {n_mm}^2, dual_topk (fp32, bf16) and the GEMM-only loops (fp32, "
       "bf16), 3 interleaved rounds ...")
  t_mm, t_dual, t_gemm, t_bf16, t_gemm16 = _time_interleaved([
      lambda: matmul(a, b),
      lambda: sharded.sharded_topk(items.emb, items.group, q, mu_r, **kw),
      lambda: gemm_fn(q, items.emb, items.group, mu_r),
      lambda: sharded.sharded_topk(items.emb, items.group, q, mu_r,
                                   precision="bf16", **kw),
      lambda: gemm16_fn(q, items.emb, items.group, mu_r)], rounds=3)
  impl = bf16_proposals.resolve("auto")
  t_bf16_xla = t_bf16
  if impl == "native":  # the XLA scan's proposals, for the side-by-side
    _log("dual_topk precision=bf16 with the XLA scan's proposals ...")
    t_bf16_xla, t_bf16 = _time_interleaved([
        lambda: sharded.sharded_topk(items.emb, items.group, q, mu_r,
                                     precision="bf16", proposal_impl="jax",
                                     **kw),
        lambda: sharded.sharded_topk(items.emb, items.group, q, mu_r,
                                     precision="bf16", **kw)], rounds=3)
  sgemm = 2.0 * n_mm ** 3 / t_mm
  _log(f"SGEMM {sgemm / 1e9:.1f} GFLOP/s; dual_topk {t_dual:.3f}s; blocked "
       f"GEMM only (no top-K) {t_gemm:.3f}s; dual_topk precision=bf16 "
       f"{t_bf16:.3f}s ({impl} proposals; XLA scan {t_bf16_xla:.3f}s); "
       f"bf16 GEMM only {t_gemm16:.3f}s")
  # The mu overhead compares two near-equal times: interleaved rounds.
  mu0 = sharded.replicate(np.zeros(num_groups, np.float32), mesh)
  t_plain, t_mu0 = _time_interleaved([
      lambda: sharded.sharded_topk(items.emb, items.group, q, None, **kw),
      lambda: sharded.sharded_topk(items.emb, items.group, q, mu0, **kw)])
  _log(f"plain top-K {t_plain:.3f}s")
  _log(f"dual path with mu = 0 {t_mu0:.3f}s (best of 5 interleaved rounds)")
  # The pace repair's second retrieval (FairSync): the catalog laid out by
  # group on every shard, only two of the groups allowed; the other blocks
  # are skipped.
  by_group, _ = sharded.shard_items_by_group(v, grp, mesh)
  allowed = np.zeros(num_groups, bool)
  allowed[:2] = True
  allowed_r = sharded.replicate(allowed, mesh)
  t_repair = _time(lambda: sharded.sharded_topk(
      by_group.emb, by_group.group, q, None, None, allowed_r, **kw))
  _log(f"repair retrieval (2 of {num_groups} groups, catalog by group) "
       f"{t_repair:.3f}s")
  t_base = _time(lambda: sharded.sharded_topk(
      items.emb, items.group, q, mu_r, prune=False, **kw), repeats=1)
  _log(f"block-and-merge baseline {t_base:.3f}s")
  ours = sharded.sharded_topk(items.emb, items.group, q, mu_r, **kw)
  base = sharded.sharded_topk(items.emb, items.group, q, mu_r, prune=False,
                              **kw)
  ids = np.asarray(ours[1])
  bf_s, bf_i = (np.asarray(x) for x in sharded.sharded_topk(
      items.emb, items.group, q, mu_r, precision="bf16", **kw))
  n_check = min(16, num_queries)
  _log(f"bf16 result vs a NumPy run of exact_scores' formula ({n_check} "
       "queries) ...")
  ref_s, ref_i = _exact_reference(v, grp, u[:n_check], mu, k)
  out = dict(
      devices=len(devs), shards=shards, block=items.block,
      num_items=num_items, dim=dim, num_groups=num_groups, k=k,
      num_queries=num_queries,
      sgemm_gflops=sgemm / 1e9,
      dual_s=t_dual, dual_qps=num_queries / t_dual,
      dual_gflops=flops / t_dual / 1e9, dual_vs_sgemm=flops / t_dual / sgemm,
      plain_s=t_plain, mu_zero_s=t_mu0,
      mu_overhead=t_mu0 / t_plain - 1.0,
      dual_vs_plain=t_dual / t_plain - 1.0,
      gemm_loop_s=t_gemm, dual_vs_gemm_loop=t_gemm / t_dual,
      selection_s=t_dual - t_gemm, selection_share=1.0 - t_gemm / t_dual,
      selection_over_gemm=(t_dual - t_gemm) / t_gemm,
      repair_s=t_repair, repair_vs_dual=t_repair / t_dual,
      repair_item_share=float(np.mean(allowed[grp])),
      blockmerge_s=t_base, speedup_vs_blockmerge=t_base / t_dual,
      exact_vs_blockmerge=bool(np.array_equal(ids, np.asarray(base[1]))),
      bf16_proposal_impl=impl, bf16_amx=bf16_proposals.amx_active(),
      bf16_xla_s=t_bf16_xla,
      bf16_xla_vs_sgemm=flops / t_bf16_xla / sgemm,
      bf16_s=t_bf16, bf16_qps=num_queries / t_bf16,
      bf16_vs_sgemm=flops / t_bf16 / sgemm,
      bf16_gemm_loop_s=t_gemm16,
      bf16_over_gemm_loop=t_bf16 / t_gemm,
      bf16_selection_over_gemm=(t_bf16 - t_gemm) / t_gemm,
      bf16_selection_over_bf16_gemm=(t_bf16 - t_gemm16) / t_gemm16,
      bf16_exact=bool(np.array_equal(bf_s[:n_check], ref_s)
                      and np.array_equal(bf_i[:n_check], ref_i)),
      bf16_ids_equal_fp32=float(np.mean(bf_i == ids)),
      bf16_set_agreement_fp32=float(np.mean(
          [len(set(a_) & set(b_)) / k for a_, b_ in zip(bf_i, ids)])),
      faiss_s=None, faiss_qps=None, speedup_vs_faiss=None,
      bf16_speedup_vs_faiss=None, bf16_xla_speedup_vs_faiss=None,
      faiss_agreement=None, faiss_threads=None, faiss_version=None,
      faiss_openblas_core=None)
  _log("faiss IndexFlatIP ...")
  fs = _faiss_search(v, grp, u, mu, k, num_groups)
  if fs is None:
    _log("faiss not installed: skipped (pip install 'fairjax[bench]')")
  else:
    t_f, f_ids, threads, version = fs
    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, f_ids)])
    out.update(faiss_s=t_f, faiss_qps=num_queries / t_f,
               speedup_vs_faiss=t_f / t_dual,
               bf16_speedup_vs_faiss=t_f / t_bf16,
               bf16_xla_speedup_vs_faiss=t_f / t_bf16_xla,
               faiss_agreement=float(agree),
               faiss_threads=threads, faiss_version=version,
               faiss_openblas_core=os.environ["OPENBLAS_CORETYPE"])
    _log(f"faiss {t_f:.3f}s ({threads} threads), set agreement {agree:.4f}")
  _log(", ".join(f"{k_}={v_:.4g}" if isinstance(v_, float) else f"{k_}={v_}"
                 for k_, v_ in out.items()))
  return out


if __name__ == "__main__":
  run()
