"""Fairness metrics: group gaps, intersectional cells, exposure, disparity.

All functions are jitted (`num_*` arguments are static Python ints), usable
inside other jitted code, and return JAX arrays; `float(x)` gives a Python number.

  * User-side parity (FADE, DESIGN §3): PD = mean_{u: a_u=0} m_u -
    mean_{u: a_u=1} m_u over per-user metric values m_u (NaN users ignored).
  * Intersectional two-sided fairness (ITFR, DESIGN §4): per-cell recall
    R_{a,j}@K and CV / MIN / UCV / ICV over the cells.
  * Item exposure (FairSync, DESIGN §5): group exposure counts and ESP.
  * System level (Hsu et al. 2025, DESIGN §6): DER and the max-min gap of group
    utilities; the Gini coefficient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["group_means", "group_gap", "cell_recall", "cv_metrics",
           "group_exposure", "esp", "der", "max_min_gap", "gini"]


@functools.partial(jax.jit, static_argnames=("num_groups",))
def group_means(values: Array, groups: Array, num_groups: int) -> Array:
  """Per-group mean of per-user values, ignoring NaN values.

  Ubar_g = sum_{u: g_u = g, m_u not NaN} m_u / |{u: g_u = g, m_u not NaN}|.

  Args:
    values: float [U] per-user values (NaN = not evaluable).
    groups: int [U] group ids; ids outside [0, num_groups) are ignored.
    num_groups: G.

  Returns:
    float32 [G]; NaN for a group with no (non-NaN) user.
  """
  values = jnp.asarray(values, jnp.float32)
  groups = jnp.asarray(groups, jnp.int32)
  ok = ~jnp.isnan(values) & (groups >= 0) & (groups < num_groups)
  seg = jnp.where(ok, groups, num_groups)  # out of range: dropped
  sums = jax.ops.segment_sum(jnp.where(ok, values, 0.0), seg, num_groups)
  counts = jax.ops.segment_sum(ok.astype(jnp.float32), seg, num_groups)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)


@jax.jit
def group_gap(values: Array, groups: Array) -> Array:
  """Performance disparity PD = mean over group 0 - mean over group 1.

  PD = Ubar_0 - Ubar_1 with Ubar_g from `group_means` (NaN users ignored);
  FADE (Yoo et al. 2024) reports PD of Recall/NDCG@K with a = 0 the
  advantaged group. NaN if either group has no evaluable user.

  Args:
    values: float [U] per-user metric values.
    groups: int [U] binary group ids (0 or 1; others ignored).

  Returns:
    float32 scalar.
  """
  means = group_means(values, groups, 2)
  return means[0] - means[1]


@functools.partial(
    jax.jit, static_argnames=("num_user_groups", "num_item_groups"))
def cell_recall(topk_items: Array, test_items: Array, user_group: Array,
                item_group: Array, num_user_groups: int,
                num_item_groups: int) -> Array:
  """ITFR's per-cell recall R_{a,j}@K (Wang et al., WWW 2024).

  R_{a,j}@K = mean over users u of group a with T_u ∩ I_j non-empty of
  |topK_u ∩ T_u ∩ I_j| / |T_u ∩ I_j|, where T_u is u's test set and I_j the
  items of group j.

  Args:
    topk_items: int [U, K] ranked lists (-1 = empty slot), e.g. from
      `fairjax.metrics.topk_items` with training items excluded.
    test_items: bool [U, I] test sets T_u.
    user_group: int [U] user group ids in [0, A) (others ignored).
    item_group: int [I] item group ids in [0, J); items outside (e.g. -1 for
      items in no group) belong to no cell.
    num_user_groups: A.
    num_item_groups: J.

  Returns:
    float32 [A, J]; NaN for a cell with no user having test items in it.
  """
  top = jnp.asarray(topk_items, jnp.int32)
  test = jnp.asarray(test_items, bool)
  item_group = jnp.asarray(item_group, jnp.int32)
  user_group = jnp.asarray(user_group, jnp.int32)
  valid = top >= 0
  safe = jnp.where(valid, top, 0)
  hit = jnp.take_along_axis(test, safe, axis=1) & valid
  hit_group = jnp.where(hit, item_group[safe], -1)
  # one_hot of an out-of-range id is all zeros.
  hits = jax.nn.one_hot(hit_group, num_item_groups, dtype=jnp.float32).sum(1)
  item_onehot = jax.nn.one_hot(item_group, num_item_groups, dtype=jnp.float32)
  n_test = jnp.dot(test.astype(jnp.float32), item_onehot,
                   precision=jax.lax.Precision.HIGHEST)  # [U, J] exact counts
  has = n_test > 0
  ratio = jnp.where(has, hits / jnp.maximum(n_test, 1.0), 0.0)
  ok = (user_group >= 0) & (user_group < num_user_groups)
  seg = jnp.where(ok, user_group, num_user_groups)
  sums = jax.ops.segment_sum(ratio, seg, num_user_groups)
  counts = jax.ops.segment_sum(has.astype(jnp.float32), seg, num_user_groups)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)


def _nan_cv(x: Array, axis=None) -> Array:
  """Population std / mean over the non-NaN entries (NaN if none or mean 0)."""
  finite = ~jnp.isnan(x)
  n = finite.sum(axis=axis)
  mean = jnp.where(finite, x, 0.0).sum(axis=axis) / jnp.maximum(n, 1)
  centre = mean if axis is None else jnp.expand_dims(mean, axis)
  dev = jnp.where(finite, x - centre, 0.0)
  std = jnp.sqrt((dev ** 2).sum(axis=axis) / jnp.maximum(n, 1))
  return jnp.where((n > 0) & (mean != 0), std / jnp.where(mean != 0, mean, 1.0),
                   jnp.nan)


@jax.jit
def cv_metrics(cell_values: Array) -> dict[str, Array]:
  """Dispersion of per-cell values: CV, MIN, UCV, ICV (ITFR, DESIGN §4).

  Over the G non-NaN cells x_{a,j} of an [A, J] table (empty cells are
  skipped):
    cv  = std(x) / mean(x), population std (ddof = 0);
    min = mean of the max(floor(G / 4), 1) smallest cells;
    ucv = mean over item groups j of the CV of column x_{., j} (across user
          groups);
    icv = mean over user groups a of the CV of row x_{a, .} (across item
          groups).
  A CV with no cells or a zero mean is NaN; ucv/icv average the non-NaN CVs.

  Args:
    cell_values: float [A, J], e.g. from `cell_recall`.

  Returns:
    Dict with float32 scalars `cv`, `min`, `ucv`, `icv`.
  """
  x = jnp.asarray(cell_values, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f"cell_values must be [A, J], got shape {x.shape}")
  flat = x.reshape(-1)
  finite = ~jnp.isnan(flat)
  g = finite.sum()
  m = jnp.maximum(g // 4, 1)
  smallest = jnp.sort(jnp.where(finite, flat, jnp.inf))
  take = jnp.arange(flat.shape[0]) < m
  min_val = jnp.where(
      g > 0, jnp.where(take, smallest, 0.0).sum() / m, jnp.nan)
  return dict(cv=_nan_cv(flat), min=min_val,
              ucv=jnp.nanmean(_nan_cv(x, axis=0)),
              icv=jnp.nanmean(_nan_cv(x, axis=1)))


@functools.partial(jax.jit, static_argnames=("num_groups",))
def group_exposure(item_ids: Array, item_group: Array,
                   num_groups: int) -> Array:
  """Exposure counts e_g = number of retrieved slots holding a group-g item.

  e_g = sum_t sum_{k} 1[group(x_{t,k}) = g] over all served lists
  (FairSync, DESIGN §5).

  Args:
    item_ids: int [T, K] retrieved item ids; ids < 0 (empty slots) ignored.
    item_group: int [N] group of each item (ids outside [0, G) ignored).
    num_groups: G.

  Returns:
    int32 [G] counts.
  """
  ids = jnp.asarray(item_ids, jnp.int32).reshape(-1)
  item_group = jnp.asarray(item_group, jnp.int32)
  valid = (ids >= 0) & (ids < item_group.shape[0])
  g = jnp.where(valid, item_group[jnp.clip(ids, 0, item_group.shape[0] - 1)],
                -1)
  ok = (g >= 0) & (g < num_groups)
  return jax.ops.segment_sum(ok.astype(jnp.int32), jnp.where(ok, g, num_groups),
                             num_groups)


@jax.jit
def esp(exposure: Array, min_exposure: Array) -> Array:
  """Exposure satisfaction proportion ESP = (1/G) sum_g 1[e_g >= m_g].

  Args:
    exposure: [G] exposure e_g (e.g. from `group_exposure`).
    min_exposure: [G] required minimum m_g.

  Returns:
    float32 scalar in [0, 1].
  """
  e = jnp.asarray(exposure)
  m = jnp.asarray(min_exposure)
  return jnp.mean((e >= m).astype(jnp.float32))


@jax.jit
def der(group_utilities: Array) -> Array:
  """DER, deviation from equal representation (Hsu et al. 2025, DESIGN §6).

  DER = G / (G - 1) * sum_g (p_g - 1/G)^2 with p_g = Ubar_g / sum_h Ubar_h:
  0 when every group gets the same utility, 1 when one group gets all.

  Args:
    group_utilities: float [G] mean utility Ubar_g per group, G >= 2.

  Returns:
    float32 scalar; NaN if the utilities sum to 0.
  """
  u = jnp.asarray(group_utilities, jnp.float32)
  g = u.shape[-1]
  if u.ndim != 1 or g < 2:
    raise ValueError(f"group_utilities must be [G] with G >= 2, got {u.shape}")
  total = u.sum()
  p = u / jnp.where(total != 0, total, 1.0)
  val = g / (g - 1) * jnp.sum((p - 1.0 / g) ** 2)
  return jnp.where(total != 0, val, jnp.nan)


@jax.jit
def max_min_gap(group_utilities: Array) -> Array:
  """max_g Ubar_g - min_g Ubar_g (NaN groups ignored).

  Args:
    group_utilities: float [G].

  Returns:
    float32 scalar.
  """
  u = jnp.asarray(group_utilities, jnp.float32)
  return jnp.nanmax(u) - jnp.nanmin(u)


@jax.jit
def gini(x: Array) -> Array:
  """Gini coefficient of a non-negative vector.

  Gini = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))
       = sum_{i=1..n} (2 i - n - 1) x_(i) / (n sum_i x_i), x_(i) ascending.
  0 for perfect equality, (n - 1)/n when one entry holds everything.

  Args:
    x: float [n], n >= 1, non-negative (e.g. exposure per item or group).

  Returns:
    float32 scalar; NaN when sum(x) = 0.
  """
  x = jnp.sort(jnp.asarray(x, jnp.float32).reshape(-1))
  n = x.shape[0]
  if n == 0:
    raise ValueError("gini of an empty vector")
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  total = x.sum()
  val = jnp.sum((2 * i - n - 1) * x) / (n * jnp.where(total != 0, total, 1.0))
  return jnp.where(total != 0, val, jnp.nan)
