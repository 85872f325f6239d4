"""NeuralSort and the soft ranking metrics vs NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fairjax import ops


def _np_neuralsort(s: np.ndarray, tau: float) -> np.ndarray:
  """Row-by-row loop over the NeuralSort formula, float64."""
  n = s.shape[-1]
  out = np.zeros(s.shape[:-1] + (n, n))
  for idx in np.ndindex(s.shape[:-1]):
    v = s[idx].astype(np.float64)
    a1 = np.array([sum(abs(v[i] - v[j]) for j in range(n)) for i in range(n)])
    for r in range(1, n + 1):
      z = ((n + 1 - 2 * r) * v - a1) / tau
      z = z - z.max()
      e = np.exp(z)
      out[idx + (r - 1,)] = e / e.sum()
  return out


def _hard_metrics(s, rel, k):
  """Hard Hit/Recall/NDCG@k of one list by brute-force sort (binary rel)."""
  order = np.argsort(-s, kind="stable")[:k]
  hits = rel[order]
  nrel = rel.sum()
  hit = float(hits.sum() > 0)
  recall = hits.sum() / nrel if nrel else 0.0
  disc = 1.0 / np.log2(np.arange(2, k + 2))
  idcg = disc[:min(k, int(nrel))].sum()
  ndcg = (hits * disc[:len(hits)]).sum() / idcg if nrel else 0.0
  return hit, recall, ndcg


def _distinct_scores(rng, shape, gap=0.5):
  """Scores whose pairwise gaps are at least `gap` (random permutations)."""
  n = shape[-1]
  base = np.stack([rng.permutation(n) for _ in range(int(np.prod(shape[:-1])))])
  return (base.reshape(shape) * gap + rng.uniform(-0.1, 0.1, shape)
          ).astype(np.float32)


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_matches_numpy_formula(tau):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(3, 2, 6)).astype(np.float32) * 2
  p = np.asarray(ops.neuralsort(s, tau))
  ref = _np_neuralsort(s, tau)
  assert p.shape == (3, 2, 6, 6)
  np.testing.assert_allclose(p, ref, atol=2e-6, rtol=1e-4)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  top = np.asarray(ops.neuralsort(s, tau, k=2))
  np.testing.assert_allclose(top, p[..., :2, :], atol=1e-7)


def test_small_tau_gives_hard_sort():
  rng = np.random.default_rng(1)
  s = _distinct_scores(rng, (4, 7))
  p = np.asarray(ops.neuralsort(s, 1e-3))
  hard = np.eye(7)[np.argsort(-s, axis=-1)]  # [4, 7(rank), 7(item)]
  np.testing.assert_allclose(p, hard, atol=1e-5)
  # A large tau is visibly soft, so the check above can fail.
  assert np.abs(np.asarray(ops.neuralsort(s, 5.0)) - hard).max() > 0.1


@pytest.mark.parametrize("k", [1, 3, 5])
def test_soft_metrics_converge_to_hard(k):
  rng = np.random.default_rng(2)
  b, n = 16, 8
  s = _distinct_scores(rng, (b, n))
  rel = rng.random((b, n)) < 0.3
  rel[0] = False  # a list without relevant items
  rel[1] = True
  hard = np.array([_hard_metrics(s[i], rel[i], k) for i in range(b)])
  tau = 1e-3
  got = np.stack([np.asarray(ops.diff_hit(s, rel, tau, k)),
                  np.asarray(ops.soft_recall(s, rel, tau, k)),
                  np.asarray(ops.soft_ndcg(s, rel, tau, k))], -1)
  np.testing.assert_allclose(got, hard, atol=1e-4)
  trunc = np.asarray(ops.soft_recall(s, rel, tau, k, truncated=True))
  nrel = rel.sum(-1)
  hits = hard[:, 1] * nrel
  want = np.where(nrel > 0, hits / np.maximum(np.minimum(nrel, k), 1), 0.0)
  np.testing.assert_allclose(trunc, want, atol=1e-4)
  # At tau = 3 the soft values differ from the hard ones.
  soft = np.asarray(ops.soft_ndcg(s, rel, 3.0, k))
  assert np.abs(soft - hard[:, 2]).max() > 1e-2


def test_soft_metrics_match_numpy_at_finite_tau():
  rng = np.random.default_rng(3)
  s = rng.normal(size=(5, 6)).astype(np.float32)
  rel = (rng.random((5, 6)) < 0.5).astype(np.float32)
  rel[:, 0] = 1.0
  tau, k = 0.7, 3
  p = _np_neuralsort(s, tau)[:, :k]
  h = np.einsum("brn,bn->br", p, rel)
  disc = 1.0 / np.log2(np.arange(2, k + 2))
  ideal = -np.sort(-rel, -1)[:, :k]
  np.testing.assert_allclose(ops.soft_hits(s, rel, tau, k), h, atol=1e-5)
  np.testing.assert_allclose(ops.diff_hit(s, rel, tau, k),
                             np.clip(h.sum(-1), 0, 1), atol=1e-5)
  np.testing.assert_allclose(ops.soft_recall(s, rel, tau, k),
                             h.sum(-1) / rel.sum(-1), atol=1e-5)
  np.testing.assert_allclose(ops.soft_ndcg(s, rel, tau, k),
                             (h * disc).sum(-1) / (ideal * disc).sum(-1),
                             atol=1e-5)


def test_dh_at_1_default_layout():
  rng = np.random.default_rng(4)
  s = rng.normal(size=(10, 5)).astype(np.float32)
  dh = np.asarray(ops.diff_hit(s, None, 3.0))
  p = _np_neuralsort(s, 3.0)
  np.testing.assert_allclose(dh, p[:, 0, 0], atol=1e-6)
  rel = np.zeros((10, 5), bool)
  rel[:, 0] = True
  np.testing.assert_allclose(ops.diff_hit(s, rel, 3.0, 1), dh, atol=1e-7)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(5)

  def check(f, x):
    check_grads(jax.jit(f), (x,), order=1, modes=("rev",), eps=1e-5)

  with jax.enable_x64(True):
    s = jnp.asarray(rng.normal(size=(3, 5)))
    w = jnp.asarray(rng.normal(size=(3, 5, 5)))
    rel = jnp.asarray((rng.random((3, 5)) < 0.4).astype(np.float64))
    rel = rel.at[:, 0].set(1.0)
    one = jnp.zeros((3, 5)).at[:, 0].set(1.0)
    check(lambda x: jnp.sum(w * ops.neuralsort(x, 0.8)), s)
    for k in (1, 2):
      val = np.asarray(ops.diff_hit(s, one, 3.0, k))
      assert np.all((val > 0) & (val < 1))  # inside the clip: smooth
      check(lambda x: ops.diff_hit(x, one, 3.0, k), s)
    check(lambda x: ops.soft_ndcg(x, rel, 1.0, 3), s)
    check(lambda x: ops.soft_recall(x, rel, 1.0, 2), s)
    # DH@1 rises with the positive's score and falls with a negative's.
    g = jax.grad(lambda x: jnp.sum(ops.diff_hit(x, None, 3.0)))(s)
    assert np.all(np.asarray(g[:, 0]) > 0)
    assert np.all(np.asarray(g[:, 1:]) <= 0)


def test_vmap_and_jit_agree_with_batched_call():
  rng = np.random.default_rng(6)
  s = jnp.asarray(rng.normal(size=(8, 5)).astype(np.float32))
  rel = jnp.asarray(rng.random((8, 5)) < 0.5)
  batched = ops.neuralsort(s, 2.0)
  mapped = jax.vmap(lambda x: ops.neuralsort(x, 2.0))(s)
  np.testing.assert_allclose(mapped, batched, atol=1e-7)
  f = jax.jit(ops.soft_ndcg, static_argnums=(3,))
  np.testing.assert_allclose(
      jax.vmap(lambda x, r: f(x, r, 2.0, 3))(s, rel),
      ops.soft_ndcg(s, rel, 2.0, 3), atol=1e-6)
  # tau may be traced.
  g = jax.jit(lambda x, t: ops.diff_hit(x, None, t))(s, jnp.float32(2.0))
  np.testing.assert_allclose(g, ops.diff_hit(s, None, 2.0), atol=1e-6)


def test_large_score_range_and_ties_are_finite():
  rng = np.random.default_rng(7)
  s = jnp.asarray(_distinct_scores(rng, (6, 5), gap=2500.0))  # ~1e4 range
  p = ops.neuralsort(s, 3.0)
  assert np.all(np.isfinite(np.asarray(p)))
  hard = np.eye(5)[np.argsort(-np.asarray(s), axis=-1)]
  np.testing.assert_allclose(p, hard, atol=1e-6)
  loss = lambda x: jnp.sum(ops.diff_hit(x, None, 3.0, 2)) + jnp.sum(
      ops.soft_ndcg(x, x > 5000, 3.0, 3))
  g = jax.jit(jax.grad(loss))(s)
  assert np.all(np.isfinite(np.asarray(g)))
  tied = jnp.zeros((2, 4))
  pt = ops.neuralsort(tied, 1.0)
  np.testing.assert_allclose(pt, 0.25, atol=1e-7)
  gt = jax.jit(jax.grad(lambda x: jnp.sum(ops.diff_hit(x, None, 1.0))))(tied)
  assert np.all(np.isfinite(np.asarray(gt)))
