"""Row-gradient dense Adam + L2 (`fairjax.ops.sparse_adam`) against a
float64 reference of torch's Adam(weight_decay) and against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairjax import native
from fairjax.ops import sparse_adam as sa

HYPER = sa.AdamL2(lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, l2=1e-2)
NATIVE, WHY = native.available("sparse_adam")


def _problem(seed=0, rows=37, dim=8, n=24, steps=30):
  rng = np.random.default_rng(seed)
  p = rng.normal(size=(rows, dim)).astype(np.float32)
  # Duplicates within a step, rows never touched, and a few steps at row 0
  # and the last row (the ends of the threads' blocks).
  ids = rng.integers(0, rows // 2, (steps, n)).astype(np.int32)
  ids[:, 0], ids[:, 1] = 0, rows - 1
  grads = rng.normal(size=(steps, n, dim)).astype(np.float32)
  return p, ids, grads


def _reference(p, ids, grads, h):
  p = p.astype(np.float64)
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t in range(ids.shape[0]):
    g = np.zeros_like(p)
    np.add.at(g, ids[t], grads[t].astype(np.float64))
    g += h.l2 * p
    m = (1 - h.b1) * g + h.b1 * m
    v = (1 - h.b2) * g * g + h.b2 * v
    mh, vh = m / (1 - h.b1 ** (t + 1)), v / (1 - h.b2 ** (t + 1))
    p = p - h.lr * mh / (np.sqrt(vh) + h.eps)
  return p, m, v


def _run(impl, p, ids, grads, h=HYPER):
  @jax.jit
  def run(p):
    def body(c, x):
      p, m, v, t = c
      t = t + 1
      return (*sa.update_rows(p, m, v, t, x[0], x[1], h, impl), t), None
    z = jnp.zeros_like(p)
    return jax.lax.scan(body, (p, z, z, jnp.zeros((), jnp.int32)),
                        (ids, grads))[0][:3]
  return [np.asarray(x) for x in run(jnp.asarray(p))]


def _optax(p, ids, grads, h=HYPER):
  tx = optax.chain(optax.add_decayed_weights(h.l2),
                   optax.adam(h.lr, h.b1, h.b2, h.eps))
  @jax.jit
  def run(p):
    def body(c, x):
      p, s = c
      g = jnp.zeros_like(p).at[x[0]].add(x[1])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, tx.init(p)), (ids, grads))[0][0]
  return np.asarray(run(jnp.asarray(p)))


def _impls():
  return ["jax", pytest.param("native", marks=pytest.mark.skipif(
      not NATIVE, reason=f"native kernel unavailable: {WHY}"))]


@pytest.mark.parametrize("impl", _impls())
def test_matches_float64_reference_as_closely_as_optax(impl):
  p0, ids, grads = _problem()
  ref_p, ref_m, ref_v = _reference(p0, ids, grads, HYPER)
  p, m, v = _run(impl, p0, ids, grads)
  err = np.max(np.abs(p - ref_p))
  optax_err = np.max(np.abs(_optax(p0, ids, grads) - ref_p))
  # float32 rounding only: within a few times optax's own distance.
  assert err <= max(4 * optax_err, 1e-6), (err, optax_err)
  np.testing.assert_allclose(m, ref_m, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(v, ref_v, rtol=1e-5, atol=1e-9)
  # Rows no id touched moved too (the update is dense).
  untouched = np.setdiff1d(np.arange(p0.shape[0]), ids)
  assert untouched.size and np.all(p[untouched] != p0[untouched])


@pytest.mark.skipif(not NATIVE, reason=f"native kernel unavailable: {WHY}")
def test_native_on_many_rows_matches_jax_and_repeats_exactly():
  # More rows than one thread block (256), so the pass is split.
  p0, ids, grads = _problem(seed=1, rows=1000, dim=16, n=300, steps=12)
  a = _run("native", p0, ids, grads)
  b = _run("jax", p0, ids, grads)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8)
  again = _run("native", p0, ids, grads)
  for x, y in zip(a, again):
    np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(not NATIVE, reason=f"native kernel unavailable: {WHY}")
def test_native_rejects_an_id_outside_the_table():
  p = jnp.zeros((4, 2))
  with pytest.raises(Exception, match="outside"):
    jax.block_until_ready(sa.update_rows(
        p, p, p, jnp.ones((), jnp.int32), jnp.asarray([1, 4]),
        jnp.ones((2, 2)), HYPER, "native"))


def test_unknown_impl_and_disabled_native(monkeypatch):
  with pytest.raises(ValueError, match="impl"):
    sa.resolve("fast")
  monkeypatch.setenv("FAIRJAX_NATIVE", "0")
  with pytest.raises(native.NativeUnavailable, match="FAIRJAX_NATIVE=0"):
    native.build("sparse_adam")
