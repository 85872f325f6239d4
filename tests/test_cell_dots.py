"""ITFR's segment inner products (`fairjax.ops.cell_dots`): the native
kernel and the jnp path against a float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import native
from fairjax.ops.cell_dots import cell_dots

NATIVE, WHY = native.available("cell_dots")


def _problem(seed=0, rows=50, cells=5, dim=24, segs=300):
  rng = np.random.default_rng(seed)
  c = rng.normal(size=(rows, cells, dim)).astype(np.float32)
  key = rng.integers(0, rows // 3, segs).astype(np.int32)  # repeated keys
  cell = rng.integers(0, cells, segs).astype(np.int32)
  cell[::7] = cells  # padding segments (cell G) ...
  cell[3::11] = -1  # ... and out-of-range cells contribute nothing
  key[::7] = rows + 5  # a padding segment's key is never read
  h = rng.normal(size=(segs, dim)).astype(np.float32)
  return c, key, cell, h


def _reference(c, key, cell, h):
  g = c.shape[1]
  out = np.zeros((g, g))
  for k, i, row in zip(key, cell, h.astype(np.float64)):
    if 0 <= i < g:
      out[i] += c[k].astype(np.float64) @ row
  return out


def _impls():
  return ["jax", pytest.param("native", marks=pytest.mark.skipif(
      not NATIVE, reason=f"native kernel unavailable: {WHY}"))]


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("dim", [24, 64])  # 24: a partial lane vector
def test_matches_float64_reference(impl, dim):
  c, key, cell, h = _problem(dim=dim)
  want = _reference(c, key, cell, h)
  got = np.asarray(jax.jit(lambda *a: cell_dots(*a, impl=impl))(
      c, key, cell, h))
  assert got.shape == want.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not NATIVE, reason=f"native kernel unavailable: {WHY}")
def test_native_many_segments_repeats_exactly_inside_a_scan():
  # More segments than one thread block (128), inside lax.scan as in the
  # ITFR step; the sums' order is fixed, so reruns are bit-identical.
  c, key, cell, h = _problem(seed=1, rows=400, cells=12, dim=64, segs=2000)

  @jax.jit
  def run(c, key, cell, h):
    def body(acc, i):
      return acc + cell_dots(c, key, cell, h * (1.0 + i), impl="native"), None
    return jax.lax.scan(body, jnp.zeros((12, 12)), jnp.arange(3.0))[0]

  a = np.asarray(run(c, key, cell, h))
  np.testing.assert_array_equal(a, np.asarray(run(c, key, cell, h)))
  np.testing.assert_allclose(a, 6 * _reference(c, key, cell, h), rtol=1e-5,
                             atol=1e-3)


@pytest.mark.skipif(not NATIVE, reason=f"native kernel unavailable: {WHY}")
def test_native_rejects_a_key_outside_the_buffer():
  c = jnp.zeros((4, 2, 16))
  with pytest.raises(Exception, match="outside"):
    jax.block_until_ready(cell_dots(c, jnp.asarray([1, 4]),
                                    jnp.asarray([0, 1]), jnp.ones((2, 16)),
                                    impl="native"))


def test_unknown_impl_and_disabled_native(monkeypatch):
  c, key, cell, h = _problem()
  with pytest.raises(ValueError, match="impl"):
    cell_dots(c, key, cell, h, impl="fast")
  monkeypatch.setenv("FAIRJAX_NATIVE", "0")
  with pytest.raises(native.NativeUnavailable, match="FAIRJAX_NATIVE=0"):
    native.build("cell_dots")
