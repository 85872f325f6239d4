r"""FADE-DUAL: FADE whose fairness weight is a controlled dual variable.

FADE fine-tunes with a fixed weight, L = L_rec + lambda softplus(PD_diff),
so the gap it leaves depends on lambda, on the data of each period and on
how the relaxed Differentiable-Hit gap PD_diff relates to the measured one.
FADE-DUAL instead asks for a constraint on the measured gap and lets an
online dual ascent find the weight, period after period:

    minimise L_rec   subject to   -eps <= g <= eps,

with g = PD of NDCG@K (mean over group-0 users minus mean over group-1
users, the standard measure of `fairjax.evaluators.periodic`). Its
Lagrangian, with the relaxed gap d = PD_diff of DH@k over a batch standing
in for g in the primal step, is

    L(theta; lam+, lam-) = L_rec + lam+ softplus(d) + lam- softplus(-d).

Two multipliers, one per side, so the gap is driven towards zero from
either side (FADE's signed softplus only ever pushes group 0 down, also past
zero). Primal: the period's epochs of Adam on L with the multipliers fixed.
Dual, after every `dual.update_every` epochs of every period t:

    g_hat = PD of NDCG@K on the held-out slice H_t
    lam+ <- clip(lam+ + eta (g_hat - eps), 0, lam_max)
    lam- <- clip(lam- + eta (-g_hat - eps), 0, lam_max)

With eps = 0 (the default) the two steps are opposite, so lam+ + lam- does
not change between clippings: once one side has reached lam_max, the sum
stays at lam_max and a gap that flips sign moves weight from one side to
the other. The loss then holds, beside the signed pull (lam+ - lam-)
softplus(+-d), a symmetric term min(lam+, lam-) (softplus(d) +
softplus(-d)), which pulls d towards 0 from both sides; with eps > 0 the
sum shrinks by 2 eta eps per step instead.

H_t is a random `dual.holdout_frac` of the period's interactions (seeded
per period; a chronological tail would hold only a few dozen users on
ML-1M, 7-13 of them in the minority, and the gap estimate would be mostly
noise): it is not trained on in period t (it joins the history of later
periods, so their evaluation never targets it), and it is scored
with the sampled protocol against its own negatives (drawn among the items
of the history, never the evaluation negatives). Because the multipliers
carry over from period to period and are updated on each period's newest
data, the control reacts to drift: a gap that grows again raises its side's
multiplier, a gap that flips sign moves weight to the other side. The
projected dual ascent is that of the constraint set [-eps, eps]; with a
bounded gap estimate it keeps lam+- in [0, lam_max] (no guarantee on g
itself: the primal is non-convex and fine-tuned, not solved).

Hyperparameters (config `dual.`): eta (dual step, in weight per unit of
NDCG gap), eps (the allowed |gap|), lam_max, holdout_frac, update_every,
lam_init, level_up. They were chosen on the synthetic default, seed 0 (eta
in {5, 20}, lam_max in {5, 20}, level_up in {False, True}; README, FADE
section), and are reported on ML-1M and ML-100K, which played no part in
the choice.

`dual.level_up` (off by default) holds the advantaged group's mean DH
constant (stop-gradient), so only the disadvantaged side is pushed up; on
the tuning data it closed far less of the gap.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fairjax.data import sampling
from fairjax.errors import ConfigError
from fairjax.evaluators import periodic as E


def validate_config(config) -> None:
  """Raises ConfigError naming the field for a bad `dual.` value."""
  d = config.dual
  if d.eps < 0:
    raise ConfigError(f"field 'dual.eps': the allowed gap must be >= 0, got "
                      f"{d.eps}")
  if d.eta <= 0:
    raise ConfigError(f"field 'dual.eta': must be > 0, got {d.eta}")
  if d.lam_max <= 0 or d.lam_init < 0 or d.lam_init > d.lam_max:
    raise ConfigError(f"field 'dual.lam_init'/'dual.lam_max': need 0 <= "
                      f"lam_init <= lam_max, lam_max > 0; got {d.lam_init}, "
                      f"{d.lam_max}")
  if not 0.0 < d.holdout_frac < 1.0:
    raise ConfigError(f"field 'dual.holdout_frac': must be in (0, 1), got "
                      f"{d.holdout_frac}")
  if d.update_every < 1:
    raise ConfigError(f"field 'dual.update_every': must be >= 1, got "
                      f"{d.update_every}")


def split_holdout(rows: np.ndarray, frac: float, seed_parts
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, held-out rows), both sorted: a uniformly random `frac` of
  `rows` (at least one row each side), drawn with
  `numpy.random.default_rng(list(seed_parts))`."""
  rows = np.sort(np.asarray(rows))
  n_hold = min(max(1, int(round(frac * rows.size))), rows.size - 1)
  pick = np.zeros(rows.size, bool)
  pick[np.random.default_rng(list(seed_parts)).choice(
      rows.size, n_hold, replace=False)] = True
  return rows[~pick], rows[pick]


def dual_step(lam: np.ndarray, gap: float, eta: float, eps: float,
              lam_max: float) -> np.ndarray:
  """Projected dual ascent on -eps <= g <= eps; lam = [lam+, lam-].

  A NaN gap (no user of one group in the slice) leaves lam unchanged.
  """
  lam = np.asarray(lam, np.float64)
  if not np.isfinite(gap):
    return lam.copy()
  step = eta * np.array([gap - eps, -gap - eps])
  return np.clip(lam + step, 0.0, lam_max)


class GapProbe:
  """Measures the standard PD of NDCG@K of a snapshot on a held-out slice."""

  def __init__(self, evaluator, data, train_rows_upto: np.ndarray,
               holdout: np.ndarray, seed: int, k: int, num_negatives: int):
    """`train_rows_upto`: the history rows (D_0..D_t without the slice)."""
    hist_u, hist_i = data.user[train_rows_upto], data.item[train_rows_upto]
    self.es = E.make_eval_set(data.user[holdout], data.item[holdout], hist_u,
                              hist_i, data.num_users, data.num_items)
    pool = np.unique(hist_i)
    self.negatives = sampling.eval_negatives(
        seed, self.es.history, self.es.relevant, pool, data.num_users,
        n=num_negatives)
    self.evaluator, self.data, self.k = evaluator, data, k

  def gap(self, params) -> float:
    """PD of ndcg@K over the slice's users."""
    per_user = self.evaluator.sampled(params, self.es, self.negatives)
    s = E.summarise({"v": per_user[f"ndcg@{self.k}"]}, self.data.user_group,
                    self.data.group_names)
    return float(s["pd"]["v"])


def run_period(config, trainer, evaluator, data, state, lam, t: int,
               seed_parts, rng, seen, chrono: bool):
  """One FADE-DUAL period: train on D_t minus its held-out slice, with a
  dual step on the slice's measured gap every `dual.update_every` epochs.

  Returns (state, lam, info); info adds the final `lam` and `gap_trace`
  ([gap, lam+, lam-] after each dual step) to the trainer's counters.
  """
  d = config.dual
  train_rows, hold = split_holdout(data.rows([t]), d.holdout_frac,
                                   (config.seed, 13, t))
  history = np.concatenate([data.rows(range(t)), train_rows])
  probe = GapProbe(evaluator, data, history, hold, (config.seed, 11, t),
                   config.ks[0], config.num_eval_negatives)
  trace = []
  lam = np.asarray(lam, np.float64)

  def control(e, st, _):  # a `train.fit` hook: new multipliers in context
    nonlocal lam
    if (e + 1) % d.update_every:
      return None
    gap = probe.gap(st.params)
    lam = dual_step(lam, gap, d.eta, d.eps, d.lam_max)
    trace.append([gap, float(lam[0]), float(lam[1])])
    return {"context": {"lam": jnp.asarray(lam, jnp.float32)}}

  state, info = trainer.run_epochs(
      state, data, train_rows, "dual_up" if d.level_up else "dual", 0.0,
      config.epochs, seed_parts, rng, seen,
      mode="time" if chrono else "shuffle", fixed_negatives=chrono,
      extra_context={"lam": jnp.asarray(lam, jnp.float32)},
      on_epoch_end=control)
  info = dict(info, lam=[float(x) for x in lam], gap_trace=trace)
  return state, lam, info
