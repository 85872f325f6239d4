"""The FADE job: every method of `fairjax.methods.fade` over the periods.

Units: one per method of `config.methods`. Workdir layout:
  pretrain/ckpt/          the pretrained state, checkpointed every 10 epochs
  pretrain_fade/ckpt/     FADE's pretraining with its loss (`fair_pretrain`)
  eval_negatives.npy      the fixed sampled-protocol negatives [U, 100]
  methods/M/ckpt/         state after each period (step = period)
  methods/M/rows.json     metric rows and timings of the finished periods
  methods/M/result.json   the same, once every period is done
A unit killed mid-way continues from its last finished period with the
restored state, so results equal an uninterrupted run. A rerun may change
`FREE_FIELDS` (which methods, where the data is).

metrics.csv rows: step = snapshot t, split = `task_r/sampled`,
`task_n/full`, `task_r/official`, ..., group = a user group, `all` or `pd`
(PD_t, signed).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax import runner
from fairjax import train
from fairjax.evaluators import periodic as E
from fairjax.methods import fade as F
from fairjax.methods import fade_dual
from fairjax.methods import fade_protocol

NAME = "fade"
FREE_FIELDS = ("methods", "data_dir")
# Fields added after workdirs existed, with the value that reproduces them.
ADDED_FIELDS = {"fused_update": False}
_FINETUNE_KIND = {"FINETUNE": "bpr", "FADE": "fade", "REC": "rec"}
# FADE-DUAL and ADVER are sequential too (`_run_sequential`).
_RETRAIN_KIND = {"RETRAIN": "bpr", "FADE-RETRAIN": "fade"}
SUMMARY_METRICS = ("ndcg", "recall", "f1", "precision", "hr")

validate = F.validate_config


def _lam(config, kind: str) -> float:
  return {"bpr": 0.0, "fade": config.fade.lam, "rec": config.rec.lam}[kind]


def eval_rows(evaluator, params, data, snapshot, method, config):
  """metrics.csv rows of one snapshot (`periodic.snapshot_metrics`): the
  standard `sampled` and `full` protocols and the official measure."""
  redraw = fade_protocol.switches(config)["redraw_eval_negatives"]
  out = E.snapshot_metrics(
      evaluator, params, data, snapshot,
      redraw_seed=(config.seed, 7) if redraw else None,
      num_negatives=config.num_eval_negatives)
  return [runner.row(method, 0, snapshot, split, group, metric, value)
          for split, summary in out.items()
          for group, vals in summary.items()
          for metric, value in vals.items()]


class Context:
  """Data, model, trainer, evaluator and the (lazily) pretrained states."""

  def __init__(self, config, workdir: pathlib.Path, data_dir):
    self.data = data = F.prepare_data(config, data_dir)
    self.switches = fade_protocol.switches(config)
    runner.log(f"[fade] {data.name}: {data.num_users} users, "
               f"{data.num_items} items, period sizes "
               f"{list(data.period_sizes)}; {fade_protocol.describe(config)}")
    self.model = F.create_model(config, data)
    self.trainer = F.Trainer(
        self.model, F.make_optimizer(config), config,
        sampler=fade_protocol.negative_sampler(config, data.item[0]))
    self.negs = E.fixed_negatives(data, workdir / "eval_negatives.npy",
                                  config.seed, config.num_eval_negatives)
    self.evaluator = E.Evaluator(self.model, self.negs, ks=config.ks,
                                 full_ranking=bool(config.eval_full))
    self.rng = jax.random.key(config.seed)
    self.workdir = workdir
    self.config = config
    self._pre = {}

  def seen(self, t: int) -> np.ndarray:
    """Negative-sampling exclusions after period t: the history D_0..D_t, or
    with `global_negatives` every period (the official leak)."""
    last = int(self.data.period.max())
    return self.data.seen(last if self.switches["global_negatives"] else t)

  def pretrained(self, fair: bool = False) -> train.TrainState:
    """The pretrained state: plain BPR, or with `fair` FADE's loss (the
    `fair_pretrain` switch), each checkpointed in its own folder."""
    if fair not in self._pre:
      self._pre[fair] = self.trainer.pretrain(
          self.data, self.seen(0), self.rng, fair=fair,
          mode="batch_order" if self.switches["chrono_batches"] else "shuffle",
          checkpoint_dir=self.workdir / ("pretrain_fade" if fair else
                                         "pretrain") / "ckpt")
    return self._pre[fair]


def prepare(config, workdir, data_dir) -> Context:
  return Context(config, pathlib.Path(workdir), data_dir)


def units(config, ctx) -> list[runner.Unit]:
  return [runner.Unit(m, m, 0, {"m_id": i})
          for i, m in enumerate(F.method_list(config))]


def run_unit(config, ctx: Context, unit: runner.Unit, udir, results) -> dict:
  """Runs one method over every period (resuming finished periods)."""
  del results
  method, m_id = unit.method, unit.info["m_id"]
  log = runner.StepLog(udir)
  mrng = jax.random.fold_in(ctx.rng, 1000 + m_id)
  periods = range(1, config.num_periods + 1)
  if method in _FINETUNE_KIND or method in ("ADVER", "FADE-DUAL"):
    _run_sequential(config, ctx, method, m_id, log, mrng, udir)
  elif method in _RETRAIN_KIND:
    _run_retrain(config, ctx, method, m_id, log, mrng)
  elif method == "PRE-TRAIN":
    params = ctx.pretrained().params
    for t in periods:
      if not log.done(t):
        log.add(t, eval_rows(ctx.evaluator, params, ctx.data, t, method,
                             config), 0.0, {})
  return {"periods": {str(t): log.state["periods"][str(t)] for t in periods}}


def _run_sequential(config, ctx, method, m_id, log, mrng, udir) -> None:
  """The fine-tuning methods: the state carries over from period to period,
  checkpointed after each (resume restores it and the dual multipliers)."""
  data, evaluator, chrono = ctx.data, ctx.evaluator, ctx.switches[
      "chrono_batches"]
  ck = ckpt_lib.Checkpointer(udir / "ckpt")
  last = ck.latest_step()
  fair_pre = method == "FADE" and ctx.switches["fair_pretrain"]
  if method == "ADVER":
    from fairjax.methods import adver  # pylint: disable=g-import-not-at-top
    adv = adver.AdverRunner(ctx.model, config, data)
    template = adv.init_from(ctx.pretrained())
    evaluator = E.Evaluator(ctx.model, ctx.negs, ks=config.ks,
                            full_ranking=bool(config.eval_full),
                            pair_fn=adv.pair_scores, all_fn=adv.all_scores)
  else:
    # Epochs donate their input state: start each method from a copy.
    template = jax.tree.map(jnp.copy, ctx.pretrained(fair_pre))
  lam = np.full(2, config.dual.lam_init)
  if last is not None and all(log.done(t) for t in range(1, last + 1)):
    state = ck.restore(last, template)
    log.truncate(last)
    lam = np.asarray(log.state["periods"][str(last)].get("lam", lam))
    runner.log(f"[{method}] resumed after period {last}")
  else:
    state, last = template, 0
  for t in range(last + 1, config.num_periods + 1):
    rows_t, seen, rng_t = data.rows([t]), ctx.seen(t), jax.random.fold_in(
        mrng, t)
    if method == "ADVER":
      state, info = adv.run_period(state, rows_t, seen, t, rng_t)
      params = adv.rec_params(state)
    elif method == "FADE-DUAL":
      state, lam, info = fade_dual.run_period(
          config, ctx.trainer, ctx.evaluator, data, state, lam, t,
          (config.seed, m_id, t), rng_t, seen, chrono)
      params = state.params
    else:
      kind = _FINETUNE_KIND[method]
      state, info = ctx.trainer.run_epochs(
          state, data, rows_t, kind, _lam(config, kind), config.epochs,
          (config.seed, m_id, t), rng_t, seen,
          mode="time" if chrono else "shuffle", fixed_negatives=chrono)
      params = state.params
    rows = eval_rows(evaluator, params, data, t, method, config)
    log.add(t, rows, info["train_seconds"], info)
    ck.save(t, state)
    _report(method, t, info, rows, config)
  ck.close()


def _run_retrain(config, ctx, method, m_id, log, mrng) -> None:
  kind = _RETRAIN_KIND[method]
  mode = "batch_order" if ctx.switches["chrono_batches"] else "shuffle"
  # Every period pads to the last one's steps: one compilation for all.
  steps = -(-ctx.data.rows(range(config.num_periods + 1)).size //
            config.batch_size)
  for t in range(1, config.num_periods + 1):
    if log.done(t):
      continue
    state = ctx.trainer.init_state(jax.random.fold_in(mrng, t))
    state, info = ctx.trainer.run_epochs(
        state, ctx.data, ctx.data.rows(range(0, t + 1)), kind,
        _lam(config, kind), config.retrain_epochs, (config.seed, m_id, t),
        jax.random.fold_in(mrng, t), ctx.seen(t), mode=mode, pad_to=steps)
    rows = eval_rows(ctx.evaluator, state.params, ctx.data, t, method, config)
    log.add(t, rows, info["train_seconds"], info)
    _report(method, t, info, rows, config)


def rows(config, ctx, unit, result) -> list[dict]:
  return [r for t in range(1, config.num_periods + 1)
          for r in result["periods"][str(t)]["rows"]]


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
  """summary.json: per task, method -> summary of each metric
  (`periodic.over_periods`).

  Standard measure (top level: sampled protocol; `full`: full ranking):
  `x@K` is the mean over periods 1..num_periods of the all-user value,
  `pd_x@K` the mean over those periods of |PD_t|. `official`: the official
  FADE measure (warm users, found-normalised NDCG; `fade_protocol`), means
  over snapshots 1..6 only. `seconds_per_period[M]`: mean training seconds.
  """
  methods = F.method_list(config)
  all_rows = [r for m in methods for r in rows(config, ctx, None, results[m])]
  standard = [f"{m}@{k}" for k in config.ks for m in SUMMARY_METRICS]
  summary = E.over_periods(all_rows, methods, "sampled", standard)
  if config.eval_full:
    summary["full"] = E.over_periods(all_rows, methods, "full", standard)
  summary["official"] = E.over_periods(
      all_rows, methods, "official",
      [f"{m}@{k}" for k in config.ks for m in ("ndcg", "recall", "f1")],
      last=fade_protocol.OFFICIAL_LAST_SNAPSHOT)
  summary["seconds_per_period"] = {
      m: float(np.mean([results[m]["periods"][str(t)]["seconds"]
                        for t in range(1, config.num_periods + 1)]))
      for m in methods}
  return summary
