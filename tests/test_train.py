"""Train loop: a pure step, scan epochs, checkpoints and bit-identical resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairjax import train


def _problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 5)).astype(np.float32)
  w_true = rng.normal(size=(5,)).astype(np.float32)
  y = x @ w_true + 0.1 * rng.normal(size=64).astype(np.float32)

  def loss_fn(params, batch, rng_t, aux, context):
    noise = 0.01 * jax.random.normal(rng_t, batch["x"].shape)
    pred = (batch["x"] + noise) @ params["w"] + params["b"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, ({"mse": loss}, {"seen": aux["seen"] + batch["x"].shape[0]})

  def batches_for_epoch(epoch):
    perm = np.random.default_rng(epoch).permutation(64)
    return {"x": x[perm].reshape(8, 8, 5), "y": y[perm].reshape(8, 8)}

  tx = optax.adam(0.05)
  params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
  state = train.create_state(params, tx, aux={"seen": jnp.zeros((), jnp.int32)})
  epoch_fn = train.make_epoch(train.make_step(loss_fn, tx))
  return state, epoch_fn, batches_for_epoch, w_true


def test_fit_learns_and_counts_steps():
  state, epoch_fn, batches, w_true = _problem()
  state, info = train.fit(state, epoch_fn, batches, 30,
                          jax.random.key(0), name="t")
  history = info.history
  assert int(state.step) == 30 * 8
  assert int(state.aux["seen"]) == 30 * 64
  assert history[-1]["loss"] < 0.1 * history[0]["loss"]
  np.testing.assert_allclose(state.params["w"], w_true, atol=0.1)


def test_resume_is_bit_identical(tmp_path):
  state, epoch_fn, batches, _ = _problem()
  full, _ = train.fit(state, epoch_fn, batches, 6, jax.random.key(1))

  # A run killed after epoch 4 (checkpoint every 2 epochs) then restarted.
  class Killed(Exception):
    pass

  def kill(epoch, s, m):
    if epoch == 4:
      raise Killed()

  state, epoch_fn, batches, _ = _problem()
  with pytest.raises(Killed):
    train.fit(state, epoch_fn, batches, 6, jax.random.key(1),
              checkpoint_dir=tmp_path / "ckpt", ckpt_every=2,
              on_epoch_end=kill)
  state, epoch_fn, batches, _ = _problem()
  seen_epochs = []
  resumed, _ = train.fit(state, epoch_fn, batches, 6, jax.random.key(1),
                         checkpoint_dir=tmp_path / "ckpt", ckpt_every=2,
                         on_epoch_end=lambda e, s, m: seen_epochs.append(e))
  assert seen_epochs == [4, 5]  # resumed after the epoch-4 checkpoint
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_epoch_compiles_once():
  state, epoch_fn, batches, _ = _problem()
  for e in range(3):
    state, _ = epoch_fn(state, batches(e), jax.random.key(0))
  assert epoch_fn._cache_size() == 1


def test_step_keys_match_the_step_fold_in():
  rng = jax.random.key(5)
  keys = train.step_keys(rng, jnp.int32(7), 4)
  for i in range(4):
    np.testing.assert_array_equal(
        jax.random.key_data(keys[i]),
        jax.random.key_data(jax.random.fold_in(rng, 7 + i)))


def test_fit_in_two_calls_equals_one():
  """`start_epoch` continues a run (callers that restore their own state)."""
  state, epoch_fn, batches, _ = _problem()
  whole, _ = train.fit(state, epoch_fn, batches, 6, jax.random.key(3),
                       show_progress=False)
  state, epoch_fn, batches, _ = _problem()
  half, first = train.fit(state, epoch_fn, batches, 3, jax.random.key(3),
                          show_progress=False)
  rest, second = train.fit(half, epoch_fn, batches, 6, jax.random.key(3),
                           start_epoch=3, show_progress=False)
  assert len(first.history) == 3 and len(second.history) == 3
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(rest)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hook_updates_context_and_records():
  """A hook's `context` entry reaches the next epoch's steps; its other
  entries and `seconds` join the history record; a fixed key per epoch."""
  def loss_fn(params, batch, rng_t, aux, context):
    loss = context["scale"] * jnp.sum(params["w"] ** 2) + 0 * batch["x"].sum()
    return loss, ({"scale": context["scale"] + 0 * loss}, aux)

  tx = optax.sgd(0.1)
  state = train.create_state({"w": jnp.ones(3)}, tx)
  epoch_fn = train.make_epoch(train.make_step(loss_fn, tx))
  batches = lambda e: {"x": np.ones((2, 4), np.float32)}  # noqa: E731
  seen_keys = []

  def hook(epoch, s, means):
    seen_keys.append(epoch)
    return {"context": {"scale": jnp.float32(epoch + 2)}, "tag": epoch * 10.0}

  _, info = train.fit(state, epoch_fn, batches, 3, lambda e: jax.random.key(0),
                      context={"scale": jnp.float32(1)}, on_epoch_end=hook,
                      show_progress=False, time_epochs=True)
  assert [h["scale"] for h in info.history] == [1.0, 2.0, 3.0]
  assert [h["tag"] for h in info.history] == [0.0, 10.0, 20.0]
  assert all(h["seconds"] > 0 for h in info.history)
  assert seen_keys == [0, 1, 2] and info.hook_seconds >= 0
  assert info.compile_seconds > 0 and info.train_seconds > 0
