"""Benchmark: one ITFR training epoch vs one BPR epoch (MF, ML-1M protocol).

Both epochs are the jitted `lax.scan` of their step over the whole training
set (ML-1M: ~277k interactions, batch 1024, one negative per row, d = 64,
Adam) exactly as `launch.itfr` runs them, each from its own start, their
epochs interleaved (BPR's epoch e, ITFR's, the reference path's, then
e + 1) so that a slow spell of the machine falls on all alike. BPR is
`train.make_step` on the plain BPR loss; ITFR computes, per batch, the
sharpness-aware loss and gradient of every cell present (row-sparse
path), the collaborative weight
update with the previous epoch's cumulative gradients, and the update with
sum_g q_g h_g. Timed: `repeats` epochs after the compiling one, median.
Every ITFR epoch computes the 144 cosines (in epoch 0 against zero buffers,
masked to R = I), so every epoch does the same work.

ITFR runs twice: on its default path (the cosines' inner products by the
native kernel `ops.cell_dots`, the segment sums by `ops.segment_rows` and
the per-example losses and gradients by `ops.triplet_bpr` where they load)
and on the reference
path (`make_epoch_fn(reference=True)`: jnp inner products and segment sums,
autodiff, for LightGCN XLA's Gram blocks on the slots: the rounding of
earlier versions), from the same start. Keys:
`reference_seconds_per_epoch`, `reference_over_bpr`, and after the
`epochs_compared` epochs the distance of the default path's
parameters from the reference path's (`reference_max_abs_param_diff`,
`reference_max_rel_param_diff` = that over max |param|,
`reference_norm_rel_param_diff` = ||difference|| / ||params||);
`itfr_over_bpr_by_epoch` lists each timed epoch's ratio (the two epochs
run one after the other, so the spread shows the machine's drift);
`cell_dots_native` says whether the kernel ran, `triplet_bpr_native`
whether the losses' kernel did, `gram_coupling_native`
whether LightGCN's Gram products ran natively (`ops.gram_coupling`).

Data: ML-1M under `data_dir` (or $FAIRJAX_DATA_DIR); without it, the
synthetic generator at a similar size (6,000 users, 1,200 items, ~396k
interactions), which the result names under `data`.

`model='lightgcn'` (`--model=lightgcn`) times the same two epochs on
LightGCN (3 layers, dense bipartite adjacency, the Gram-matrix path for
ITFR) and, side by side, the BPR epoch on the COO adjacency (one segment sum
per layer) as the layout's baseline: key `bpr_coo_seconds_per_epoch`.
Fewer repeats there (`repeats` 2): its epochs take seconds.

Run: `python -m launch.bench --bench=itfr [--data_dir=DIR] [--model=lightgcn]`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import native
from fairjax.methods import itfr as M
from fairjax.data import cells as cells_data


def _log(msg: str) -> None:
  print(f"[bench.itfr] {msg}", file=sys.stderr, flush=True)


def _config(get_config, data_dir, model="mf"):
  """configs/itfr.py (`get_config`), ML-1M (or synthetic) variant."""
  if data_dir:
    c = get_config(f"dataset=ml1m,model={model}")
    c.data_dir = str(data_dir)
  else:
    c = get_config(f"dataset=synthetic,model={model}")
    c.synthetic.num_users = 6000
    c.synthetic.num_items = 1200
  return c


class _Epochs:
  """One method's jitted epochs from its own start, run one at a time so
  the methods' epochs can interleave (`_time_interleaved`)."""

  def __init__(self, name, config, data, seed, reference=False, tag=""):
    spec = M.METHODS[name]
    model = M.create_model(config, data, spec.cosine)
    tx = M.make_optimizer(config)
    self.rng = jax.random.key(seed)
    self.state = M.init_state(model, tx, spec, data, self.rng)
    self.epoch_fn = M.make_epoch_fn(model, tx, spec, config, data,
                                    reference=reference)
    self.context = M.make_context(data, model, spec)
    self.batches = lambda e: M.epoch_batches(data, config.batch_size,
                                             (seed, e))
    self.label = name + tag

  def run(self, e: int) -> float:
    """Epoch e; returns its seconds."""
    batches = self.batches(e)
    t0 = time.perf_counter()
    self.state, m = self.epoch_fn(self.state, batches,
                                  jax.random.fold_in(self.rng, e),
                                  self.context)
    jax.block_until_ready(self.state)
    dt = time.perf_counter() - t0
    _log(f"{self.label} epoch {e + 1}: {dt:.3f}s loss "
         f"{float(jnp.mean(m['loss'])):.4f}")
    return dt


def _time_interleaved(runs: list[_Epochs], repeats: int, skip: int
                      ) -> list[list[float]]:
  """Seconds of each run's `repeats` epochs after `skip`, the runs' epochs
  taken in turn (epoch e of every run, then e + 1), so a slow spell of the
  machine falls on all of them alike."""
  times = [[] for _ in runs]
  for e in range(skip + repeats):
    for r, t in zip(runs, times):
      dt = r.run(e)
      if e >= skip:
        t.append(dt)
  return times


def _param_diffs(params, ref) -> dict:
  """How far the default path's parameters are from the reference path's:
  max |a - b|, that over max |b| (as `--bench=fade`'s
  fused_max_rel_param_diff) and ||a - b|| / ||b|| over all leaves."""
  pairs = [(np.asarray(a, np.float64), np.asarray(b, np.float64))
           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref))]
  top = max(float(np.max(np.abs(b))) for _, b in pairs)
  diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
  sq = sum(float(np.sum((a - b) ** 2)) for a, b in pairs)
  norm = sum(float(np.sum(b ** 2)) for _, b in pairs)
  return {"reference_max_abs_param_diff": diff,
          "reference_max_rel_param_diff": diff / top,
          "reference_norm_rel_param_diff": float(np.sqrt(sq / norm))}


def run(get_config, seed: int = 0, data_dir: str | None = None,
        repeats: int | None = None, model: str = "mf") -> dict:
  """Seconds per epoch of ITFR and BPR (median of `repeats`) and the ratio;
  for LightGCN also BPR on the COO adjacency. `get_config` is
  `configs/itfr.py`'s (the launcher passes it: the library never imports
  the configs folder)."""
  data_dir = data_dir or os.environ.get("FAIRJAX_DATA_DIR") or None
  if model not in ("mf", "lightgcn"):
    raise ValueError(f"model must be 'mf' or 'lightgcn', got {model!r}")
  if repeats is None:
    repeats = 3 if model == "mf" else 2
  config = _config(get_config, data_dir, model)
  data = cells_data.prepare_data(config, data_dir)
  _log(f"{data.name}, {model}: {data.train_user.size} training interactions, "
       f"{data.num_cells} cells, batch {config.batch_size}, "
       f"{M.steps_per_epoch(data, config.batch_size)} steps per epoch")
  runs = [_Epochs("BPR", config, data, seed),
          _Epochs("ITFR", config, data, seed),
          _Epochs("ITFR", config, data, seed, reference=True,
                  tag=" (reference path)")]
  if model == "lightgcn":
    coo = config.copy_and_resolve_references()
    coo.lightgcn_layout = "sparse"
    runs.append(_Epochs("BPR", coo, data, seed, tag=" (COO adjacency)"))
  times = _time_interleaved(runs, repeats, skip=1)
  seconds = [statistics.median(t) for t in times]
  bpr, itfr, ref = seconds[:3]
  state, ref_state = runs[1].state, runs[2].state
  out = {"data": data.name, "model": model,
         "train_interactions": int(data.train_user.size),
         "batch_size": int(config.batch_size), "cells": data.num_cells,
         "device": jax.devices()[0].device_kind,
         "itfr_seconds_per_epoch": itfr, "bpr_seconds_per_epoch": bpr,
         "itfr_over_bpr": itfr / bpr,
         # ITFR's epoch e over BPR's epoch e (run one after the other).
         "itfr_over_bpr_by_epoch": [i / b for i, b in zip(times[1],
                                                          times[0])],
         "reference_seconds_per_epoch": ref,
         "reference_over_bpr": ref / bpr,
         "epochs_compared": 1 + repeats,
         "cell_dots_native": native.resolve("cell_dots", "auto") == "native",
         "triplet_bpr_native": native.resolve("triplet_bpr",
                                              "auto") == "native",
         "gram_coupling_native": (model == "lightgcn" and native.resolve(
             "gram_blocks", "auto") == "native"),
         **_param_diffs(state.params, ref_state.params)}
  if model == "lightgcn":
    out["bpr_coo_seconds_per_epoch"] = seconds[3]
    out["coo_over_dense_bpr"] = seconds[3] / bpr
  return out
