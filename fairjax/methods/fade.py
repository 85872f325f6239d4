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

Per training row (u, i): 4 negatives uniform among items u has not
interacted with in the history D_0..D_t; L_rec = mean BPR over them. Adam
(lr 1e-3) with coupled L2 1e-4 on non-bias weights (torch's
`Adam(weight_decay=...)`: g <- g + l2 * w before the moments).
A batch that holds one user group only has no fairness term (0); the count
of such batches is reported per period as `one_group_batches`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
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

METHODS = ("PRE-TRAIN", "RETRAIN", "FINETUNE", "FADE", "FADE-RETRAIN", "REC",
           "ADVER")


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


def method_list(config) -> list[str]:
  return [m.strip() for m in str(config.methods).split(",") if m.strip()]


def prepare_data(config, data_dir: str | None = None) -> FadeData:
  """Loads the dataset, binarises it and cuts the chronological periods."""
  ds = registry.load_configured(config, data_dir, seed=config.seed)
  user_group = protocols.user_groups(ds, config.user_attr)
  ds = protocols.binarize(ds, config.positive_threshold)
  split = protocols.chronological_periods(
      ds, batch_size=config.batch_size, pretrain_frac=config.pretrain_frac,
      num_blocks=config.num_blocks)
  order = np.asarray(split.order)
  names = ds.user_attr_names.get(config.user_attr) or tuple(
      f"{config.user_attr}={g}" for g in range(int(user_group.max()) + 1))
  return FadeData(
      name=ds.name, num_users=ds.num_users, num_items=ds.num_items,
      user=ds.user[order].astype(np.int32), item=ds.item[order].astype(np.int32),
      period=np.asarray(split.period)[order].astype(np.int32),
      period_sizes=tuple(int(x) for x in split.period_sizes),
      user_group=np.asarray(user_group, np.int32), group_names=tuple(names))


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with coupled L2 on non-bias leaves (torch Adam(weight_decay))."""
  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "bias" not in jax.tree_util.keystr(path).lower(),
        params)
  return optax.chain(optax.add_decayed_weights(config.l2, mask=mask),
                     optax.adam(config.lr))


def make_loss(model, kind: str, lam: float, tau: float, k: int,
              num_negatives: int, absolute: bool = False) -> train.LossFn:
  """The per-batch loss of `kind` in {'bpr', 'fade', 'rec'}.

  `absolute` selects softplus(|PD_diff|) over softplus(PD_diff)
  (`fairjax.ops.group_gap_loss`; config field `fade.form`).

  batch: {'user' [B], 'item' [B], 'valid' [B]}; context: {'seen' bool [U, I],
  'user_group' int [U]}.
  """
  if kind not in ("bpr", "fade", "rec"):
    raise ValueError(f"unknown loss kind {kind!r}")

  def loss_fn(params, batch, rng, aux, context):
    users, valid = batch["user"], batch["valid"]
    neg = sampling.sample_negatives(rng, context["seen"], users, num_negatives,
                                    drawn=batch.get("neg_draws"))
    cand = jnp.concatenate([batch["item"][:, None], neg], axis=1)
    s = models_lib.pair_scores(model, params, users, cand)  # [B, 1 + n]
    l_rec = ops.masked_bpr_mean(s, valid)
    group = context["user_group"][users]
    if kind == "fade":
      dh = ops.diff_hit(s, None, tau, k=k)
      l_fair, both = ops.fade_fairness_loss(dh, group, valid, absolute)
    elif kind == "rec":
      l_fair, both = ops.group_gap_loss(s[:, 0], group, valid, absolute)
    else:
      l_fair, both = jnp.zeros(()), jnp.ones((), bool)
    loss = l_rec + lam * l_fair
    metrics = {"rec": l_rec, "fair": l_fair,
               "one_group": 1.0 - both.astype(jnp.float32)}
    return loss, (metrics, aux)

  return loss_fn


def epoch_batches(rows: np.ndarray, data: FadeData, batch_size: int,
                  seed_parts: tuple[int, ...]) -> dict[str, np.ndarray]:
  """The given rows shuffled as [steps, batch] arrays, the last batch padded
  (invalid); a pure function of `seed_parts` (`data.batching`)."""
  return batching.shuffled_batches({"user": data.user, "item": data.item},
                                   batch_size, seed_parts, rows=rows)


@dataclasses.dataclass
class Trainer:
  """Compiled epochs for one model and optimiser, shared by the methods."""

  model: Any
  tx: optax.GradientTransformation
  config: Any
  _epochs: dict = dataclasses.field(default_factory=dict)

  def epoch_fn(self, kind: str, lam: float) -> Callable:
    key = (kind, float(lam))
    if key not in self._epochs:
      c = self.config
      loss = make_loss(self.model, kind, lam, c.fade.tau, c.fade.k,
                       c.num_negatives, absolute=c.fade.form == "absolute")
      self._epochs[key] = train.make_epoch(
          train.make_step(loss, self.tx, keys_in_batch=True),
          prepare=functools.partial(
              sampling.presample_negatives, num_items=self.model.num_items,
              num_negatives=c.num_negatives))
    return self._epochs[key]

  def init_state(self, rng) -> train.TrainState:
    params = models_lib.init_params(self.model, rng)
    return train.create_state(params, self.tx)

  def run_epochs(self, state, data: FadeData, rows, kind, lam, epochs,
                 seed_parts, rng, seen) -> tuple[train.TrainState, dict]:
    """`epochs` passes over `rows`; returns the state and counters.

    Compilation happens before the clock starts: `train_seconds` in the
    returned info is training time alone (`compile_seconds` beside it).
    """
    fn = self.epoch_fn(kind, lam)
    context = {"seen": jnp.asarray(seen),
               "user_group": jnp.asarray(data.user_group)}
    all_batches = [epoch_batches(rows, data, self.config.batch_size,
                                 (*seed_parts, e)) for e in range(epochs)]
    t0 = time.perf_counter()
    compiled = fn.lower(state, all_batches[0], rng, context).compile()
    t1 = time.perf_counter()
    last = None
    for e, batches in enumerate(all_batches):
      state, last = compiled(state, batches, jax.random.fold_in(rng, e),
                             context)
    jax.block_until_ready(state.params)
    t2 = time.perf_counter()
    info = {"train_seconds": t2 - t1, "compile_seconds": t1 - t0,
            "loss": float(jnp.mean(last["loss"])) if last else float("nan"),
            "one_group_batches": int(jnp.sum(last["one_group"])) if last else 0}
    return state, info
