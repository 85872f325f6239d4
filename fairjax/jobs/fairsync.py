"""The FairSync job: FairSync and its baselines served online (DESIGN §5).

  1. data (`fairjax.data.requests.request_stream`): train rows, the
     requests u_1..u_T in arrival order, their targets, the item groups;
  2. base retriever: MF trained with BPR (4 uniform negatives among unseen
     items) on `fairjax.train.fit`; the synthetic catalog uses the
     generator's vectors instead;
  3. units: `unconstrained` first (its exposure E0 fixes m_g, see
     `feasible_min_exposure`), then every other method of `config.methods`,
     served with `fairjax.methods.fairsync.serve` (items sharded over
     `config.shards` devices);
  4. per method: ESP and Recall/NDCG/HR@K (`evaluators.exposure.esp_summary`).

FairSync is served with the config's dual (`eta`, `headroom`, `dual_target`,
`safety`; see `fairjax.ops.dual`) against m_g itself (the headroom lives in
the dual). `ml1m-tune` is the held-apart time-ordered tuning stream
(`fairjax.data.requests`): the defaults were chosen on it, it is never
reported.

Training items are excluded (`config.exclude_train_items`, default True) on
ml1m / ml1m-ts / ml1m-tune: each request's list is the exact top-K over the
catalog minus that user's training items. Synthetic requests have no history.

Workdir layout:
  retriever/ckpt/             MF state (train.fit resumes / skips it)
  min_exposure.json           f, base_g, m_g, E0
  methods/M/result.json       metrics, exposure and mu over time, seconds,
                              the setting it was served with; FairSync's
                              `forced_batches` (safety net) and
                              `infeasible_groups` (minimums that could no
                              longer be met; also logged)
A rerun serves again exactly the methods whose setting changed
(`is_current`); every config field may change (FREE_FIELDS = None).
metrics.csv rows: step = batch index, split = `serve`, metrics `exposure`
and `mu` per group and batch, `min_exposure` per group, and the final
`esp`, `recall@K`, ... under group `all`.
"""

from __future__ import annotations

import time

import numpy as np

from fairjax import metrics as metrics_lib
from fairjax import runner
from fairjax.checkpoint import write_json_atomic
from fairjax.data import requests as requests_data
from fairjax.errors import ConfigError
from fairjax.evaluators import exposure
from fairjax.methods import fairsync
from fairjax.methods.retriever import train_retriever
from fairjax.ops import dual as dual_ops
from fairjax.retrieval import sharded

NAME = "fairsync"
DATASETS = ("ml1m", "ml1m-ts", "ml1m-tune", "synthetic")
FREE_FIELDS = None
make_mesh = sharded.make_mesh


def method_list(config) -> list[str]:
  return [m.strip() for m in str(config.methods).split(",") if m.strip()]


def validate_config(config) -> None:
  """Raises ConfigError naming the field for a bad setting."""
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"field '{field}': {msg}")
  need(config.dataset in DATASETS, "dataset",
       f"expected one of {', '.join(DATASETS)}, got {config.dataset!r}")
  bad = [m for m in method_list(config) if m not in fairsync.METHODS]
  need(not bad and method_list(config), "methods",
       f"unknown method(s) {bad}; choose from {list(fairsync.METHODS)}")
  need(str(config.model).lower() == "mf", "model",
       f"the FairSync retriever is mf, got {config.model!r}")
  need(config.k >= 1, "k", f"must be >= 1, got {config.k}")
  need(config.batch_size >= 1, "batch_size",
       f"must be >= 1, got {config.batch_size}")
  need(config.eta > 0, "eta", f"must be > 0, got {config.eta}")
  need(config.headroom >= 0, "headroom",
       f"must be >= 0, got {config.headroom}")
  need(config.dual_target in dual_ops.TARGETS, "dual_target",
       f"expected one of {dual_ops.TARGETS}, got {config.dual_target!r}")
  need(0 <= config.safety <= 1, "safety",
       f"must be in [0, 1] (0 = off), got {config.safety}")
  need(config.safety_rule in dual_ops.SAFETY_RULES, "safety_rule",
       f"expected one of {dual_ops.SAFETY_RULES}, got "
       f"{config.safety_rule!r}")
  need(config.exposure_frac >= 0, "exposure_frac",
       f"must be >= 0 (0 = auto), got {config.exposure_frac}")
  need(0 < config.train_frac < 1, "train_frac",
       f"must be in (0, 1), got {config.train_frac}")
  need(config.shards >= 1, "shards", f"must be >= 1, got {config.shards}")
  need(config.epochs >= 0, "epochs", f"must be >= 0, got {config.epochs}")
  need(isinstance(config.exclude_train_items, bool), "exclude_train_items",
       f"must be True or False, got {config.exclude_train_items!r}")


validate = validate_config


def minimum_exposure(config, req, unconstrained_exposure,
                     fairsync_served: bool = True):
  """(m [G], f, base [G]) of the job's config for the stream `req`, from the
  unconstrained run's final exposure (`fairsync.feasible_min_exposure`;
  FairSync's target (1 + headroom) m_g is checked too when it is served)."""
  g = len(req.group_names)
  return fairsync.feasible_min_exposure(
      unconstrained_exposure, config.k, req.user_emb.shape[0],
      np.bincount(req.item_group, minlength=g), config.batch_size,
      config.exposure_frac, config.item_cap, config.target_unconstrained_esp,
      headroom=config.headroom if fairsync_served else None)


class Context:
  def __init__(self, config, workdir, data_dir):
    self.workdir, self.config = workdir, config
    self.mesh = mesh = make_mesh(config.shards)
    self.req = req = requests_data.request_stream(
        config, data_dir, mesh,
        lambda data: train_retriever(config, data, workdir))
    t_total, n_items = req.user_emb.shape[0], req.item_emb.shape[0]
    self.num_groups = g = len(req.group_names)
    runner.log(f"[fairsync] {req.name}: T={t_total} requests, N={n_items} "
               f"items, G={g}, K={config.k}, B={config.batch_size}, "
               f"shards={config.shards}")
    self.unconstrained = None  # its result, once served or read back
    self._m = None

  def minimums(self) -> np.ndarray:
    """m_g from the unconstrained exposure (written to min_exposure.json)."""
    if self._m is None:
      c, req = self.config, self.req
      e0 = np.asarray(self.unconstrained["exposure_over_time"])[-1]
      m, f, base = minimum_exposure(c, req, e0,
                                    "FairSync" in method_list(c))
      write_json_atomic(self.workdir / "min_exposure.json", dict(
          exposure_frac=f, base=base.tolist(), min_exposure=m.tolist(),
          unconstrained_exposure=e0.tolist(), groups=list(req.group_names)))
      self.unc_esp = float(metrics_lib.esp(e0, m))
      self.exposure_frac = f
      runner.log(f"[fairsync] m_g = {f:.4g} x base_g; unconstrained ESP "
                 f"{self.unc_esp:.3f}")
      self._m = m
    return self._m

  def target(self, method: str) -> np.ndarray:
    if method == "unconstrained":
      return np.zeros(self.num_groups, np.float32)
    return self.minimums()


def prepare(config, workdir, data_dir) -> Context:
  return Context(config, workdir, data_dir)


def units(config, ctx) -> list[runner.Unit]:
  rest = [m for m in method_list(config) if m != "unconstrained"]
  return [runner.Unit(m, m) for m in ["unconstrained", *rest]]


def _setting(method, config, m) -> dict:
  """What a stored result depends on; a change serves the method again."""
  s = dict(dataset=config.dataset, seed=config.seed, k=config.k,
           batch_size=config.batch_size, shards=config.shards,
           min_exposure=[round(float(x), 4) for x in m])
  if config.dataset == "synthetic":
    s.update(synthetic=config.synthetic.to_dict())
  else:
    s.update(epochs=config.epochs, lr=config.lr, dim=config.dim)
    if config.exclude_train_items:  # absent = the whole catalog was served
      s.update(exclude_train_items=True)
  if method == "FairSync":
    s.update(eta=config.eta, headroom=config.headroom)
    if config.dual_target != "static" or config.safety:  # absent: DESIGN §5
      s.update(dual_target=config.dual_target, safety=config.safety)
    if config.safety and config.safety_rule != "group":  # absent: per group
      s.update(safety_rule=config.safety_rule)
  elif method == "min-regularizer":
    s.update(lam=config.min_reg_lambda)
  elif method == "k-neighbor":
    s.update(neighbors=config.num_neighbors)
  return s


def is_current(config, ctx: Context, unit, result, results) -> bool:
  ok = result.get("setting") == _setting(unit.method, config,
                                         ctx.target(unit.method))
  if ok and unit.method == "unconstrained":
    ctx.unconstrained = result
  return ok


def run_unit(config, ctx: Context, unit, udir, results) -> dict:
  method, req = unit.method, ctx.req
  m = ctx.target(method)
  t0 = time.perf_counter()
  dual = {}
  if method == "FairSync":  # aims at (1 + headroom) m_g, scored at m_g
    dual = dict(headroom=config.headroom, target=config.dual_target,
                safety=config.safety, safety_rule=config.safety_rule)
  res = fairsync.serve(
      method, req.user_emb, req.item_emb, req.item_group, config.k, m,
      config.batch_size, config.eta, ctx.mesh, exclude=req.exclude,
      num_groups=ctx.num_groups, lam=config.min_reg_lambda,
      num_neighbors=config.num_neighbors,
      block_size=config.block_size or None, **dual)
  secs = time.perf_counter() - t0
  for note in exposure.safety_notes(res, req.group_names):
    runner.log(f"[{method}] {note}")
  out = dict(method=method, seconds=secs,
             **exposure.esp_summary(res, m, req.target_ptr, req.target_items,
                                    req.item_emb.shape[0], config.k,
                                    req.group_names),
             setting=_setting(method, config, m))
  k = config.k
  esp = f"esp {out['esp']:.3f} " if np.any(m > 0) else ""
  runner.log(f"[{method}] {secs:.1f}s {esp}recall@{k} "
             f"{out[f'recall@{k}']:.4f} ndcg@{k} {out[f'ndcg@{k}']:.4f} "
             f"hr@{k} {out[f'hr@{k}']:.4f}")
  if method == "unconstrained":
    ctx.unconstrained = out
  return out


def _final(ctx, method, r) -> dict:
  """A method's result with the unconstrained ESP scored against m_g."""
  return dict(r, esp=ctx.unc_esp) if method == "unconstrained" else r


def rows(config, ctx: Context, unit, r) -> list[dict]:
  """Exposure and mu per (batch, group); final metrics; m_g per group."""
  if unit.method not in method_list(config):
    return []
  m, method = ctx.minimums(), unit.method  # m_g first: it sets unc_esp
  return [runner.row(method, 0, step, "serve", group, metric, value)
          for step, group, metric, value in exposure.measurements(
              _final(ctx, method, r), m, ctx.req.group_names)]


def summarise(config, ctx: Context, results, workdir) -> dict:
  """{METHOD: {esp, recall@K, ndcg@K, hr@K}, k, min_exposure,
  unconstrained_esp, exposure_frac, groups, dataset, num_requests,
  num_items, batch_size, eta, fairsync_headroom, fairsync_dual_target,
  fairsync_safety, fairsync_safety_rule, shards, exclude_train_items,
  seconds}."""
  m, k, req = ctx.minimums(), config.k, ctx.req
  final = {meth: _final(ctx, meth, results[meth])
           for meth in method_list(config)}
  summary = {meth: {"esp": r["esp"], **{f"{a}@{k}": r[f"{a}@{k}"]
                                         for a in exposure.ACCURACY}}
             for meth, r in final.items()}
  summary.update(k=k, min_exposure=m.tolist(), unconstrained_esp=ctx.unc_esp,
                 exposure_frac=ctx.exposure_frac,
                 groups=list(req.group_names), dataset=req.name,
                 num_requests=req.user_emb.shape[0],
                 num_items=req.item_emb.shape[0],
                 batch_size=config.batch_size, eta=config.eta,
                 fairsync_headroom=config.headroom,
                 fairsync_dual_target=config.dual_target,
                 fairsync_safety=config.safety,
                 fairsync_safety_rule=config.safety_rule, shards=config.shards,
                 exclude_train_items=req.exclude is not None,
                 seconds={meth: r["seconds"] for meth, r in final.items()})
  return summary
