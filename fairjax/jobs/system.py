"""The system job: tune the whole pipeline for welfare and equity (DESIGN §6).

Per seed s (data split / generator, models, request stream and optimiser
seeds all `config.seed + s`), with the stages of `fairjax.methods.system`:

  baselines/seed<s>   B1 welfare-optimal global alpha (a simplex lattice of
                      step 1/9, 55 points; K = default_k, s = 0, lambda = 0);
                      B2 model-level fairness only (the lambda whose interact
                      head has the smallest own group gap, s = 1, B1's alpha);
                      B3 best single knob: alpha alone (B1's search), lambda
                      alone (5 values) or s alone (11 values) with B1's
                      alpha: the lowest validation DER among single-knob
                      settings with validation welfare >= (1 - tol) W_B1.
  OPT/seed<s>         each optimiser of `config.optimizers` (`fairjax.bo`)
                      with `config.budget` evaluations on the validation
                      split, objectives (W, -DER), both maximised.
  grid/seed<s>        (config.grid > 0) a dense grid reference: 8 x 8 x 4 x
                      4 x 4 = 4,096 points of the unit knob box.

Every evaluation is appended to `methods/<unit>/evaluations.jsonl` as it
happens; a killed unit replays its log (every optimiser's proposal is a
deterministic function of seed and history) and finishes with the same
front. A failed evaluation (an error of the pipeline, a NaN objective) is
logged with its error and skipped by the optimisers (NaN objectives).

Reported figures are re-evaluated on the test split: each unit's Pareto
set (on validation) is evaluated on test. Hypervolume (`fairjax.bo.
hypervolume`) of those test points with the reference point r = (0.8 W_B1,
-2 DER_B1) (B1's test figures of the same seed; the EHVI of 'bo' uses B1's
validation figures). der_reduction@2% = 1 - (lowest test DER among the BO
Pareto settings with test welfare >= 0.98 W_B1) / DER_B1 (NaN if none).
"""

from __future__ import annotations

import itertools

import numpy as np

from fairjax import bo
from fairjax.bo import loop
from fairjax import metrics as metrics_lib
from fairjax import checkpoint as ckpt_lib
from fairjax import runner
from fairjax.data.system_data import LAMBDAS, prepare_system_data
from fairjax.errors import ConfigError
from fairjax.methods import system as S

NAME = "system"
FREE_FIELDS = ("optimizers", "num_seeds", "data_dir", "grid")
FIGURES = ("welfare", "der", "max_min_gap")


def validate(config) -> None:
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"field '{field}': {msg}")
  need(config.dataset in ("synthetic", "ml1m"), "dataset",
       f"expected synthetic or ml1m, got {config.dataset!r}")
  need(config.groups in ("gender", "age"), "groups",
       f"expected gender or age, got {config.groups!r}")
  need(0.0 <= config.rho <= 1.0, "rho", f"must be in [0, 1], got {config.rho}")
  bad = [o for o in optimizers(config) if o not in bo.OPTIMIZERS]
  need(optimizers(config) and not bad, "optimizers",
       f"unknown {bad}; choose from {','.join(bo.OPTIMIZERS)}")
  need(config.budget > config.num_init >= 1, "budget",
       f"need budget > num_init >= 1, got {config.budget}, {config.num_init}")
  need(config.num_seeds >= 1, "num_seeds", f"must be >= 1, got "
       f"{config.num_seeds}")
  need(0 < config.welfare_tolerance < 1, "welfare_tolerance",
       f"must be in (0, 1), got {config.welfare_tolerance}")
  need(tuple(config.lambdas) == LAMBDAS, "lambdas",
       f"the FADE family is fixed to {LAMBDAS}")


def optimizers(config) -> list[str]:
  return [o.strip() for o in str(config.optimizers).split(",") if o.strip()]


class Context:
  """The pipeline of the current seed (one at a time: ML-1M's is large)."""

  def __init__(self, config, workdir, data_dir):
    self.config, self.workdir, self.data_dir = config, workdir, data_dir
    self.seed, self.pipeline = None, None

  def pipe(self, s: int) -> S.Pipeline:
    if self.seed != s:
      c, seed = self.config, int(self.config.seed) + s
      self.pipeline = None
      data = prepare_system_data(
          c.dataset, data_dir=self.data_dir or c.data_dir or None, seed=seed,
          groups=c.groups, num_users=c.synthetic.num_users,
          num_items=c.synthetic.num_items,
          minority_frac=c.synthetic.minority)
      stages = S.StageConfig(
          dim=c.dim, init_std=c.init_std, epochs=c.epochs,
          batch_size=c.train_batch_size, learning_rate=c.lr,
          num_negatives=c.num_negatives, fade_negatives=c.fade_negatives,
          finetune_epochs=c.finetune_epochs, tau=c.tau, seed=seed)
      sdir = self.workdir / "stages" / f"seed{s}"
      self.pipeline = S.Pipeline(
          data, rho=c.rho, k=c.k_serve, batch_size=c.retrieval_batch,
          eta_scale=c.eta_scale, stage_config=stages, checkpoint_dir=sdir, cache_dir=sdir, seed=seed)
      self.seed = s
    return self.pipeline


def prepare(config, workdir, data_dir) -> Context:
  return Context(config, workdir, data_dir)


def units(config, ctx) -> list[runner.Unit]:
  out = []
  for s in range(int(config.num_seeds)):
    out.append(runner.Unit(f"baselines/seed{s}", "baselines", s))
    out += [runner.Unit(f"{o}/seed{s}", o, s) for o in optimizers(config)]
    if config.grid:
      out.append(runner.Unit(f"grid/seed{s}", "grid", s))
  return out


# ----------------------------------------------------------------------------
# Evaluations, logged as they happen.


def _figures(res: dict) -> dict:
  return {**{f: res[f] for f in FIGURES},
          "group_utility": np.asarray(res["group_utility"]).tolist()}


def _evaluate(pipe, knobs, split) -> dict:
  """Figures of `knobs` on `split`; a failure gives NaN and the error."""
  try:
    res = _figures(pipe.evaluate_knobs(knobs, split))
    ok = all(np.isfinite(res[f]) for f in ("welfare", "der"))
    return {**res, "ok": bool(ok), "error": None if ok else "NaN objective"}
  except (ConfigError, FloatingPointError, ValueError) as e:
    return {**{f: float("nan") for f in FIGURES}, "group_utility": None,
            "ok": False, "error": f"{type(e).__name__}: {e}"}


def _knobs_of(x) -> dict:
  return S.knobs_from_unit(np.asarray(x)).as_dict()


def _evaluator(pipe):
  """(n, point) -> log record of the point (a unit-box x or knob dict)."""
  def evaluate(n, p):
    knobs = p if isinstance(p, dict) else _knobs_of(p)
    x = None if isinstance(p, dict) else np.asarray(p).tolist()
    return {"n": n, "x": x, "knobs": knobs,
            "valid": _evaluate(pipe, knobs, "valid")}
  return evaluate


def _progress(tag):
  def show(n, total, records):
    if (n + 1) % 10 and n + 1 != total:
      return

    best = max((r["valid"]["welfare"] for r in records if r["valid"]["ok"]),
               default=float("nan"))
    runner.log(f"[{tag}] evaluation {n + 1}/{total} best valid welfare "
               f"{best:.4f}")
  return show


def _objectives(records) -> np.ndarray:
  return np.array([[r["valid"]["welfare"], -r["valid"]["der"]]
                   if r["valid"]["ok"] else [np.nan, np.nan]
                   for r in records], np.float64).reshape(-1, 2)


def _ref(b1: dict) -> np.ndarray:
  return np.array([0.8 * b1["welfare"], -2.0 * b1["der"]])


def _front(pipe, records, upto=None) -> list[dict]:
  """The validation-Pareto records among the first `upto`, with test
  figures."""
  recs = records[:upto]
  return [{**recs[i], "test": _evaluate(pipe, recs[i]["knobs"], "test")}
          for i in loop.pareto_indices(_objectives(recs))]


def _hv(front, b1_test) -> float:
  pts = [[r["test"]["welfare"], -r["test"]["der"]] for r in front
         if r["test"]["ok"]]
  return loop.finite_hypervolume(np.array(pts), _ref(b1_test))


# ----------------------------------------------------------------------------
# Units.


def _lattice(h: int) -> list[tuple[float, float, float]]:
  return [(i / h, j / h, (h - i - j) / h)
          for i in range(h + 1) for j in range(h + 1 - i)]


def _baselines(config, pipe, log) -> dict:
  dflt = dict(K=int(config.default_k), s=0.0, lam_index=0)
  alphas = [dict(dflt, alpha=a) for a in _lattice(9)]
  recs = loop.run_points(log, alphas, _evaluator(pipe), _progress("B1"))
  ok = [r for r in recs if r["valid"]["ok"]]
  b1 = max(ok, key=lambda r: r["valid"]["welfare"])
  a1 = b1["knobs"]["alpha"]
  gaps = pipe.own_gaps()["gap"]
  lam_b2 = int(np.nanargmin(gaps))
  b2 = dict(dflt, alpha=a1, s=1.0, lam_index=lam_b2)
  singles = ([dict(dflt, alpha=a1, lam_index=j) for j in range(len(LAMBDAS))]
             + [dict(dflt, alpha=a1, s=s) for s in S.S_GRID])
  recs = loop.run_points(log, alphas + [b2] + singles, _evaluator(pipe),
                         _progress("B2/B3"))
  w_min = (1 - config.welfare_tolerance) * b1["valid"]["welfare"]
  single = [r for r in recs[:len(alphas)] + recs[len(alphas) + 1:]
            if r["valid"]["ok"] and r["valid"]["welfare"] >= w_min]
  b3 = min(single, key=lambda r: r["valid"]["der"])
  out = {}
  for name, knobs in (("welfare_optimal", b1["knobs"]), ("model_level", b2),
                      ("single_knob", b3["knobs"])):
    out[name] = {"knobs": knobs, "valid": _evaluate(pipe, knobs, "valid"),
                 "test": _evaluate(pipe, knobs, "test")}
  out["evaluations"] = log.records
  out["group_names"] = list(pipe.data.group_names)
  out["own_gap"] = {"lambdas": list(LAMBDAS), "gap": gaps.tolist()}
  out["reliability"] = {k: {a: (np.asarray(b).tolist() if np.ndim(b) else b)
                            for a, b in v.items()}
                        for k, v in pipe.reliability_report.items()}
  return out


def _grid_points() -> np.ndarray:
  axes = [(np.arange(n) + 0.5) / n for n in (8, 8, 4, 4, 4)]
  return np.array(list(itertools.product(*axes)))


def run_unit(config, ctx: Context, unit, udir, results) -> dict:
  pipe = ctx.pipe(unit.seed)
  log = loop.EvalLog(udir)
  show = _progress(f"{unit.method} seed {unit.seed}")
  if unit.method == "baselines":
    return _baselines(config, pipe, log)
  base = results[f"baselines/seed{unit.seed}"]
  ref = _ref(base["welfare_optimal"]["valid"])
  if unit.method == "grid":
    loop.run_points(log, list(_grid_points()), _evaluator(pipe), show)
  else:
    loop.run_optimizer(unit.method, log, _evaluator(pipe), _objectives,
                       budget=int(config.budget), dim=S.NUM_KNOBS,
                       seed=int(config.seed) + unit.seed,
                       num_init=int(config.num_init), ref=ref, on_record=show)
  records, b1_test = log.records, base["welfare_optimal"]["test"]
  y = _objectives(records)
  front = _front(pipe, records)
  half = _front(pipe, records, upto=len(records) // 2)
  return {"evaluations": records, "front": front,
          "group_names": list(pipe.data.group_names),
          "valid_hypervolume_curve": [loop.finite_hypervolume(y[:n], ref)
                                      for n in range(1, len(records) + 1)],
          "hypervolume": _hv(front, b1_test),
          "hypervolume_half_budget": _hv(half, b1_test),
          "der_reduction": _der_reduction(front, base, config)}


def _der_reduction(front, base, config) -> dict:
  """1 - lowest test DER among the front's settings with test welfare >=
  (1 - tol) W_B1, over the DER of B1 and of B3 (NaN if no setting)."""
  w_min = (1 - config.welfare_tolerance) * base["welfare_optimal"]["test"][
      "welfare"]
  ders = [r["test"]["der"] for r in front
          if r["test"]["ok"] and r["test"]["welfare"] >= w_min]
  best = min(ders) if ders else float("nan")
  return {name: 1.0 - best / base[name]["test"]["der"]
          for name in ("welfare_optimal", "single_knob")}


# ----------------------------------------------------------------------------
# Rows and summary.


def rows(config, ctx, unit, r) -> list[dict]:
  """Every validation evaluation (step = its index), the test figures of
  the Pareto set and of the baselines (group `all` or a user group)."""
  out = []
  def add(method, step, split, fig):
    if fig is None or fig.get("group_utility") is None:
      return
    for f in FIGURES:
      out.append(runner.row(method, unit.seed, step, split, "all", f,
                            fig[f]))
    for g, u in zip(r["group_names"], fig["group_utility"]):
      out.append(runner.row(method, unit.seed, step, split, g, "utility", u))
  for rec in r["evaluations"]:
    add(unit.method, rec["n"], "valid", rec["valid"])
  for rec in r.get("front", ()):
    add(unit.method, rec["n"], "test", rec["test"])
  if unit.method == "baselines":
    for name in ("welfare_optimal", "model_level", "single_knob"):
      add(name, 0, "test", r[name]["test"])
  return out


def _flat(rec) -> list[float]:
  k = rec["knobs"]
  return [rec["test"]["welfare"], rec["test"]["der"], *k["alpha"], k["K"],
          k["s"], LAMBDAS[k["lam_index"]]]


def _mean(values) -> float:
  v = np.asarray(values, np.float64)
  return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def summarise(config, ctx, results, workdir) -> dict:
  """summary.json: hypervolume {OPT: mean over seeds} (+ _std, _per_seed,
  _half_budget), grid_hypervolume, der_reduction@2% (vs B1; also
  _vs_single_knob and _per_seed), baselines {welfare_optimal, model_level,
  single_knob: welfare, der, max_min_gap, group_utility (test, means over
  seeds), knobs per seed}, pareto {OPT: [[welfare, der, alpha_interact,
  alpha_like, alpha_love, K, s, lambda], ...]} (seed 0; all seeds under
  pareto_per_seed), paired_test (bo vs each optimiser, bo at half budget vs
  random, over seeds), own_gap and reliability (seed 0)."""
  seeds = range(int(config.num_seeds))
  opts = optimizers(config) + (["grid"] if config.grid else [])
  res = {o: [results[f"{o}/seed{s}"] for s in seeds] for o in opts}
  base = [results[f"baselines/seed{s}"] for s in seeds]
  hv = {o: [r["hypervolume"] for r in rs] for o, rs in res.items()}
  half = {o: [r["hypervolume_half_budget"] for r in rs]
          for o, rs in res.items()}
  summary = {
      "dataset": config.dataset, "groups": config.groups, "rho": config.rho,
      "budget": int(config.budget), "num_seeds": len(seeds),
      "figure_names": ["welfare", "der", "alpha_interact", "alpha_like",
                       "alpha_love", "K", "s", "lambda"],
      "hypervolume": {o: _mean(hv[o]) for o in optimizers(config)},
      "hypervolume_std": {o: float(np.std(hv[o])) for o in optimizers(config)},
      "hypervolume_per_seed": {o: hv[o] for o in optimizers(config)},
      "hypervolume_half_budget": {o: _mean(half[o])
                                  for o in optimizers(config)}}
  if config.grid:
    summary["grid_hypervolume"] = _mean(hv["grid"])
    summary["hypervolume_vs_grid"] = {
        o: _mean(np.asarray(hv[o]) / np.asarray(hv["grid"]))
        for o in optimizers(config)}
  if "bo" in res:
    dr = [r["der_reduction"] for r in res["bo"]]
    summary["der_reduction@2%"] = _mean([d["welfare_optimal"] for d in dr])
    summary["der_reduction@2%_vs_single_knob"] = _mean(
        [d["single_knob"] for d in dr])
    summary["der_reduction@2%_per_seed"] = dr
    tests = {f"bo_vs_{o}": metrics_lib.paired_test(hv["bo"], hv[o])
             for o in optimizers(config) if o != "bo"}
    if "random" in res:
      tests["bo_half_budget_vs_random"] = metrics_lib.paired_test(
          half["bo"], hv["random"])
    summary["paired_test"] = tests
  summary["baselines"] = {}
  for name in ("welfare_optimal", "model_level", "single_knob"):
    figs = [b[name]["test"] for b in base]
    summary["baselines"][name] = {
        **{f: _mean([x[f] for x in figs]) for f in FIGURES},
        "group_utility": np.nanmean([x["group_utility"] for x in figs],
                                    0).tolist(),
        "knobs": [b[name]["knobs"] for b in base]}
  summary["group_names"] = base[0]["group_names"]
  summary["pareto"] = {o: [_flat(r) for r in rs[0]["front"]]
                       for o, rs in res.items()}
  summary["pareto_per_seed"] = {o: [[_flat(r) for r in x["front"]]
                                    for x in rs] for o, rs in res.items()}
  summary["failed_evaluations"] = {
      o: int(sum(not e["valid"]["ok"] for x in rs for e in x["evaluations"]))
      for o, rs in res.items()}
  summary["own_gap"] = base[0]["own_gap"]
  summary["reliability"] = base[0]["reliability"]
  return ckpt_lib.finite_or_none(summary)
