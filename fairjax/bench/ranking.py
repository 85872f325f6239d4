"""Benchmark: full-ranking evaluation of every ML-1M user, JAX vs NumPy.

Ranks all 3,706 items for all 6,040 users (training items excluded) and
computes Recall/Precision/NDCG/HR/F1@20 twice: with `fairjax.metrics.
rank_metrics` (jitted, chunked `lax.top_k`) and with the brute-force NumPy
reference `fairjax.metrics.reference.rank_metrics_np` (full stable argsort),
and checks that they agree.

Data: with ML-1M under `data_dir` (or $FAIRJAX_DATA_DIR), a seeded random
80/20 split of all ratings gives the excluded (train) and relevant (test)
items; without it, a synthetic matrix of the same shape with ~4.5% density
split the same way. Scores are a seeded MF-like product P Q^T / sqrt(d)
(d = 64), float32.

Run: `python -m launch.bench --bench=ranking [--data_dir=DIR]`, or
`python -c 'from fairjax.bench.ranking import run; print(run())'`.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from fairjax.data.movielens import read_ml1m
from fairjax.errors import DataError
from fairjax.metrics import rank_metrics
from fairjax.metrics.reference import rank_metrics_np

ML1M_USERS, ML1M_ITEMS = 6040, 3706
_K = 20
_DIM = 64


def _log(msg: str) -> None:
  print(f"[bench.ranking] {msg}", file=sys.stderr, flush=True)


def _interactions(data_dir: str | None, rng: np.random.Generator):
  """(users, items, U, I, source): ML-1M pairs if available, else synthetic."""
  if data_dir is None:
    data_dir = os.environ.get("FAIRJAX_DATA_DIR") or None
  if data_dir is not None:
    root = pathlib.Path(data_dir) / "ml-1m"
    if not root.is_dir():
      raise DataError("no ml-1m folder under the data directory", str(root))
    ds = read_ml1m(root)
    return ds.user, ds.item, ds.num_users, ds.num_items, "ml1m"
  n_u, n_i = ML1M_USERS, ML1M_ITEMS
  flat = np.flatnonzero(rng.random(n_u * n_i) < 0.045)
  return flat // n_i, flat % n_i, n_u, n_i, "synthetic"


def _problem(data_dir: str | None, seed: int):
  """Scores [U, I] float32, relevant and exclude bool [U, I], source name."""
  rng = np.random.default_rng(seed)
  users, items, n_u, n_i, source = _interactions(data_dir, rng)
  is_test = rng.random(users.shape[0]) < 0.2  # random 80/20 split
  relevant = np.zeros((n_u, n_i), bool)
  exclude = np.zeros((n_u, n_i), bool)
  relevant[users[is_test], items[is_test]] = True
  exclude[users[~is_test], items[~is_test]] = True
  p = rng.standard_normal((n_u, _DIM), dtype=np.float32)
  q = rng.standard_normal((n_i, _DIM), dtype=np.float32)
  scores = (p @ q.T) / np.float32(np.sqrt(_DIM))
  return scores, relevant, exclude, source


def run(data_dir: str | None = None, seed: int = 0,
        repeats: int = 3) -> dict:
  """Times full-ranking metrics @20 for all users, JAX vs NumPy.

  Args:
    data_dir: folder holding `ml-1m/` (default $FAIRJAX_DATA_DIR; synthetic
      data when neither is set).
    seed: seed of the split and of the scores.
    repeats: timed runs per implementation (the median is reported).

  Returns:
    Dict: `jax_seconds` (median, after warm-up), `compile_seconds` (the
    first call, compile included), `numpy_seconds` (median), `speedup`
    (numpy / jax), `users`, `items`, `k`, `data` (ml1m or synthetic),
    `density` (relevant + excluded share), `max_abs_diff` (JAX vs NumPy over
    all metrics), `recall@20` and `ndcg@20` (mean over users).
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  t0 = time.perf_counter()
  scores, relevant, exclude, source = _problem(data_dir, seed)
  n_u, n_i = scores.shape
  _log(f"{source}: {n_u} users x {n_i} items, "
       f"{relevant.sum()} test / {exclude.sum()} train entries "
       f"({time.perf_counter() - t0:.1f}s to build)")
  dev = jax.device_put((scores, relevant, exclude))

  def jax_once():
    out = rank_metrics(*dev[:2], (_K,), dev[2])
    return jax.block_until_ready(out)

  t = time.perf_counter()
  got = jax_once()
  compile_s = time.perf_counter() - t
  _log(f"jax warm-up (compile + run): {compile_s:.3f}s")
  jax_times = []
  for r in range(repeats):
    t = time.perf_counter()
    jax_once()
    jax_times.append(time.perf_counter() - t)
    _log(f"jax run {r + 1}/{repeats}: {jax_times[-1]:.3f}s")
  np_times = []
  for r in range(repeats):
    t = time.perf_counter()
    want = rank_metrics_np(scores, relevant, (_K,), exclude)
    np_times.append(time.perf_counter() - t)
    _log(f"numpy run {r + 1}/{repeats}: {np_times[-1]:.3f}s")
  diff = max(float(np.nanmax(np.abs(np.asarray(got[k], np.float64) - want[k])))
             for k in want)
  nan_ok = all(np.array_equal(np.isnan(np.asarray(got[k])), np.isnan(want[k]))
               for k in want)
  if not nan_ok or diff > 1e-5:
    raise AssertionError(f"JAX and NumPy metrics disagree (max |diff| {diff}, "
                         f"NaN pattern equal: {nan_ok})")
  jax_s = statistics.median(jax_times)
  np_s = statistics.median(np_times)
  result = dict(
      jax_seconds=jax_s, compile_seconds=compile_s, numpy_seconds=np_s,
      speedup=np_s / jax_s, users=int(n_u), items=int(n_i), k=_K, data=source,
      density=float((relevant.sum() + exclude.sum()) / relevant.size),
      max_abs_diff=diff,
      **{f"{m}@{_K}": float(np.nanmean(np.asarray(got[f"{m}@{_K}"])))
         for m in ("recall", "ndcg")})
  _log(f"jax {jax_s:.3f}s, numpy {np_s:.3f}s, speedup {result['speedup']:.1f}x")
  return result
