"""fairjax.rng: the step-key schedule and randint with jax.random's values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import rng


@pytest.mark.parametrize("minval,maxval", [
    (0, 3628), (0, 3627), (0, 1), (0, 2), (0, 1024), (5, 70_000),
    (-7, 9), (0, 2 ** 31 - 1), (-2 ** 31, -1)])
@pytest.mark.parametrize("shape", [(256, 4), (3,), (2, 3, 5), ()])
def test_randint_equals_jax_random_randint(minval, maxval, shape):
  for seed in (0, 1, 12345):
    key = jax.random.fold_in(jax.random.key(seed), 7)
    want = jax.random.randint(key, shape, minval, maxval, dtype=jnp.int32)
    got = rng.randint(key, shape, minval, maxval)
    assert got.dtype == jnp.int32 and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_randint_under_vmap_and_jit_and_raw_keys():
  keys = rng.step_keys(jax.random.key(3), 10, 6)
  want = jax.vmap(lambda k: jax.random.randint(k, (8, 2), 0, 500,
                                               dtype=jnp.int32))(keys)
  got = jax.jit(jax.vmap(lambda k: rng.randint(k, (8, 2), 0, 500)))(keys)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  raw = jax.random.PRNGKey(4)  # a legacy uint32[2] key
  np.testing.assert_array_equal(
      np.asarray(rng.randint(raw, (9,), 0, 77)),
      np.asarray(jax.random.randint(raw, (9,), 0, 77, dtype=jnp.int32)))


def test_threefry_known_answer():
  # Random123's known-answer vectors for Threefry-2x32 (20 rounds).
  x = rng.threefry2x32(jnp.uint32(0x13198a2e), jnp.uint32(0x03707344),
                       jnp.uint32(0x243f6a88), jnp.uint32(0x85a308d3))
  assert [int(v) for v in x] == [0xc4923a9c, 0x483df7a0]
  z = rng.threefry2x32(*[jnp.uint32(0)] * 4)
  assert [int(v) for v in z] == [0x6b200159, 0x99ba4efe]


def test_randint_rejects_empty_or_wide_ranges():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="maxval - minval"):
    rng.randint(key, (2,), 5, 5)
  with pytest.raises(ValueError, match="maxval - minval"):
    rng.randint(key, (2,), -2 ** 31, 2 ** 31 - 1)


def test_other_key_implementations_use_jax_random():
  key = jax.random.key(1, impl="rbg")
  np.testing.assert_array_equal(
      np.asarray(rng.randint(key, (4, 3), 0, 100)),
      np.asarray(jax.random.randint(key, (4, 3), 0, 100, dtype=jnp.int32)))


def test_randint_at_equals_randint_at_those_positions():
  key = jax.random.fold_in(jax.random.key(9), 3)
  shape = (64, 5)
  idx = jnp.asarray([0, 1, 7, 63, 64, 200, 319], jnp.int32)
  want = np.asarray(jax.random.randint(key, shape, 0, 3628,
                                       dtype=jnp.int32)).ravel()
  got = rng.randint_at(key, shape, idx, 0, 3628)
  np.testing.assert_array_equal(np.asarray(got), want[np.asarray(idx)])
  # Per-row bounds, as randint broadcasts a [B, 1] maxval (0 gives span 1).
  maxval = jnp.asarray(np.random.default_rng(0).integers(0, 90_000, (64, 1)),
                       jnp.int32)
  want = np.asarray(jax.random.randint(key, shape, 0, maxval,
                                       dtype=jnp.int32)).ravel()
  got = rng.randint_at(key, shape, idx, 0, maxval.ravel()[idx // 5])
  np.testing.assert_array_equal(np.asarray(got), want[np.asarray(idx)])
  with pytest.raises(ValueError, match="threefry2x32"):
    rng.randint_at(jax.random.key(0, impl="rbg"), shape, idx, 0, 10)
