"""Accuracy of served lists against targets, and exposure against minimums
(FairSync, DESIGN §5).

ESP = (1/G) sum_g 1[E_g >= m_g] (`metrics.esp`); Recall/NDCG/HR@K of each
request's list against its targets (`metrics.topk_metrics`), requests
averaged.
"""

from __future__ import annotations

import numpy as np

from fairjax import metrics as metrics_lib

ACCURACY = ("recall", "ndcg", "hr")


def accuracy(ids: np.ndarray, target_ptr: np.ndarray,
             target_items: np.ndarray, num_items: int, k: int,
             max_cells: int = 1 << 26) -> dict[str, float]:
  """Mean over requests of Recall/NDCG/HR@K (`metrics.topk_metrics`).

  The relevant matrix is built for blocks of requests (at most `max_cells`
  booleans at a time), so a 10^6-item catalog fits in memory. Requests
  without a target are left out (NaN, `nanmean`).
  """
  t_total = ids.shape[0]
  rows = max(1, min(t_total, max_cells // max(num_items, 1)))
  sums = {m: 0.0 for m in ACCURACY}
  count = 0
  for lo in range(0, t_total, rows):
    hi = min(t_total, lo + rows)
    rel = np.zeros((hi - lo, num_items), bool)
    seg = target_ptr[lo:hi + 1] - target_ptr[lo]
    r = np.repeat(np.arange(hi - lo), np.diff(seg))
    rel[r, target_items[target_ptr[lo]:target_ptr[hi]]] = True
    out = metrics_lib.topk_metrics(ids[lo:hi], rel, ks=(k,))
    for m in ACCURACY:
      v = np.asarray(out[f"{m}@{k}"], np.float64)
      sums[m] += float(np.nansum(v))
    count += int(np.sum(np.diff(seg) > 0))
  return {f"{m}@{k}": sums[m] / max(count, 1) for m in ACCURACY}
