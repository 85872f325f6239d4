"""Welfare and disparity of pipeline knob settings (the system job, DESIGN §6).

A knob setting theta (`fairjax.methods.system.Knobs`) is evaluated by
`Pipeline.evaluate_knobs(theta, split)` on the validation split (what the
optimisers see) or the test split (what is reported); its figures are

  W = mean_u U_u,  DER = G/(G-1) sum_g (p_g - 1/G)^2,  p_g = Ubar_g / sum_h
  Ubar_h,  max_min_gap = max_g Ubar_g - min_g Ubar_g,

and the per-group mean utilities Ubar_g. A failed evaluation (an error of
the pipeline, a NaN objective) is a record with NaN figures and its error,
never an exception: the optimisers skip it (NaN objectives).

Records (one per evaluation, appended to `fairjax.bo.loop.EvalLog`):
`{"n", "x" (unit-box point or None), "knobs", "valid": figures}`; the
objectives of a record are (W, -DER) on validation, both maximised.

Reported figures (Hsu et al. 2025's protocol): the validation-Pareto
records of a run re-evaluated on test (`front_on_test`); their hypervolume
above r = (0.8 W_B1, -2 DER_B1) (`reference_point`, `hypervolume_on_test`);
der_reduction@tol = 1 - (lowest test DER among front settings with test
welfare >= (1 - tol) W_B1) / DER_B (`der_reduction`, B = B1 and B3).

What the knob box allows (`valid_der_reduction`): the same reduction on
validation over every record a run evaluated, 1 - (lowest validation DER
among records with validation welfare >= (1 - tol) W_B1) / DER_B1, at
several tolerances; pooled over all optimisers of a seed it tells whether
a target is out of reach of the knobs or only of the search.
"""

from __future__ import annotations

import sys

import numpy as np

from fairjax.bo import loop
from fairjax.data.system_data import LAMBDAS
from fairjax.errors import ConfigError
from fairjax.methods import system as S

FIGURES = ("welfare", "der", "max_min_gap")
# The columns of a Pareto row (`flat`).
FLAT_NAMES = ("welfare", "der", "alpha_interact", "alpha_like", "alpha_love",
              "K", "s", "lambda")


def figures(res: dict) -> dict:
  """The JSON-able figures of a `Pipeline.evaluate_knobs` result."""
  return {**{f: res[f] for f in FIGURES},
          "group_utility": np.asarray(res["group_utility"]).tolist()}


def evaluate_knobs(pipe, knobs, split: str) -> dict:
  """Figures of `knobs` on `split` with `ok` and `error`.

  A ConfigError, FloatingPointError or ValueError of the pipeline, or a
  non-finite W or DER, gives `ok` False and the error (NaN figures and no
  `group_utility` for an exception).
  """
  try:
    res = figures(pipe.evaluate_knobs(knobs, split))
    ok = all(np.isfinite(res[f]) for f in ("welfare", "der"))
    return {**res, "ok": bool(ok), "error": None if ok else "NaN objective"}
  except (ConfigError, FloatingPointError, ValueError) as e:
    return {**{f: float("nan") for f in FIGURES}, "group_utility": None,
            "ok": False, "error": f"{type(e).__name__}: {e}"}


def point_evaluator(pipe):
  """(n, point) -> the validation record of a point: a unit-box x
  (`fairjax.methods.system.knobs_from_unit`) or a knob dict."""
  def evaluate(n, p):
    knobs = (p if isinstance(p, dict)
             else S.knobs_from_unit(np.asarray(p)).as_dict())
    x = None if isinstance(p, dict) else np.asarray(p).tolist()
    return {"n": n, "x": x, "knobs": knobs,
            "valid": evaluate_knobs(pipe, knobs, "valid")}
  return evaluate


def progress(tag: str):
  """`on_record` for `fairjax.bo.loop`: every 10th evaluation (and the
  last), the best validation welfare so far on stderr."""
  def show(n, total, records):
    if (n + 1) % 10 and n + 1 != total:
      return

    best = max((r["valid"]["welfare"] for r in records if r["valid"]["ok"]),
               default=float("nan"))
    print(f"[{tag}] evaluation {n + 1}/{total} best valid welfare "
          f"{best:.4f}", file=sys.stderr, flush=True)
  return show


def objectives(records) -> np.ndarray:
  """Y [n, 2] = (W, -DER) on validation; NaN rows for failed records."""
  return np.array([[r["valid"]["welfare"], -r["valid"]["der"]]
                   if r["valid"]["ok"] else [np.nan, np.nan]
                   for r in records], np.float64).reshape(-1, 2)


def reference_point(b1: dict) -> np.ndarray:
  """r = (0.8 W_B1, -2 DER_B1) from B1's figures (valid for EHVI, test for
  the reported hypervolume)."""
  return np.array([0.8 * b1["welfare"], -2.0 * b1["der"]])


def front_on_test(pipe, records, upto=None) -> list[dict]:
  """The validation-Pareto records among the first `upto`, each with its
  test figures under `test`."""
  recs = records[:upto]
  return [{**recs[i], "test": evaluate_knobs(pipe, recs[i]["knobs"], "test")}
          for i in loop.pareto_indices(objectives(recs))]


def hypervolume_on_test(front, b1_test) -> float:
  """Hypervolume of the front's test (W, -DER) above `reference_point`."""
  pts = [[r["test"]["welfare"], -r["test"]["der"]] for r in front
         if r["test"]["ok"]]
  return loop.finite_hypervolume(np.array(pts), reference_point(b1_test))


def der_reduction(front, base, welfare_tolerance: float) -> dict:
  """1 - lowest test DER among the front's settings with test welfare >=
  (1 - tol) W_B1, over the DER of B1 and of B3 (NaN if no setting)."""
  w_min = (1 - welfare_tolerance) * base["welfare_optimal"]["test"][
      "welfare"]
  ders = [r["test"]["der"] for r in front
          if r["test"]["ok"] and r["test"]["welfare"] >= w_min]
  best = min(ders) if ders else float("nan")
  return {name: 1.0 - best / base[name]["test"]["der"]
          for name in ("welfare_optimal", "single_knob")}


def valid_der_reduction(records, b1_valid: dict,
                        tolerances=(0.02, 0.05, 0.1)) -> list[float]:
  """[1 - lowest validation DER among `records` with validation welfare >=
  (1 - tol) W_B1, over B1's validation DER, for tol in `tolerances`];
  negative when every qualifying record has a higher DER than B1, NaN when
  none qualifies. `b1_valid`: B1's validation figures."""
  y = objectives(records)
  ok = np.isfinite(y).all(axis=1)
  out = []
  for tol in tolerances:
    sel = ok & (y[:, 0] >= (1 - tol) * b1_valid["welfare"])
    out.append(float(1.0 - (-y[sel, 1].max()) / b1_valid["der"])
               if sel.any() else float("nan"))
  return out


def flat(rec) -> list[float]:
  """A front record as a row of `FLAT_NAMES` (test W and DER, its knobs)."""
  k = rec["knobs"]
  return [rec["test"]["welfare"], rec["test"]["der"], *k["alpha"], k["K"],
          k["s"], LAMBDAS[k["lam_index"]]]
