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

Layout: this module holds the knobs, preferences and end utility (d-f) and
re-exports the rest, so `fairjax.methods.system.X` names every piece:
  `fairjax.ops.calibration`          platt_fit, reliability (generic);
  `fairjax.methods.system_heads`     stages a-b: StageConfig, train_head,
                                     Head, oracle_heads, trained_heads,
                                     calibration_pairs, calibrate_heads;
  `fairjax.methods.system_pipeline`  Pipeline (stages a-c cached,
                                     evaluate_knobs), RetrievalEntry,
                                     exposure_shortfall.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import metrics
from fairjax.data.system_data import LAMBDAS, OUTCOMES, check_user_groups
from fairjax.errors import ConfigError, DataError

# Stages a-b and the calibration tools, re-exported (public API of this
# module); `Pipeline` and the retrieval pieces: see `__getattr__` below.
from fairjax.methods.system_heads import (  # noqa: F401
  Head,
  StageConfig,
  calibrate_heads,
  calibration_pairs,
  oracle_heads,
  train_head,
  trained_heads,
)
from fairjax.ops.calibration import platt_fit, reliability  # noqa: F401

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
# a-f. The cached pipeline, re-exported lazily.

# `fairjax.methods.system_pipeline` imports this module's knobs and ranker at
# its top, so its public names are imported here on first access (PEP 562),
# not at this module's top: either module may be imported first.
_PIPELINE_NAMES = ("Pipeline", "RetrievalEntry", "exposure_shortfall")


def __getattr__(name: str) -> Any:
  if name in _PIPELINE_NAMES:
    from fairjax.methods import system_pipeline
    value = getattr(system_pipeline, name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted({*globals(), *_PIPELINE_NAMES})
