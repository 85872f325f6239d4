"""Relaxed sorting (NeuralSort) and the soft ranking metrics built on it.

NeuralSort (Grover, Wang, Zweig, Ermon, "Stochastic Optimization of Sorting
Networks via Continuous Relaxations", ICLR 2019) replaces the permutation
matrix that sorts a score vector s in R^n (descending) by a row-stochastic
matrix P_hat whose row r (1-based) is

    P_hat[r, :] = softmax(((n + 1 - 2r) s - A_s 1) / tau),
    A_s[i, j] = |s_i - s_j|.

For distinct scores, P_hat -> P (the hard sort's one-hot rows) as tau -> 0:
row r concentrates on the item holding rank r. FADE (Yoo et al., "Ensuring
User-side Fairness in Dynamic Recommender Systems", WWW 2024) reads soft
ranking metrics off the top rows of P_hat; the soft "hit at rank r" of a
candidate list with relevance vector rel is

    h_r = sum_i P_hat[r, i] rel_i,                                   (*)

and its Differentiable Hit is DH@k = clip(sum_{r<=k} h_r, 0, 1). With the
positive at index 0 of the candidate list (FADE's default, k = 1),
DH@1 = P_hat[1, 0].

Everything here works on the last axis and broadcasts over leading axes, so
one call handles a whole batch of candidate lists [B, n]. Memory is O(n^2)
per list: meant for short candidate lists (FADE: 1 positive + 4 negatives).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_float(x) -> Array:
  x = jnp.asarray(x)
  return x.astype(jnp.result_type(x.dtype, jnp.float32))


def neuralsort(scores: Array, tau: float | Array, k: int | None = None
               ) -> Array:
  """Relaxed descending-sort permutation matrix (NeuralSort).

  Row r (1-based r in the formula; array index r - 1) is

      P_hat[r, :] = softmax(((n + 1 - 2r) s - A_s 1) / tau),
      (A_s 1)_i = sum_j |s_i - s_j|,

  the soft one-hot of the item at rank r (descending). The softmax is
  `jax.nn.softmax` (max-subtracted), so score ranges of 1e4 and more stay
  finite; the derivative of |.| at a tie is 0, so ties give no NaN.

  Args:
    scores: [..., n] scores; the last axis is sorted.
    tau: temperature > 0 (scalar; may be traced).
    k: if given, only the first min(k, n) rows are built ([..., k, n]): the
      top-k rows are all that Hit/Recall/NDCG@k need.

  Returns:
    [..., n, n] (or [..., min(k, n), n]) row-stochastic matrix.
  """
  s = _as_float(scores)
  n = s.shape[-1]
  rows = n if k is None else max(1, min(int(k), n))
  a1 = jnp.sum(jnp.abs(s[..., :, None] - s[..., None, :]), axis=-1)  # [.., n]
  coef = (n + 1 - 2 * jnp.arange(1, rows + 1)).astype(s.dtype)  # [rows]
  logits = (coef[:, None] * s[..., None, :] - a1[..., None, :]) / tau
  return jax.nn.softmax(logits, axis=-1)


def soft_hits(scores: Array, relevant: Array, tau: float | Array, k: int
              ) -> Array:
  """Soft hit of each of the top-k ranks, eq. (*) of the module docstring.

      h_r = sum_i P_hat[r, i] rel_i,   r = 1..k.

  Args:
    scores: [..., n] candidate scores.
    relevant: [..., n] bool or float relevance (graded gains allowed).
    tau: NeuralSort temperature.
    k: number of top ranks (clipped to n).

  Returns:
    [..., min(k, n)] soft relevance found at ranks 1..k; as tau -> 0 (distinct
    scores) it tends to rel of the item the hard sort puts at rank r.
  """
  p = neuralsort(scores, tau, k=k)
  rel = _as_float(relevant).astype(p.dtype)
  return jnp.einsum("...rn,...n->...r", p, rel)


def diff_hit(scores: Array, relevant: Array | None, tau: float | Array,
             k: int = 1) -> Array:
  """Differentiable Hit@k (FADE, Yoo et al. WWW 2024, Sec. 4.1).

      DH@k = clip(sum_{r<=k} sum_i P_hat[r, i] rel_i, 0, 1).

  As tau -> 0 (distinct scores) this tends to the hard Hit@k =
  1[some relevant item is in the top k]. FADE's default is k = 1 with the
  positive at index 0 of the candidate list, where DH@1 = P_hat[1, 0].

  Args:
    scores: [..., n] candidate scores.
    relevant: [..., n] bool/float relevance; None means "the positive is at
      index 0" (FADE's candidate layout: positive, then negatives).
    tau: NeuralSort temperature (FADE default 3).
    k: cut-off.

  Returns:
    [...] soft hit in [0, 1].
  """
  if relevant is None:
    n = jnp.shape(scores)[-1]
    relevant = jnp.zeros((n,), jnp.float32).at[0].set(1.0)
    relevant = jnp.broadcast_to(relevant, jnp.shape(scores))
  h = soft_hits(scores, relevant, tau, k)
  return jnp.clip(jnp.sum(h, axis=-1), 0.0, 1.0)


def soft_recall(scores: Array, relevant: Array, tau: float | Array, k: int,
                truncated: bool = False) -> Array:
  """Soft Recall@k from the relaxed permutation.

      SoftRecall@k = sum_{r<=k} h_r / D,
      D = |rel| = sum_i rel_i          (standard recall, default), or
      D = min(k, |rel|)                (truncated=True).

  As tau -> 0 (distinct scores) sum_{r<=k} h_r -> |topk ∩ rel|, so this tends
  to the hard Recall@k with the same denominator. Not clipped: at large tau the
  columns of P_hat need not sum to 1, so the value may exceed 1 slightly.
  Lists with no relevant item give 0.

  Args:
    scores: [..., n] candidate scores.
    relevant: [..., n] bool (or 0/1 float) relevance.
    tau: NeuralSort temperature.
    k: cut-off.
    truncated: use min(k, |rel|) as the denominator.

  Returns:
    [...] soft recall.
  """
  h = soft_hits(scores, relevant, tau, k)
  num_rel = jnp.sum(_as_float(relevant).astype(h.dtype), axis=-1)
  denom = jnp.minimum(num_rel, float(k)) if truncated else num_rel
  safe = jnp.where(denom > 0, denom, 1.0)
  return jnp.where(denom > 0, jnp.sum(h, axis=-1) / safe, 0.0)


def soft_ndcg(scores: Array, relevant: Array, tau: float | Array, k: int
              ) -> Array:
  """Soft NDCG@k (linear gains) from the relaxed permutation.

      SoftDCG@k = sum_{r<=k} h_r / log2(r + 1),
      IDCG@k    = sum_{r<=min(k, n)} rel_(r) / log2(r + 1),
      SoftNDCG@k = SoftDCG@k / IDCG@k,

  with rel_(r) the relevances sorted descending (a constant of the scores).
  For binary relevance IDCG = sum_{r<=min(k,|rel|)} 1/log2(r+1), the standard
  definition. As tau -> 0 (distinct scores) h_r -> rel of the item at hard
  rank r, so this tends to the hard NDCG@k. Lists with no relevant item give 0;
  not clipped (see `soft_recall`).

  Args:
    scores: [..., n] candidate scores.
    relevant: [..., n] bool/float relevance (gains).
    tau: NeuralSort temperature.
    k: cut-off.

  Returns:
    [...] soft NDCG.
  """
  h = soft_hits(scores, relevant, tau, k)
  kk = h.shape[-1]
  disc = 1.0 / jnp.log2(jnp.arange(2, kk + 2, dtype=h.dtype))  # [kk]
  dcg = jnp.sum(h * disc, axis=-1)
  rel = _as_float(relevant).astype(h.dtype)
  ideal = -jnp.sort(-rel, axis=-1)[..., :kk]
  idcg = jnp.sum(ideal * disc, axis=-1)
  safe = jnp.where(idcg > 0, idcg, 1.0)
  return jnp.where(idcg > 0, dcg / safe, 0.0)
