"""System pipeline, stages a-b: the scoring heads, trained and calibrated.

Stage a is the retrieval "interact" model, stage b one scorer per outcome m
in `OUTCOMES` plus the interact head's FADE family at lambda in `LAMBDAS`
(see `fairjax.methods.system` for the whole pipeline):

  ML-1M (`trained_heads`): MF heads trained with BPR on the train positives
    of m (`train_head`, `StageConfig`); the interact head is the retriever;
    the family is fine-tuned from it with FADE's loss, user groups
    binarised as group 0 vs the rest.
  synthetic (`oracle_heads`): the oracle scores and the analytic family.

Every head but the retriever is then calibrated (`calibrate_heads`):
Platt scaling p = sigmoid(a s + b) fitted on the case-control sample
`calibration_pairs` of the validation split, its reliability audited on a
second, independent sample (10 equal-mass bins), with
`fairjax.ops.calibration`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import models as models_lib
from fairjax import train
from fairjax.data import batching
from fairjax.data import sampling
from fairjax.data.system_data import LAMBDAS, OUTCOMES, SystemData
from fairjax.errors import DataError
from fairjax.methods import fade
from fairjax.ops.calibration import platt_fit, reliability

# ----------------------------------------------------------------------------
# Training (ML-1M).


@dataclasses.dataclass(frozen=True)
class StageConfig:
  """Training and calibration settings of stages a-b.

  Attributes:
    dim: MF dimension d.
    init_std: MF init std.
    epochs: BPR epochs of the retrieval / interact head and of like, love.
    batch_size: training batch.
    learning_rate: Adam step size.
    num_negatives: BPR negatives per training row (base heads).
    fade_negatives: negatives per row in FADE fine-tuning (FADE's 4).
    finetune_epochs: FADE fine-tuning epochs per lambda.
    tau: FADE's NeuralSort temperature.
    lambdas: the FADE family's lambda values.
    neg_ratio: calibration negatives per validation positive.
    seed: training / sampling seed.
  """

  dim: int = 64
  init_std: float = 0.1
  epochs: int = 20
  batch_size: int = 1024
  learning_rate: float = 1e-3
  num_negatives: int = 1
  fade_negatives: int = 4
  finetune_epochs: int = 2
  tau: float = 3.0
  lambdas: tuple[float, ...] = LAMBDAS
  neg_ratio: float = 4.0
  seed: int = 0


def train_head(model, params, user, item, seen, user_group, *, kind: str,
               lam: float, epochs: int, num_negatives: int,
               config: StageConfig, seed_parts, checkpoint_dir=None,
               name: str = "head") -> dict:
  """Trains MF `params` with `fade.make_loss(kind, lam)` on (user, item).

  Adam (config.learning_rate, fresh state), `epochs` shuffled passes in
  batches of config.batch_size, `num_negatives` uniform negatives among the
  items not in `seen[u]`; `train.fit` with checkpoints every 5 epochs under
  `checkpoint_dir` (a finished head is restored, not retrained).

  Returns:
    the trained params.
  """
  tx = optax.adam(config.learning_rate)
  loss = fade.make_loss(model, kind, lam, config.tau, 1, num_negatives)
  epoch_fn = train.make_epoch(
      train.make_step(loss, tx, keys_in_batch=True),
      prepare=functools.partial(sampling.presample_negatives,
                                num_items=model.num_items,
                                num_negatives=num_negatives))
  sampling.check_sampleable(seen, np.unique(user))
  context = {"seen": jnp.asarray(seen),
             "user_group": jnp.asarray(user_group, jnp.int32)}
  state = train.create_state(params, tx)
  state, _ = train.fit(
      state, epoch_fn,
      lambda e: batching.shuffled_batches({"user": user, "item": item},
                                          config.batch_size,
                                          (*seed_parts, e)),
      epochs, functools.reduce(jax.random.fold_in, seed_parts,
                               jax.random.key(config.seed)),
      context=context, checkpoint_dir=checkpoint_dir, ckpt_every=5,
      name=name, log_every=max(1, epochs // 5))
  return jax.tree.map(np.asarray, state.params)


# ----------------------------------------------------------------------------
# Heads.


@dataclasses.dataclass
class Head:
  """One calibrated scorer: dense scores or MF factors, and Platt (a, b).

  scores(u, i) = dense[u, i], or <user_vec[u], item_vec[i]>.
  """

  name: str
  dense: np.ndarray | None = None
  user_vec: np.ndarray | None = None
  item_vec: np.ndarray | None = None
  a: float = 1.0
  b: float = 0.0

  def scores(self, users=None) -> jax.Array:
    """float32 [U', I] raw scores of `users` (default all)."""
    if self.dense is not None:
      d = jnp.asarray(self.dense)
      return d if users is None else d[jnp.asarray(users)]
    uv = self.user_vec if users is None else self.user_vec[np.asarray(users)]
    return jnp.asarray(uv) @ jnp.asarray(self.item_vec).T

  def pair_scores(self, users, items) -> np.ndarray:
    users, items = np.asarray(users), np.asarray(items)
    if self.dense is not None:
      return np.asarray(self.dense[users, items], np.float32)
    return np.einsum("nd,nd->n", self.user_vec[users],
                     self.item_vec[items]).astype(np.float32)

  def logits(self, users=None) -> jax.Array:
    return self.a * self.scores(users) + self.b

  def probs(self, users=None) -> jax.Array:
    return jax.nn.sigmoid(self.logits(users))


def oracle_heads(data: SystemData) -> dict[str, Head]:
  """The synthetic stages a-b: the oracle's scores as (uncalibrated) heads.

  Returns:
    dict retriever (MF factors), like, love (dense) and interact@j for j in
    0..len(LAMBDAS) - 1 (the analytic family, dense).
  """
  o = data.oracle
  heads = {"retriever": Head("retriever", user_vec=o.retriever_user,
                             item_vec=o.retriever_item)}
  for m, name in enumerate(OUTCOMES[1:], start=1):
    heads[name] = Head(name, dense=o.scores[m])
  for j in range(len(LAMBDAS)):
    heads[f"interact@{j}"] = Head(f"interact@{j}",
                                  dense=o.interact_family[j])
  return heads


def trained_heads(data: SystemData, config: StageConfig,
                  checkpoint_dir: pathlib.Path | None = None,
                  timings: dict[str, float] | None = None
                  ) -> dict[str, Head]:
  """The ML-1M stages a-b: MF heads trained with `train_head` (uncalibrated).

  One BPR head per outcome m (train positives of m; negatives: items
  without outcome m in the user's train rows), then the interact head's
  FADE family fine-tuned from it at lambda in config.lambdas (negatives:
  the user's train items), user groups binarised as group 0 vs the rest.

  Args:
    data: the `SystemData`.
    config: training settings.
    checkpoint_dir: folder for the heads' checkpoints (one subfolder per
      head: the outcome's name, fade_<j>); None = no checkpoints.
    timings: optional dict that receives train_<head>_seconds.

  Returns:
    dict retriever (= the interact head), like, love and interact@j.
  """
  d, c = data, config
  timings = {} if timings is None else timings
  model = models_lib.create("mf", d.num_users, d.num_items, dim=c.dim,
                            init_std=c.init_std)
  tr = d.train
  ckpt = (lambda name: None if checkpoint_dir is None
          else checkpoint_dir / name)
  # FADE's loss is two-group: group 0 vs the rest (binarisation).
  fair_group = (d.user_group != 0).astype(np.int32)
  params = {}
  for m, name in enumerate(OUTCOMES):
    on = tr.outcomes[:, m]
    seen = np.zeros((d.num_users, d.num_items), bool)
    seen[tr.user[on], tr.item[on]] = True
    init = models_lib.init_params(
        model, jax.random.fold_in(jax.random.key(c.seed), m))
    t = time.perf_counter()
    params[name] = train_head(
        model, init, tr.user[on], tr.item[on], seen, fair_group,
        kind="bpr", lam=0.0, epochs=c.epochs,
        num_negatives=c.num_negatives, config=c,
        seed_parts=(c.seed, m), checkpoint_dir=ckpt(name), name=name)
    timings[f"train_{name}_seconds"] = time.perf_counter() - t
  heads = {}

  def mf_head(name, p):
    ids_u = jnp.arange(d.num_users)
    ids_i = jnp.arange(d.num_items)
    return Head(name,
                user_vec=np.asarray(models_lib.user_embeddings(model, p,
                                                               ids_u)),
                item_vec=np.asarray(models_lib.item_embeddings(model, p,
                                                               ids_i)))

  heads["retriever"] = mf_head("retriever", params["interact"])
  for name in OUTCOMES[1:]:
    heads[name] = mf_head(name, params[name])
  seen = d.seen("train")
  for j, lam in enumerate(c.lambdas):
    t = time.perf_counter()
    p = train_head(
        model, params["interact"], tr.user, tr.item, seen, fair_group,
        kind="fade", lam=float(lam), epochs=c.finetune_epochs,
        num_negatives=c.fade_negatives, config=c,
        seed_parts=(c.seed, 100 + j), checkpoint_dir=ckpt(f"fade_{j}"),
        name=f"fade lam={lam:g}")
    timings[f"train_fade_{j}_seconds"] = time.perf_counter() - t
    heads[f"interact@{j}"] = mf_head(f"interact@{j}", p)
  return heads


# ----------------------------------------------------------------------------
# Calibration.


def calibration_pairs(data: SystemData, outcome: int, split: str = "valid",
                      neg_ratio: float = 4.0, seed: int = 0
                      ) -> dict[str, np.ndarray]:
  """The case-control sample a head is calibrated (and audited) on.

  Population: every non-train pair (u, i) (train = the train split's pairs);
  label y = 1 iff (u, i) is in `split` with outcome `outcome`. The sample
  holds ALL the positives (weight 1) and n_neg = ceil(neg_ratio n_pos)
  negatives drawn uniformly with replacement from the population's
  negatives, each of weight N_neg / n_neg (N_neg = population negatives):
  the inverse of the sampling rate, so weighted sums estimate population
  sums and a weighted fit estimates the unconditional P(y_m = 1 | u, i)
  among non-train pairs (the base rate is respected).

  Returns:
    dict user, item (int32 [n]), label (float32 [n]), weight (float64 [n]).
  """
  u_n, i_n = data.num_users, data.num_items
  sp = data.split(split)
  on = sp.outcomes[:, outcome]
  pu, pi = sp.user[on], sp.item[on]
  blocked = data.seen("train")
  blocked[pu, pi] = True
  n_pos = int(pu.size)
  if n_pos == 0:
    raise DataError(f"no {OUTCOMES[outcome]!r} positives in the "
                    f"{split!r} split", field=f"truth[{split}]")
  pop_neg = u_n * i_n - int(blocked.sum())
  n_neg = int(math.ceil(neg_ratio * n_pos))
  rng = np.random.default_rng([seed, outcome, 9173])
  got = []
  need = n_neg
  while need > 0:
    flat = rng.integers(0, u_n * i_n, size=int(need * 1.2) + 16)
    flat = flat[~blocked.reshape(-1)[flat]][:need]
    got.append(flat)
    need -= flat.size
  flat = np.concatenate(got)
  return {"user": np.concatenate([pu, flat // i_n]).astype(np.int32),
          "item": np.concatenate([pi, flat % i_n]).astype(np.int32),
          "label": np.concatenate([np.ones(n_pos), np.zeros(n_neg)]).astype(
              np.float32),
          "weight": np.concatenate([np.ones(n_pos),
                                    np.full(n_neg, pop_neg / n_neg)])}


def calibrate_heads(data: SystemData, heads: dict[str, Head],
                    config: StageConfig) -> dict[str, dict]:
  """Platt-calibrates every head but the retriever in place; audits each.

  Head `name` (outcome m = the part of the name before '@') gets (a, b) =
  `platt_fit` on `calibration_pairs(data, m, 'valid', config.neg_ratio,
  config.seed)`; its calibrated probabilities are then audited by
  `reliability` (10 equal-mass bins) on the independent sample of seed
  config.seed + 1. Samples are drawn once per (outcome, seed).

  Returns:
    dict head name -> its `reliability` table.
  """
  report = {}
  samples = {}  # (outcome, seed) -> calibration_pairs

  def sample(m, seed):
    if (m, seed) not in samples:
      samples[m, seed] = calibration_pairs(data, m, "valid",
                                           config.neg_ratio, seed)
    return samples[m, seed]
  for h in heads.values():
    if h.name == "retriever":
      continue
    m = OUTCOMES.index(h.name.split("@")[0])
    fit = sample(m, config.seed)
    h.a, h.b = platt_fit(h.pair_scores(fit["user"], fit["item"]),
                         fit["label"], fit["weight"])
    audit = sample(m, config.seed + 1)
    p = 1.0 / (1.0 + np.exp(-(h.a * h.pair_scores(audit["user"],
                                                    audit["item"]) + h.b)))
    report[h.name] = reliability(p, audit["label"], 10, audit["weight"],
                                 strategy="quantile")
  return report
