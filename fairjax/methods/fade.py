"""FADE and its baselines on the dynamic (chronological) protocol, DESIGN §3.

Yoo et al., "Ensuring User-side Fairness in Dynamic Recommender Systems",
WWW 2024. The recommender is pretrained on D_0 and then updated period by
period on D_1..D_9; after each period it is evaluated on Task-R and Task-N
(see `fairjax.evaluators.periodic`). Methods:

  PRE-TRAIN     the snapshot after pretraining, evaluated at every period.
  RETRAIN       re-initialise and train on D_0..D_t (plain BPR) each period.
  FINETUNE      fine-tune on D_t with BPR (lambda = 0), optimiser state kept.
  FADE          fine-tune with L = L_rec + lambda L_fair,
                L_fair = softplus(PD_diff), PD_diff = mean DH(a=0) - mean
                DH(a=1) over the batch, DH = NeuralSort differentiable Hit@1.
  FADE-RETRAIN  RETRAIN with FADE's loss.
  REC           FADE with the mean positive score as the group statistic.
  ADVER         fine-tune with an adversarial filter (`fairjax.methods.adver`).
  FADE-DUAL     FADE with its fairness weight set by an online dual
                controller (`fairjax.methods.fade_dual`).

Per training row (u, i): 4 negatives uniform among items u has not
interacted with in the history D_0..D_t; L_rec = mean BPR over them. Adam
(lr 1e-3) with coupled L2 1e-4 on non-bias weights (torch's
`Adam(weight_decay=...)`: g <- g + l2 * w before the moments).
A batch that holds one user group only has no fairness term (0); the count
of such batches is reported per period as `one_group_batches`. The official
code's protocol differs in six switchable details (`protocol=official`,
`fairjax.methods.fade_protocol`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import models as models_lib
from fairjax import ops
from fairjax import train
from fairjax.data import batching
from fairjax.data import protocols
from fairjax.data import registry
from fairjax.data import sampling
from fairjax.errors import ConfigError
from fairjax.methods import fade_protocol
from fairjax.ops import sparse_adam
from fairjax.ops.reductions import row_sums

METHODS = ("PRE-TRAIN", "RETRAIN", "FINETUNE", "FADE", "FADE-RETRAIN", "REC",
           "ADVER", "FADE-DUAL")


@dataclasses.dataclass(frozen=True)
class FadeData:
  """Binarised interactions in time order with their period index."""

  name: str
  num_users: int
  num_items: int
  user: np.ndarray  # int32 [N], chronological
  item: np.ndarray  # int32 [N]
  period: np.ndarray  # int32 [N], 0..num_blocks
  period_sizes: tuple[int, ...]
  user_group: np.ndarray  # int32 [U]
  group_names: tuple[str, ...]

  def rows(self, periods) -> np.ndarray:
    """Indices (chronological) of the interactions in the given periods."""
    return np.nonzero(np.isin(self.period, np.asarray(periods)))[0]

  def seen(self, upto: int) -> np.ndarray:
    """bool [U, I]: items each user interacted with in D_0..D_upto."""
    m = np.zeros((self.num_users, self.num_items), bool)
    r = self.period <= upto
    m[self.user[r], self.item[r]] = True
    return m


def validate_config(config) -> None:
  """Raises ConfigError naming the field for out-of-range values."""
  if str(config.model).lower() not in ("mf", "ncf"):
    raise ConfigError(f"field 'model': FADE runs mf or ncf, got "
                      f"{config.model!r}")
  if config.fade.lam < 0:
    raise ConfigError(f"field 'fade.lam': lambda must be >= 0, got "
                      f"{config.fade.lam}")
  if config.fade.tau <= 0:
    raise ConfigError(f"field 'fade.tau': tau must be > 0, got "
                      f"{config.fade.tau}")
  if config.fade.form not in ("signed", "absolute"):
    raise ConfigError(f"field 'fade.form': 'signed' or 'absolute', got "
                      f"{config.fade.form!r}")
  if config.rec.lam < 0:
    raise ConfigError(f"field 'rec.lam': must be >= 0, got {config.rec.lam}")
  unknown = [m for m in method_list(config) if m not in METHODS]
  if unknown:
    raise ConfigError(f"field 'methods': unknown {unknown}; valid: "
                      f"{','.join(METHODS)}")
  if not 1 <= config.num_periods <= config.num_blocks - 1:
    raise ConfigError(f"field 'num_periods': must be in 1..{config.num_blocks - 1}")
  fade_protocol.validate(config)
  if config.get("fused_update") and str(config.model).lower() != "mf":
    raise ConfigError(f"field 'fused_update': the row-gradient update "
                      f"needs MF (its loss reads rows of the two tables), "
                      f"got model {config.model!r}")
  if "FADE-DUAL" in method_list(config):
    from fairjax.methods import fade_dual  # pylint: disable=g-import-not-at-top
    fade_dual.validate_config(config)


def method_list(config) -> list[str]:
  return [m.strip() for m in str(config.methods).split(",") if m.strip()]


def prepare_data(config, data_dir: str | None = None) -> FadeData:
  """Loads the dataset, binarises it and cuts the chronological periods."""
  ds = registry.load_configured(config, data_dir, seed=config.seed)
  if ds.timestamp is None:
    raise ConfigError(
        f"field 'dataset': {ds.name!r} has no time order; FADE's "
        f"chronological protocol ({fade_protocol.describe(config)}) needs "
        "one: use ml1m-ts, ml1m-order, ml100k, synthetic or a file with "
        "timestamps")
  user_group = protocols.user_groups(ds, config.user_attr)
  ds = protocols.binarize(ds, config.positive_threshold)
  floor = fade_protocol.switches(config)["split_floor"]
  split = protocols.chronological_periods(
      ds, batch_size=config.batch_size, pretrain_frac=config.pretrain_frac,
      num_blocks=config.num_blocks, rounding="floor" if floor else "half_up")
  order = np.asarray(split.order)
  names = ds.user_attr_names.get(config.user_attr) or tuple(
      f"{config.user_attr}={g}" for g in range(int(user_group.max()) + 1))
  return FadeData(
      name=ds.name, num_users=ds.num_users, num_items=ds.num_items,
      user=ds.user[order].astype(np.int32), item=ds.item[order].astype(np.int32),
      period=np.asarray(split.period)[order].astype(np.int32),
      period_sizes=tuple(int(x) for x in split.period_sizes),
      user_group=np.asarray(user_group, np.int32), group_names=tuple(names))


def create_model(config, data: FadeData):
  """The backbone: MF of width `dim`, or NCF with GMF and MLP widths `dim`."""
  kwargs = (dict(gmf_dim=config.dim, mlp_embed_dim=config.dim)
            if config.model == "ncf" else dict(dim=config.dim))
  return models_lib.create(config.model, data.num_users, data.num_items,
                           **kwargs)


def optimizer_hyper(config) -> sparse_adam.AdamL2:
  """The optimiser's hyperparameters: lr and l2 from `config`, Adam's
  defaults otherwise; `make_optimizer` and `make_fused_step` both read
  them here."""
  return sparse_adam.AdamL2(lr=config.lr, l2=config.l2)


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with coupled L2 on non-bias leaves (torch Adam(weight_decay))."""
  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "bias" not in jax.tree_util.keystr(path).lower(),
        params)
  h = optimizer_hyper(config)
  return optax.chain(optax.add_decayed_weights(h.l2, mask=mask),
                     optax.adam(h.lr, h.b1, h.b2, h.eps))


def make_loss(model, kind: str, lam: float, tau: float, k: int,
              num_negatives: int, absolute: bool = False,
              sampler: dict | None = None) -> train.LossFn:
  """The per-batch loss of `kind` in {'bpr', 'fade', 'rec', 'dual'}.

  `absolute` selects softplus(|PD_diff|) over softplus(PD_diff)
  (`fairjax.ops.group_gap_loss`; config field `fade.form`). 'dual' (FADE-DUAL)
  ignores `lam` and reads the two multipliers from context['lam'] = [lam+,
  lam-]: L = L_rec + lam+ softplus(PD_diff) + lam- softplus(-PD_diff), PD_diff
  of DH@k as for FADE; 'dual_up' the same with the advantaged group's mean
  held constant (stop-gradient), so only the disadvantaged side is pushed.

  batch: {'user' [B], 'item' [B], 'valid' [B]}; context: {'seen' bool [U, I],
  'user_group' int [U]}. The loss is `make_score_loss` of the scores of
  `make_candidates` (parameters enter through those scores only; `sampler`
  is its keywords).
  """
  candidates = make_candidates(num_negatives, **(sampler or {}))
  score_loss = make_score_loss(kind, lam, tau, k, absolute)

  def loss_fn(params, batch, rng, aux, context):
    users, cand = candidates(batch, rng, context)
    s = models_lib.pair_scores(model, params, users, cand)  # [B, 1 + n]
    return score_loss(s, batch, aux, context)

  return loss_fn


def make_candidates(num_negatives: int, skip: int = -1,
                    distinct: bool = False) -> Callable:
  """`(batch, rng, context) -> (users [B], items [B, 1 + n])`: each row's
  positive, then `num_negatives` negatives uniform among the items the user
  has not interacted with (context['seen']); `skip` and `distinct` as in
  `sampling.sample_negatives` (`fade_protocol.negative_sampler`). Without
  `distinct`, negatives already in the batch (batch['negatives'] from
  `presample_negatives(presolve=True)`, the same draws) are read as they
  are."""

  def candidates(batch, rng, context):
    users = batch["user"]
    if "negatives" in batch and not distinct:  # presample_negatives(presolve)
      neg = batch["negatives"]
    else:
      neg = sampling.sample_negatives(rng, context["seen"], users,
                                      num_negatives,
                                      drawn=batch.get("neg_draws"), skip=skip,
                                      distinct=distinct)
    return users, jnp.concatenate([batch["item"][:, None], neg], axis=1)

  return candidates


def make_score_loss(kind: str, lam: float, tau: float, k: int,
                    absolute: bool = False) -> Callable:
  """`(scores [B, 1 + n], batch, aux, context) -> (loss, (metrics, aux))`:
  `make_loss` given the candidates' scores (the positive first)."""
  if kind not in ("bpr", "fade", "rec", "dual", "dual_up"):
    raise ValueError(f"unknown loss kind {kind!r}")

  def score_loss(s, batch, aux, context):
    users, valid = batch["user"], batch["valid"]
    l_rec = ops.masked_bpr_mean(s, valid)
    group = context["user_group"][users]
    if kind == "fade":
      dh = ops.diff_hit(s, None, tau, k=k)
      l_fair, both = ops.fade_fairness_loss(dh, group, valid, absolute)
    elif kind == "rec":
      l_fair, both = ops.group_gap_loss(s[:, 0], group, valid, absolute)
    elif kind in ("dual", "dual_up"):
      dh = ops.diff_hit(s, None, tau, k=k)
      m0, m1, both = ops.group_means(dh, group, valid)
      lam_pm = context["lam"]
      if kind == "dual_up":  # move only the disadvantaged side up.
        up_1 = jax.lax.stop_gradient(m0) - m1
        up_0 = jax.lax.stop_gradient(m1) - m0
      else:
        up_1, up_0 = m0 - m1, m1 - m0
      l_fair = jnp.where(both, lam_pm[0] * jax.nn.softplus(up_1)
                         + lam_pm[1] * jax.nn.softplus(up_0), 0.0)
    else:
      l_fair, both = jnp.zeros(()), jnp.ones((), bool)
    loss = l_rec + (l_fair if kind.startswith("dual") else lam * l_fair)
    metrics = {"rec": l_rec, "fair": l_fair,
               "one_group": 1.0 - both.astype(jnp.float32)}
    return loss, (metrics, aux)

  return score_loss


@jax.custom_vjp
def _row_scores(e_u, e_i):
  """s [B, n] = <e_u[b], e_i[b, j]> for e_u [B, d], e_i [B, n, d], with its
  vector-Jacobian product written out: the sums over d as a matrix-vector
  product with ones and e_u's gradient as n multiply-adds over the
  candidates (autodiff leaves two short-axis reductions, which XLA's CPU
  backend runs several times slower; a pretraining step of the fused
  update on ml1m-order: 0.68 -> 0.52 ms). The same values as
  `mf.pair_scores(e_u, e_i, 1.0, False)` up to float32 summation order
  (tests/test_fade.py checks the gradient in float64)."""
  return _row_scores_fwd(e_u, e_i)[0]


def _row_scores_fwd(e_u, e_i):
  d = e_i.shape[-1]
  s = row_sums((e_u[:, None, :] * e_i).reshape(-1, d))
  return s.reshape(e_i.shape[:2]), (e_u, e_i)


def _row_scores_bwd(res, g):
  e_u, e_i = res
  # e_u's gradient sum_j g[b, j] e_i[b, j] as n axpys (n is small: the
  # positive and the negatives), not a reduction over a short axis.
  g_u = g[:, 0, None] * e_i[:, 0]
  for j in range(1, e_i.shape[1]):
    g_u = g_u + g[:, j, None] * e_i[:, j]
  return g_u, g[:, :, None] * e_u[:, None, :]


_row_scores.defvjp(_row_scores_fwd, _row_scores_bwd)


def make_row_grads(kind: str, lam: float, config,
                   sampler: dict | None = None) -> Callable:
  """`(params, batch, aux, context) -> ((loss, (metrics, aux)), (users,
  cand), (g_u, g_i))`: `make_loss` on MF (with `config`'s tau, k, form and
  negatives; `sampler` as in `make_candidates`), its gradient taken with
  respect to the rows the batch reads, g_u [B, d] for E_U[users] and g_i
  [B, 1 + n, d] for E_I[cand], instead of the tables. The step key is
  batch['key'] (`sampling.presample_negatives`)."""
  candidates = make_candidates(config.num_negatives, **(sampler or {}))
  score_loss = make_score_loss(kind, lam, config.fade.tau, config.fade.k,
                               config.fade.form == "absolute")

  def row_grads(params, batch, aux, context):
    users, cand = candidates(batch, batch["key"], context)
    e_u, e_i = models_lib.embedding_tables(params)

    def loss(rows):
      return score_loss(_row_scores(*rows), batch, aux, context)

    out, grads = jax.value_and_grad(loss, has_aux=True)((e_u[users],
                                                         e_i[cand]))
    return out, (users, cand), grads

  return row_grads


def make_fused_step(kind: str, lam: float, config,
                    sampler: dict | None = None, impl: str = "auto"
                    ) -> Callable:
  """The train step of `make_loss` on MF with `make_optimizer`'s update
  applied to gradient rows (`config.fused_update`).

  The same loss, candidates and optimiser semantics as
  `train.make_step(make_loss(...), make_optimizer(config))`: dense Adam with
  coupled L2, every row moving at every step. The gradient is taken with
  respect to the rows the batch reads (`make_row_grads`) and
  `ops.sparse_adam.update_rows` applies it, so no table-shaped gradient
  is built; parameters match the optax update to float32 rounding (about
  1e-6 relative after a period; the native kernel rounds rows without
  gradient as XLA does, so idle users' rows decaying to ~1e-33 follow the
  optax step's, and whole runs give its figures: README). The optax state
  keeps its layout (count, mu, nu), so checkpoints and fine-tuning move
  freely between the two steps. MF has no bias leaves, so l2 applies to both
  tables, as `make_optimizer`'s mask does.
  """
  row_grads = make_row_grads(kind, lam, config, sampler)
  hyper = optimizer_hyper(config)
  get, put = optax.tree_utils.tree_get, optax.tree_utils.tree_set

  def step(state: train.TrainState, batch, rng, context=None):
    del rng  # the step key is batch['key'] (`presample_negatives`).
    tables = state.params["params"]
    if set(tables) != {"user", "item"}:
      raise ValueError("fused_update needs MF parameters (user and item "
                       f"tables only), got {sorted(tables)}")
    (value, (metrics, aux)), (users, cand), (g_u, g_i) = row_grads(
        state.params, batch, state.aux, context)
    opt = state.opt_state
    count = optax.safe_increment(get(opt, "count"))
    mu, nu = get(opt, "mu")["params"], get(opt, "nu")["params"]
    new = {}
    for name, ids, g in (("user", users, g_u), ("item", cand, g_i)):
      new[name] = sparse_adam.update_rows(
          tables[name]["embedding"], mu[name]["embedding"],
          nu[name]["embedding"], count, ids, g, hyper, impl)
    pick = lambda k: {"params": {n: {"embedding": new[n][k]}  # noqa: E731
                                 for n in new}}
    opt = put(opt, count=count, mu=pick(1), nu=pick(2))
    return train.TrainState(step=state.step + 1, params=pick(0),
                            opt_state=opt, aux=aux), dict(metrics, loss=value)

  return step


def epoch_batches(rows: np.ndarray, data: FadeData, batch_size: int,
                  seed_parts: tuple[int, ...], mode: str = "shuffle"
                  ) -> dict[str, np.ndarray]:
  """The given rows as [steps, batch] arrays, the last batch padded
  (invalid); a pure function of `seed_parts`.

  mode 'shuffle' (standard): rows permuted (`data.batching`); 'batch_order'
  (official pretraining/retraining): fixed chronological batches in a
  permuted order; 'time' (official fine-tuning): fixed batches in time order
  (`fade_protocol.chrono_batches`).
  """
  if mode == "shuffle":
    return batching.shuffled_batches({"user": data.user, "item": data.item},
                                     batch_size, seed_parts, rows=rows)
  if mode not in ("batch_order", "time"):
    raise ValueError(f"unknown batching mode {mode!r}")
  return fade_protocol.chrono_batches(
      data.user, data.item, rows, batch_size,
      seed_parts if mode == "batch_order" else None)


@dataclasses.dataclass
class Trainer:
  """Compiled epochs for one model and optimiser, shared by the methods."""

  model: Any
  tx: optax.GradientTransformation
  config: Any
  # Training-negative keywords (`fade_protocol.negative_sampler`); None:
  # the standard sampler.
  sampler: dict | None = None
  # Training seconds of each pretraining run here ('pretrain' or
  # 'pretrain-fade'; compilation excluded, 0-ish when restored).
  pretrain_seconds: dict = dataclasses.field(default_factory=dict)
  _epochs: dict = dataclasses.field(default_factory=dict)

  def epoch_fn(self, kind: str, lam: float, fixed_negatives: bool = False,
               skip_empty: bool = False) -> Callable:
    key = (kind, float(lam), fixed_negatives, skip_empty)
    if key not in self._epochs:
      c = self.config
      sampler = self.sampler or {"skip": -1, "distinct": False}
      if c.get("fused_update"):
        step = make_fused_step(kind, lam, c, sampler)
      else:
        step = train.make_step(
            make_loss(self.model, kind, lam, c.fade.tau, c.fade.k,
                      c.num_negatives, absolute=c.fade.form == "absolute",
                      sampler=sampler), self.tx, keys_in_batch=True)
      self._epochs[key] = train.make_epoch(
          step,
          prepare=functools.partial(
              sampling.presample_negatives, num_items=self.model.num_items,
              num_negatives=c.num_negatives, fixed=fixed_negatives,
              skip=sampler["skip"], presolve=not sampler["distinct"]),
          skip_empty=skip_empty)
    return self._epochs[key]

  def init_state(self, rng) -> train.TrainState:
    params = models_lib.init_params(self.model, rng)
    return train.create_state(params, self.tx)

  def pretrain(self, data: FadeData, seen, rng, *, fair: bool, mode: str,
               checkpoint_dir) -> train.TrainState:
    """Pretraining on D_0 for `pretrain_epochs` epochs: BPR, or with `fair`
    FADE's loss (the official code's, `fair_pretrain`). Checkpointed every
    10 epochs under `checkpoint_dir`; a rerun resumes or restores it."""
    c = self.config
    rows = data.rows([0])
    kind, lam = ("fade", c.fade.lam) if fair else ("bpr", 0.0)
    name = "pretrain-fade" if fair else "pretrain"
    state, info = train.fit(
        self.init_state(jax.random.fold_in(rng, 0)), self.epoch_fn(kind, lam),
        lambda e: epoch_batches(rows, data, c.batch_size, (c.seed, 99, e),
                                mode),
        c.pretrain_epochs, jax.random.fold_in(rng, 1),
        context={"seen": seen, "user_group": data.user_group},
        checkpoint_dir=checkpoint_dir, ckpt_every=10, name=name,
        log_every=max(1, c.pretrain_epochs // 10))
    self.pretrain_seconds[name] = info.train_seconds
    return state

  def run_epochs(self, state, data: FadeData, rows, kind, lam, epochs,
                 seed_parts, rng, seen, *, mode: str = "shuffle",
                 fixed_negatives: bool = False, extra_context=None,
                 on_epoch_end: Callable | None = None,
                 pad_to: int | None = None
                 ) -> tuple[train.TrainState, dict]:
    """`epochs` passes over `rows` (`train.fit`); returns the state and
    counters.

    `mode` is the batching (`epoch_batches`); with `fixed_negatives` every
    epoch draws the same negatives. `pad_to` pads every epoch with empty
    batches to that many steps, skipped in the scan (RETRAIN's growing
    D_0..D_t then compiles once for all periods). `extra_context` joins the steps'
    read-only context (FADE-DUAL's multipliers); `on_epoch_end` is a
    `train.fit` hook, whose `context` entry may replace them between epochs
    (its time is not training time). Compilation happens before the clock starts:
    `train_seconds` in the returned info is training time alone
    (`compile_seconds` beside it).
    """
    fn = self.epoch_fn(kind, lam, fixed_negatives, pad_to is not None)
    context = {"seen": jnp.asarray(seen),
               "user_group": jnp.asarray(data.user_group),
               **(extra_context or {})}

    def batches_of(e):
      b = epoch_batches(rows, data, self.config.batch_size, (*seed_parts, e),
                        mode)
      return b if pad_to is None else batching.pad_steps(b, pad_to)

    state, fit = train.fit(
        state, fn, batches_of, epochs,
        (lambda e: rng) if fixed_negatives else rng, context=context,
        on_epoch_end=on_epoch_end, show_progress=False)
    last = fit.last_metrics
    info = {"train_seconds": fit.train_seconds,
            "compile_seconds": fit.compile_seconds,
            "loss": _mean_over_valid(last["loss"]) if last else float("nan"),
            "one_group_batches": int(jnp.sum(last["one_group"])) if last else 0}
    if on_epoch_end is not None:
      info["control_seconds"] = fit.hook_seconds
    return state, info


def _mean_over_valid(per_step) -> float:
  """Mean of a per-step metric over the steps that ran (skipped padding
  steps report exactly 0)."""
  v = np.asarray(per_step, np.float64)
  ran = v != 0
  return float(v[ran].mean()) if ran.any() else float("nan")
