"""ops.segment_rows: the native kernel against jax.ops.segment_sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import native
from fairjax.ops.segment_rows import segment_rows

NATIVE, WHY = native.available("segment_rows")
needs_native = pytest.mark.skipif(not NATIVE,
                                  reason=f"native kernel unavailable: {WHY}")


def _problem(s=700, d=24, n=700, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((s, d)), jnp.float32)
  # Many repeats (a few ids take most slots) and ids never used.
  seg = jnp.asarray(np.minimum(rng.geometric(0.02, s) - 1, n - 1), jnp.int32)
  return x, seg, n


@needs_native
def test_native_equals_segment_sum_to_the_bit():
  x, seg, n = _problem()
  a = jax.jit(lambda x, s: segment_rows(x, s, n, "native"))(x, seg)
  b = jax.jit(lambda x, s: jax.ops.segment_sum(x, s, n))(x, seg)
  assert np.unique(np.asarray(seg)).size < n // 2  # repeats and empty rows
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  want = np.zeros((n, x.shape[1]))  # and the sums are the sums
  np.add.at(want, np.asarray(seg), np.asarray(x, np.float64))
  np.testing.assert_allclose(np.asarray(a), want, rtol=1e-5, atol=1e-5)


@needs_native
def test_native_rejects_an_id_outside():
  x, seg, n = _problem(s=8, d=4, n=8)
  with pytest.raises(Exception, match="outside"):
    jax.block_until_ready(segment_rows(x, seg.at[3].set(8), n, "native"))


def test_jax_path_and_shape_check():
  x, seg, n = _problem(s=50, d=3, n=60)
  np.testing.assert_array_equal(
      np.asarray(segment_rows(x, seg, n, "jax")),
      np.asarray(jax.ops.segment_sum(x, seg, n)))
  with pytest.raises(ValueError, match=r"\[S, D\]"):
    segment_rows(x[:, 0], seg, n, "jax")
