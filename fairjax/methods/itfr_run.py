"""`train_and_evaluate(config, workdir)`: ITFR, baselines and ablations over
seeds on the random-split protocol, resumable.

Protocol (DESIGN §4): load the dataset; keep ratings >= `min_rating` (0:
every rating, ITFR's default); user groups from the attribute `user_attr`;
item groups from `item_grouping` ('one_of': the index of the single genre an
item has among `genres`, items with none or several dropped; 'first_genre':
the first listed genre); drop interactions whose item has no group; k-core
(`k_core`, 5); random split by interaction (`fractions`, 70/10/20, seed
`split_seed`, every user with >= 3 interactions keeps one in each part).
Every method trains `epochs` epochs per seed and is evaluated on validation
(full ranking, training items excluded) every `eval_every` epochs; the
parameters with the best validation NDCG@K (K = `ks[0]`, first best on ties)
are tested with full ranking, training and validation items excluded.

Bad input: a user with a missing attribute raises DataError naming the field
(`missing_user_group='error'`) or has its interactions dropped ('drop',
counted in the data stats); a cell with no training interaction is reported
(stats `empty_cells`, a log line) and left out of the weights (q_g = 0).

Workdir layout:
  config.json, data_stats.json
  methods/M/seed<s>/ckpt/      {state, best params, best, history} every
                                `ckpt_every` epochs
  methods/M/seed<s>/result.json, per_user.npy (test NDCG@K per user)
  metrics.csv, summary.json
A rerun with the same workdir skips finished runs and resumes unfinished
ones from their last checkpoint (identical results on CPU; GPU scatter-adds
are not bitwise deterministic). The rerun may change `FREE_FIELDS` (which
methods, how many seeds, where the data is, logging, checkpoint spacing,
the LightGCN adjacency layout); any other field that differs from the
workdir's config.json raises ConfigError, since finished results would
silently keep the old values. `best_epoch` is 0-based in result.json and
1-based (the epoch count) in summary.json and metrics.csv.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax import metrics as metrics_lib
from fairjax import models as models_lib
from fairjax import train
from fairjax.data import protocols
from fairjax.data import registry
from fairjax.errors import DataError
from fairjax.methods import itfr as M

TEST_METRICS = ("ndcg", "recall", "precision", "cv", "min", "ucv", "icv")
CSV_FIELDS = ["method", "seed", "epoch", "split", "group", "metric", "value"]
# Config fields a rerun of a workdir may change (module docstring).
FREE_FIELDS = ("methods", "num_seeds", "data_dir", "log_every", "ckpt_every",
               "lightgcn_layout")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# Data.


def _missing_users(ds, attr: str) -> np.ndarray:
  """bool [U]: users whose attribute is absent (NaN or a negative code)."""
  raw = np.asarray(ds.user_attrs[attr])
  if raw.dtype.kind == "f":
    return ~np.isfinite(raw) | (raw < 0)
  if raw.dtype.kind in "iu":
    return raw < 0
  return np.zeros(raw.shape, bool)


def _item_groups(ds, config) -> tuple[np.ndarray, tuple[str, ...]]:
  if config.item_grouping == "one_of":
    genres = tuple(config.genres)
    return protocols.item_groups_one_of(ds, genres), genres
  return protocols.item_groups_first_genre(ds), tuple(ds.genre_names)


def prepare_data(config, data_dir: str | None = None) -> M.ItfrData:
  """Loads the dataset and builds the ITFR protocol (module docstring)."""
  kwargs = {}
  if config.dataset == "synthetic":
    kwargs = dict(seed=config.split_seed, num_users=config.synthetic.num_users,
                  num_items=config.synthetic.num_items)
  ds = registry.load_dataset(config.dataset, data_dir or config.data_dir or None,
                             **kwargs)
  attr = config.user_attr
  stats: dict = {"dataset": ds.name}
  if config.min_rating > 0:
    ds = protocols.binarize(ds, config.min_rating)
  if attr in ds.user_attrs:
    missing = _missing_users(ds, attr)
    if missing.any() and config.missing_user_group == "drop":
      stats["users_dropped_missing_attr"] = int(missing.sum())
      ds = protocols.reindex(ds.subset(~missing[ds.user]))
      _log(f"[itfr] dropped {int(missing.sum())} users without {attr!r}")
  protocols.user_groups(ds, attr)  # DataError (field attr) if missing codes
  ig, _ = _item_groups(ds, config)
  ds = ds.subset(ig[ds.item] >= 0)
  ds = (protocols.k_core(ds, config.k_core) if config.k_core > 1
        else protocols.reindex(ds))
  if ds.num_interactions == 0:
    raise DataError("no interaction left after grouping items and the "
                    f"{config.k_core}-core", field="k_core")
  ug = protocols.user_groups(ds, attr)
  ig, item_names = _item_groups(ds, config)
  user_names = tuple(ds.user_attr_names.get(attr) or
                     (str(a) for a in range(int(ug.max()) + 1)))
  tr, va, te = protocols.random_split(ds, tuple(config.fractions),
                                      seed=config.split_seed)
  nj = len(item_names)
  cells = protocols.cell_ids(ug, ig, ds.user[tr], ds.item[tr], nj)
  g = len(user_names) * nj
  counts = np.bincount(cells[cells >= 0], minlength=g).astype(np.int64)
  data = M.ItfrData(
      name=ds.name, num_users=ds.num_users, num_items=ds.num_items,
      user_group=ug.astype(np.int32), item_group=ig.astype(np.int32),
      user_group_names=tuple(str(x) for x in user_names),
      item_group_names=tuple(str(x) for x in item_names),
      train_user=ds.user[tr].astype(np.int32),
      train_item=ds.item[tr].astype(np.int32),
      train_cell=cells.astype(np.int32),
      valid_user=ds.user[va].astype(np.int32),
      valid_item=ds.item[va].astype(np.int32),
      test_user=ds.user[te].astype(np.int32),
      test_item=ds.item[te].astype(np.int32), cell_counts=counts, stats={})
  empty = [n for n, c in zip(data.cell_names(), counts) if c == 0]
  stats.update(
      users=ds.num_users, items=ds.num_items,
      interactions=ds.num_interactions, train=int(tr.sum()),
      valid=int(va.sum()), test=int(te.sum()), cells=data.num_cells,
      train_per_cell=dict(zip(data.cell_names(), counts.tolist())),
      empty_cells=empty)
  if empty:
    _log(f"[itfr] warning: cells without training interactions (left out of "
         f"the weights): {empty}")
  return dataclasses.replace(data, stats=stats)


def _finite_or_none(x):
  """Nested lists of floats with NaN or inf -> None (strict JSON)."""
  if isinstance(x, list):
    return [_finite_or_none(v) for v in x]
  return None if isinstance(x, float) and not math.isfinite(x) else x


def _floats(x) -> np.ndarray:
  """Inverse of `_finite_or_none` for numeric nested lists."""
  return np.asarray(_finite_or_none_inv(x), np.float64)


def _finite_or_none_inv(x):
  if isinstance(x, list):
    return [_finite_or_none_inv(v) for v in x]
  return np.nan if x is None else x


# ----------------------------------------------------------------------------
# Evaluation.


class Evaluator:
  """Full-ranking validation and test of a backbone's parameters."""

  def __init__(self, data: M.ItfrData, ks=(20,)):
    self.data = data
    self.ks = tuple(int(k) for k in ks)
    self.train = jnp.asarray(data.seen(("train",)))
    self.valid = jnp.asarray(data.seen(("valid",)))
    self.test_rel = jnp.asarray(data.seen(("test",)))
    self.test_excl = jnp.asarray(data.seen(("train", "valid")))
    self.users = jnp.arange(data.num_users)
    self._score_fns = {}

  def scores(self, model, params) -> jax.Array:
    """[U, I] inference scores (plain cosine for cosine models: tau = 1)."""
    fn = self._score_fns.get(id(model))
    if fn is None:
      fn = jax.jit(lambda p: models_lib.all_scores(model, p, self.users))
      self._score_fns[id(model)] = (fn, model)  # keep the model alive
    else:
      fn = fn[0]
    return fn(params)

  def validate(self, model, params) -> dict[str, float]:
    """Mean over users with validation items of NDCG/Recall@K."""
    per_user = metrics_lib.rank_metrics(self.scores(model, params), self.valid,
                                        self.ks, exclude=self.train)
    k = self.ks[0]
    return {m: float(jnp.nanmean(per_user[f"{m}@{k}"]))
            for m in ("ndcg", "recall")}

  def test(self, model, params) -> tuple[dict, np.ndarray, np.ndarray]:
    """Test metrics, per-cell recall [A, J] and per-user NDCG@K."""
    s = self.scores(model, params)
    k = self.ks[0]
    per_user = metrics_lib.rank_metrics(s, self.test_rel, self.ks,
                                        exclude=self.test_excl)
    top = metrics_lib.topk_items(s, k, exclude=self.test_excl)
    d = self.data
    cells = metrics_lib.cell_recall(top, self.test_rel & ~self.test_excl,
                                    jnp.asarray(d.user_group),
                                    jnp.asarray(d.item_group),
                                    d.num_user_groups, d.num_item_groups)
    disp = metrics_lib.cv_metrics(cells)
    out = {f"{m}@{k}": float(jnp.nanmean(per_user[f"{m}@{k}"]))
           for m in ("ndcg", "recall", "precision")}
    out.update({f"{m}@{k}": float(disp[m]) for m in ("cv", "min", "ucv",
                                                      "icv")})
    return out, np.asarray(cells), np.asarray(per_user[f"ndcg@{k}"])


# ----------------------------------------------------------------------------
# One method, one seed.


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _seed_dir(workdir, name: str, seed: int) -> pathlib.Path:
  """methods/NAME/seed<seed>/: checkpoints, result.json, per_user.npy."""
  return pathlib.Path(workdir) / "methods" / name / f"seed{seed}"


class Compiled:
  """A method's model, optimiser and jitted epoch, shared by its seeds."""

  def __init__(self, name: str, data: M.ItfrData, config):
    self.spec = M.METHODS[name]
    self.model = M.create_model(config, data, self.spec.cosine)
    self.tx = M.make_optimizer(config)
    self.epoch_fn = M.make_epoch_fn(self.model, self.tx, self.spec, config,
                                    data)
    self.context = M.make_context(data, self.model, self.spec)


def run_one(name: str, seed: int, data: M.ItfrData, config, workdir,
            evaluator: Evaluator, compiled: Compiled | None = None) -> dict:
  """Trains, selects and tests method `name` with seed index `seed`.

  Returns the result dict (also in methods/NAME/seed<seed>/result.json).
  """
  mdir = _seed_dir(workdir, name, seed)
  if (mdir / "result.json").exists():
    return ckpt_lib.read_json(mdir / "result.json")
  mdir.mkdir(parents=True, exist_ok=True)
  compiled = compiled or Compiled(name, data, config)
  spec, model, tx = compiled.spec, compiled.model, compiled.tx
  epoch_fn = compiled.epoch_fn
  rng = jax.random.key(int(config.seed) + seed)
  state = M.init_state(model, tx, spec, data, jax.random.fold_in(rng, 0))
  epochs = int(config.epochs)
  # history columns: train loss, valid ndcg, valid recall, train seconds,
  # 1 if the epoch included compilation.
  hist = np.full((epochs, 5), np.nan, np.float64)
  saved = {"state": state, "best_params": _copy(state.params),
           "best": np.array([-np.inf, -1.0]), "hist": hist}
  ck = ckpt_lib.Checkpointer(mdir / "ckpt")
  start = 0
  restored = ck.restore_latest(saved)
  if restored is not None:
    start, saved = restored
    _log(f"[{name} seed {seed}] resumed after epoch {start}")
  state = jax.tree.map(jnp.asarray, saved["state"])
  best_params = saved["best_params"]
  best = np.asarray(saved["best"], np.float64).copy()
  hist = np.asarray(saved["hist"], np.float64).copy()
  context = compiled.context
  k = evaluator.ks[0]
  progress = train.Progress(f"{name} seed {seed}", epochs,
                            int(data.train_user.size),
                            every=max(1, int(config.log_every)))
  first = True
  for epoch in range(start, epochs):
    batches = M.epoch_batches(data, config.batch_size,
                              (int(config.seed) + seed, epoch))
    t0 = time.perf_counter()
    state, m = epoch_fn(state, batches, jax.random.fold_in(rng, 1 + epoch),
                        context)
    jax.block_until_ready(state)
    secs = time.perf_counter() - t0
    loss = float(jnp.mean(m["loss"]))
    hist[epoch, [0, 3, 4]] = loss, secs, float(first)
    first = False
    shown = {"loss": loss}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs:
      val = evaluator.validate(model, state.params)
      hist[epoch, 1:3] = val["ndcg"], val["recall"]
      shown[f"val_ndcg@{k}"] = val["ndcg"]
      if val["ndcg"] > best[0]:
        best = np.array([val["ndcg"], epoch])
        best_params = _copy(state.params)
    progress.update(epoch, shown)
    if (epoch + 1) % config.ckpt_every == 0 or epoch + 1 == epochs:
      ck.save(epoch + 1, {"state": state, "best_params": best_params,
                          "best": best, "hist": hist})
  ck.close()
  test, cells, per_user = evaluator.test(
      model, jax.tree.map(jnp.asarray, best_params))
  timed = hist[:, 3][(hist[:, 4] == 0) & ~np.isnan(hist[:, 3])]
  if timed.size == 0:
    timed = hist[:, 3][~np.isnan(hist[:, 3])]
  q = np.asarray(state.aux["q"]).tolist()
  result = {"method": name, "seed": seed,
            "test": {a: _finite_or_none(b) for a, b in test.items()},
            "cells": _finite_or_none(cells.tolist()),
            "best_epoch": int(best[1]), "best_valid_ndcg": float(best[0]),
            "seconds_per_epoch": float(timed.mean()) if timed.size else None,
            "final_q": q, "history": _finite_or_none(hist.tolist())}
  _save_npy(mdir / "per_user.npy", per_user.astype(np.float32))
  ckpt_lib.write_json_atomic(mdir / "result.json", result)
  _log(f"[{name} seed {seed}] best epoch {int(best[1]) + 1} | test "
       + " ".join(f"{a} {b:.4f}" for a, b in test.items()))
  return result


def _save_npy(path: pathlib.Path, arr: np.ndarray) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".npy")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


# ----------------------------------------------------------------------------
# All methods, all seeds.


def train_and_evaluate(config, workdir: str, data_dir: str | None = None
                       ) -> dict:
  """Runs every method x seed; writes metrics.csv and summary.json."""
  M.validate_config(config)
  workdir = ckpt_lib.open_workdir(workdir, config, FREE_FIELDS)
  data = prepare_data(config, data_dir)
  ckpt_lib.write_json_atomic(workdir / "data_stats.json", data.stats)
  st = data.stats
  _log(f"[itfr] {data.name}: {st['users']} users, {st['items']} items, "
       f"{st['interactions']} interactions (train {st['train']}, valid "
       f"{st['valid']}, test {st['test']}), {data.num_cells} cells")
  evaluator = Evaluator(data, config.ks)
  results: dict[str, list[dict]] = {}
  for name in M.method_list(config):
    compiled = None
    for seed in range(int(config.num_seeds)):
      done = (_seed_dir(workdir, name, seed) / "result.json").exists()
      if compiled is None and not done:
        compiled = Compiled(name, data, config)
      results.setdefault(name, []).append(
          run_one(name, seed, data, config, workdir, evaluator, compiled))
  ckpt_lib.write_csv_atomic(workdir / "metrics.csv",
                            _rows(results, data, evaluator.ks[0]), CSV_FIELDS)
  summary = summarise(results, data, workdir, evaluator.ks[0])
  ckpt_lib.write_json_atomic(workdir / "summary.json", summary)
  _log(f"[itfr] wrote {workdir / 'metrics.csv'} and "
       f"{workdir / 'summary.json'}")
  return summary


def _rows(results, data, k) -> list[dict]:
  rows = []
  cells = data.cell_names()
  for name, runs in results.items():
    for r in runs:
      base = dict(method=name, seed=r["seed"])
      for e, h in enumerate(_floats(r["history"])):
        for col, split, metric in ((0, "train", "loss"),
                                   (1, "valid", f"ndcg@{k}"),
                                   (2, "valid", f"recall@{k}"),
                                   (3, "train", "seconds")):
          if not np.isnan(h[col]):
            rows.append(dict(base, epoch=e + 1, split=split, group="all",
                             metric=metric, value=float(h[col])))
      best = r["best_epoch"] + 1
      for metric, value in r["test"].items():
        rows.append(dict(base, epoch=best, split="test", group="all",
                         metric=metric, value=value))
      flat = _floats(r["cells"]).reshape(-1)
      for cname, value, q in zip(cells, flat, r["final_q"]):
        rows.append(dict(base, epoch=best, split="test", group=cname,
                         metric=f"recall@{k}", value=value))
        rows.append(dict(base, epoch=len(r["history"]), split="train",
                         group=cname, metric="q", value=q))
  return rows


def summarise(results, data, workdir, k) -> dict:
  """summary.json (DESIGN §7, issue 4).

  test[M][metric]: mean over seeds; std[M][metric]: sample std over seeds
  (ddof = 1; 0 for one seed); seconds_per_epoch[M]: mean over seeds of the
  mean training time of an epoch (epochs that compiled excluded); cells[M]:
  mean per-cell recall@K [A][J]; paired_test["M_vs_BPR"]: paired t-test of
  per-user test NDCG@K (averaged over seeds) of M against BPR, and of the
  per-seed CV@K (needs >= 2 seeds).
  """
  names = [f"{m}@{k}" for m in TEST_METRICS]
  summary = {"test": {}, "std": {}, "seconds_per_epoch": {}, "cells": {},
             "best_epoch": {}, "num_seeds": {}, "data": data.stats}
  for name, runs in results.items():
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
  if "BPR" in results:
    summary["paired_test"] = {}
    base = _per_user(workdir, "BPR", len(results["BPR"]))
    for name in results:
      if name == "BPR":
        continue
      n = min(len(results[name]), len(results["BPR"]))
      entry = {f"ndcg@{k}_per_user": metrics_lib.paired_test(
          _per_user(workdir, name, n), base if n == len(results["BPR"])
          else _per_user(workdir, "BPR", n))}
      if n >= 2:
        entry[f"cv@{k}_per_seed"] = metrics_lib.paired_test(
            _floats([r["test"][f"cv@{k}"] for r in results[name][:n]]),
            _floats([r["test"][f"cv@{k}"] for r in results["BPR"][:n]]))
      summary["paired_test"][f"{name}_vs_BPR"] = {
          a: {c: _finite_or_none(v) for c, v in b.items()}
          for a, b in entry.items()}
  return summary


def _per_user(workdir, name, n) -> np.ndarray:
  arr = [np.load(_seed_dir(workdir, name, s) / "per_user.npy")
         for s in range(n)]
  return np.mean(np.stack(arr), axis=0)
