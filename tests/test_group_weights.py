"""Collaborative loss balance and GroupDRO against loop-by-loop NumPy."""

import numpy as np
import pytest

from fairjax.ops import group_weights as gw

G = 5


def _np_clb(q, loss_sa, loss_prev, h, c, epoch, eta, gamma, floor=1e-5):
  """The official procedure, written with loops over cells (float64)."""
  g = len(q)
  r = np.eye(g)
  if epoch > 0:
    for i in range(g):
      for j in range(g):
        if i != j:
          r[i, j] = h[i] @ c[j] / max(np.sqrt((h[i] @ h[i]) * (c[j] @ c[j])),
                                      1e-12)
  gl = np.sqrt(loss_sa)[:, None]
  if epoch == 0:
    m = (gl @ gl.T) * r
  else:
    m = gl @ np.sqrt(loss_prev)[None, :]
    for i in range(g):
      m[i, i] = loss_sa[i]
    m = m * r
  w = loss_sa ** gamma
  w = w / w.sum()
  a = eta * (m @ w)
  a -= a.max()
  new = q * np.exp(a)
  new = new / new.sum()
  return np.maximum(new, floor)


def _inputs(seed):
  rng = np.random.default_rng(seed)
  q = rng.dirichlet(np.ones(G))
  loss_sa = rng.uniform(0.1, 1.0, G)
  loss_prev = rng.uniform(0.1, 1.0, G)
  h = rng.normal(size=(G, 11))
  c = rng.normal(size=(G, 11))
  return q, loss_sa, loss_prev, h, c


@pytest.mark.parametrize("epoch", [0, 3])
def test_collaborative_update_matches_loops(epoch):
  for seed in range(3):
    q, loss_sa, loss_prev, h, c = _inputs(seed)
    eta, gamma = 0.7, 0.5
    want = _np_clb(q, loss_sa, loss_prev, h, c, epoch, eta, gamma)
    got, ok = gw.collaborative_update(
        q, loss_sa, loss_prev, h @ c.T, np.linalg.norm(h, axis=1),
        np.linalg.norm(c, axis=1), epoch == 0, np.ones(G, bool), eta, gamma)
    assert bool(ok)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert not np.allclose(want, q)  # the step moved the weights


def test_not_all_present_keeps_q():
  q, loss_sa, loss_prev, h, c = _inputs(4)
  present = np.ones(G, bool)
  present[2] = False
  got, ok = gw.collaborative_update(q, loss_sa, loss_prev, h @ c.T,
                                    np.linalg.norm(h, axis=1),
                                    np.linalg.norm(c, axis=1), False, present,
                                    0.5, 0.5)
  assert not bool(ok)
  np.testing.assert_allclose(got, q, rtol=1e-6)


def test_inactive_cell_is_excluded_and_update_defined():
  """A cell without training data: q stays 0, the others match G-1 cells."""
  q, loss_sa, loss_prev, h, c = _inputs(5)
  active = np.ones(G, bool)
  active[1] = False
  q = gw.init_weights(active)
  np.testing.assert_allclose(np.asarray(q)[active], 1.0 / (G - 1))
  loss_sa[1] = 0.0
  present = active.copy()  # the empty cell is never in a batch
  got, ok = gw.collaborative_update(q, loss_sa, loss_prev, h @ c.T,
                                    np.linalg.norm(h, axis=1),
                                    np.linalg.norm(c, axis=1), False, present,
                                    0.5, 0.5, active=active)
  assert bool(ok)
  got = np.asarray(got)
  assert got[1] == 0.0 and np.all(np.isfinite(got))
  keep = np.nonzero(active)[0]
  want = _np_clb(np.asarray(q)[keep], loss_sa[keep], loss_prev[keep], h[keep],
                 c[keep], 1, 0.5, 0.5)
  np.testing.assert_allclose(got[keep], want, rtol=2e-5)


def test_zero_norm_cumulative_gradient_gives_zero_relation():
  h = np.ones((3, 4))
  c = np.zeros((3, 4))
  r = np.asarray(gw.relation_matrix(h @ c.T, np.linalg.norm(h, axis=1),
                                    np.linalg.norm(c, axis=1), False))
  np.testing.assert_array_equal(r, np.eye(3))


def test_group_dro_is_the_special_case():
  rng = np.random.default_rng(7)
  q = rng.dirichlet(np.ones(G))
  losses = rng.uniform(0, 2, G)
  present = np.array([True, True, False, True, True])
  eta = 0.3
  got = np.asarray(gw.group_dro_update(q, losses, present, eta))
  # Sagawa et al.: q * exp(eta L) normalised (absent cells: L = 0).
  want = q * np.exp(eta * np.where(present, losses, 0.0))
  want = np.maximum(want / want.sum(), 1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # = the balance's exponent with R = I, M = diag(L), w = 1.
  l = np.where(present, losses, 0.0)
  m = np.asarray(gw.loss_matrix(l, np.zeros(G), True))
  r = np.asarray(gw.relation_matrix(np.zeros((G, G)), np.ones(G), np.ones(G),
                                    True))
  via = np.asarray(gw.exp_weight_update(q, eta * (m * r) @ np.ones(G)))
  np.testing.assert_allclose(via, got, rtol=1e-5)


def test_floor_and_overflow():
  q = np.full(3, 1 / 3)
  got = np.asarray(gw.exp_weight_update(q, np.array([0.0, 500.0, 1000.0])))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, [1e-5, 1e-5, 1.0], rtol=1e-5)
