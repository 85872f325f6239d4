"""The system job: tune the whole pipeline for welfare and equity (DESIGN §6).

Per seed s (data split / generator, models, request stream and optimiser
seeds all `config.seed + s`), with the stages of `fairjax.methods.system`
(baselines and grid: `fairjax.methods.system_baselines`; evaluations and
reported figures: `fairjax.evaluators.welfare`; statistics over seeds:
`fairjax.bo.compare`):

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

from fairjax import bo, runner
from fairjax import checkpoint as ckpt_lib
from fairjax.bo import compare, loop
from fairjax.data.system_data import LAMBDAS, prepare_system_data
from fairjax.errors import ConfigError
from fairjax.evaluators import welfare
from fairjax.methods import system as S
from fairjax.methods import system_baselines

NAME = "system"
FREE_FIELDS = ("optimizers", "num_seeds", "data_dir", "grid")


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


def run_unit(config, ctx: Context, unit, udir, results) -> dict:
  pipe = ctx.pipe(unit.seed)
  log = loop.EvalLog(udir)
  show = welfare.progress(f"{unit.method} seed {unit.seed}")
  if unit.method == "baselines":
    return system_baselines.baselines(pipe, log, config.default_k,
                                      config.welfare_tolerance)
  base = results[f"baselines/seed{unit.seed}"]
  ref = welfare.reference_point(base["welfare_optimal"]["valid"])
  evaluate = welfare.point_evaluator(pipe)
  if unit.method == "grid":
    loop.run_points(log, list(system_baselines.grid_points()), evaluate, show)
  else:
    loop.run_optimizer(unit.method, log, evaluate, welfare.objectives,
                       budget=int(config.budget), dim=S.NUM_KNOBS,
                       seed=int(config.seed) + unit.seed,
                       num_init=int(config.num_init), ref=ref, on_record=show)
  records, b1_test = log.records, base["welfare_optimal"]["test"]
  y = welfare.objectives(records)
  front = welfare.front_on_test(pipe, records)
  half = welfare.front_on_test(pipe, records, upto=len(records) // 2)
  return {"evaluations": records, "front": front,
          "group_names": list(pipe.data.group_names),
          "valid_hypervolume_curve": [loop.finite_hypervolume(y[:n], ref)
                                      for n in range(1, len(records) + 1)],
          "hypervolume": welfare.hypervolume_on_test(front, b1_test),
          "hypervolume_half_budget": welfare.hypervolume_on_test(half,
                                                                 b1_test),
          "der_reduction": welfare.der_reduction(
              front, base, config.welfare_tolerance)}


def rows(config, ctx, unit, r) -> list[dict]:
  """Every validation evaluation (step = its index), the test figures of
  the Pareto set and of the baselines (group `all` or a user group)."""
  out = []
  def add(method, step, split, fig):
    if fig is None or fig.get("group_utility") is None:
      return
    for f in welfare.FIGURES:
      out.append(runner.row(method, unit.seed, step, split, "all", f,
                            fig[f]))
    for g, u in zip(r["group_names"], fig["group_utility"]):
      out.append(runner.row(method, unit.seed, step, split, g, "utility", u))
  for rec in r["evaluations"]:
    add(unit.method, rec["n"], "valid", rec["valid"])
  for rec in r.get("front", ()):
    add(unit.method, rec["n"], "test", rec["test"])
  if unit.method == "baselines":
    for name in system_baselines.BASELINES:
      add(name, 0, "test", r[name]["test"])
  return out


REACH_TOLERANCES = (0.02, 0.05, 0.1)


def _valid_reach(config, res, base) -> dict:
  """valid_der_reduction: `welfare.valid_der_reduction` at REACH_TOLERANCES
  per unit (mean over seeds under its name, e.g. "bo", "grid") and over the
  evaluations of all equal-budget optimisers of a seed pooled
  ("all_optimizers", with "all_optimizers_per_seed"): what the knob box
  allows on validation, beside what each search found."""
  def reach(records, s):
    return welfare.valid_der_reduction(
        records, base[s]["welfare_optimal"]["valid"], REACH_TOLERANCES)
  out = {"tolerance": list(REACH_TOLERANCES)}
  for o, rs in res.items():
    out[o] = _column_means([reach(r["evaluations"], s)
                            for s, r in enumerate(rs)])
  pooled = [reach([e for o in optimizers(config)
                   for e in res[o][s]["evaluations"]], s)
            for s in range(len(base))]
  out["all_optimizers"] = _column_means(pooled)
  out["all_optimizers_per_seed"] = pooled
  return out


def _column_means(rows) -> list[float]:
  return [compare.nan_mean(col) for col in zip(*rows)]


def summarise(config, ctx, results, workdir) -> dict:
  """summary.json: hypervolume {OPT: mean over seeds} (+ _std, _per_seed,
  _half_budget), grid_hypervolume, der_reduction@2% (vs B1; also
  _vs_single_knob and _per_seed), baselines {welfare_optimal, model_level,
  single_knob: welfare, der, max_min_gap, group_utility (test, means over
  seeds), knobs per seed}, pareto {OPT: [[welfare, der, alpha_interact,
  alpha_like, alpha_love, K, s, lambda], ...]} (seed 0; all seeds under
  pareto_per_seed), paired_test (bo vs each optimiser, bo at half budget vs
  random, over seeds), valid_der_reduction (`_valid_reach`), own_gap and
  reliability (seed 0)."""
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
      "figure_names": list(welfare.FLAT_NAMES),
      **compare.hypervolume_summary(hv, half, optimizers(config),
                                    grid=bool(config.grid))}
  if "bo" in res:
    dr = [r["der_reduction"] for r in res["bo"]]
    summary["der_reduction@2%"] = compare.nan_mean(
        [d["welfare_optimal"] for d in dr])
    summary["der_reduction@2%_vs_single_knob"] = compare.nan_mean(
        [d["single_knob"] for d in dr])
    summary["der_reduction@2%_per_seed"] = dr
    summary["paired_test"] = compare.paired_tests(hv, half,
                                                  optimizers(config))
  summary["valid_der_reduction"] = _valid_reach(config, res, base)
  summary["baselines"] = system_baselines.mean_over_seeds(base)
  summary["group_names"] = base[0]["group_names"]
  summary["pareto"] = {o: [welfare.flat(r) for r in rs[0]["front"]]
                       for o, rs in res.items()}
  summary["pareto_per_seed"] = {o: [[welfare.flat(r) for r in x["front"]]
                                    for x in rs] for o, rs in res.items()}
  summary["failed_evaluations"] = {
      o: int(sum(not e["valid"]["ok"] for x in rs for e in x["evaluations"]))
      for o, rs in res.items()}
  summary["own_gap"] = base[0]["own_gap"]
  summary["reliability"] = base[0]["reliability"]
  return ckpt_lib.finite_or_none(summary)
