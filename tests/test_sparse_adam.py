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
def test_native_flushes_denormals_as_xla_does():
  # Rows decaying under L2 reach ~1e-33; then m = (1 - b1) l2 p is below
  # the smallest normal float. XLA's CPU code flushes it to zero (the row
  # stays put); kept as a denormal, it would move p by lr m / eps ~ p. The
  # kernel sets the flush mode in every thread it computes on.
  hyper = sa.AdamL2(lr=1e-3, l2=1e-4)
  rows = 600  # several thread blocks, so the helpers compute too
  p = np.geomspace(1e-30, 1e-36, rows * 4, dtype=np.float32).reshape(rows, 4)
  z = jnp.zeros_like(p)
  count = jnp.asarray(5000, jnp.int32)
  p_new, m, v = (np.asarray(x) for x in sa.update_rows(
      jnp.asarray(p), z, z, count, jnp.asarray([3]), jnp.ones((1, 4)),
      hyper, "native"))
  tiny = np.finfo(np.float32).tiny
  for x in (p_new, m, v):
    assert not np.any((x != 0) & (np.abs(x) < tiny))  # no denormal left
  # m is (1 - b1) l2 p in float32: zero exactly where that falls below the
  # smallest normal (rows within a rounding of the edge left out).
  exact = 0.1 * 1e-4 * p.astype(np.float64)
  clear = np.abs(exact / tiny - 1) > 1e-5
  clear[3] = False  # the row with a gradient
  np.testing.assert_array_equal((m == 0)[clear], (exact < tiny)[clear])
  flushed = (m == 0) & clear
  assert flushed.sum() > rows
  np.testing.assert_array_equal(p_new[flushed], p[flushed])  # did not move


def test_bench_figure_of_decaying_rows():
  from fairjax.bench import fade as fade_bench
  share = fade_bench.decaying_rows_agree(HYPER, steps=20)
  if not NATIVE:
    assert share is None
    return
  # The tests run XLA at -O0 (conftest), which does not contract products
  # and adds as the kernel does, so only the figure's range is checked
  # here; `launch.bench --bench=fade` reports it at XLA's defaults.
  assert 0.0 < share <= 1.0


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
