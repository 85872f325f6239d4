"""ops.gram_coupling: the native per-cell Gram products against the sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import native
from fairjax.ops import group_sam
from fairjax.ops.gram_coupling import block_budget, gram_coupling

NATIVE, WHY = native.available("gram_blocks")
needs_native = pytest.mark.skipif(not NATIVE,
                                  reason=f"native kernel unavailable: {WHY}")


def _problem(n=60, m=90, g=4, d=8, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, n))
  gram = jnp.asarray(a @ a.T / n, jnp.float32)
  keys = rng.integers(0, n, m).astype(np.int32)
  keys[:10] = keys[10]  # a key repeated within and across cells
  cells = rng.integers(0, g, m).astype(np.int32)
  cells[-7:] = g  # unused entries
  cells[-9] = -1
  j = jnp.asarray(rng.normal(size=(m, d)), jnp.float32)
  return gram, jnp.asarray(keys), jnp.asarray(cells), j, g


def _direct(gram, keys, cells, j, g):
  gram, keys, cells, j = map(np.asarray, (gram, keys, cells, j))
  out = np.zeros(j.shape)
  for a in range(keys.size):
    if 0 <= cells[a] < g:
      same = cells == cells[a]
      out[a] = (gram[keys[a], keys[same]].astype(np.float64)
                @ j[same].astype(np.float64))
  return out


def _run(gram, keys, cells, j, g, capacities=None, impl="native"):
  f = jax.jit(lambda k, c, x: gram_coupling(gram, g, capacities, impl)(k, c)(x))
  return np.asarray(f(keys, cells, j))


@needs_native
@pytest.mark.parametrize("d", [1, 8, 64, 70, 130])
def test_native_equals_the_sums_kept_or_reread(d):
  """d = 70 and 130 take two and three column passes (the last masked);
  capacities (2, 2, 2, 2) leave a 16-float budget, so most blocks are read
  from the Gram matrix again in each product: the same sums, to the bit."""
  gram, keys, cells, j, g = _problem(d=d)
  kept = _run(gram, keys, cells, j, g)
  np.testing.assert_allclose(kept, _direct(gram, keys, cells, j, g),
                             rtol=2e-5, atol=2e-5)
  assert block_budget(keys.shape[0], (2, 2, 2, 2)) == 16
  reread = _run(gram, keys, cells, j, g, capacities=(2, 2, 2, 2))
  np.testing.assert_array_equal(kept, reread)
  np.testing.assert_array_equal(kept, _run(gram, keys, cells, j, g))
  assert np.all(kept[np.asarray(cells) >= g] == 0)
  assert np.all(kept[np.asarray(cells) < 0] == 0)


@needs_native
def test_native_and_xla_blocks_agree():
  gram, keys, cells, j, g = _problem(m=300, d=16, seed=3)
  c = np.where(np.asarray(cells) < 0, g, np.asarray(cells))  # XLA: cell G
  want = _run(gram, keys, jnp.asarray(c), j, g, capacities=(90,) * 4,
              impl="jax")
  got = _run(gram, keys, cells, j, g, capacities=(90,) * 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_native
def test_native_coupling_in_cell_sam_rows_equals_the_dense_one():
  """The per-cell SAM quantities through `cell_sam_rows` on the segments,
  native against `group_sam.dense_coupling`."""
  rng = np.random.default_rng(7)
  n, b, g, d = 40, 16, 3, 5
  a = rng.normal(size=(n, n))
  gram = jnp.asarray(a @ a.T / n, jnp.float32)
  keys = jnp.asarray(rng.integers(0, n, 3 * b), jnp.int32)
  rows = jnp.asarray(rng.normal(size=(3 * b, d)), jnp.float32)
  slot_example = jnp.tile(jnp.arange(b), 3)
  cell = jnp.asarray(rng.integers(0, g, b), jnp.int32)
  valid = jnp.asarray(np.arange(b) < b - 2)

  def loss(x):
    return jax.nn.softplus(-jnp.sum(x[:b] * (x[b:2 * b] - x[2 * b:]), -1))

  def run(coupling):
    return group_sam.cell_sam_rows(loss, rows, keys, slot_example, cell, valid,
                                   g, n, 0.3, coupling=coupling)

  def kernel_at(p, q):
    return gram[p[:, None], q[None, :]]

  got = jax.jit(lambda: run(gram_coupling(gram, g, None, "native")))()
  want = jax.jit(lambda: run(group_sam.dense_coupling(kernel_at, g)))()
  for f in ("loss", "loss_sa", "grad_norm", "h_norm", "h_seg", "grad_seg"):
    np.testing.assert_allclose(np.asarray(getattr(got, f)),
                               np.asarray(getattr(want, f)), rtol=1e-5,
                               atol=1e-6, err_msg=f)


@needs_native
def test_native_rejects_a_key_outside_only_in_a_cell():
  gram, keys, cells, j, g = _problem()
  unused = int(np.flatnonzero(np.asarray(cells) == g)[0])
  out = _run(gram, keys.at[unused].set(10_000), cells, j, g)  # ignored
  np.testing.assert_array_equal(out, _run(gram, keys, cells, j, g))
  with pytest.raises(Exception, match="outside"):
    _run(gram, keys.at[0].set(10_000), cells, j, g)


def test_shape_errors_are_named():
  gram, keys, cells, j, g = _problem()
  if NATIVE:
    make = gram_coupling(gram, g, None, "native")
    with pytest.raises(ValueError, match="keys and cells"):
      make(keys, cells[:-1])
    with pytest.raises(ValueError, match="J must be"):
      make(keys, cells)(j[:-1])
  with pytest.raises(ValueError, match="impl"):
    gram_coupling(gram, g, None, "fast")
