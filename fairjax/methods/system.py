"""System-level fairness: the multi-stage pipeline as a closed box (DESIGN §6).

Hsu, DiCiccio, Pillai, Namkoong (2025). A system of individually fair models
can still deliver unequal end utility; the remedy tunes the whole pipeline's
knobs theta = (alpha, K, s, lambda index) for welfare and equity jointly.
This module is the algorithm box; the job, the optimiser and the configs
live elsewhere. Stages (cached, computed once per (dataset, seed) by a
`Pipeline`):

  a. retrieval "interact" model: MF (d = 64, init N(0, 0.1^2)) trained with
     BPR (1 negative) on the train split, 20 epochs, batch 1024, Adam 1e-3
     (ML-1M, `StageConfig`); on synthetic data the rank-r majority fit of
     `fairjax.data.system_data`.
  b. scorers, one head per outcome m in (interact, like, love): MF trained
     likewise with BPR on the train positives of m (negatives: items
     without outcome m in the user's train rows; the interact head IS the
     retrieval model: same data, same loss); the interact head also as a
     family fine-tuned from it with FADE's loss
     (`fade.make_loss(model, 'fade', lam, tau=3, k=1, num_negatives=4)`) at
     lambda in `LAMBDAS`, 2 epochs each with a fresh Adam, user groups
     binarised as group 0 vs the rest (age: '<25' vs older). On synthetic
     data the heads are the oracle scores and the family the analytic
     proxy. Every head is calibrated by Platt scaling p = sigmoid(a s + b)
     on the validation split (`calibration_pairs`, `platt_fit`), its
     reliability audited on a second, independent negative sample
     (`reliability`, 10 equal-mass bins: `Pipeline.reliability_report`).
     Each family member's OWN group gap (`Pipeline.own_gaps`): max_g -
     min_g of the group means of the per-user validation AUC of interact
     positives against the user's other non-train items (model-level
     fairness, the figure the FADE family trades; B2 takes the lambda
     minimising it).
  c. retrieval per (K, s): the users in a seeded random order form the
     request stream, served in batches of B = 32 by FairSync
     (`fairjax.methods.fairsync.serve`, each user's train items excluded)
     with minimums m_g(s) = s m_g^full(K) (`min_exposure`; m^full = the
     item groups' catalog shares of the K T slots, capped by what the
     requests can take); s = 0 is 'unconstrained'. Cached per grid point
     (`grid_point`).
  d. second-pass ranker, top k = 10 served, end utility (`evaluate`):
       score(u, i) = sum_m alpha_m p_m(u, i) over u's candidates,
       U_u = sum_{i served to u} sum_m w_{g(u), m} y_m(u, i),
       W = mean_u U_u,  DER = G/(G-1) sum_g (p_g - 1/G)^2,
       p_g = Ubar_g / sum_h Ubar_h,  gap = max_g Ubar_g - min_g Ubar_g.
  e. preferences w_g(rho) (`preference_weights`).
  f. knobs (`Knobs`, `knobs_from_unit`, `validate_knobs`) and
     `Pipeline.evaluate_knobs`.

Discretisation: K takes the `K_GRID` values (16 log-spaced integers from
50 to 1000) and s the `S_GRID` values (0, 0.1, ..., 1); `grid_point` maps a
knob value to the nearest grid point (K nearest in log K, s nearest
0.1). The retrieval of a grid point is computed once per Pipeline (and,
with `cache_dir`, once per folder). Unconstrained lists (s = 0) are prefixes
of one K = 1000 retrieval (exact top-K, ties by lower id). Candidates are
int32 [U, K_MAX] in user order, padded with -1.

Probabilities: a head calibrated on the validation split estimates the
unconditional P(y_m = 1 in the validation split | u, i) among the user's
non-train items; on the test split every outcome is about twice as frequent
(20% vs 10% of the ratings), a common factor that leaves the ranking by
sum_m alpha_m p_m unchanged. At test time the user's validation items are
removed from the candidates (they are known then).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import checkpoint as ckpt_lib
from fairjax import metrics, train
from fairjax import models as models_lib
from fairjax.data import sampling
from fairjax.data.requests import training_exclusion
from fairjax.data.system_data import (
  LAMBDAS,
  OUTCOMES,
  SystemData,
  check_user_groups,
  group_means,
  user_auc,
)
from fairjax.errors import ConfigError, DataError
from fairjax.methods import fade, fairsync
from fairjax.ops import dual as dual_ops

K_MIN, K_MAX = 50, 1000
K_GRID = tuple(int(round(x)) for x in np.geomspace(K_MIN, K_MAX, 16))
S_GRID = tuple(round(0.1 * j, 1) for j in range(11))
NUM_KNOBS = 5
# w*_g per grouping: gender (M, F); age buckets interpolate linearly from
# the M profile (youngest bucket) to the F profile (oldest):
# w*_b = (1 - b / (G - 1)) w*_M + b / (G - 1) w*_F.
W_STAR_M = (0.6, 0.3, 0.1)
W_STAR_F = (0.1, 0.3, 0.6)
GROUP_COUNTS = {"gender": 2, "age": 3}


# ----------------------------------------------------------------------------
# e. Preferences.


def preference_weights(groups: str = "gender", rho: float = 1.0
                       ) -> np.ndarray:
  """Outcome weights per user group, w_g(rho) (DESIGN §6).

      w_g(rho) = (1 - rho) (1/3, 1/3, 1/3) + rho w*_g,
      w*_M = (0.6, 0.3, 0.1), w*_F = (0.1, 0.3, 0.6), and for the age
      buckets (<25, 25-44, 45+) w*_b = (1 - b/2) w*_M + (b/2) w*_F.

  Args:
    groups: 'gender' (G = 2) or 'age' (G = 3).
    rho: heterogeneity in [0, 1]; 0 = homogeneous control, 1 = default.

  Returns:
    float32 [G, 3] (rows sum to 1), columns in `OUTCOMES` order.

  Raises:
    ConfigError naming 'groups' or 'rho'.
  """
  if groups not in GROUP_COUNTS:
    raise ConfigError(f"field 'groups': expected one of "
                      f"{tuple(GROUP_COUNTS)}, got {groups!r}")
  try:
    rho = float(rho)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"field 'rho': not a number: {rho!r}") from e
  if not 0.0 <= rho <= 1.0:
    raise ConfigError(f"field 'rho': must be in [0, 1], got {rho}")
  g = GROUP_COUNTS[groups]
  t = np.arange(g) / (g - 1)
  w_star = (1 - t)[:, None] * np.asarray(W_STAR_M) + t[:, None] * np.asarray(
      W_STAR_F)
  return ((1 - rho) / 3.0 + rho * w_star).astype(np.float32)


def check_weights(weights, num_groups: int) -> np.ndarray:
  """Validates outcome weights [G, 3]; returns them as float32.

  Raises:
    ConfigError (field 'weights'): wrong shape (G groups x 3 outcomes),
      non-finite or negative entries.
  """
  w = np.asarray(weights, np.float32)
  if w.shape != (num_groups, len(OUTCOMES)):
    raise ConfigError(f"field 'weights': expected shape ({num_groups}, "
                      f"{len(OUTCOMES)}) = (groups, outcomes {OUTCOMES}), got "
                      f"{w.shape}")
  if not np.all(np.isfinite(w)) or (w < 0).any():
    raise ConfigError(f"field 'weights': must be finite and >= 0, got {w}")
  return w


# ----------------------------------------------------------------------------
# f. Knobs.


@dataclasses.dataclass(frozen=True)
class Knobs:
  """The pipeline's knobs theta.

  Attributes:
    alpha: (alpha_interact, alpha_like, alpha_love) on the simplex.
    K: retrieved candidates per user, in [50, 1000].
    s: exposure-constraint strength in [0, 1] (0 = unconstrained).
    lam_index: index into `LAMBDAS` of the interact head's FADE member.
  """

  alpha: tuple[float, float, float]
  K: int
  s: float
  lam_index: int

  def as_dict(self) -> dict[str, Any]:
    return {"alpha": tuple(float(a) for a in self.alpha), "K": int(self.K),
            "s": float(self.s), "lam_index": int(self.lam_index)}


def _as_knobs(knobs: Knobs | Mapping) -> Knobs:
  if isinstance(knobs, Knobs):
    return knobs
  if not isinstance(knobs, Mapping):
    raise ConfigError(f"field 'knobs': expected Knobs or a mapping, got "
                      f"{type(knobs).__name__}")
  missing = [f for f in ("alpha", "K", "s", "lam_index") if f not in knobs]
  if missing:
    raise ConfigError(f"field '{missing[0]}': missing from the knobs")
  return Knobs(alpha=tuple(np.asarray(knobs["alpha"], np.float64).reshape(-1)
                           .tolist()), K=knobs["K"], s=knobs["s"],
               lam_index=knobs["lam_index"])


def validate_knobs(knobs: Knobs | Mapping, tol: float = 1e-6) -> Knobs:
  """Checks every knob against its box; returns a `Knobs`.

  Raises:
    ConfigError naming the field: 'alpha' (3 finite entries >= 0 summing to
      1 within tol), 'K' (a number in [50, 1000]), 's' (in [0, 1]),
      'lam_index' (an integer in 0..len(LAMBDAS) - 1).
  """
  k = _as_knobs(knobs)
  a = np.asarray(k.alpha, np.float64)
  if a.shape != (len(OUTCOMES),) or not np.all(np.isfinite(a)):
    raise ConfigError(f"field 'alpha': expected {len(OUTCOMES)} finite "
                      f"weights, got {k.alpha}")
  if (a < -tol).any() or abs(a.sum() - 1.0) > tol:
    raise ConfigError(f"field 'alpha': must lie on the simplex (>= 0, sum "
                      f"1), got {tuple(a.tolist())}")
  for name, lo, hi in (("K", K_MIN, K_MAX), ("s", 0.0, 1.0)):
    v = getattr(k, name)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
      raise ConfigError(f"field '{name}': not a number: {v!r}")
    if not lo <= float(v) <= hi:
      raise ConfigError(f"field '{name}': must be in [{lo}, {hi}], got {v}")
  li = k.lam_index
  if (isinstance(li, bool) or not isinstance(li, (int, np.integer))
      or not 0 <= li < len(LAMBDAS)):
    raise ConfigError(f"field 'lam_index': must be an integer in 0.."
                      f"{len(LAMBDAS) - 1}, got {li!r}")
  alpha = tuple(float(x) for x in np.clip(a, 0.0, None) / np.clip(
      a, 0.0, None).sum())
  return Knobs(alpha=alpha, K=k.K, s=float(k.s), lam_index=int(li))


def knobs_from_unit(x) -> Knobs:
  """Maps a point of the unit cube [0, 1]^5 to knobs (the optimiser's space).

      alpha_0 = 1 - sqrt(1 - x_0),  alpha_1 = (1 - alpha_0) x_1,
      alpha_2 = (1 - alpha_0)(1 - x_1)        (stick-breaking with the
          Beta(1, 2) quantile: x uniform on [0, 1]^2 gives alpha uniform on
          the simplex; every vertex and edge is reached),
      K = round(exp(log 50 + x_2 (log 1000 - log 50))),
      s = x_3,
      lam_index = min(floor(5 x_4), 4).

  Args:
    x: float [5] in [0, 1]^5 (values outside are clipped).

  Returns:
    Knobs (K is an integer, not yet rounded to `K_GRID`).
  """
  x = np.asarray(x, np.float64).reshape(-1)
  if x.shape != (NUM_KNOBS,) or not np.all(np.isfinite(x)):
    raise ConfigError(f"field 'x': expected {NUM_KNOBS} finite coordinates "
                      f"in [0, 1], got {x}")
  x = np.clip(x, 0.0, 1.0)
  a0 = 1.0 - math.sqrt(1.0 - x[0])
  alpha = (a0, (1 - a0) * x[1], (1 - a0) * (1 - x[1]))
  k = int(round(math.exp(math.log(K_MIN) + x[2] * (math.log(K_MAX) -
                                                    math.log(K_MIN)))))
  k = min(max(k, K_MIN), K_MAX)
  li = min(int(math.floor(len(LAMBDAS) * x[4])), len(LAMBDAS) - 1)
  return Knobs(alpha=tuple(float(a) for a in alpha), K=k, s=float(x[3]),
               lam_index=li)


def knobs_to_unit(knobs: Knobs | Mapping) -> np.ndarray:
  """A preimage in [0, 1]^5 of `knobs` under `knobs_from_unit`.

  x_0 = 1 - (1 - alpha_0)^2, x_1 = alpha_1 / (1 - alpha_0) (1/2 at the
  vertex alpha_0 = 1), x_2 = log(K / 50) / log(20), x_3 = s, x_4 = (lam_index
  + 1/2) / 5.
  """
  k = validate_knobs(knobs)
  a = np.asarray(k.alpha)
  rest = 1.0 - a[0]
  x1 = a[1] / rest if rest > 1e-12 else 0.5
  return np.array([1.0 - rest ** 2, x1,
                   math.log(float(k.K) / K_MIN) / math.log(K_MAX / K_MIN),
                   k.s, (k.lam_index + 0.5) / len(LAMBDAS)], np.float64)


def grid_point(K: float, s: float) -> tuple[int, float]:
  """The retrieval grid point of (K, s): nearest K in log K, nearest s."""
  kg = np.asarray(K_GRID, np.float64)
  k = int(kg[np.argmin(np.abs(np.log(kg) - math.log(max(float(K), 1e-9))))])
  sg = np.asarray(S_GRID)
  return k, float(sg[np.argmin(np.abs(sg - float(s)))])


# ----------------------------------------------------------------------------
# b. Calibration.


def platt_fit(scores, labels, weights=None, max_iter: int = 100,
              tol: float = 1e-10) -> tuple[float, float]:
  """Platt scaling by weighted logistic regression (Platt 1999).

      (a, b) = argmin sum_j w_j [softplus(z_j) - y_j z_j],  z_j = a s_j + b,

  solved by Newton's method with step halving on standardised scores (float64
  on the host; two parameters).

  Args:
    scores: float [n] raw scores s_j.
    labels: [n] binary labels y_j.
    weights: optional [n] non-negative weights (e.g. inverse sampling rates).
    max_iter: Newton iterations.
    tol: stop when the step's max-norm falls below it.

  Returns:
    (a, b) as floats.

  Raises:
    DataError: empty input, a single class, or non-finite scores.
  """
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels, np.float64).reshape(-1)
  w = (np.ones_like(s) if weights is None
       else np.asarray(weights, np.float64).reshape(-1))
  if s.size == 0 or s.shape != y.shape or s.shape != w.shape:
    raise DataError(f"scores {s.shape}, labels {y.shape} and weights "
                    f"{w.shape} must be equal non-empty vectors",
                    field="scores")
  if not np.all(np.isfinite(s)):
    raise DataError("non-finite scores", field="scores")
  wp, wn = float(w[y > 0.5].sum()), float(w[y <= 0.5].sum())
  if wp <= 0 or wn <= 0:
    raise DataError("need both positive and negative labels",
                    field="labels")
  mu, sd = float(np.average(s, weights=w)), float(s.std()) or 1.0
  x = (s - mu) / sd
  theta = np.array([0.0, math.log(wp / wn)])

  def loss(t):
    z = t[0] * x + t[1]
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)))

  cur = loss(theta)
  for _ in range(max_iter):
    z = theta[0] * x + theta[1]
    p = 1.0 / (1.0 + np.exp(-z))
    r = w * (p - y)
    h = w * p * (1 - p)
    grad = np.array([np.sum(r * x), np.sum(r)])
    hess = np.array([[np.sum(h * x * x), np.sum(h * x)],
                     [np.sum(h * x), np.sum(h)]]) + 1e-12 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    t, new = 1.0, None
    for _ in range(30):
      cand = theta - t * step
      new = loss(cand)
      if new <= cur + 1e-12 * abs(cur):
        break
      t *= 0.5
    theta, cur = cand, new
    if np.max(np.abs(t * step)) < tol:
      break
  a = theta[0] / sd
  return float(a), float(theta[1] - a * mu)


def reliability(p, y, bins: int = 10, weights=None,
                strategy: str = "uniform") -> dict[str, Any]:
  """Reliability table and expected calibration error (Guo et al. 2017).

  Bins: 'uniform' = equal-width bins of [0, 1] (a prediction on an edge goes
  to the upper bin, p = 1 to the last); 'quantile' = equal (weighted) mass:
  edge j is the smallest p whose cumulative weight (p ascending) reaches
  j / bins of the total, bins are right-closed (a prediction on an edge
  goes to the lower bin). Per bin b with weight
  W_b = sum_{j in b} w_j:

      mean_pred_b = sum_j w_j p_j / W_b,   frac_pos_b = sum_j w_j y_j / W_b,
      ECE = sum_b (W_b / W) |mean_pred_b - frac_pos_b|.

  Args:
    p: float [n] predicted probabilities.
    y: [n] binary outcomes.
    bins: number of bins.
    weights: optional [n] weights (default 1).
    strategy: 'uniform' or 'quantile'.

  Returns:
    dict: mean_pred [bins], frac_pos [bins] (NaN for an empty bin), count
    [bins] (weighted), num [bins] (rows), edges [bins + 1], ece, base_rate
    (weighted mean of y), mean_pred_all (weighted mean of p).
  """
  p = np.asarray(p, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  w = (np.ones_like(p) if weights is None
       else np.asarray(weights, np.float64).reshape(-1))
  if bins < 1:
    raise ConfigError(f"field 'bins': must be >= 1, got {bins}")
  if p.size == 0 or p.shape != y.shape or p.shape != w.shape:
    raise DataError("p, y and weights must be equal non-empty vectors",
                    field="p")
  if strategy == "uniform":
    edges = np.linspace(0.0, 1.0, bins + 1)
  elif strategy == "quantile":
    order = np.argsort(p, kind="stable")
    cw = np.cumsum(w[order])
    qs = np.arange(1, bins) / bins * cw[-1]
    inner = p[order][np.minimum(np.searchsorted(cw, qs, side="left"),
                                p.size - 1)]
    edges = np.concatenate([[min(0.0, p.min())], inner,
                            [max(1.0, p.max())]])
  else:
    raise ConfigError(f"field 'strategy': 'uniform' or 'quantile', got "
                      f"{strategy!r}")
  side = "right" if strategy == "uniform" else "left"
  b = np.clip(np.searchsorted(edges[1:-1], p, side=side), 0, bins - 1)
  cnt = np.bincount(b, weights=w, minlength=bins)
  num = np.bincount(b, minlength=bins)
  sp = np.bincount(b, weights=w * p, minlength=bins)
  sy = np.bincount(b, weights=w * y, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mp = np.where(cnt > 0, sp / cnt, np.nan)
    fy = np.where(cnt > 0, sy / cnt, np.nan)
  tot = cnt.sum()
  ece = float(np.nansum(cnt / tot * np.abs(mp - fy)))
  return {"mean_pred": mp, "frac_pos": fy, "count": cnt, "num": num,
          "edges": edges, "ece": ece, "base_rate": float(sy.sum() / tot),
          "mean_pred_all": float(sp.sum() / tot)}


def calibration_pairs(data: SystemData, outcome: int, split: str = "valid",
                      neg_ratio: float = 4.0, seed: int = 0
                      ) -> dict[str, np.ndarray]:
  """The case-control sample a head is calibrated (and audited) on.

  Population: every non-train pair (u, i) (train = the train split's pairs);
  label y = 1 iff (u, i) is in `split` with outcome `outcome`. The sample
  holds ALL the positives (weight 1) and n_neg = ceil(neg_ratio n_pos)
  negatives drawn uniformly with replacement from the population's
  negatives, each of weight N_neg / n_neg (N_neg = population negatives):
  the inverse of the sampling rate, so weighted sums estimate population
  sums and a weighted fit estimates the unconditional P(y_m = 1 | u, i)
  among non-train pairs (the base rate is respected).

  Returns:
    dict user, item (int32 [n]), label (float32 [n]), weight (float64 [n]).
  """
  u_n, i_n = data.num_users, data.num_items
  sp = data.split(split)
  on = sp.outcomes[:, outcome]
  pu, pi = sp.user[on], sp.item[on]
  blocked = data.seen("train")
  blocked[pu, pi] = True
  n_pos = int(pu.size)
  if n_pos == 0:
    raise DataError(f"no {OUTCOMES[outcome]!r} positives in the "
                    f"{split!r} split", field=f"truth[{split}]")
  pop_neg = u_n * i_n - int(blocked.sum())
  n_neg = int(math.ceil(neg_ratio * n_pos))
  rng = np.random.default_rng([seed, outcome, 9173])
  got = []
  need = n_neg
  while need > 0:
    flat = rng.integers(0, u_n * i_n, size=int(need * 1.2) + 16)
    flat = flat[~blocked.reshape(-1)[flat]][:need]
    got.append(flat)
    need -= flat.size
  flat = np.concatenate(got)
  return {"user": np.concatenate([pu, flat // i_n]).astype(np.int32),
          "item": np.concatenate([pi, flat % i_n]).astype(np.int32),
          "label": np.concatenate([np.ones(n_pos), np.zeros(n_neg)]).astype(
              np.float32),
          "weight": np.concatenate([np.ones(n_pos),
                                    np.full(n_neg, pop_neg / n_neg)])}


# ----------------------------------------------------------------------------
# d. Second-pass ranker, serving and end utility.


@functools.partial(jax.jit, static_argnames=("k",))
def evaluate(cands: jax.Array, probs: jax.Array, alpha: jax.Array,
             truth: jax.Array, weights: jax.Array, user_group: jax.Array,
             k: int = 10) -> dict[str, jax.Array]:
  """Ranks the candidates by sum_m alpha_m p_m, serves the top k, scores them.

      score(u, i) = sum_m alpha_m p_m(u, i)     (valid candidates only),
      S_u = top-k of u's candidates by score (ties: earlier candidate),
      U_u = sum_{i in S_u} sum_m w_{g(u), m} y_m(u, i),
      W = mean_u U_u,  Ubar_g = mean_{u in g} U_u,
      DER = G/(G-1) sum_g (p_g - 1/G)^2,  p_g = Ubar_g / sum_h Ubar_h,
      max-min gap = max_g Ubar_g - min_g Ubar_g.

  Args:
    cands: int32 [U, Kmax] candidate ids per user, -1 padded.
    probs: float32 [3, U, I] calibrated p_m(u, i), m in `OUTCOMES`.
    alpha: float [3] ranker weights.
    truth: bool [3, U, I] held-out outcomes y_m(u, i).
    weights: float [G, 3] outcome weights w_{g, m}.
    user_group: int [U] group in [0, G).
    k: items served per user.

  Returns:
    dict welfare, der, max_min_gap (scalars), group_utility [G] (NaN for a
    group without users), per_user [U], served int32 [U, k] (-1: fewer
    than k candidates). NaN inputs propagate to NaN outputs.
  """
  u_n = cands.shape[0]
  g_n = weights.shape[0]
  valid = cands >= 0
  c = jnp.maximum(cands, 0)
  rows = jnp.arange(u_n)[:, None]
  p = probs[:, rows, c]  # [3, U, Kmax]
  score = jnp.einsum("m,muk->uk", alpha.astype(p.dtype), p)
  score = jnp.where(valid, score, -jnp.inf)
  _, idx = jax.lax.top_k(score, k)
  served = jnp.where(jnp.take_along_axis(valid, idx, 1),
                     jnp.take_along_axis(c, idx, 1), -1)
  y = truth[:, rows, jnp.maximum(served, 0)] & (served >= 0)[None]
  w_u = weights[user_group]  # [U, 3]
  per_user = jnp.einsum("um,muk->u", w_u, y.astype(w_u.dtype))
  # A NaN score anywhere in a user's candidates makes that user NaN.
  per_user = jnp.where(jnp.any(jnp.isnan(score), axis=1), jnp.nan, per_user)
  tot = jax.ops.segment_sum(per_user, user_group, num_segments=g_n)
  cnt = jax.ops.segment_sum(jnp.ones_like(per_user), user_group,
                            num_segments=g_n)
  group_u = jnp.where(cnt > 0, tot / jnp.maximum(cnt, 1.0), jnp.nan)
  der = metrics.der(group_u)
  gap = jnp.where(jnp.any(jnp.isnan(group_u)), jnp.nan,
                  metrics.max_min_gap(group_u))
  return {"welfare": jnp.mean(per_user), "der": der, "max_min_gap": gap,
          "group_utility": group_u, "per_user": per_user, "served": served}


@jax.jit
def mask_candidates(cands: jax.Array, blocked: jax.Array) -> jax.Array:
  """cands with the ids blocked for their row (bool [U, I]) set to -1."""
  rows = jnp.arange(cands.shape[0])[:, None]
  hit = blocked[rows, jnp.maximum(cands, 0)] & (cands >= 0)
  return jnp.where(hit, -1, cands)


def check_truth(truth, weights, user_group, group_names, split: str) -> None:
  """DataError naming the group when DER would be undefined by construction.

  Raises:
    DataError (field 'user_group'): a group without users; (field
      'truth[split]'): a group whose users have no held-out outcome of
      positive weight (its utility is 0 whatever is served).
  """
  check_user_groups(user_group, group_names)
  t = np.asarray(truth)
  w = np.asarray(weights)
  g = np.asarray(user_group)
  per_user = np.sum(t.sum(axis=2, dtype=np.int64).T * w[g], axis=1)
  pot = np.bincount(g, weights=per_user, minlength=len(group_names))
  empty = [group_names[j] for j in np.nonzero(pot <= 0)[0]]
  if empty:
    raise DataError(f"user group(s) {empty} have no held-out utility in the "
                    f"{split!r} split (DER undefined)", field=f"truth[{split}]")


# ----------------------------------------------------------------------------
# a-b. Training the heads (ML-1M).


@dataclasses.dataclass(frozen=True)
class StageConfig:
  """Training and calibration settings of stages a-b.

  Attributes:
    dim: MF dimension d.
    init_std: MF init std.
    epochs: BPR epochs of the retrieval / interact head and of like, love.
    batch_size: training batch.
    learning_rate: Adam step size.
    num_negatives: BPR negatives per training row (base heads).
    fade_negatives: negatives per row in FADE fine-tuning (FADE's 4).
    finetune_epochs: FADE fine-tuning epochs per lambda.
    tau: FADE's NeuralSort temperature.
    lambdas: the FADE family's lambda values.
    neg_ratio: calibration negatives per validation positive.
    seed: training / sampling seed.
  """

  dim: int = 64
  init_std: float = 0.1
  epochs: int = 20
  batch_size: int = 1024
  learning_rate: float = 1e-3
  num_negatives: int = 1
  fade_negatives: int = 4
  finetune_epochs: int = 2
  tau: float = 3.0
  lambdas: tuple[float, ...] = LAMBDAS
  neg_ratio: float = 4.0
  seed: int = 0


def _epoch_batches(user, item, batch_size, seed_parts):
  perm = np.random.default_rng(list(seed_parts)).permutation(user.size)
  steps = -(-perm.size // batch_size)
  pad = steps * batch_size - perm.size
  idx = np.concatenate([perm, np.zeros(pad, perm.dtype)])
  valid = np.arange(steps * batch_size) < perm.size
  return {"user": user[idx].reshape(steps, batch_size),
          "item": item[idx].reshape(steps, batch_size),
          "valid": valid.reshape(steps, batch_size)}


def train_head(model, params, user, item, seen, user_group, *, kind: str,
               lam: float, epochs: int, num_negatives: int,
               config: StageConfig, seed_parts, checkpoint_dir=None,
               name: str = "head") -> dict:
  """Trains MF `params` with `fade.make_loss(kind, lam)` on (user, item).

  Adam (config.learning_rate, fresh state), `epochs` shuffled passes in
  batches of config.batch_size, `num_negatives` uniform negatives among the
  items not in `seen[u]`; `train.fit` with checkpoints every 5 epochs under
  `checkpoint_dir` (a finished head is restored, not retrained).

  Returns:
    the trained params.
  """
  tx = optax.adam(config.learning_rate)
  loss = fade.make_loss(model, kind, lam, config.tau, 1, num_negatives)
  epoch_fn = train.make_epoch(
      train.make_step(loss, tx, keys_in_batch=True),
      prepare=functools.partial(sampling.presample_negatives,
                                num_items=model.num_items,
                                num_negatives=num_negatives))
  sampling.check_sampleable(seen, np.unique(user))
  context = {"seen": jnp.asarray(seen),
             "user_group": jnp.asarray(user_group, jnp.int32)}
  state = train.create_state(params, tx)
  state, _ = train.fit(
      state, epoch_fn,
      lambda e: _epoch_batches(user, item, config.batch_size,
                               (*seed_parts, e)),
      epochs, functools.reduce(jax.random.fold_in, seed_parts,
                               jax.random.key(config.seed)),
      context=context, checkpoint_dir=checkpoint_dir, ckpt_every=5,
      name=name, log_every=max(1, epochs // 5))
  return jax.tree.map(np.asarray, state.params)


# ----------------------------------------------------------------------------
# The pipeline.


@dataclasses.dataclass
class Head:
  """One calibrated scorer: dense scores or MF factors, and Platt (a, b).

  scores(u, i) = dense[u, i], or <user_vec[u], item_vec[i]>.
  """

  name: str
  dense: np.ndarray | None = None
  user_vec: np.ndarray | None = None
  item_vec: np.ndarray | None = None
  a: float = 1.0
  b: float = 0.0

  def scores(self, users=None) -> jax.Array:
    """float32 [U', I] raw scores of `users` (default all)."""
    if self.dense is not None:
      d = jnp.asarray(self.dense)
      return d if users is None else d[jnp.asarray(users)]
    uv = self.user_vec if users is None else self.user_vec[np.asarray(users)]
    return jnp.asarray(uv) @ jnp.asarray(self.item_vec).T

  def pair_scores(self, users, items) -> np.ndarray:
    users, items = np.asarray(users), np.asarray(items)
    if self.dense is not None:
      return np.asarray(self.dense[users, items], np.float32)
    return np.einsum("nd,nd->n", self.user_vec[users],
                     self.item_vec[items]).astype(np.float32)

  def logits(self, users=None) -> jax.Array:
    return self.a * self.scores(users) + self.b

  def probs(self, users=None) -> jax.Array:
    return jax.nn.sigmoid(self.logits(users))


def exposure_shortfall(exposure, min_exposure) -> float:
  """sum_g max(0, m_g - E_g) / sum_g m_g (0 when every m_g = 0)."""
  e = np.asarray(exposure, np.float64)
  m = np.asarray(min_exposure, np.float64)
  tot = m.sum()
  return float(np.maximum(m - e, 0).sum() / tot) if tot > 0 else 0.0


@dataclasses.dataclass
class RetrievalEntry:
  """One cached retrieval: candidates [U, K] (user order) and diagnostics.

  Attributes:
    candidates: int32 [U, K] retrieved ids per user (-1: empty slot).
    esp: share of item groups with exposure E_g >= m_g.
    exposure: float [G_I] E_g, group-g items in all lists.
    min_exposure: float [G_I] the minimums m_g(s).
    seconds: serving time (0 for a prefix of the K = 1000 lists).
  """

  candidates: np.ndarray
  esp: float
  exposure: np.ndarray
  min_exposure: np.ndarray
  seconds: float

  @property
  def shortfall(self) -> float:
    """Missing exposure share, `exposure_shortfall`."""
    return exposure_shortfall(self.exposure, self.min_exposure)


def _log(msg: str) -> None:
  print(f"[system] {msg}", file=sys.stderr, flush=True)


class Pipeline:
  """The cached stages of one (dataset, seed) and the knob evaluation.

  Stages a-b run on first use (`prepare`), retrievals lazily per grid point,
  probability stacks lazily per lambda index; all caches are this object's
  fields (no global state).

  Args:
    data: the `SystemData`.
    rho: preference heterogeneity (ignored when `weights` is given).
    weights: optional [G, 3] outcome weights (default
      `preference_weights(data.groups, rho)`).
    k: items served per user.
    batch_size: B, requests per FairSync dual step.
    eta: FairSync's Adam step size for mu (score units); None = `eta_scale`
      x the standard deviation of the retriever's scores over 20,000 random
      (user, item) pairs (seeded).
    eta_scale: see `eta` (0.2 with B = 32: on the synthetic default the
      s = 1 lists miss under 0.5% of the required exposure, vs 2% at
      0.05; picked by a small sweep).
    stage_config: training / calibration settings (ML-1M).
    checkpoint_dir: folder for head checkpoints (ML-1M; reruns restore).
    cache_dir: folder for retrieval results: one .npz per grid point under
      a subfolder named by the dataset, its seed, grouping and sizes, the
      stream seed, B and a hash of `stage_config`; a file whose eta differs
      from this pipeline's is recomputed.
    seed: the request stream's seed.
    verbose: progress lines on stderr.
  """

  def __init__(self, data: SystemData, *, rho: float = 1.0, weights=None,
               k: int = 10, batch_size: int = 32, eta: float | None = None,
               eta_scale: float = 0.2,
               stage_config: StageConfig | None = None,
               checkpoint_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, seed: int = 0,
               verbose: bool = True):
    self.data = data
    self.weights = check_weights(
        preference_weights(data.groups, rho) if weights is None else weights,
        data.num_groups)
    if not 1 <= k <= K_MIN:
      raise ConfigError(f"field 'k': must be in [1, {K_MIN}], got {k}")
    if not 1 <= batch_size <= data.num_users:
      raise ConfigError(f"field 'batch_size': must be in [1, "
                        f"{data.num_users}], got {batch_size}")
    if eta is not None and not eta > 0:
      raise ConfigError(f"field 'eta': must be > 0, got {eta}")
    check_user_groups(data.user_group, data.group_names)
    if not eta_scale > 0:
      raise ConfigError(f"field 'eta_scale': must be > 0, got {eta_scale}")
    self.k, self.batch_size, self.eta = int(k), int(batch_size), eta
    self.eta_scale = float(eta_scale)
    self.config = stage_config or StageConfig()
    self.checkpoint_dir = (None if checkpoint_dir is None
                           else pathlib.Path(checkpoint_dir))
    self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
    self.seed = int(seed)
    self.verbose = verbose
    self.stream = np.random.default_rng([self.seed, 4242]).permutation(
        data.num_users).astype(np.int32)
    self.heads: dict[str, Head] | None = None
    self.reliability_report: dict[str, dict] = {}
    self.timings: dict[str, float] = {}
    self._retrieval: dict[tuple[int, float], RetrievalEntry] = {}
    self._probs: dict[int, jax.Array] = {}
    self._truth: dict[str, jax.Array] = {}
    self._own: dict[str, np.ndarray] | None = None
    self._exclude: np.ndarray | None = None
    self._avail: np.ndarray | None = None
    self._user_group = jnp.asarray(data.user_group, jnp.int32)
    self._weights = jnp.asarray(self.weights)

  # -- stages a-b -------------------------------------------------------------

  def prepare(self) -> dict[str, Head]:
    """Runs stages a-b once: heads (trained or oracle), calibrated."""
    if self.heads is not None:
      return self.heads
    t0 = time.perf_counter()
    if self.data.oracle is not None:
      heads = self._oracle_heads()
    else:
      heads = self._trained_heads()
    t1 = time.perf_counter()
    samples = {}  # (outcome, seed) -> calibration_pairs

    def sample(m, seed):
      if (m, seed) not in samples:
        samples[m, seed] = calibration_pairs(self.data, m, "valid",
                                             self.config.neg_ratio, seed)
      return samples[m, seed]
    for h in heads.values():
      if h.name == "retriever":
        continue
      m = OUTCOMES.index(h.name.split("@")[0])
      fit = sample(m, self.config.seed)
      h.a, h.b = platt_fit(h.pair_scores(fit["user"], fit["item"]),
                           fit["label"], fit["weight"])
      audit = sample(m, self.config.seed + 1)
      p = 1.0 / (1.0 + np.exp(-(h.a * h.pair_scores(audit["user"],
                                                      audit["item"]) + h.b)))
      self.reliability_report[h.name] = reliability(
          p, audit["label"], 10, audit["weight"], strategy="quantile")
    self.timings["train_seconds"] = t1 - t0
    self.timings["calibrate_seconds"] = time.perf_counter() - t1
    self.heads = heads
    if self.verbose:
      for name, r in self.reliability_report.items():
        _log(f"calibration {name}: a={heads[name].a:.3f} "
             f"b={heads[name].b:.3f} ECE={r['ece']:.2e} "
             f"(base rate {r['base_rate']:.2e})")
    return heads

  def _oracle_heads(self) -> dict[str, Head]:
    o = self.data.oracle
    heads = {"retriever": Head("retriever", user_vec=o.retriever_user,
                               item_vec=o.retriever_item)}
    for m, name in enumerate(OUTCOMES[1:], start=1):
      heads[name] = Head(name, dense=o.scores[m])
    for j in range(len(LAMBDAS)):
      heads[f"interact@{j}"] = Head(f"interact@{j}",
                                    dense=o.interact_family[j])
    return heads

  def _trained_heads(self) -> dict[str, Head]:
    d, c = self.data, self.config
    model = models_lib.create("mf", d.num_users, d.num_items, dim=c.dim,
                              init_std=c.init_std)
    tr = d.train
    ckpt = (lambda name: None if self.checkpoint_dir is None
            else self.checkpoint_dir / name)
    # FADE's loss is two-group: group 0 vs the rest (binarisation).
    fair_group = (d.user_group != 0).astype(np.int32)
    params = {}
    for m, name in enumerate(OUTCOMES):
      on = tr.outcomes[:, m]
      seen = np.zeros((d.num_users, d.num_items), bool)
      seen[tr.user[on], tr.item[on]] = True
      init = models_lib.init_params(
          model, jax.random.fold_in(jax.random.key(c.seed), m))
      t = time.perf_counter()
      params[name] = train_head(
          model, init, tr.user[on], tr.item[on], seen, fair_group,
          kind="bpr", lam=0.0, epochs=c.epochs,
          num_negatives=c.num_negatives, config=c,
          seed_parts=(c.seed, m), checkpoint_dir=ckpt(name), name=name)
      self.timings[f"train_{name}_seconds"] = time.perf_counter() - t
    heads = {}

    def mf_head(name, p):
      ids_u = jnp.arange(d.num_users)
      ids_i = jnp.arange(d.num_items)
      return Head(name,
                  user_vec=np.asarray(models_lib.user_embeddings(model, p,
                                                                 ids_u)),
                  item_vec=np.asarray(models_lib.item_embeddings(model, p,
                                                                 ids_i)))

    heads["retriever"] = mf_head("retriever", params["interact"])
    for name in OUTCOMES[1:]:
      heads[name] = mf_head(name, params[name])
    seen = d.seen("train")
    for j, lam in enumerate(c.lambdas):
      t = time.perf_counter()
      p = train_head(
          model, params["interact"], tr.user, tr.item, seen, fair_group,
          kind="fade", lam=float(lam), epochs=c.finetune_epochs,
          num_negatives=c.fade_negatives, config=c,
          seed_parts=(c.seed, 100 + j), checkpoint_dir=ckpt(f"fade_{j}"),
          name=f"fade lam={lam:g}")
      self.timings[f"train_fade_{j}_seconds"] = time.perf_counter() - t
      heads[f"interact@{j}"] = mf_head(f"interact@{j}", p)
    return heads

  def own_gaps(self) -> dict[str, np.ndarray]:
    """Model-level fairness of the interact family (see the module doc).

    Returns:
      dict auc [L, G] (group mean per-user validation AUC), gap [L] (max_g -
      min_g of auc), lambdas [L].
    """
    if self._own is None:
      heads = self.prepare()
      t0 = time.perf_counter()
      d = self.data
      valid = d.truth("valid")[0]
      train_seen = d.seen("train")
      auc = np.stack([
          group_means(user_auc(np.asarray(heads[f"interact@{j}"].logits()),
                               valid, train_seen), d.user_group,
                      d.num_groups) for j in range(len(LAMBDAS))])
      self._own = {"auc": auc, "gap": np.nanmax(auc, 1) - np.nanmin(auc, 1),
                   "lambdas": np.asarray(LAMBDAS)}
      self.timings["own_gap_seconds"] = time.perf_counter() - t0
    return self._own

  def stage_summary(self) -> dict[str, Any]:
    """JSON-friendly diagnostics of stages a-b: per head (a, b, ECE, base
    rate), the family's own gaps, timings, eta and B."""
    heads = self.prepare()
    own = self.own_gaps()
    return {
        "calibration": {
            n: {"a": heads[n].a, "b": heads[n].b, "ece": r["ece"],
                "base_rate": r["base_rate"],
                "mean_pred": r["mean_pred"].tolist(),
                "frac_pos": r["frac_pos"].tolist()}
            for n, r in self.reliability_report.items()},
        "own_gap": own["gap"].tolist(), "own_auc": own["auc"].tolist(),
        "lambdas": list(LAMBDAS), "timings": dict(self.timings),
        "eta": self._eta(), "batch_size": self.batch_size}

  # -- stage c: retrieval -----------------------------------------------------

  def exposure_target(self, K: int) -> np.ndarray:
    """m_g^full(K) = min((1 - 1e-5) K T |I_g| / |I|, sum_t min(K, A_{t,g})).

    The catalog-share target, capped per group by what the requests can
    take: A_{t,g} = |I_g| minus request t's train items in group g.
    """
    d = self.data
    k = min(int(K), d.num_items)
    gi = d.num_item_groups
    size = np.bincount(d.item_group, minlength=gi).astype(np.float64)
    if self._avail is None:  # A [T, G_I] (users in any order: summed)
      tr_g = np.zeros((d.num_users, gi))
      np.add.at(tr_g, (d.train.user, d.item_group[d.train.item]), 1.0)
      self._avail = size[None, :] - tr_g
    cap = np.minimum(k, self._avail).sum(0)
    # A hair (1e-5) below K T |I_g| / |I| so that float32 sums stay <= K T.
    share = (1.0 - 1e-5) * k * d.num_users * size / d.num_items
    return np.minimum(share, cap)

  def min_exposure(self, K: int, s: float) -> np.ndarray:
    """m_g(s) = s m_g^full(K), checked for feasibility (field 's')."""
    m = float(s) * self.exposure_target(K)
    try:
      return dual_ops.check_feasible(m, min(int(K), self.data.num_items),
                                     self.data.num_users, self.batch_size)
    except ConfigError as e:
      raise ConfigError(f"field 's': s = {s} gives infeasible exposure "
                        f"minimums: {e}") from e

  def _exclusion(self) -> np.ndarray:
    if self._exclude is None:
      self._exclude = training_exclusion(
          self.data.train.user, self.data.train.item, self.stream,
          self.data.num_users)
    return self._exclude

  def _eta(self) -> float:
    if self.eta is None:
      h = self.prepare()["retriever"]
      rng = np.random.default_rng([self.seed, 5])
      u = rng.integers(0, self.data.num_users, 20000)
      i = rng.integers(0, self.data.num_items, 20000)
      self.eta = self.eta_scale * float(np.std(h.pair_scores(u, i)))
    return self.eta

  def _cache_path(self, K: int, s: float) -> pathlib.Path | None:
    if self.cache_dir is None:
      return None
    d = self.data
    cfg = hashlib.sha256(repr(self.config).encode()).hexdigest()[:10]
    tag = (f"{d.name}-seed{d.seed}-{d.groups}-U{d.num_users}-I{d.num_items}"
           f"-stream{self.seed}-B{self.batch_size}-cfg{cfg}")
    return self.cache_dir / tag / f"retrieval_K{K:04d}_s{s:.1f}.npz"

  def _retrieve(self, K: int, s: float) -> RetrievalEntry:
    path = self._cache_path(K, s)
    if path is not None and path.exists():
      z = np.load(path)
      if abs(float(z["eta"]) - self._eta()) <= 1e-9 * max(1.0, self._eta()):
        return RetrievalEntry(z["candidates"], float(z["esp"]),
                              z["exposure"], z["min_exposure"],
                              float(z["seconds"]))
    if s == 0.0 and K != K_MAX:
      cands = self.retrieval(K_MAX, 0.0).candidates[:, :K]
      return RetrievalEntry(cands, 1.0, self.exposure(cands),
                            np.zeros(self.data.num_item_groups, np.float32),
                            0.0)
    d = self.data
    h = self.prepare()["retriever"]
    k_eff = min(int(K), d.num_items)
    m = self.min_exposure(K, s)
    t = time.perf_counter()
    res = fairsync.serve(
        "unconstrained" if s == 0.0 else "FairSync",
        h.user_vec[self.stream], h.item_vec, d.item_group, k_eff, m,
        batch_size=self.batch_size, eta=self._eta(),
        exclude=self._exclusion(), num_groups=d.num_item_groups)
    cands = np.full((d.num_users, K), -1, np.int32)
    cands[self.stream, :k_eff] = res.item_ids
    entry = RetrievalEntry(cands, res.esp, np.asarray(res.exposure),
                           np.asarray(m), time.perf_counter() - t)
    if path is not None:
      ckpt_lib.write_atomic(path, lambda f: np.savez(
          f, candidates=entry.candidates, esp=entry.esp,
          exposure=entry.exposure, min_exposure=entry.min_exposure,
          seconds=entry.seconds, eta=self._eta()), mode="wb")
    return entry

  def retrieval(self, K: float, s: float) -> RetrievalEntry:
    """The cached retrieval of the grid point nearest (K, s)."""
    key = grid_point(K, s)
    if key not in self._retrieval:
      if self.verbose:
        _log(f"retrieval K={key[0]} s={key[1]:.1f} ...")
      self._retrieval[key] = self._retrieve(*key)
    return self._retrieval[key]

  def exposure(self, candidates: np.ndarray) -> np.ndarray:
    """float [G_I]: E_g, group-g items among the given lists."""
    c = np.asarray(candidates)
    g = self.data.item_group[c[c >= 0]]
    return np.bincount(g, minlength=self.data.num_item_groups).astype(
        np.float64)

  def shortfall(self, candidates: np.ndarray, K: float, s: float) -> float:
    """Exposure shortfall of `candidates` against m(K, s) of the grid point."""
    return exposure_shortfall(self.exposure(candidates),
                              self.min_exposure(*grid_point(K, s)))

  def candidates(self, K: float, s: float) -> np.ndarray:
    """int32 [U, K_MAX] candidates of the grid point, -1 padded."""
    c = self.retrieval(K, s).candidates
    return np.pad(c, ((0, 0), (0, K_MAX - c.shape[1])), constant_values=-1)

  # -- stage d-f: evaluation --------------------------------------------------

  def probs(self, lam_index: int) -> jax.Array:
    """float32 [3, U, I]: the calibrated (interact member, like, love)."""
    if lam_index not in self._probs:
      h = self.prepare()
      self._probs[lam_index] = jnp.stack(
          [h[f"interact@{lam_index}"].probs(), h["like"].probs(),
           h["love"].probs()]).astype(jnp.float32)
    return self._probs[lam_index]

  def truth(self, split: str) -> jax.Array:
    """bool [3, U, I] truth of 'valid' or 'test' (checked once)."""
    if split not in ("valid", "test"):
      raise ConfigError(f"field 'split': 'valid' or 'test', got {split!r}")
    if split not in self._truth:
      t = self.data.truth(split)
      check_truth(t, self.weights, self.data.user_group,
                  self.data.group_names, split)
      self._truth[split] = jnp.asarray(t)
      if split == "test":
        self._truth["_valid_seen"] = jnp.asarray(self.data.seen("valid"))
    return self._truth[split]

  def evaluate_knobs(self, knobs: Knobs | Mapping, split: str = "valid"
                     ) -> dict[str, Any]:
    """End utility of the pipeline under `knobs` on a held-out split.

    Returns:
      dict welfare, der, max_min_gap (floats, NaN on failure),
      group_utility [G], per_user [U] (NumPy), the grid point used (K, s),
      lam, lam_index, alpha, esp and shortfall (of the retrieval, see
      `RetrievalEntry`), retrieval_hit,
      seconds (this call), retrieval_seconds (0 on a cache hit).
    """
    kn = validate_knobs(knobs)
    t0 = time.perf_counter()
    truth = self.truth(split)
    key = grid_point(kn.K, kn.s)
    hit = key in self._retrieval
    entry = self.retrieval(*key)
    t1 = time.perf_counter()
    cands = jnp.asarray(self.candidates(*key))
    if split == "test":
      cands = mask_candidates(cands, self._truth["_valid_seen"])
    out = evaluate(cands, self.probs(kn.lam_index),
                   jnp.asarray(kn.alpha, jnp.float32), truth, self._weights,
                   self._user_group, k=self.k)
    out = jax.device_get(out)
    res = {name: float(out[name]) for name in ("welfare", "der",
                                               "max_min_gap")}
    res.update(group_utility=np.asarray(out["group_utility"]),
               per_user=np.asarray(out["per_user"]), K=key[0], s=key[1],
               lam=float(LAMBDAS[kn.lam_index]), lam_index=kn.lam_index,
               alpha=kn.alpha, esp=entry.esp, shortfall=entry.shortfall,
               retrieval_hit=hit,
               retrieval_seconds=0.0 if hit else t1 - t0,
               seconds=time.perf_counter() - t0, split=split)
    return res

