"""Top-K ranking metrics, full-ranking and sampled, as per-user vectors.

Every function here is JAX-native and jittable. The metrics of one user u
with test set T_u (the relevant items that are not excluded) and ranked list
L_u@K (the first K items by score, excluded items never included) are

  hits@K      = |L_u@K ∩ T_u|
  recall@K    = hits@K / |T_u|
  precision@K = hits@K / K
  hr@K        = 1[hits@K > 0]
  f1@K        = 2 P R / (P + R), and 0 when P + R = 0
  ndcg@K      = DCG@K / IDCG@K with DCG@K = sum_{r=1..K} 1[L_u(r) ∈ T_u] /
                log2(r + 1) and IDCG@K = sum_{r=1..min(K, |T_u|)} 1 / log2(r + 1)
                (binary gains; Järvelin & Kekäläinen 2002, the standard NDCG).

On request (`found=True`) also
  ndcg_found@K = DCG@K / sum_{r=1..hits@K} 1 / log2(r + 1), and 0 when
                hits@K = 0: the DCG over that of the hits found packed at
                the top (so any list whose hits come first scores 1). This
                is the normalisation of the official FADE code (v1.0,
                `Runner.measure_ndcg`, method 1); FADE's `official` measure
                reports it under the name ndcg@K.

A user with |T_u| = 0 gets NaN in every metric, so that `jnp.nanmean` over
users averages only the users that can be evaluated.

Ranking rule (shared with the NumPy reference in `fairjax.metrics.reference`):
items are ordered by a sort key, largest first, and ties go to the lower item
index. The key of item i is its score, except that
  * an excluded item has key -inf: it is never ranked; if a user has fewer
    than K rankable items, the remaining slots of the list are empty (-1 in
    `topk_items`) and count as misses;
  * a rankable score that is NaN or -inf becomes the lowest finite value of the
    dtype, so it ranks last among rankable items but before any excluded one;
  * -0.0 is read as +0.0.
`jax.lax.top_k` keeps the lower index first on equal keys (documented and
checked by the tests against a stable `np.argsort`), so the rule is exact.

Memory: the [U, I] inputs are processed in blocks of `chunk_size` users with
`lax.map`, so intermediates stay O(chunk_size x I). The last block is
the last `chunk_size` rows (it overlaps its predecessor; the overlap is
dropped), so no padded copy of the inputs is made and the block function
is traced once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

__all__ = [
    "METRIC_NAMES", "rank_keys", "topk_items", "topk_metrics", "rank_metrics",
    "sampled_rank_metrics", "sampled_scores",
]

METRIC_NAMES = ("recall", "precision", "ndcg", "hr", "f1")


def _normalise_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
  ks = (ks,) if isinstance(ks, int) else tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be positive integers, got {ks!r}")
  return ks


def _float_scores(scores) -> Array:
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  return scores


def rank_keys(scores: Array, exclude: Array | None = None) -> Array:
  """The sort keys of the ranking rule (see the module docstring).

  Args:
    scores: float [..., I] scores.
    exclude: bool [..., I] items that may not be ranked, or None.

  Returns:
    [..., I] keys: -inf where excluded, the dtype's lowest finite value where
    the score is NaN or -inf, 0 for +-0, the score otherwise.
  """
  scores = _float_scores(scores)
  low = jnp.finfo(scores.dtype).min
  key = jnp.where(jnp.isnan(scores) | (scores == -jnp.inf), low, scores)
  key = jnp.where(key == 0, jnp.zeros_like(key), key)
  if exclude is not None:
    key = jnp.where(exclude, -jnp.inf, key)
  return key


def _topk_block(scores, exclude, k):
  key = rank_keys(scores, exclude)
  vals, idx = lax.top_k(key, k)
  return jnp.where(vals == -jnp.inf, -1, idx).astype(jnp.int32)


def _metrics_block(top, relevant, ks, found=False):
  """Metrics of a block from ranked lists top [B, k] (-1 = empty slot)."""
  kmax = max(ks)
  n_rel = relevant.sum(axis=1)
  hit = jnp.take_along_axis(relevant, jnp.maximum(top, 0), axis=1) & (top >= 0)
  k_avail = hit.shape[1]
  if k_avail < kmax:  # fewer items than K: the rest of the list is empty
    hit = jnp.pad(hit, ((0, 0), (0, kmax - k_avail)))
  hit = hit[:, :kmax].astype(jnp.float32)
  ranks = jnp.arange(1, kmax + 1, dtype=jnp.float32)
  disc = 1.0 / jnp.log2(ranks + 1.0)
  cum_hits = jnp.cumsum(hit, axis=1)
  cum_dcg = jnp.cumsum(hit * disc, axis=1)
  ideal = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(disc)])
  has = n_rel > 0
  n_rel_f = jnp.where(has, n_rel, 1).astype(jnp.float32)
  nan = jnp.float32(jnp.nan)
  out = {}
  for k in ks:
    hits = cum_hits[:, k - 1]
    recall = hits / n_rel_f
    precision = hits / k
    denom = precision + recall
    f1 = jnp.where(denom > 0, 2 * precision * recall / jnp.where(
        denom > 0, denom, 1.0), 0.0)
    idcg = ideal[jnp.minimum(n_rel, k)]
    ndcg = cum_dcg[:, k - 1] / jnp.where(has, idcg, 1.0)
    vals = dict(recall=recall, precision=precision, ndcg=ndcg,
                hr=(hits > 0).astype(jnp.float32), f1=f1)
    for name in METRIC_NAMES:
      out[f"{name}@{k}"] = jnp.where(has, vals[name], nan)
    if found:
      h = hits.astype(jnp.int32)
      out[f"ndcg_found@{k}"] = jnp.where(
          has, cum_dcg[:, k - 1] / jnp.where(h > 0, ideal[h], 1.0), nan)
  return out


def _map_blocks(fn, arrays, chunk_size):
  """Applies fn to row blocks of arrays (all [U, ...]); outputs are [U, ...].

  Blocks start at c * chunk_size, the last one at U - chunk_size; the rows of
  the last block already covered by its predecessor are dropped.
  """
  n = arrays[0].shape[0]
  if n <= chunk_size:
    return fn(*arrays)
  n_blocks = -(-n // chunk_size)
  starts = jnp.minimum(jnp.arange(n_blocks) * chunk_size, n - chunk_size)

  def block(start):
    return fn(*[None if a is None else lax.dynamic_slice_in_dim(
        a, start, chunk_size, axis=0) for a in arrays])

  stacked = lax.map(block, starts)
  overlap = (n_blocks - 1) * chunk_size - (n - chunk_size)

  def merge(x):
    head = x[:-1].reshape((-1,) + x.shape[2:])
    return jnp.concatenate([head, x[-1, overlap:]], axis=0)

  return jax.tree.map(merge, stacked)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _topk_items_jit(scores, exclude, *, k, chunk_size):
  k_eff = min(k, scores.shape[-1])
  top = _map_blocks(lambda s, e: _topk_block(s, e, k_eff), (scores, exclude),
                    chunk_size)
  if k_eff < k:
    top = jnp.pad(top, ((0, 0), (0, k - k_eff)), constant_values=-1)
  return top


def topk_items(scores: Array, k: int, exclude: Array | None = None, *,
               chunk_size: int = 1024) -> Array:
  """Top-K item indices per user under the ranking rule of this module.

  Args:
    scores: float [U, I].
    k: list length K.
    exclude: bool [U, I] items never ranked (e.g. training items), or None.
    chunk_size: users per block (bounds memory to O(chunk_size x I)).

  Returns:
    int32 [U, K] item indices, best first; -1 marks an empty slot (the user
    has fewer than K rankable items).
  """
  if k < 1 or chunk_size < 1:
    raise ValueError(f"k and chunk_size must be >= 1, got {k}, {chunk_size}")
  scores = _float_scores(scores)
  if exclude is not None:
    exclude = jnp.asarray(exclude, bool)
  return _topk_items_jit(scores, exclude, k=int(k), chunk_size=int(chunk_size))


@functools.partial(jax.jit, static_argnames=("ks",))
def _topk_metrics_jit(top, relevant, *, ks):
  return _metrics_block(top, relevant, ks)


def topk_metrics(top: Array, relevant: Array,
                 ks: int | Sequence[int] = (20,)) -> dict[str, Array]:
  """Metrics of given ranked lists (e.g. from distributed retrieval).

  Args:
    top: int [U, L] item indices, best first, -1 for an empty slot; the
      metrics @K use the first K entries (missing entries count as misses).
    relevant: bool [U, I] test items T_u (excluded items already removed).
    ks: the cut-offs K.

  Returns:
    Dict `{metric}@{K}` -> float32 [U] for metric in recall, precision, ndcg,
    hr, f1 (formulas in the module docstring); NaN for users with no
    relevant item.
  """
  return _topk_metrics_jit(jnp.asarray(top, jnp.int32),
                           jnp.asarray(relevant, bool), ks=_normalise_ks(ks))


@functools.partial(jax.jit, static_argnames=("ks", "chunk_size", "found"))
def _rank_metrics_jit(scores, relevant, exclude, *, ks, chunk_size,
                      found=False):
  k_eff = min(max(ks), scores.shape[-1])

  def block(s, r, e):
    top = _topk_block(s, e, k_eff)
    if e is not None:
      r = r & ~e
    return _metrics_block(top, r, ks, found)

  return _map_blocks(block, (scores, relevant, exclude), chunk_size)


def rank_metrics(scores: Array, relevant: Array,
                 ks: int | Sequence[int] = (20,), exclude: Array | None = None,
                 *, chunk_size: int = 1024, found: bool = False
                 ) -> dict[str, Array]:
  """Full-ranking Recall/Precision/NDCG/HR/F1@K of every user.

  All items of the catalogue are candidates, except the excluded ones (the
  user's training/validation items). Formulas, tie rule and the handling of
  excluded items are in the module docstring. An item that is both relevant
  and excluded is not rankable and does not count in |T_u|: the test set is
  `relevant & ~exclude`.

  Args:
    scores: float [U, I] predicted scores.
    relevant: bool [U, I] test items.
    ks: the cut-offs K (an int or a sequence).
    exclude: bool [U, I] items never ranked, or None.
    chunk_size: users per block; memory of intermediates is
      O(chunk_size x I). Any U works (no recompilation per block).
    found: also return `ndcg_found@K` (module docstring).

  Returns:
    Dict with keys `recall@K`, `precision@K`, `ndcg@K`, `hr@K`, `f1@K` for
    each K in ks (and `ndcg_found@K` with `found`), each a float32 [U] array;
    NaN for users whose test set is empty.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  scores = _float_scores(scores)
  relevant = jnp.asarray(relevant, bool)
  if relevant.shape != scores.shape:
    raise ValueError(f"relevant has shape {relevant.shape}, scores "
                     f"{scores.shape}")
  if exclude is not None:
    exclude = jnp.asarray(exclude, bool)
    if exclude.shape != scores.shape:
      raise ValueError(f"exclude has shape {exclude.shape}, scores "
                       f"{scores.shape}")
  return _rank_metrics_jit(scores, relevant, exclude, ks=_normalise_ks(ks),
                           chunk_size=int(chunk_size), found=bool(found))


def sampled_rank_metrics(pos_scores: Array, neg_scores: Array,
                         pos_mask: Array, ks: int | Sequence[int] = (20,), *,
                         neg_mask: Array | None = None,
                         chunk_size: int = 4096, found: bool = False
                         ) -> dict[str, Array]:
  """Sampled-protocol metrics: positives ranked among fixed negatives.

  The candidate list of user u is its test positives (the valid entries of
  a padded row) plus its sampled negatives; T_u = the valid positives. The
  metrics are those of `rank_metrics` on that list (precision@K = hits/K
  even when there are fewer than K candidates). Ties are broken against the
  positives: a positive with the same score as a negative ranks below it
  (among positives, the lower column first), so a constant scorer does not
  get credit.

  Args:
    pos_scores: float [U, P] scores of the test positives (padded).
    neg_scores: float [U, N] scores of the negatives.
    pos_mask: bool [U, P] which positive slots are real.
    ks: the cut-offs K.
    neg_mask: bool [U, N] which negative slots are real, or None (all).
    chunk_size: users per block.
    found: also return `ndcg_found@K` (module docstring).

  Returns:
    The same dict as `rank_metrics` (float32 [U] per key; NaN for users
    without any positive).
  """
  pos_scores = _float_scores(pos_scores)
  neg_scores = _float_scores(neg_scores).astype(pos_scores.dtype)
  pos_mask = jnp.asarray(pos_mask, bool)
  if neg_mask is None:
    neg_mask = jnp.ones(neg_scores.shape, bool)
  neg_mask = jnp.asarray(neg_mask, bool)
  scores = jnp.concatenate([neg_scores, pos_scores], axis=1)
  relevant = jnp.concatenate([jnp.zeros_like(neg_mask), pos_mask], axis=1)
  exclude = ~jnp.concatenate([neg_mask, pos_mask], axis=1)
  return rank_metrics(scores, relevant, ks, exclude, chunk_size=chunk_size,
                      found=found)


def sampled_scores(score_fn: Callable[[Array, Array], Array], users: Array,
                   pos_items: Array, neg_items: Array) -> tuple[Array, Array]:
  """Scores the sampled-protocol candidates with a model.

  Args:
    score_fn: `score_fn(users [U], items [U, n]) -> [U, n]` scores.
    users: int [U] user ids.
    pos_items: int [U, P] padded positive item ids (negative ids = padding;
      they are scored as item 0 and must be masked by `pos_mask`).
    neg_items: int [U, N] negative item ids.

  Returns:
    (pos_scores [U, P], neg_scores [U, N]) for `sampled_rank_metrics`.
  """
  pos_items = jnp.maximum(jnp.asarray(pos_items), 0)
  return score_fn(users, pos_items), score_fn(users, jnp.asarray(neg_items))
