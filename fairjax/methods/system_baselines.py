"""The system job's reference settings: baselines B1-B3 and the dense grid
(Hsu et al. 2025, DESIGN §6).

With d = (K = default_k, s = 0, lambda index 0) and every setting evaluated
on the validation split (`fairjax.evaluators.welfare.point_evaluator`):

  B1 welfare-optimal global alpha: the alpha of the simplex lattice of step
     1/9 (`lattice(9)`, 55 points) with the highest validation welfare W,
     at d;
  B2 model-level fairness only: B1's alpha, s = 1, and the lambda whose
     interact head has the smallest own group gap
     (`Pipeline.own_gaps`);
  B3 best single knob: among the single-knob settings (alpha alone, the B1
     lattice; lambda alone, every index of `LAMBDAS`; s alone, every value
     of `S_GRID`; the other knobs at B1's) with validation W >= (1 - tol)
     W_B1, the one with the lowest validation DER.

`grid_points` is the dense reference design: the cell centres of an
8 x 8 x 4 x 4 x 4 grid of the unit knob box (4,096 points).
"""

from __future__ import annotations

import itertools

import numpy as np

from fairjax.bo import loop
from fairjax.bo.compare import nan_mean
from fairjax.data.system_data import LAMBDAS
from fairjax.evaluators import welfare
from fairjax.methods import system as S

BASELINES = ("welfare_optimal", "model_level", "single_knob")


def lattice(h: int) -> list[tuple[float, float, float]]:
  """The simplex lattice {(i, j, h - i - j) / h}: (h + 1)(h + 2)/2 points."""
  return [(i / h, j / h, (h - i - j) / h)
          for i in range(h + 1) for j in range(h + 1 - i)]


def baselines(pipe, log: loop.EvalLog, default_k: int,
              welfare_tolerance: float) -> dict:
  """B1, B2 and B3 of one seed's pipeline (module docstring).

  Args:
    pipe: the seed's `fairjax.methods.system.Pipeline`.
    log: the unit's evaluation log (a killed unit replays it).
    default_k: K of every baseline.
    welfare_tolerance: tol of B3's welfare floor (1 - tol) W_B1.

  Returns:
    {welfare_optimal, model_level, single_knob: {knobs, valid, test}
    (figures of `welfare.evaluate_knobs`), evaluations (every logged
    record), group_names, own_gap {lambdas, gap}, reliability (the heads'
    `Pipeline.reliability_report`, JSON-able)}.
  """
  dflt = {"K": int(default_k), "s": 0.0, "lam_index": 0}
  alphas = [dict(dflt, alpha=a) for a in lattice(9)]
  recs = loop.run_points(log, alphas, welfare.point_evaluator(pipe),
                         welfare.progress("B1"))
  ok = [r for r in recs if r["valid"]["ok"]]
  b1 = max(ok, key=lambda r: r["valid"]["welfare"])
  a1 = b1["knobs"]["alpha"]
  gaps = pipe.own_gaps()["gap"]
  lam_b2 = int(np.nanargmin(gaps))
  b2 = dict(dflt, alpha=a1, s=1.0, lam_index=lam_b2)
  singles = ([dict(dflt, alpha=a1, lam_index=j) for j in range(len(LAMBDAS))]
             + [dict(dflt, alpha=a1, s=s) for s in S.S_GRID])
  recs = loop.run_points(log, alphas + [b2] + singles,
                         welfare.point_evaluator(pipe),
                         welfare.progress("B2/B3"))
  w_min = (1 - welfare_tolerance) * b1["valid"]["welfare"]
  single = [r for r in recs[:len(alphas)] + recs[len(alphas) + 1:]
            if r["valid"]["ok"] and r["valid"]["welfare"] >= w_min]
  b3 = min(single, key=lambda r: r["valid"]["der"])
  out = {}
  for name, knobs in zip(BASELINES, (b1["knobs"], b2, b3["knobs"])):
    out[name] = {"knobs": knobs,
                 "valid": welfare.evaluate_knobs(pipe, knobs, "valid"),
                 "test": welfare.evaluate_knobs(pipe, knobs, "test")}
  out["evaluations"] = log.records
  out["group_names"] = list(pipe.data.group_names)
  out["own_gap"] = {"lambdas": list(LAMBDAS), "gap": gaps.tolist()}
  out["reliability"] = {k: {a: (np.asarray(b).tolist() if np.ndim(b) else b)
                            for a, b in v.items()}
                        for k, v in pipe.reliability_report.items()}
  return out


def grid_points() -> np.ndarray:
  """float [4096, 5]: the cell centres of the 8 x 8 x 4 x 4 x 4 unit grid."""
  axes = [(np.arange(n) + 0.5) / n for n in (8, 8, 4, 4, 4)]
  return np.array(list(itertools.product(*axes)))


def mean_over_seeds(base: list[dict]) -> dict:
  """{B: {welfare, der, max_min_gap (test, `nan_mean` over seeds),
  group_utility (test, NaN-mean per group), knobs (per seed)}} for each
  baseline B, from the `baselines` results of every seed."""
  out = {}
  for name in BASELINES:
    figs = [b[name]["test"] for b in base]
    out[name] = {
        **{f: nan_mean([x[f] for x in figs]) for f in welfare.FIGURES},
        "group_utility": np.nanmean([x["group_utility"] for x in figs],
                                    0).tolist(),
        "knobs": [b[name]["knobs"] for b in base]}
  return out
