"""Accuracy of served lists against targets, and exposure against minimums
(FairSync, DESIGN §5).

ESP = (1/G) sum_g 1[E_g >= m_g] (`metrics.esp`); Recall/NDCG/HR@K of each
request's list against its targets (`metrics.topk_metrics`), requests
averaged (`accuracy`). `esp_summary` scores one served stream (a
`fairjax.methods.fairsync.ServeResult`) with both, plus its exposure and mu
per batch and what FairSync's safety net did (`safety_notes` words it for
the log); `measurements` lists such a result as (step, group, metric,
value) for metrics.csv.
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


def _forced_and_short(res, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """(forced [batches, G] bool, the groups ever infeasible); none for a
  method without an online dual (a single all-False row, no groups)."""
  none = np.zeros((1, num_groups), bool)
  forced = none if res.forced_history is None else res.forced_history
  short = np.nonzero((none if res.infeasible_history is None
                      else res.infeasible_history).any(0))[0]
  return forced, short


def esp_summary(res, min_exposure, target_ptr: np.ndarray,
                target_items: np.ndarray, num_items: int, k: int,
                group_names) -> dict:
  """Scores of one served stream against m_g and the targets.

  Args:
    res: a `ServeResult` (item_ids [T, K], exposure_over_time and mu_history
      [batches, G], forced_history / infeasible_history or None).
    min_exposure: float [G] the minimums m_g ESP is scored against.
    target_ptr, target_items: request t's targets, CSR (`Requests`).
    num_items: catalog size N.
    k: list length K.
    group_names: the G item group names.

  Returns:
    dict: `esp` = (1/G) sum_g 1[E_g >= m_g] of the final exposure;
    `recall@K`, `ndcg@K`, `hr@K` (`accuracy`);
    `exposure_over_time`, `mu_history` (nested lists); `forced_batches` (the
    batches in which the safety net forced or repaired a group) and
    `infeasible_groups` (names of the groups whose minimum could at some
    batch no longer be met).
  """
  forced, short = _forced_and_short(res, len(group_names))
  acc = accuracy(np.asarray(res.item_ids), target_ptr, target_items,
                 num_items, k)
  e = np.asarray(res.exposure, np.float64)
  return dict(esp=float(metrics_lib.esp(e, np.asarray(min_exposure))), **acc,
              exposure_over_time=np.asarray(res.exposure_over_time).tolist(),
              mu_history=np.asarray(res.mu_history).tolist(),
              forced_batches=forced.any(1).nonzero()[0].tolist(),
              infeasible_groups=[group_names[g] for g in short])


def safety_notes(res, group_names) -> list[str]:
  """Log lines: how often the safety net fired, which minimums became
  infeasible (empty for a stream where neither happened)."""
  forced, short = _forced_and_short(res, len(group_names))
  notes = []
  if forced.any():
    notes.append(f"safety net acted on {int(forced.sum())} (batch, group) "
                 f"pairs over {int(forced.any(1).sum())} of {forced.shape[0]} "
                 "batches")
  if short.size:
    notes.append(f"warning: minimums of {[group_names[g] for g in short]} "
                 "became infeasible for the remaining horizon (served first, "
                 "best effort)")
  return notes


def measurements(result: dict, min_exposure, group_names):
  """Yields (step, group, metric, value) of a scored stream.

  Args:
    result: an `esp_summary` dict (the unconstrained one with its ESP
      against m_g).
    min_exposure: float [G] m_g.
    group_names: the G item group names.

  Yields:
    step = batch b: `exposure` E_g(b) and `mu` mu_g(b) per group; at the
    last batch, `esp` and each `metric@K` under group `all`, then
    `min_exposure` m_g per group.
  """
  expo = np.asarray(result["exposure_over_time"])
  mus = np.asarray(result["mu_history"])
  for b in range(expo.shape[0]):
    for j, name in enumerate(group_names):
      yield b, name, "exposure", float(expo[b, j])
      yield b, name, "mu", float(mus[b, j])
  last = expo.shape[0] - 1
  for key, value in result.items():
    if key == "esp" or "@" in key:
      yield last, "all", key, float(value)
  for j, name in enumerate(group_names):
    yield last, name, "min_exposure", float(min_exposure[j])
