"""A generic pure train step and a resumable epoch loop.

The step is a pure function `(state, batch, rng) -> (state, metrics)`:

  state' = state with params <- optax update of grad L(params; batch, rng_t),
  rng_t  = fold_in(rng, state.step)

where the loss function is supplied by the method. An epoch is `lax.scan` of
the step over a stacked batch pytree (leading axis = steps), compiled once per
shape. `fit` is the one training loop of every method (FADE and its
baselines, ADVER, ITFR, the retrievers and heads): it runs epochs, calls an
`on_epoch_end` hook (validation, best-model tracking, dual updates), times
training apart from compilation and hooks, prints progress (epoch, loss,
examples/s, ETA), checkpoints every `ckpt_every` epochs, and on a rerun with
the same directory resumes from the last checkpoint. Because each epoch's batches and randomness
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


@dataclasses.dataclass
class FitInfo:
  """What `fit` measured.

  Attributes:
    history: one record per epoch run (from the start epoch): the float mean
      of each step metric, `seconds` with `time_epochs`, and what the hook
      returned.
    last_metrics: the raw per-step metrics of the final epoch (None if no
      epoch ran).
    train_seconds: wall time of the epochs (batching included; compilation
      and hooks excluded).
    compile_seconds: time to compile the epoch before the first one.
    hook_seconds: time spent in `on_epoch_end`.
  """

  history: list = dataclasses.field(default_factory=list)
  last_metrics: dict | None = None
  train_seconds: float = 0.0
  compile_seconds: float = 0.0
  hook_seconds: float = 0.0


def fit(state: TrainState, epoch_fn: Callable, batches_for_epoch: Callable,
        num_epochs: int, rng, *, context=None, start_epoch: int = 0,
        on_epoch_end: Callable | None = None, checkpoint_dir=None,
        ckpt_every: int = 10, name: str = "train", log_every: int = 1,
        show_progress: bool = True, time_epochs: bool = False
        ) -> tuple[TrainState, FitInfo]:
  """The training loop of every method: epochs with hooks, timing, resume.

  Epoch e runs `epoch_fn(state, batches_for_epoch(e), key_e, context)`. The
  epoch is compiled once before the clock starts; an epoch whose batches
  have other shapes (pad with `batching.pad_steps` to avoid it) falls back
  to `epoch_fn`, which compiles again.

  Args:
    state: initial state (ignored when a checkpoint exists).
    epoch_fn: jitted `(state, batches, rng, context) -> (state, metrics)`,
      e.g. from `make_epoch`; metrics hold one value per step.
    batches_for_epoch: `epoch -> batches pytree` (host arrays), a pure
      function of the epoch index so that a resumed run sees the same data.
    num_epochs: total epochs (counting those before `start_epoch`).
    rng: a base key (epoch e uses `fold_in(rng, e)`) or a function
      `epoch -> key`.
    context: read-only pytree passed to every step (see `LossFn`).
    start_epoch: first epoch to run, for callers that restore their own
      checkpoint (with `checkpoint_dir`, the restored epoch wins).
    on_epoch_end: `(epoch, state, means) -> dict | None` after each epoch
      (the loop then waits for the epoch to finish). Entries of a returned
      dict join the epoch's history record and progress line, except
      `context`, a dict that replaces those entries of the context from the
      next epoch on (e.g. dual multipliers). Its time is not training time.
    checkpoint_dir: where to save the state every `ckpt_every` epochs (and
      after the last), and resume from on a rerun; None disables.
    name, log_every, show_progress: the progress lines on stderr.
    time_epochs: wait for each epoch and record its `seconds`.

  Returns:
    (final state, `FitInfo`).
  """
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = ckpt_lib.Checkpointer(checkpoint_dir)
    restored = ckpt.restore_latest(state)
    if restored is not None:
      start_epoch, state = restored
      state = jax.tree.map(jnp.asarray, state)
      print(f"[{name}] resumed from epoch {start_epoch}", file=sys.stderr)
  key_of = rng if callable(rng) else (lambda e: jax.random.fold_in(rng, e))
  info = FitInfo()
  if start_epoch >= num_epochs:
    return state, info
  first = batches_for_epoch(start_epoch)
  t0 = time.perf_counter()
  run = (epoch_fn.lower(state, first, key_of(start_epoch), context).compile()
         if hasattr(epoch_fn, "lower") else epoch_fn)
  info.compile_seconds = time.perf_counter() - t0
  progress = None
  if show_progress:
    lead = jax.tree.leaves(first)[0].shape
    progress = Progress(name, num_epochs, int(np.prod(lead[:2])),
                        every=log_every)
  wait = on_epoch_end is not None or time_epochs
  pending = None  # the previous epoch's metrics: the host need not wait.
  t_start = time.perf_counter()
  for epoch in range(start_epoch, num_epochs):
    batches = first if epoch == start_epoch else batches_for_epoch(epoch)
    t_epoch = time.perf_counter()
    try:
      state, metrics = run(state, batches, key_of(epoch), context)
    except TypeError:  # other shapes or types than the compiled ones
      if run is epoch_fn:
        raise
      run = epoch_fn
      state, metrics = run(state, batches, key_of(epoch), context)
    info.last_metrics = metrics
    if pending is not None:
      _record(info, progress, pending[0], _means(pending[1]))
      pending = None
    if not wait:
      pending = (epoch, metrics)
    else:
      jax.block_until_ready(state)
      seconds = time.perf_counter() - t_epoch
      record = _means(metrics)
      if time_epochs:
        record["seconds"] = seconds
      if on_epoch_end is not None:
        t_hook = time.perf_counter()
        out = dict(on_epoch_end(epoch, state, dict(record)) or {})
        if "context" in out:
          context = dict(context or {}, **out.pop("context"))
        record.update(out)
        info.hook_seconds += time.perf_counter() - t_hook
      _record(info, progress, epoch, record)
    if ckpt is not None and ((epoch + 1) % ckpt_every == 0 or
                             epoch + 1 == num_epochs):
      ckpt.save(epoch + 1, state)
  if pending is not None:
    _record(info, progress, pending[0], _means(pending[1]))
  jax.block_until_ready(state)
  info.train_seconds = time.perf_counter() - t_start - info.hook_seconds
  if ckpt is not None:
    ckpt.close()
  return state, info


def _means(metrics: dict) -> dict:
  return {k: float(np.mean(np.asarray(v))) for k, v in metrics.items()}


def _record(info: FitInfo, progress, epoch: int, record: dict) -> None:
  info.history.append(record)
  if progress is not None:
    progress.update(epoch, record)
