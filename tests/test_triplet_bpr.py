"""ops.triplet_bpr: the native kernel and the written-out form against the
float64 derivative of the plain formula (autodiff)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import native
from fairjax.methods import itfr as M
from fairjax.ops.triplet_bpr import triplet_bpr_vjp

NATIVE, WHY = native.available("triplet_bpr")
needs_native = pytest.mark.skipif(not NATIVE,
                                  reason=f"native kernel unavailable: {WHY}")


def _rows(b, d, seed=0, scale=0.3):
  """[3B, d] rows with every norm regime of the cosine: ordinary rows, one
  far below the floor (||x||^2 ~ 1e-16 < 1e-12) and an all-zero one."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3 * b, d)) * scale
  x[2] *= 1e-8
  x[b + 1] = 0.0
  w = rng.uniform(0.5, 2.0, size=b)
  w[-1] = 0.0  # a padding example: no gradient
  return x, w


def _autodiff64(x, w, b, cosine, tau):
  with jax.enable_x64(True):
    loss = lambda z: M.mf_example_loss(z, b, cosine, tau)
    out, vjp = jax.vjp(loss, jnp.asarray(x, jnp.float64))
    (grad,) = vjp(jnp.asarray(w, jnp.float64))
    return np.asarray(out), np.asarray(grad)


@needs_native
@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("d", [64, 20, 5])  # lanes only, lanes + tail, tail
def test_native_matches_float64_autodiff(cosine, d):
  b, tau = 37, 0.2
  x, w = _rows(b, d, seed=d)
  want_loss, want_grad = _autodiff64(x, w, b, cosine, tau)
  loss, grad = jax.jit(lambda x, w: triplet_bpr_vjp(
      x, w, b, cosine, tau, impl="native"))(jnp.asarray(x, jnp.float32),
                                            jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=2e-6)
  # Each row to float32 rounding of its own scale (the row below the floor
  # is scaled by r = 1e6 and its gradient with it; differences of
  # normalised rows cancel in single entries).
  row_scale = np.max(np.abs(want_grad), axis=1, keepdims=True)
  assert np.all(np.abs(grad - want_grad)
                <= 2e-5 * np.abs(want_grad) + 2e-6 * row_scale)
  assert np.all(np.asarray(grad)[[b - 1, 2 * b - 1, 3 * b - 1]] == 0.0)
  assert np.median(row_scale) > 1e-2
  if cosine:
    assert row_scale[2, 0] > 10.0


@needs_native
def test_native_agrees_with_the_written_out_form_in_float32():
  b, d, tau = 300, 64, 0.1
  x, w = _rows(b, d, seed=3, scale=0.1)
  x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
  got = jax.jit(lambda x, w: triplet_bpr_vjp(x, w, b, True, tau,
                                             impl="native"))(x, w)
  want = jax.jit(lambda x, w: triplet_bpr_vjp(x, w, b, True, tau,
                                              impl="jax"))(x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4,
                             atol=1e-5 * float(jnp.max(jnp.abs(want[1]))))
  # More than one task of examples: the result does not depend on blocks.
  half = jax.jit(lambda x, w: triplet_bpr_vjp(x, w, 150, True, tau,
                                              impl="native"))
  idx = np.concatenate([np.arange(150), b + np.arange(150),
                        2 * b + np.arange(150)])
  part = half(x[idx], w[:150])
  np.testing.assert_array_equal(part[0], got[0][:150])
  np.testing.assert_array_equal(part[1], got[1][idx])


@pytest.mark.parametrize("cosine", [True, False])
def test_jax_form_matches_float64_autodiff(cosine):
  """The written-out gradient, in float64, also with a row at the floor
  (||x||^2 = 1e-12: half of jnp.maximum's gradient)."""
  b, d, tau = 9, 6, 0.7
  x, w = _rows(b, d, seed=1)
  x[2 * b + 3] = np.full(d, np.sqrt(1e-12 / d))
  want_loss, want_grad = _autodiff64(x, w, b, cosine, tau)
  with jax.enable_x64(True):
    loss, grad = triplet_bpr_vjp(jnp.asarray(x), jnp.asarray(w), b, cosine,
                                 tau, impl="auto")  # float64: the jnp form
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(want_grad)) > 1e-3


def test_shapes_are_checked():
  x = jnp.zeros((9, 4))
  with pytest.raises(ValueError, match=r"\[3B, d\]"):
    triplet_bpr_vjp(x, jnp.zeros(4), 4, True, 1.0)
  with pytest.raises(ValueError, match=r"w must be \[3\]"):
    triplet_bpr_vjp(x, jnp.zeros(4), 3, True, 1.0)
  with jax.enable_x64(True):
    with pytest.raises(native.NativeUnavailable, match="float32"):
      triplet_bpr_vjp(jnp.zeros((9, 4), jnp.float64), jnp.zeros(3), 3, True,
                      1.0, impl="native")
