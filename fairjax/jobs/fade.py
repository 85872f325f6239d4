"""The FADE job: every method of `fairjax.methods.fade` over the periods.

Units: one per method of `config.methods`. Workdir layout:
  pretrain/ckpt/          the pretrained state, checkpointed every 10 epochs
  eval_negatives.npy      the fixed sampled-protocol negatives [U, 100]
  methods/M/ckpt/         state after each period (step = period)
  methods/M/rows.json     metric rows and timings of the finished periods
  methods/M/result.json   the same, once every period is done
A unit killed mid-way continues from its last finished period with the
restored state, so results equal an uninterrupted run. A rerun may change
`FREE_FIELDS` (which methods, where the data is).

metrics.csv rows: step = snapshot t, split = `task_r/sampled`,
`task_n/full`, ..., group = a user group, `all` or `pd` (PD_t).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax import models as models_lib
from fairjax import runner
from fairjax import train
from fairjax.data import sampling
from fairjax.methods import fade as F
from fairjax.evaluators import periodic as E

NAME = "fade"
FREE_FIELDS = ("methods", "data_dir")
_FINETUNE_KIND = {"FINETUNE": "bpr", "FADE": "fade", "REC": "rec"}
_RETRAIN_KIND = {"RETRAIN": "bpr", "FADE-RETRAIN": "fade"}
SUMMARY_METRICS = ("ndcg", "recall", "f1", "precision", "hr")

validate = F.validate_config


def _lam(config, kind: str) -> float:
  return {"bpr": 0.0, "fade": config.fade.lam, "rec": config.rec.lam}[kind]


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


def eval_rows(evaluator, params, data, snapshot, method, ks):
  """metrics.csv rows for every (task, protocol, group, metric) at one
  snapshot."""
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
          rows.append(runner.row(method, 0, snapshot, f"{task}/{protocol}",
                                 group, metric, value))
  return rows


class _PeriodLog:
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


class Context:
  """Data, model, trainer, evaluator and the (lazily) pretrained state."""

  def __init__(self, config, workdir: pathlib.Path, data_dir):
    self.data = data = F.prepare_data(config, data_dir)
    runner.log(f"[fade] {data.name}: {data.num_users} users, "
               f"{data.num_items} items, period sizes "
               f"{list(data.period_sizes)}")
    self.model = models_lib.create(config.model, data.num_users,
                                   data.num_items, **_model_kwargs(config))
    self.trainer = F.Trainer(self.model, F.make_optimizer(config), config)
    self.negs = eval_negatives_for(data, workdir / "eval_negatives.npy",
                                   config.seed, config.num_eval_negatives)
    self.evaluator = E.Evaluator(self.model, self.negs, ks=config.ks,
                                 full_ranking=bool(config.eval_full))
    self.rng = jax.random.key(config.seed)
    self.workdir = workdir
    self.config = config
    self._pre = None

  def pretrained(self) -> train.TrainState:
    if self._pre is None:
      self._pre = _pretrain(self.trainer, self.data, self.config, self.rng,
                            self.workdir)
    return self._pre


def prepare(config, workdir, data_dir) -> Context:
  return Context(config, pathlib.Path(workdir), data_dir)


def units(config, ctx) -> list[runner.Unit]:
  return [runner.Unit(m, m, 0, {"m_id": i})
          for i, m in enumerate(F.method_list(config))]


def run_unit(config, ctx: Context, unit: runner.Unit, udir, results) -> dict:
  """Runs one method over every period (resuming finished periods)."""
  del results
  method, m_id = unit.method, unit.info["m_id"]
  data, evaluator = ctx.data, ctx.evaluator
  log = _PeriodLog(udir)
  mrng = jax.random.fold_in(ctx.rng, 1000 + m_id)
  periods = range(1, config.num_periods + 1)
  if method in _FINETUNE_KIND or method == "ADVER":
    ck = ckpt_lib.Checkpointer(udir / "ckpt")
    last = ck.latest_step()
    if method == "ADVER":
      from fairjax.methods import adver
      adv = adver.AdverRunner(ctx.model, config, data)
      template = adv.init_from(ctx.pretrained())
      evaluator = E.Evaluator(ctx.model, ctx.negs, ks=config.ks,
                              full_ranking=bool(config.eval_full),
                              pair_fn=adv.pair_scores, all_fn=adv.all_scores)
    else:
      # Epochs donate their input state: start each method from a copy.
      template = jax.tree.map(jnp.copy, ctx.pretrained())
    if last is not None and all(log.done(t) for t in range(1, last + 1)):
      state = ck.restore(last, template)
      log.truncate(last)
      runner.log(f"[{method}] resumed after period {last}")
    else:
      state, last = template, 0
    for t in periods:
      if t <= last:
        continue
      rows_t, seen = data.rows([t]), data.seen(t)
      if method == "ADVER":
        state, info = adv.run_period(state, rows_t, seen, t,
                                     jax.random.fold_in(mrng, t))
        params = adv.rec_params(state)
      else:
        kind = _FINETUNE_KIND[method]
        state, info = ctx.trainer.run_epochs(
            state, data, rows_t, kind, _lam(config, kind), config.epochs,
            (config.seed, m_id, t), jax.random.fold_in(mrng, t), seen)
        params = state.params
      rows = eval_rows(evaluator, params, data, t, method, config.ks)
      log.add(t, rows, info["train_seconds"], info)
      ck.save(t, state)
      _report(method, t, info, rows, config)
    ck.close()
  elif method in _RETRAIN_KIND:
    kind = _RETRAIN_KIND[method]
    for t in periods:
      if log.done(t):
        continue
      state = ctx.trainer.init_state(jax.random.fold_in(mrng, t))
      state, info = ctx.trainer.run_epochs(
          state, data, data.rows(range(0, t + 1)), kind, _lam(config, kind),
          config.retrain_epochs, (config.seed, m_id, t),
          jax.random.fold_in(mrng, t), data.seen(t))
      rows = eval_rows(evaluator, state.params, data, t, method, config.ks)
      log.add(t, rows, info["train_seconds"], info)
      _report(method, t, info, rows, config)
  elif method == "PRE-TRAIN":
    params = ctx.pretrained().params
    for t in periods:
      if not log.done(t):
        log.add(t, eval_rows(evaluator, params, data, t, method, config.ks),
                0.0, {})
  return {"periods": {str(t): log.state["periods"][str(t)] for t in periods}}


def rows(config, ctx, unit, result) -> list[dict]:
  return [r for t in range(1, config.num_periods + 1)
          for r in result["periods"][str(t)]["rows"]]


def _model_kwargs(config) -> dict:
  """Backbone options from the config: MF d; NCF GMF and MLP widths."""
  if config.model == "ncf":
    return dict(gmf_dim=config.dim, mlp_embed_dim=config.dim)
  return dict(dim=config.dim)


def _pretrain(trainer, data, config, rng, workdir) -> train.TrainState:
  state = trainer.init_state(jax.random.fold_in(rng, 0))
  rows = data.rows([0])
  context = {"seen": data.seen(0), "user_group": data.user_group}
  state, _ = train.fit(
      state, trainer.epoch_fn("bpr", 0.0),
      lambda e: F.epoch_batches(rows, data, config.batch_size,
                                (config.seed, 99, e)),
      config.pretrain_epochs, jax.random.fold_in(rng, 1), context=context,
      checkpoint_dir=workdir / "pretrain" / "ckpt", ckpt_every=10,
      name="pretrain", log_every=max(1, config.pretrain_epochs // 10))
  return state


def _report(method, t, info, rows, config) -> None:
  k = config.ks[0]
  get = {(r["split"], r["group"], r["metric"]): r["value"] for r in rows}
  nd = get.get(("task_r/sampled", "all", f"ndcg@{k}"), float("nan"))
  pd = get.get(("task_r/sampled", "pd", f"ndcg@{k}"), float("nan"))
  extra = " ".join(f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}"
                   for a, b in info.items())
  runner.log(f"[{method}] period {t}/{config.num_periods} {extra} | "
             f"task_r ndcg@{k} {nd:.4f} pd {pd:+.4f}")


def summarise(config, ctx, results, workdir) -> dict:
  """summary.json: per task, method -> mean over periods of each metric.

  `x@K` is the mean over periods of the all-user value; `pd_x@K` the mean
  over periods of |PD_t|. Sampled figures at the top level, full-ranking
  figures under `full`; `seconds_per_period[M]` the mean training seconds.
  """
  acc: dict = {}
  seconds = {}
  for method in F.method_list(config):
    res = results[method]
    for r in rows(config, ctx, None, res):
      if r["group"] in ("all", "pd"):
        key = (r["split"], r["method"], r["group"], r["metric"])
        acc.setdefault(key, []).append(r["value"])
    seconds[method] = float(np.mean(
        [res["periods"][str(t)]["seconds"]
         for t in range(1, config.num_periods + 1)]))

  def block(protocol):
    out = {}
    for task in ("task_r", "task_n"):
      out[task] = {}
      for method in F.method_list(config):
        vals = {}
        for k in config.ks:
          for m in SUMMARY_METRICS:
            name = f"{m}@{k}"
            a = acc.get((f"{task}/{protocol}", method, "all", name))
            p = acc.get((f"{task}/{protocol}", method, "pd", name))
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
