"""`train_and_evaluate(config, workdir)`: all FADE methods, resumable.

Layout of the workdir:
  pretrain/ckpt/          the pretrained state, checkpointed every 10 epochs
  eval_negatives.npy      the fixed sampled-protocol negatives [U, 100]
  methods/M/ckpt/         state after each period (step = period)
  methods/M/rows.json     metric rows and timings of the finished periods
  metrics.csv, summary.json, config.json
A rerun with the same workdir skips finished work and continues from the last
finished period of each method with the restored state, so its results are
identical to an uninterrupted run. The rerun may change `FREE_FIELDS` (which
methods, where the data is); any other field that differs from the
workdir's config.json raises ConfigError, since finished work would
silently keep the old values.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax import models as models_lib
from fairjax import train
from fairjax.data import sampling
from fairjax.methods import fade as F
from fairjax.methods import periodic_eval as E

# Config fields a rerun of a workdir may change (module docstring).
FREE_FIELDS = ("methods", "data_dir")
_FINETUNE_KIND = {"FINETUNE": "bpr", "FADE": "fade", "REC": "rec"}
_RETRAIN_KIND = {"RETRAIN": "bpr", "FADE-RETRAIN": "fade"}
SUMMARY_METRICS = ("ndcg", "recall", "f1", "precision", "hr")
CSV_FIELDS = ["method", "snapshot", "task", "protocol", "group", "metric",
              "value"]


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _lam(config, kind: str) -> float:
  return {"bpr": 0.0, "fade": config.fade.lam, "rec": config.rec_lam}[kind]


def eval_negatives_for(data: F.FadeData, path, seed: int, n: int) -> np.ndarray:
  """Fixed negatives [U, n]: items of D_0, never interacted with by the user.

  One set per workdir serves every method, snapshot and task, so all methods
  face the same candidates. It excludes every item the user interacts with in
  any period, hence never collides with a train or test positive.
  """
  def make():
    all_seen = data.seen(int(data.period.max()))
    pool = np.unique(data.item[data.period == 0])
    return sampling.eval_negatives(seed, all_seen, all_seen, pool,
                                   data.num_users, n=n)
  return sampling.load_or_create_eval_negatives(path, make)


def _eval_rows(evaluator, params, data, snapshot, method, ks):
  """Rows for every (task, protocol, group, metric) at one snapshot."""
  rows = []
  hist = data.period <= snapshot
  for task, periods in (("task_r", range(snapshot + 1, data.period.max() + 1)),
                        ("task_n", [snapshot + 1])):
    test = np.isin(data.period, list(periods))
    es = E.make_eval_set(data.user[test], data.item[test], data.user[hist],
                         data.item[hist], data.num_users, data.num_items)
    protocols = {"sampled": evaluator.sampled}
    if evaluator.full_ranking:
      protocols["full"] = evaluator.full
    for protocol, fn in protocols.items():
      per_user = fn(params, es)
      summary = E.summarise(per_user, data.user_group, data.group_names)
      for group, vals in summary.items():
        for metric, value in vals.items():
          rows.append(dict(method=method, snapshot=snapshot, task=task,
                           protocol=protocol, group=group, metric=metric,
                           value=value))
  return rows


class _MethodLog:
  """Rows and timings of one method's finished periods, saved atomically."""

  def __init__(self, directory: pathlib.Path):
    self.path = directory / "rows.json"
    self.state = (ckpt_lib.read_json(self.path) if self.path.exists() else
                  {"periods": {}})

  def done(self, t: int) -> bool:
    return str(t) in self.state["periods"]

  def add(self, t: int, rows, seconds: float, extra: dict) -> None:
    self.state["periods"][str(t)] = dict(rows=rows, seconds=seconds, **extra)
    ckpt_lib.write_json_atomic(self.path, self.state)

  def truncate(self, last: int) -> None:
    self.state["periods"] = {k: v for k, v in self.state["periods"].items()
                             if int(k) <= last}


def train_and_evaluate(config, workdir: str, data_dir: str | None = None
                       ) -> dict:
  """Runs every method in `config.methods`; writes metrics.csv/summary.json."""
  F.validate_config(config)
  workdir = ckpt_lib.open_workdir(workdir, config, FREE_FIELDS)
  data = F.prepare_data(config, data_dir)
  _log(f"[fade] {data.name}: {data.num_users} users, {data.num_items} items, "
       f"period sizes {list(data.period_sizes)}")
  model = models_lib.create(config.model, data.num_users, data.num_items,
                            **_model_kwargs(config))
  trainer = F.Trainer(model, F.make_optimizer(config), config)
  negs = eval_negatives_for(data, workdir / "eval_negatives.npy", config.seed,
                            config.num_eval_negatives)
  evaluator = E.Evaluator(model, negs, ks=config.ks,
                          full_ranking=bool(config.eval_full))
  rng = jax.random.key(config.seed)
  periods = range(1, config.num_periods + 1)

  pre_state = None
  def pretrained():
    nonlocal pre_state
    if pre_state is None:
      pre_state = _pretrain(trainer, data, config, rng, workdir)
    return pre_state

  all_rows, seconds = [], {}
  for m_id, method in enumerate(F.method_list(config)):
    mdir = workdir / "methods" / method
    mdir.mkdir(parents=True, exist_ok=True)
    log = _MethodLog(mdir)
    mrng = jax.random.fold_in(rng, 1000 + m_id)
    state = None
    if method in _FINETUNE_KIND or method == "ADVER":
      ck = ckpt_lib.Checkpointer(mdir / "ckpt")
      last = ck.latest_step()
      # Epochs donate their input state: start each method from a copy.
      template = (jax.tree.map(jnp.copy, pretrained()) if method != "ADVER"
                  else None)
      if method == "ADVER":
        from fairjax.methods import adver
        runner = adver.AdverRunner(model, config, data)
        template = runner.init_from(pretrained())
        adver_eval = E.Evaluator(model, negs, ks=config.ks,
                                 full_ranking=bool(config.eval_full),
                                 pair_fn=runner.pair_scores,
                                 all_fn=runner.all_scores)
      if last is not None and all(log.done(t) for t in range(1, last + 1)):
        state = ck.restore(last, template)
        log.truncate(last)
        _log(f"[{method}] resumed after period {last}")
      else:
        state, last = template, 0
      for t in periods:
        if t <= last:
          continue
        rows_t = data.rows([t])
        seen = data.seen(t)
        if method == "ADVER":
          state, info = runner.run_period(state, rows_t, seen, t,
                                          jax.random.fold_in(mrng, t))
          params = runner.rec_params(state)
          rows = _eval_rows(adver_eval, params, data, t, method, config.ks)
        else:
          kind = _FINETUNE_KIND[method]
          state, info = trainer.run_epochs(
              state, data, rows_t, kind, _lam(config, kind), config.epochs,
              (config.seed, m_id, t), jax.random.fold_in(mrng, t), seen)
          rows = _eval_rows(evaluator, state.params, data, t, method,
                            config.ks)
        log.add(t, rows, info["train_seconds"], info)
        ck.save(t, state)
        _report(method, t, info, rows, config)
      ck.close()
    elif method in _RETRAIN_KIND:
      kind = _RETRAIN_KIND[method]
      for t in periods:
        if log.done(t):
          continue
        state = trainer.init_state(jax.random.fold_in(mrng, t))
        rows_t = data.rows(range(0, t + 1))
        state, info = trainer.run_epochs(
            state, data, rows_t, kind, _lam(config, kind),
            config.retrain_epochs, (config.seed, m_id, t),
            jax.random.fold_in(mrng, t), data.seen(t))
        rows = _eval_rows(evaluator, state.params, data, t, method, config.ks)
        log.add(t, rows, info["train_seconds"], info)
        _report(method, t, info, rows, config)
    elif method == "PRE-TRAIN":
      params = pretrained().params
      for t in periods:
        if not log.done(t):
          rows = _eval_rows(evaluator, params, data, t, method, config.ks)
          log.add(t, rows, 0.0, {})
    for t in periods:
      all_rows.extend(log.state["periods"][str(t)]["rows"])
    seconds[method] = float(np.mean([log.state["periods"][str(t)]["seconds"]
                                     for t in periods]))

  ckpt_lib.write_csv_atomic(workdir / "metrics.csv", all_rows, CSV_FIELDS)
  summary = summarise(all_rows, seconds, config)
  ckpt_lib.write_json_atomic(workdir / "summary.json", summary)
  _log(f"[fade] wrote {workdir / 'metrics.csv'} and {workdir / 'summary.json'}")
  return summary


def _model_kwargs(config) -> dict:
  """Backbone options from the config: MF d; NCF GMF and MLP widths."""
  if config.model == "ncf":
    return dict(gmf_dim=config.dim, mlp_embed_dim=config.dim)
  return dict(dim=config.dim)


def _pretrain(trainer, data, config, rng, workdir) -> train.TrainState:
  state = trainer.init_state(jax.random.fold_in(rng, 0))
  rows = data.rows([0])
  seen = data.seen(0)
  context = {"seen": seen, "user_group": data.user_group}
  epoch_fn = trainer.epoch_fn("bpr", 0.0)
  state, _ = train.fit(
      state, epoch_fn,
      lambda e: F.epoch_batches(rows, data, config.batch_size,
                                (config.seed, 99, e)),
      config.pretrain_epochs, jax.random.fold_in(rng, 1), context=context,
      checkpoint_dir=workdir / "pretrain" / "ckpt", ckpt_every=10,
      name="pretrain", log_every=max(1, config.pretrain_epochs // 10))
  return state


def _report(method, t, info, rows, config) -> None:
  k = config.ks[0]
  get = {(r["task"], r["protocol"], r["group"], r["metric"]): r["value"]
         for r in rows}
  nd = get.get(("task_r", "sampled", "all", f"ndcg@{k}"), float("nan"))
  pd = get.get(("task_r", "sampled", "pd", f"ndcg@{k}"), float("nan"))
  extra = " ".join(f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}"
                   for a, b in info.items())
  _log(f"[{method}] period {t}/{config.num_periods} {extra} | "
       f"task_r ndcg@{k} {nd:.4f} pd {pd:+.4f}")


def summarise(rows, seconds, config) -> dict:
  """summary.json: per task, method -> mean over periods of each metric.

  `x@K` is the mean over periods of the all-user value; `pd_x@K` the mean
  over periods of |PD_t|. Sampled figures at the top level, full-ranking
  figures under `full`.
  """
  acc: dict = {}
  for r in rows:
    if r["group"] not in ("all", "pd"):
      continue
    key = (r["protocol"], r["task"], r["method"], r["group"], r["metric"])
    acc.setdefault(key, []).append(r["value"])
  def block(protocol):
    out = {}
    for task in ("task_r", "task_n"):
      out[task] = {}
      for method in F.method_list(config):
        vals = {}
        for k in config.ks:
          for m in SUMMARY_METRICS:
            name = f"{m}@{k}"
            a = acc.get((protocol, task, method, "all", name))
            p = acc.get((protocol, task, method, "pd", name))
            if a is not None:
              vals[name] = float(np.nanmean(a))
              vals[f"pd_{name}"] = float(np.nanmean(np.abs(p)))
        out[task][method] = vals
    return out
  summary = block("sampled")
  if config.eval_full:
    summary["full"] = block("full")
  summary["seconds_per_period"] = seconds
  return summary
