"""The native bf16 proposals (`fairjax.ops.bf16_proposals`) against NumPy.

Both the AMX tiles (mode 0, where the CPU and OS allow them) and the plain
loop (mode 1): the proposals are the k2 best of s' = sum bf16(u) bf16(v) +
bias (up to the float32 summation order), excluded items and -inf biases
never proposed, the item statistics those of the table, and |s' - s| within
`blocked.proposal_error` of the exact formula.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import native
from fairjax.ops import bf16_proposals as bp
from fairjax.retrieval import blocked

NATIVE, WHY = native.available("dual_proposals")
pytestmark = pytest.mark.skipif(not NATIVE,
                                reason=f"native kernel unavailable: {WHY}")

_call = jax.jit(bp.bf16_proposals, static_argnames=("k2", "mode"))


def _bf16(x):
  """NumPy twin of `blocked.bf16_round` (float64 out)."""
  r = np.asarray(blocked.bf16_round(jnp.asarray(x)), np.float64)
  return r


def _reference(u, v, bias, exclude, offset):
  """float64 s' of every (row, item); -inf where excluded or bias -inf."""
  s = _bf16(u) @ _bf16(v).T + bias.astype(np.float64)[None]
  for r, row in enumerate(exclude):
    loc = row[(row >= offset) & (row < offset + v.shape[0])] - offset
    s[r, loc] = -np.inf
  return s


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("b,n,d,k2", [(70, 3001, 64, 67), (5, 300, 7, 12),
                                      (33, 1000, 100, 1),
                                      (6, 100_003, 16, 40),  # 4 tasks
                                      (4100, 700, 8, 3)])  # 2 chunks
def test_proposals_are_the_k2_best(mode, b, n, d, k2):
  rng = np.random.default_rng(b + n + d)
  u = rng.normal(size=(b, d)).astype(np.float32)
  v = rng.normal(size=(n, d)).astype(np.float32)
  bias = rng.normal(size=n).astype(np.float32)
  bias[::13] = -np.inf
  ex = rng.integers(-1, n + 100, size=(b, 9)).astype(np.int32)
  s, i, stats = (np.asarray(x) for x in _call(u, v, bias, ex, 100, k2=k2,
                                              mode=mode))
  ref = _reference(u, v, bias, ex, 100)
  # sorted by (score desc, id asc); every id proposable, scores near s'
  assert (np.diff(s, axis=1) <= 0).all()
  got = np.take_along_axis(ref, i - 100, 1)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(s, got, rtol=0, atol=1e-4)
  # nothing left out beats the smallest proposal by more than rounding
  left = ref.copy()
  np.put_along_axis(left, i - 100, -np.inf, 1)
  assert (left.max(axis=1) <= s.min(axis=1) + 1e-4).all()
  finite = np.isfinite(bias)
  np.testing.assert_allclose(stats[0], (v[finite] ** 2).sum(1).max(),
                             rtol=1e-5)
  e2 = ((v[finite] - _bf16(v[finite])) ** 2).sum(1).max()
  np.testing.assert_allclose(stats[1], e2, rtol=1e-4)


@pytest.mark.parametrize("mode", [0, 1])
def test_short_rows_pad_and_ties_keep_lower_ids(mode):
  # Integer data: exact scores, many ties; a row with fewer proposable items
  # than k2 ends with (-inf, -1).
  rng = np.random.default_rng(3)
  u = rng.integers(-2, 3, size=(20, 32)).astype(np.float32)
  v = rng.integers(-2, 3, size=(200, 32)).astype(np.float32)
  bias = np.zeros(200, np.float32)
  bias[50:] = -np.inf  # 50 proposable items
  ex = np.full((20, 3), -1, np.int32)
  ex[0] = [0, 1, 2]
  s, i, _ = (np.asarray(x) for x in _call(u, v, bias, ex, 0, k2=60,
                                          mode=mode))
  ref = _reference(u, v, bias, ex, 0)
  for r in range(20):
    count = int(np.isfinite(ref[r]).sum())
    order = np.lexsort((np.arange(200), -ref[r]))[:count]
    np.testing.assert_array_equal(i[r, :count], order)
    np.testing.assert_array_equal(s[r, :count], ref[r, order])
    assert (i[r, count:] == -1).all() and (s[r, count:] == -np.inf).all()


@pytest.mark.parametrize("scale", [1.0, 1e-3, 300.0, 1e-37])
def test_native_scores_within_the_proposal_bound(scale):
  # |s' - s| <= E for every proposal, s the exact formula; at 1e-37 many
  # operands are subnormal and read as zero.
  rng = np.random.default_rng(5)
  u = (rng.normal(size=(40, 64)) * scale).astype(np.float32)
  v = (rng.normal(size=(4000, 64)) * 2).astype(np.float32)
  mu = (rng.normal(size=5) * scale).astype(np.float32)
  g = rng.integers(0, 5, size=4000).astype(np.int32)
  bias = -mu[g]
  ex = np.full((40, 1), -1, np.int32)
  for mode in (0, 1):
    s, i, _ = (np.asarray(x) for x in _call(u, v, bias, ex, 0, k2=4000,
                                            mode=mode))
    exact = blocked.exact_scores_numpy(u, v, bias)
    e = np.asarray(blocked.proposal_error(u, v, mu, "bf16"))
    err = np.abs(s - np.take_along_axis(exact, i, 1))
    assert (err <= e).all()


def test_auto_needs_amx():
  assert bp.resolve("jax") == "jax"
  assert bp.resolve("auto") == ("native" if bp.cpu_has_amx() else "jax")
  # where the CPU has AMX the tiles run (in this process too, with the
  # test runner's signal stacks)
  assert bp.amx_active() == bp.cpu_has_amx()


@pytest.mark.parametrize("mode", [0, 1])
def test_ties_across_item_ranges(mode):
  # Integer scores tied in every task's range (the kernel's tasks share a
  # bound): every item strictly above the smallest proposal is proposed,
  # none left out is above it, and the rows are sorted by (score desc, id
  # asc).
  rng = np.random.default_rng(9)
  u = rng.integers(-1, 2, size=(7, 16)).astype(np.float32)
  v = rng.integers(-1, 2, size=(140_000, 16)).astype(np.float32)
  bias = np.zeros(140_000, np.float32)
  ex = np.full((7, 1), -1, np.int32)
  s, i, _ = (np.asarray(x) for x in _call(u, v, bias, ex, 0, k2=50,
                                          mode=mode))
  ref = _reference(u, v, bias, ex, 0)
  for r in range(7):
    floor = s[r].min()
    np.testing.assert_array_equal(np.sort(i[r][s[r] > floor]),
                                  np.nonzero(ref[r] > floor)[0])
    assert (ref[r][np.setdiff1d(np.arange(140_000), i[r])] <= floor).all()
    np.testing.assert_array_equal(s[r], ref[r][i[r]])
    assert all((s[r][x], -i[r][x]) >= (s[r][x + 1], -i[r][x + 1])
               for x in range(49))


def test_bad_shapes_are_named():
  u = np.zeros((3, 8), np.float32)
  v = np.zeros((10, 8), np.float32)
  with pytest.raises(ValueError, match="bias"):
    bp.bf16_proposals(u, v, np.zeros(9, np.float32), None, 0, 4)
  with pytest.raises(ValueError, match="d <= 128"):
    bp.bf16_proposals(np.zeros((3, 129), np.float32),
                      np.zeros((10, 129), np.float32),
                      np.zeros(10, np.float32), None, 0, 4)
