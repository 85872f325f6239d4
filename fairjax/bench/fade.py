"""FADE fine-tuning speed on the official code's period shape.

One period: 33,280 interactions over 6,039 users and 3,628 items, MF d=64,
batch 256, 4 negatives, 10 epochs, Adam(lr 1e-3) with coupled L2 1e-4 on all
non-bias weights (dense, as torch's Adam(weight_decay)). Ids are synthetic
(uniform users, Zipf-like items); only the shapes matter for speed. Reported:
`seconds_per_period` (FADE) and `finetune_seconds_per_period` (lambda = 0),
medians over repeats with compilation excluded, plus one pretraining epoch
of 501,760 interactions, and `optimizer_floor_seconds`: the same number of
steps (1,300) of the jitted dense Adam + coupled L2 update alone, on the
same parameter shapes with a fixed gradient (one `lax.scan`, buffers
donated), the bound below any implementation of the period; the ratio
`fade_over_floor` is the figure that transfers between machines.
`scattered_update_seconds` splits the gap: the same update when the
gradient is what a batch gives (zeros with the batch's rows scattered in,
as autodiff of the embedding gathers produces it, then the dense update),
still with no loss or gather; `scattered_update_over_floor` is what the
dense-update semantics alone cost above the floor. `loss_seconds` is the
other part: the same steps' candidates, scores, FADE loss and gradient with
respect to the rows read, with no update (`loss_only`);
`floor_plus_loss_over_floor` = (floor + loss) / floor is what a period
costs, relative to the floor, when the update costs no more than the floor
and nothing overlaps. Reference figures of the official PyTorch code on
this class of CPU: 9.6 s (FADE) and 8.4 s (FINETUNE) per period, 34 s per
pretraining epoch. The same periods with `fused_update` (the row-gradient
step, `fade.make_fused_step`): `fused_seconds_per_period`,
`fused_finetune_seconds_per_period`, their ratios to the floor
(`fused_over_floor`, `fused_finetune_over_floor`), `fused_speedup` over the
optax step, `fused_max_rel_param_diff` (the two FADE periods' final parameters:
largest |difference| over largest |parameter|, the larger of the two
tables' figures) and
`fused_native` (whether the native kernel ran). `fused_decaying_rows_bit_equal`
(`decaying_rows_agree`): the share of rows without gradient on which the
kernel and its jnp version agree to the bit after 500 updates (1.0: the
kernel rounds as XLA does near zero; None without the kernel).
"""

from __future__ import annotations

import functools
import sys

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import models as models_lib
from fairjax import native
from fairjax import train as train_lib
from fairjax.data import sampling
from fairjax.methods import fade as F
from fairjax.ops import sparse_adam

NUM_USERS, NUM_ITEMS, PERIOD, PRETRAIN = 6039, 3628, 33_280, 501_760


def _data(seed: int) -> F.FadeData:
  rng = np.random.default_rng(seed)
  n = PRETRAIN + PERIOD
  pop = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.8
  user = rng.integers(0, NUM_USERS, n).astype(np.int32)
  item = rng.choice(NUM_ITEMS, n, p=pop / pop.sum()).astype(np.int32)
  period = np.r_[np.zeros(PRETRAIN, np.int32), np.ones(PERIOD, np.int32)]
  group = (rng.random(NUM_USERS) < 0.28).astype(np.int32)
  return F.FadeData("bench", NUM_USERS, NUM_ITEMS, user, item, period,
                    (PRETRAIN, PERIOD), group, ("M", "F"))


def _update_seconds(params, tx: optax.GradientTransformation, steps: int,
                    grads_of, xs=None, repeats: int = 3) -> float:
  """Median seconds of `steps` jitted optimiser updates, one `lax.scan` with
  buffers donated, whose gradient at step t is `grads_of(params, xs[t])`
  (`xs` None: `grads_of(params, None)`), over `repeats` calls on fresh
  copies after one compiling call."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def loop(p, opt_state):
    def body(carry, x):
      p, s = carry
      updates, s = tx.update(grads_of(p, x), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(body, (p, opt_state), xs, length=steps)[0]

  times = []
  for _ in range(repeats + 1):  # the first call compiles.
    p = jax.tree.map(jnp.copy, params)
    s = tx.init(p)
    t0 = time.perf_counter()
    jax.block_until_ready(loop(p, s))
    times.append(time.perf_counter() - t0)
  return float(np.median(times[1:]))


def optimizer_floor(params, tx: optax.GradientTransformation, steps: int,
                    repeats: int = 3) -> float:
  """Median seconds of `steps` jitted optimiser updates with a fixed
  gradient (no loss, no gather): the dense-update floor of a training run."""
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  return _update_seconds(params, tx, steps, lambda p, _: grads,
                         repeats=repeats)


def scattered_update(params, tx: optax.GradientTransformation, steps: int,
                     rows: int, repeats: int = 3, seed: int = 0) -> float:
  """Median seconds of `steps` jitted optimiser updates whose gradient is
  `rows` random rows scattered into zeros for every 2-D leaf (the user and
  item tables; other leaves get zeros): the dense update as a training step
  pays it, without the loss."""
  rng = np.random.default_rng(seed)
  def leaf_grads(p):
    if p.ndim != 2:
      return None
    ids = rng.integers(0, p.shape[0], (steps, rows)).astype(np.int32)
    vals = rng.normal(size=(steps, rows, p.shape[1])).astype(np.float32)
    return jnp.asarray(ids), jnp.asarray(vals * 1e-3)
  # Per leaf: (ids [steps, rows], values [steps, rows, d]) or None; the scan
  # slices both along steps, and tree.map hands each pair to its leaf.
  sparse = jax.tree.map(leaf_grads, params)

  def grads_of(p, xs):
    return jax.tree.map(
        lambda leaf, x: (jnp.zeros_like(leaf) if x is None
                         else jnp.zeros_like(leaf).at[x[0]].add(x[1])),
        p, xs)

  return _update_seconds(params, tx, steps, grads_of, sparse, repeats)


def decaying_rows_agree(hyper: sparse_adam.AdamL2, steps: int = 500,
                        seed: int = 0) -> float | None:
  """Share of the entries of rows without gradient (p, m and v after
  `steps` updates) where the native `sparse_adam` kernel and its jnp
  version agree to the bit, on rows spread from 1 down to 1e-34 (idle
  users' rows decaying under coupled L2; README, the fused step over whole
  runs); None when the kernel does not load. 1.0 means this build rounds
  as this XLA does, so whole runs with `fused_update` follow the optax
  step's trajectory near zero."""
  if not native.available("sparse_adam")[0]:
    return None
  rng = np.random.default_rng(seed)
  rows, dim, touched = 2048, 64, 64
  p0 = (rng.standard_normal((rows, dim))
        * np.geomspace(1.0, 1e-34, rows)[:, None]).astype(np.float32)
  ids = rng.integers(0, touched, (steps, 32)).astype(np.int32)
  grads = (rng.standard_normal((steps, 32, dim)) * 1e-2).astype(np.float32)
  out = {}
  for impl in ("native", "jax"):
    @jax.jit
    def run(p, impl=impl):
      def body(c, x):
        p, m, v, t = c
        p, m, v = sparse_adam.update_rows(p, m, v, t, x[0], x[1], hyper,
                                          impl)
        return (p, m, v, t + 1), None
      z = jnp.zeros_like(p)
      return jax.lax.scan(body, (p, z, z, jnp.int32(1)),
                          (jnp.asarray(ids), jnp.asarray(grads)))[0][:3]
    out[impl] = [np.asarray(x)[touched:] for x in run(jnp.asarray(p0))]
  return float(np.mean([np.mean(a == b) for a, b in
                        zip(out["native"], out["jax"])]))


def loss_only(params, data: F.FadeData, seen: np.ndarray, config,
              steps: int, repeats: int = 3, seed: int = 0) -> float:
  """Median seconds of `steps` training steps' loss work alone: the
  candidates (positive + sampled negatives), the MF scores of the rows they
  read, FADE's loss and its gradient with respect to those rows
  (`fade.make_row_grads`, as the fused step computes them), one `lax.scan`; no optimiser update and no table-shaped gradient; `seen` is
  the period's negative-sampling exclusions (`data.seen(1)`). The floor
  plus this is what a step pays when its loss and its update run one after
  the other."""
  b = F.epoch_batches(data.rows([1]), data, config.batch_size, (seed, 0))
  reps = -(-steps // b["user"].shape[0])  # epochs of the period's batches
  b = jax.tree.map(lambda x: np.concatenate([x] * reps)[:steps], b)
  # The training epoch's own presampling (it reads only the state's step).
  state = train_lib.create_state(params, optax.identity())
  _, b = sampling.presample_negatives(state, b, jax.random.key(seed), None,
                                      num_items=NUM_ITEMS,
                                      num_negatives=config.num_negatives)
  context = {"seen": jnp.asarray(seen),
             "user_group": jnp.asarray(data.user_group)}
  row_grads = F.make_row_grads("fade", config.fade.lam, config)

  def body(acc, x):
    _, _, (g_u, g_i) = row_grads(params, x, {}, context)
    return acc + jnp.sum(g_u) + jnp.sum(g_i), None

  fn = jax.jit(lambda xs: jax.lax.scan(body, jnp.zeros(()), xs)[0])
  times = []
  for _ in range(repeats + 1):  # the first call compiles.
    t0 = time.perf_counter()
    jax.block_until_ready(fn(b))
    times.append(time.perf_counter() - t0)
  return float(np.median(times[1:]))


def run(config, seed: int = 0, repeats: int = 3) -> dict:
  """Times one period; `config` a `configs/fade.py` ConfigDict (its
  optimiser and loss fields are used; the data shape is fixed above)."""
  data = _data(seed)
  model = models_lib.create("mf", NUM_USERS, NUM_ITEMS, dim=64)
  seen = data.seen(1)
  rows = data.rows([1])
  trainers = {}
  for fused in (False, True):
    c = config.copy_and_resolve_references()
    c.fused_update = fused
    trainers[fused] = F.Trainer(model, F.make_optimizer(c), c)
  trainer = trainers[False]
  out, final = {}, {}
  for name, kind, lam, fused in (
      ("finetune", "bpr", 0.0, False), ("fade", "fade", config.fade.lam, False),
      ("finetune_fused", "bpr", 0.0, True),
      ("fade_fused", "fade", config.fade.lam, True)):
    times = []
    for r in range(repeats):
      state = trainers[fused].init_state(jax.random.key(seed))
      state, info = trainers[fused].run_epochs(
          state, data, rows, kind, lam, 10, (seed, r), jax.random.key(r), seen)
      times.append(info["train_seconds"])
      print(f"[bench fade] {name} repeat {r + 1}/{repeats}: "
            f"{info['train_seconds']:.3f} s (compile "
            f"{info['compile_seconds']:.2f} s)", file=sys.stderr, flush=True)
    out[name] = float(np.median(times))
    final[name] = state.params
  # The fused step computes the optax update's parameters up to rounding.
  rel = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
            for a, b in zip(jax.tree.leaves(final["fade"]),
                            jax.tree.leaves(final["fade_fused"])))
  state = trainer.init_state(jax.random.key(seed))
  _, info = trainer.run_epochs(state, data, data.rows([0]), "bpr", 0.0, 1,
                               (seed, 9), jax.random.key(9), data.seen(0))
  print(f"[bench fade] pretraining epoch: {info['train_seconds']:.2f} s",
        file=sys.stderr, flush=True)
  steps = 10 * -(-PERIOD // config.batch_size)
  params = trainer.init_state(jax.random.key(seed)).params
  floor = optimizer_floor(params, F.make_optimizer(config), steps, repeats)
  print(f"[bench fade] optimizer floor ({steps} Adam + L2 steps): "
        f"{floor:.3f} s", file=sys.stderr, flush=True)
  loss = loss_only(params, data, seen, config, steps, repeats, seed)
  print(f"[bench fade] the same steps' candidates, loss and row gradients "
        f"alone: {loss:.3f} s", file=sys.stderr, flush=True)
  rows = config.batch_size * (1 + config.num_negatives)
  scattered = scattered_update(params, F.make_optimizer(config), steps,
                               rows, repeats, seed)
  print(f"[bench fade] the same steps with {rows} scattered gradient rows "
        f"per table: {scattered:.3f} s", file=sys.stderr, flush=True)
  return {
      "seconds_per_period": out["fade"],
      "finetune_seconds_per_period": out["finetune"],
      "fade_over_finetune": out["fade"] / out["finetune"],
      "fused_seconds_per_period": out["fade_fused"],
      "fused_finetune_seconds_per_period": out["finetune_fused"],
      "fused_over_floor": out["fade_fused"] / floor,
      "fused_finetune_over_floor": out["finetune_fused"] / floor,
      "fused_speedup": out["fade"] / out["fade_fused"],
      "fused_max_rel_param_diff": rel,
      "fused_native": sparse_adam.resolve("auto") == "native",
      "fused_decaying_rows_bit_equal": decaying_rows_agree(
          F.optimizer_hyper(config)),
      "optimizer_floor_seconds": floor,
      "fade_over_floor": out["fade"] / floor,
      "finetune_over_floor": out["finetune"] / floor,
      "scattered_update_seconds": scattered,
      "scattered_update_over_floor": scattered / floor,
      "loss_seconds": loss,
      "floor_plus_loss_over_floor": (floor + loss) / floor,
      "pretrain_seconds_per_epoch": info["train_seconds"],
      "official_fade_seconds_per_period_cpu": 9.6,
      "official_finetune_seconds_per_period_cpu": 8.4,
      "speedup_vs_official_fade": 9.6 / out["fade"],
      "interactions_per_period": PERIOD, "users": NUM_USERS,
      "items": NUM_ITEMS, "epochs": 10, "batch_size": 256, "negatives": 4,
  }
