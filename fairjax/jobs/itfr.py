"""The ITFR job: ITFR, baselines and ablations x seeds (DESIGN §4).

Data: `fairjax.data.cells.prepare_data` (random split with cells). Units:
method x seed, key `M/seed<s>`. Every unit trains `epochs` epochs and is
validated (full ranking) every `eval_every` epochs; the parameters with the
best validation NDCG@K (K = `ks[0]`, first best on ties) are tested
(`fairjax.evaluators.cells.CellEvaluator`).

Workdir layout:
  config.json, data_stats.json
  methods/M/seed<s>/ckpt/      {state, best params, best, history} every
                                `ckpt_every` epochs
  methods/M/seed<s>/result.json, per_user.npy (test NDCG@K per user)
  metrics.csv, summary.json
A unit killed mid-way resumes from its last checkpoint (identical results
on CPU; GPU scatter-adds are not bitwise deterministic). A rerun may change
`FREE_FIELDS`. `best_epoch` is 0-based in result.json and 1-based (the
epoch count) in summary.json and metrics.csv (step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax import metrics as metrics_lib
from fairjax import runner
from fairjax import train
from fairjax.data import cells as cells_data
from fairjax.evaluators.cells import CellEvaluator
from fairjax.methods import itfr as M

NAME = "itfr"
TEST_METRICS = ("ndcg", "recall", "precision", "cv", "min", "ucv", "icv")
FREE_FIELDS = ("methods", "num_seeds", "data_dir", "log_every", "ckpt_every",
               "lightgcn_layout")

validate = M.validate_config
_finite_or_none = ckpt_lib.finite_or_none
_floats = ckpt_lib.floats


class Context:
  def __init__(self, config, workdir, data_dir):
    self.data = data = cells_data.prepare_data(config, data_dir)
    ckpt_lib.write_json_atomic(workdir / "data_stats.json", data.stats)
    st = data.stats
    runner.log(f"[itfr] {data.name}: {st['users']} users, {st['items']} "
               f"items, {st['interactions']} interactions (train "
               f"{st['train']}, valid {st['valid']}, test {st['test']}), "
               f"{data.num_cells} cells")
    self.evaluator = CellEvaluator(data, config.ks)
    self.workdir = workdir
    self.compiled: dict[str, Compiled] = {}


class Compiled:
  """A method's model, optimiser and jitted epoch, shared by its seeds."""

  def __init__(self, name: str, data, config):
    self.spec = M.METHODS[name]
    self.model = M.create_model(config, data, self.spec.cosine)
    self.tx = M.make_optimizer(config)
    self.epoch_fn = M.make_epoch_fn(self.model, self.tx, self.spec, config,
                                    data)
    self.context = M.make_context(data, self.model, self.spec)


def prepare(config, workdir, data_dir) -> Context:
  return Context(config, workdir, data_dir)


def units(config, ctx) -> list[runner.Unit]:
  return [runner.Unit(f"{name}/seed{s}", name, s)
          for name in M.method_list(config)
          for s in range(int(config.num_seeds))]


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def run_unit(config, ctx: Context, unit: runner.Unit, udir, results) -> dict:
  """Trains, selects and tests one method with one seed index."""
  del results
  name, seed, data, evaluator = unit.method, unit.seed, ctx.data, ctx.evaluator
  if name not in ctx.compiled:
    ctx.compiled[name] = Compiled(name, data, config)
  compiled = ctx.compiled[name]
  model, epoch_fn = compiled.model, compiled.epoch_fn
  rng = jax.random.key(int(config.seed) + seed)
  state = M.init_state(model, compiled.tx, compiled.spec, data,
                       jax.random.fold_in(rng, 0))
  epochs = int(config.epochs)
  # history columns: train loss, valid ndcg, valid recall, train seconds,
  # 1 if the epoch included compilation (0 since `train.fit` compiles before
  # the first epoch; kept so older checkpoints restore).
  hist = np.full((epochs, 5), np.nan, np.float64)
  saved = {"state": state, "best_params": _copy(state.params),
           "best": np.array([-np.inf, -1.0]), "hist": hist}
  ck = ckpt_lib.Checkpointer(udir / "ckpt")
  start = 0
  restored = ck.restore_latest(saved)
  if restored is not None:
    start, saved = restored
    runner.log(f"[{name} seed {seed}] resumed after epoch {start}")
  state = jax.tree.map(jnp.asarray, saved["state"])
  best_params = saved["best_params"]
  best = np.asarray(saved["best"], np.float64).copy()
  hist = np.asarray(saved["hist"], np.float64).copy()
  k = evaluator.ks[0]

  def on_epoch_end(epoch, state, means):
    nonlocal best, best_params
    hist[epoch, [0, 3, 4]] = means["loss"], means["seconds"], 0.0
    shown = {}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs:
      val = evaluator.validate(model, state.params)
      hist[epoch, 1:3] = val["ndcg"], val["recall"]
      shown[f"val_ndcg@{k}"] = val["ndcg"]
      if val["ndcg"] > best[0]:
        best = np.array([val["ndcg"], epoch])
        best_params = _copy(state.params)
    if (epoch + 1) % config.ckpt_every == 0 or epoch + 1 == epochs:
      ck.save(epoch + 1, {"state": state, "best_params": best_params,
                          "best": best, "hist": hist})
    return shown

  state, _ = train.fit(
      state, epoch_fn,
      lambda e: M.epoch_batches(data, config.batch_size,
                                (int(config.seed) + seed, e)),
      epochs, lambda e: jax.random.fold_in(rng, 1 + e),
      context=compiled.context, start_epoch=start, on_epoch_end=on_epoch_end,
      name=f"{name} seed {seed}", log_every=max(1, int(config.log_every)),
      time_epochs=True)
  ck.close()
  test, cells, per_user = evaluator.test(
      model, jax.tree.map(jnp.asarray, best_params))
  timed = hist[:, 3][(hist[:, 4] == 0) & ~np.isnan(hist[:, 3])]
  ckpt_lib.save_npy_atomic(udir / "per_user.npy", per_user.astype(np.float32))
  runner.log(f"[{name} seed {seed}] best epoch {int(best[1]) + 1} | test "
             + " ".join(f"{a} {b:.4f}" for a, b in test.items()))
  return {"method": name, "seed": seed,
          "test": {a: _finite_or_none(b) for a, b in test.items()},
          "cells": _finite_or_none(cells.tolist()),
          "best_epoch": int(best[1]), "best_valid_ndcg": float(best[0]),
          "seconds_per_epoch": float(timed.mean()) if timed.size else None,
          "final_q": np.asarray(state.aux["q"]).tolist(),
          "history": _finite_or_none(hist.tolist())}


def rows(config, ctx, unit, r) -> list[dict]:
  """Per epoch: train loss and seconds, valid NDCG/Recall@K; at the best
  epoch: the test metrics and each cell's recall; the final q per cell."""
  out = []
  k = ctx.evaluator.ks[0]
  row = lambda step, split, group, metric, value: runner.row(  # noqa: E731
      unit.method, unit.seed, step, split, group, metric, value)
  for e, h in enumerate(_floats(r["history"])):
    for col, split, metric in ((0, "train", "loss"),
                               (1, "valid", f"ndcg@{k}"),
                               (2, "valid", f"recall@{k}"),
                               (3, "train", "seconds")):
      if not np.isnan(h[col]):
        out.append(row(e + 1, split, "all", metric, float(h[col])))
  best = r["best_epoch"] + 1
  for metric, value in r["test"].items():
    out.append(row(best, "test", "all", metric, value))
  flat = _floats(r["cells"]).reshape(-1)
  for cname, value, q in zip(ctx.data.cell_names(), flat, r["final_q"]):
    out.append(row(best, "test", cname, f"recall@{k}", value))
    out.append(row(len(r["history"]), "train", cname, "q", q))
  return out


def summarise(config, ctx, results, workdir) -> dict:
  """summary.json.

  test[M][metric]: mean over seeds; std[M][metric]: sample std over seeds
  (ddof = 1; 0 for one seed); seconds_per_epoch[M]: mean over seeds of the
  mean training time of an epoch (compilation, done by `train.fit`
  before the first epoch, excluded); cells[M]:
  mean per-cell recall@K [A][J]; paired_test["M_vs_BPR"]: paired t-test of
  per-user test NDCG@K (averaged over seeds) of M against BPR, and of the
  per-seed CV@K (needs >= 2 seeds).
  """
  data, k = ctx.data, ctx.evaluator.ks[0]
  by_method: dict[str, list[dict]] = {}
  for unit in units(config, ctx):
    by_method.setdefault(unit.method, []).append(results[unit.key])
  names = [f"{m}@{k}" for m in TEST_METRICS]
  summary = {"test": {}, "std": {}, "seconds_per_epoch": {}, "cells": {},
             "best_epoch": {}, "num_seeds": {}, "data": data.stats}
  for name, runs in by_method.items():
    vals = {m: _floats([r["test"][m] for r in runs]) for m in names}
    summary["test"][name] = {m: _finite_or_none(float(np.mean(v)))
                             for m, v in vals.items()}
    summary["std"][name] = {
        m: _finite_or_none(float(np.std(v, ddof=1)) if v.size > 1 else 0.0)
        for m, v in vals.items()}
    secs = [r["seconds_per_epoch"] for r in runs
            if r["seconds_per_epoch"] is not None]
    summary["seconds_per_epoch"][name] = float(np.mean(secs)) if secs else None
    summary["cells"][name] = {
        "user_groups": list(data.user_group_names),
        "item_groups": list(data.item_group_names),
        f"recall@{k}": _finite_or_none(np.mean(
            [_floats(r["cells"]) for r in runs], axis=0).tolist())}
    summary["best_epoch"][name] = [r["best_epoch"] + 1 for r in runs]
    summary["num_seeds"][name] = len(runs)
  if "BPR" in by_method:
    summary["paired_test"] = {}
    bpr = by_method["BPR"]
    for name, runs in by_method.items():
      if name == "BPR":
        continue
      n = min(len(runs), len(bpr))
      entry = {f"ndcg@{k}_per_user": metrics_lib.paired_test(
          _per_user(workdir, name, n), _per_user(workdir, "BPR", n))}
      if n >= 2:
        entry[f"cv@{k}_per_seed"] = metrics_lib.paired_test(
            _floats([r["test"][f"cv@{k}"] for r in runs[:n]]),
            _floats([r["test"][f"cv@{k}"] for r in bpr[:n]]))
      summary["paired_test"][f"{name}_vs_BPR"] = {
          a: {c: _finite_or_none(v) for c, v in b.items()}
          for a, b in entry.items()}
  return summary


def _per_user(workdir, name, n) -> np.ndarray:
  arr = [np.load(runner.unit_dir(workdir, f"{name}/seed{s}") / "per_user.npy")
         for s in range(n)]
  return np.mean(np.stack(arr), axis=0)
