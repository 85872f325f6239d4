"""A generic pure train step and a resumable epoch loop.

The step is a pure function `(state, batch, rng) -> (state, metrics)`:

  state' = state with params <- optax update of grad L(params; batch, rng_t),
  rng_t  = fold_in(rng, state.step)

where the loss function is supplied by the method. An epoch is `lax.scan` of
the step over a stacked batch pytree (leading axis = steps), compiled once per
shape. `fit` runs epochs, prints progress (epoch, loss, examples/s, ETA),
checkpoints every `ckpt_every` epochs, and on a rerun with the same directory
resumes from the last checkpoint. Because each epoch's batches and randomness
are pure functions of (seed, epoch), a resumed run is bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import checkpoint as ckpt_lib
from fairjax.rng import step_keys  # noqa: F401  (re-exported)

PyTree = Any
# loss_fn(params, batch, rng, aux, context) -> (loss, (metrics, new aux)).
# `context` is read-only data shared by every step of an epoch (e.g. the
# interaction bitmap used for negative sampling); None when unused.
LossFn = Callable[[PyTree, PyTree, jax.Array, PyTree, PyTree],
                  tuple[jax.Array, tuple[dict, PyTree]]]


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes.

  Attributes:
    step: int32 scalar, number of updates applied so far.
    params: model parameters.
    opt_state: optax state.
    aux: method-specific state (e.g. group weights), or an empty dict.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  aux: PyTree


def create_state(params: PyTree, tx: optax.GradientTransformation,
                 aux: PyTree = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), aux={} if aux is None else aux)


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation,
              keys_in_batch: bool = False):
  """Returns the pure step `(state, batch, rng, context) -> (state, metrics)`.

  The loss sees the step key rng_t = fold_in(rng, state.step), or with
  `keys_in_batch` the precomputed `batch['key']` (equal when the epoch's
  `prepare` stores `step_keys(rng, state.step, steps)` there).
  """

  def step(state: TrainState, batch: PyTree, rng: jax.Array,
           context: PyTree = None):
    rng_t = (batch["key"] if keys_in_batch
             else jax.random.fold_in(rng, state.step))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, aux)), grads = grad_fn(state.params, batch, rng_t,
                                            state.aux, context)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      aux=aux), metrics

  return step


def make_epoch(step_fn, prepare: Callable | None = None,
               skip_empty: bool = False) -> Callable:
  """Jitted `(state, batches, rng, context) -> (state, metrics [steps])`.

  A `lax.scan` of the step over `batches`, a pytree whose leaves have a
  leading axis of length = steps; `context` is passed unchanged to every
  step. `prepare(state, batches, rng, context) -> (state, batches)`, if
  given, runs once before the scan: vectorised per-step work (e.g.
  `step_keys`) or an epoch-boundary update of the state. With `skip_empty`
  a step whose `batch['valid']` is all False leaves the state untouched
  (`lax.cond`; its metrics are zeros), so an epoch padded with empty
  batches to a common number of steps compiles once for every size and
  computes the same state as the unpadded one. The input state is donated.
  """

  def epoch(state, batches, rng, context=None):
    if prepare is not None:
      state, batches = prepare(state, batches, rng, context)
    def body(s, b):
      if not skip_empty:
        return step_fn(s, b, rng, context)
      shapes = jax.eval_shape(step_fn, s, b, rng, context)[1]
      def skip(s_):
        return s_, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
      return jax.lax.cond(b["valid"].any(),
                          lambda s_: step_fn(s_, b, rng, context), skip, s)
    return jax.lax.scan(body, state, batches)

  return jax.jit(epoch, donate_argnums=(0,))


@dataclasses.dataclass
class Progress:
  """Prints `name epoch e/E loss ... ex/s ... ETA ...` lines to stderr."""

  name: str
  total_epochs: int
  examples_per_epoch: int
  every: int = 1
  stream: Any = sys.stderr
  _t0: float = dataclasses.field(default_factory=time.perf_counter)
  _done: int = 0

  def update(self, epoch: int, metrics: dict[str, float]) -> None:
    self._done += 1
    if (epoch + 1) % self.every and epoch + 1 != self.total_epochs:
      return
    elapsed = time.perf_counter() - self._t0
    rate = self._done * self.examples_per_epoch / max(elapsed, 1e-9)
    eta = (self.total_epochs - epoch - 1) * elapsed / self._done
    parts = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
    print(f"[{self.name}] epoch {epoch + 1}/{self.total_epochs} {parts} "
          f"{rate:,.0f} ex/s ETA {eta:.1f}s", file=self.stream, flush=True)


def fit(state: TrainState, epoch_fn: Callable, batches_for_epoch: Callable,
        num_epochs: int, rng: jax.Array, *, context=None,
        checkpoint_dir=None, ckpt_every: int = 10, name: str = "train", log_every: int = 1,
        on_epoch_end: Callable | None = None) -> tuple[TrainState, list]:
  """Runs `num_epochs` epochs with progress, checkpoints and resume.

  Args:
    state: initial state (ignored when a checkpoint exists).
    epoch_fn: from `make_epoch`.
    batches_for_epoch: `epoch -> batches pytree` (host arrays), a pure
      function of the epoch index so that a resumed run sees the same data.
    num_epochs: total epochs.
    rng: base key; epoch e uses `fold_in(rng, e)`.
    context: read-only pytree passed to every step (see `LossFn`).
    checkpoint_dir: where to save `{'state', 'epoch'}`; None disables.
    ckpt_every: save every this many epochs (and after the last).
    name: label for progress lines.
    on_epoch_end: optional `(epoch, state, metrics) -> None`.

  Returns:
    (final state, list of per-epoch mean metrics as floats).
  """
  start = 0
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = ckpt_lib.Checkpointer(checkpoint_dir)
    restored = ckpt.restore_latest(state)
    if restored is not None:
      start, state = restored
      state = jax.tree.map(jnp.asarray, state)
      print(f"[{name}] resumed from epoch {start}", file=sys.stderr)
  history = []
  pending = None  # log the previous epoch's metrics: the host never waits.
  progress = None
  for epoch in range(start, num_epochs):
    batches = batches_for_epoch(epoch)
    if progress is None:
      lead = jax.tree.leaves(batches)[0].shape
      progress = Progress(name, num_epochs, int(lead[0] * lead[1]),
                          every=log_every)
    state, metrics = epoch_fn(state, batches, jax.random.fold_in(rng, epoch),
                              context)
    if pending is not None:
      _finish(pending, history, progress, on_epoch_end)
    pending = (epoch, state, metrics)
    if ckpt is not None and ((epoch + 1) % ckpt_every == 0 or
                             epoch + 1 == num_epochs):
      _finish(pending, history, progress, on_epoch_end)
      pending = None
      ckpt.save(epoch + 1, state)
  if pending is not None:
    _finish(pending, history, progress, on_epoch_end)
  if ckpt is not None:
    ckpt.close()
  return state, history


def _finish(pending, history, progress, on_epoch_end):
  epoch, state, metrics = pending
  means = {k: float(np.mean(np.asarray(v))) for k, v in metrics.items()}
  history.append(means)
  progress.update(epoch, means)
  if on_epoch_end is not None:
    on_epoch_end(epoch, state, means)
