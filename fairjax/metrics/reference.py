"""Brute-force NumPy references for the ranking metrics (tests and benchmark).

Independent of `fairjax.metrics.ranking`: a full stable `np.argsort` of every
row and the textbook formulas, no JAX. The ranking rule is the same (see
`fairjax.metrics.ranking`): key = score, with NaN/-inf -> lowest finite value,
-0 -> +0, excluded -> -inf (never ranked); order by key descending, ties to the
lower item index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rank_keys_np", "topk_items_np", "rank_metrics_np",
           "sampled_rank_metrics_np"]


def rank_keys_np(scores: np.ndarray,
                 exclude: np.ndarray | None = None) -> np.ndarray:
  """The sort keys of the ranking rule, in NumPy."""
  scores = np.asarray(scores)
  if not np.issubdtype(scores.dtype, np.floating):
    scores = scores.astype(np.float32)
  key = scores.copy()
  key[np.isnan(key) | np.isneginf(key)] = np.finfo(key.dtype).min
  key[key == 0] = 0  # -0.0 -> +0.0
  if exclude is not None:
    key[np.asarray(exclude, bool)] = -np.inf
  return key


def topk_items_np(scores: np.ndarray, k: int,
                  exclude: np.ndarray | None = None) -> np.ndarray:
  """int [U, k] top-k item indices by a stable argsort; -1 = empty slot."""
  key = rank_keys_np(scores, exclude)
  order = np.argsort(-key, axis=1, kind="stable")[:, :k]
  order = np.where(np.take_along_axis(key, order, axis=1) == -np.inf, -1,
                   order)
  if order.shape[1] < k:
    order = np.pad(order, ((0, 0), (0, k - order.shape[1])),
                   constant_values=-1)
  return order


def _metrics_from_lists(top, relevant, ks):
  """Textbook metrics of ranked lists top [U, >=max(ks)] (-1 = empty)."""
  relevant = np.asarray(relevant, bool)
  n_rel = relevant.sum(axis=1)
  valid = top >= 0
  hit = np.take_along_axis(relevant, np.where(valid, top, 0), axis=1) & valid
  out = {}
  for k in ks:
    h = hit[:, :k]
    hits = h.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
      recall = hits / n_rel
      precision = hits / k
      f1 = np.where(precision + recall > 0,
                    2 * precision * recall / (precision + recall), 0.0)
      dcg = (h / np.log2(np.arange(2, k + 2))).sum(axis=1)
      idcg = np.array([np.sum(1.0 / np.log2(np.arange(2, min(k, n) + 2)))
                       for n in n_rel])
      ndcg = dcg / idcg
    vals = dict(recall=recall, precision=precision, ndcg=ndcg,
                hr=(hits > 0).astype(np.float64), f1=f1)
    for name, v in vals.items():
      out[f"{name}@{k}"] = np.where(n_rel > 0, v, np.nan)
  return out


def rank_metrics_np(scores: np.ndarray, relevant: np.ndarray,
                    ks: Sequence[int] = (20,),
                    exclude: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """NumPy reference of `fairjax.metrics.rank_metrics` (float64 [U] each)."""
  ks = (ks,) if isinstance(ks, int) else tuple(ks)
  relevant = np.asarray(relevant, bool)
  if exclude is not None:
    relevant = relevant & ~np.asarray(exclude, bool)
  top = topk_items_np(scores, max(ks), exclude)
  return _metrics_from_lists(top, relevant, ks)


def sampled_rank_metrics_np(pos_scores: np.ndarray, neg_scores: np.ndarray,
                            pos_mask: np.ndarray, ks: Sequence[int] = (20,),
                            neg_mask: np.ndarray | None = None
                            ) -> dict[str, np.ndarray]:
  """NumPy reference of `sampled_rank_metrics`, by counting per positive.

  The 0-based rank of a valid positive p is the number of valid negatives
  with key >= key(p) (ties lose to negatives) plus the number of valid
  positives q with key(q) > key(p), or key(q) == key(p) and q before p.
  """
  ks = (ks,) if isinstance(ks, int) else tuple(ks)
  pos_mask = np.asarray(pos_mask, bool)
  if neg_mask is None:
    neg_mask = np.ones(np.shape(neg_scores), bool)
  pk = rank_keys_np(pos_scores)
  nk = rank_keys_np(neg_scores).astype(pk.dtype)
  n_users, n_pos = pk.shape
  out = {f"{m}@{k}": np.full(n_users, np.nan) for k in ks
         for m in ("recall", "precision", "ndcg", "hr", "f1")}
  for u in range(n_users):
    valid = np.flatnonzero(pos_mask[u])
    if valid.size == 0:
      continue
    negs = nk[u][neg_mask[u]]
    ranks = []
    for p in valid:
      r = np.sum(negs >= pk[u, p])
      for q in valid:
        if pk[u, q] > pk[u, p] or (pk[u, q] == pk[u, p] and q < p):
          r += 1
      ranks.append(r)
    ranks = np.asarray(ranks)
    for k in ks:
      hits = float(np.sum(ranks < k))
      rec, prec = hits / valid.size, hits / k
      dcg = np.sum(1.0 / np.log2(ranks[ranks < k] + 2.0))
      idcg = np.sum(1.0 / np.log2(np.arange(min(k, valid.size)) + 2.0))
      out[f"recall@{k}"][u] = rec
      out[f"precision@{k}"][u] = prec
      out[f"hr@{k}"][u] = float(hits > 0)
      out[f"f1@{k}"][u] = 2 * prec * rec / (prec + rec) if hits else 0.0
      out[f"ndcg@{k}"][u] = dcg / idcg
  return out
