"""FairSync online dual control and the serving loop with its baselines.

Also serving with per-request exclusion (`exclude=`).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.errors import ConfigError, DataError
from fairjax.methods import fairsync
from fairjax.ops import dual
from fairjax.retrieval import dual_topk


def _mesh(s=8):
  return jax.make_mesh((s,), ("shard",),
                       axis_types=(jax.sharding.AxisType.Explicit,))


def _problem(n=400, d=8, t=256, g=5, seed=0):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(n, d)).astype(np.float32)
  grp = rng.integers(0, g, size=n).astype(np.int32)
  v[grp == 0] *= 0.2  # group 0 is rarely retrieved without control
  u = rng.normal(size=(t, d)).astype(np.float32)
  return u, v, grp


def test_subgradient_formula():
  mu = jnp.array([0.1, 0.5, -0.2])
  counts = jnp.array([10.0, 3.0, 7.0])
  m = np.array([30.0, 20.0, 10.0])
  k, t, b = 4, 50, 5
  got = dual.dual_subgradient(mu, counts, m, k, t, b)
  want = -np.array([10, 3, 7.]) + b * (m / t + np.array([0, 1, 0]) *
                                       (k - m.sum() / t))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_adam_step_direction_and_value():
  ctl = dual.make_dual_control([10.0, 10.0], k=2, horizon=20, batch_size=4,
                               learning_rate=0.1)
  st = ctl.init()
  np.testing.assert_array_equal(np.asarray(st.mu), [0, 0])
  # Group 0 over-exposed (8 of 8 slots), group 1 under-exposed.
  st, _ = ctl.update(st, jnp.array([8.0, 0.0]))
  mu = np.asarray(st.mu)
  assert mu[0] > 0 > mu[1]
  # First Adam step: -lr * g / (|g| + eps) with bias correction = -lr sign(g).
  g = np.asarray(dual.dual_subgradient(jnp.zeros(2), jnp.array([8., 0.]),
                                       ctl.min_exposure, 2, 20, 4))
  np.testing.assert_allclose(mu, -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-5)


def test_feasibility_and_config_errors():
  with pytest.raises(ConfigError, match="infeasible"):
    dual.make_dual_control([30.0, 31.0], k=3, horizon=20, batch_size=4)
  with pytest.raises(ConfigError, match="larger than the horizon"):
    dual.make_dual_control([1.0, 1.0], k=3, horizon=20, batch_size=21)
  with pytest.raises(ConfigError, match=">= 0"):
    dual.make_dual_control([-1.0, 1.0], k=3, horizon=20, batch_size=2)
  u, v, g = _problem(t=16)
  with pytest.raises(ConfigError, match="unknown method"):
    fairsync.serve("fairsync", u, v, g, 5, np.ones(5), 4)


def test_group_counts():
  ids = jnp.array([[0, 1, 2], [2, 3, 0]])
  groups = jnp.array([1, 0, 1, 2])
  got = dual.group_counts(ids, groups, 3, jnp.array([1.0, 0.0]))
  np.testing.assert_array_equal(np.asarray(got), [1, 2, 0])
  # An empty slot (-1) counts nowhere (not as the last item's group).
  got = dual.group_counts(jnp.array([[3, -1, -1], [0, 2, -1]]), groups, 3)
  np.testing.assert_array_equal(np.asarray(got), [0, 2, 1])


def test_unconstrained_is_plain_topk():
  u, v, g = _problem(t=64)
  r = fairsync.serve("unconstrained", u, v, g, 7, np.zeros(5), 16)
  _, ids = dual_topk(v, g, u[:16], np.zeros(5, np.float32), 7)
  np.testing.assert_array_equal(r.item_ids[:16], np.asarray(ids))
  np.testing.assert_allclose(r.scores, np.take_along_axis(
      u @ v.T, r.item_ids, 1), rtol=1e-5, atol=1e-5)
  expo = np.bincount(g[r.item_ids].reshape(-1), minlength=5)
  np.testing.assert_array_equal(r.exposure, expo)
  assert r.exposure_over_time.shape == (4, 5)
  assert not r.mu_history.any()


def test_fairsync_reaches_minimums_and_matches_mesh():
  u, v, g = _problem()
  k, t = 10, 256
  m = np.full(5, 0.5 * k * t / 5)
  base = fairsync.serve("unconstrained", u, v, g, k, m, 16)
  fs = fairsync.serve("FairSync", u, v, g, k, m, 16, eta=1.0)
  assert base.exposure[0] < m[0]
  assert fs.esp == 1.0 > base.esp
  assert fs.mu_history[-1, 0] < 0  # the under-exposed group is boosted
  fs8 = fairsync.serve("FairSync", u, v, g, k, m, 16, eta=1.0, mesh=_mesh())
  np.testing.assert_array_equal(fs.item_ids, fs8.item_ids)
  np.testing.assert_array_equal(fs.mu_history, fs8.mu_history)
  # mu_history[b] is the dual state after b steps: replay it on host.
  ctl = dual.make_dual_control(m, k, t, 16, 1.0)
  st = ctl.init()
  counts = np.diff(np.concatenate([np.zeros((1, 5)), fs.exposure_over_time]),
                   axis=0)
  for b in range(counts.shape[0]):
    np.testing.assert_allclose(fs.mu_history[b], np.asarray(st.mu), atol=1e-6)
    st, _ = ctl.update(st, jnp.asarray(counts[b], jnp.float32))


def test_min_regularizer_and_k_neighbor_biases():
  u, v, g = _problem(t=96)
  k, t, b = 6, 96, 16
  m = np.full(5, 0.5 * k * t / 5)
  r = fairsync.serve("min-regularizer", u, v, g, k, m, b, lam=3.0)
  prev = np.concatenate([np.zeros((1, 5)), r.exposure_over_time[:-1]])
  want = 3.0 * (prev - prev.min(1, keepdims=True)) / t
  np.testing.assert_allclose(r.mu_history, want, rtol=1e-5, atol=1e-6)
  kn = fairsync.serve("k-neighbor", u, v, g, k, m, b, num_neighbors=2)
  prev = np.concatenate([np.zeros((1, 5)), kn.exposure_over_time[:-1]])
  for e, mu in zip(prev, kn.mu_history):
    key = np.where(e < m, e, np.inf)
    chosen = [h for h in np.argsort(key, kind="stable")[:2] if e[h] < m[h]]
    assert set(np.nonzero(mu < 0)[0]) == set(chosen)
  assert kn.esp > fairsync.serve("unconstrained", u, v, g, k, m, b).esp


def test_short_last_batch():
  u, v, g = _problem(t=50)
  r = fairsync.serve("FairSync", u, v, g, 4, np.full(5, 20.0), 16)
  assert r.item_ids.shape == (50, 4)
  assert r.exposure_over_time.shape == (4, 5)
  assert r.exposure.sum() == 50 * 4


def _brute_optimum(s, grp, k, need):
  """Best total score of K-subsets per request meeting every minimum."""
  t, n = s.shape
  subsets = list(itertools.combinations(range(n), k))
  best = -np.inf
  for pick in itertools.product(subsets, repeat=t):
    cnt = np.zeros(len(need))
    for sub in pick:
      np.add.at(cnt, grp[list(sub)], 1)
    if (cnt >= need).all():
      best = max(best, sum(s[r, list(sub)].sum() for r, sub in
                           enumerate(pick)))
  return best


def _tiny_centralised_problem(seed):
  """6 items in 3 groups, 3 requests, K = 2: small enough to brute-force."""
  rng = np.random.default_rng(seed)
  n, d, t = 6, 3, 3
  v = rng.normal(size=(n, d)).astype(np.float32)
  u = rng.normal(size=(t, d)).astype(np.float32)
  return v, u, np.array([0, 0, 1, 1, 2, 2], np.int32), 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centralised_meets_minimums_at_least_score_loss(seed):
  v, u, grp, k = _tiny_centralised_problem(seed)
  need = np.array([2.0, 2.0, 2.0])
  r = fairsync.serve("centralised", u, v, grp, k, need, 3)
  assert r.esp == 1.0
  assert all(len(set(row)) == k for row in r.item_ids)
  got = np.take_along_axis(u @ v.T, r.item_ids, 1).sum()
  np.testing.assert_allclose(got, _brute_optimum(u @ v.T, grp, k, need),
                             rtol=1e-5)


def test_centralised_on_larger_problem():
  u, v, g = _problem(t=128)
  k = 8
  m = np.full(5, 0.9 * k * 128 / 5)
  c = fairsync.serve("centralised", u, v, g, k, m, 32)
  base = fairsync.serve("unconstrained", u, v, g, k, m, 32)
  assert c.esp == 1.0
  assert c.scores.sum() <= base.scores.sum() + 1e-3
  np.testing.assert_allclose(c.scores, np.take_along_axis(
      u @ v.T, c.item_ids, 1), rtol=1e-5, atol=1e-5)


def _exclusion(t, n, seed, first=None, extra=12):
  """[t, E]: `first` [t, m] ids, then up to `extra` random ones, -1 padded."""
  rng = np.random.default_rng(seed)
  m = 0 if first is None else first.shape[1]
  out = np.full((t, m + extra), -1, np.int32)
  for r in range(t):
    row = [] if first is None else list(first[r])
    rest = np.setdiff1d(rng.permutation(n), row)
    row += list(rest[:rng.integers(0, extra + 1)])
    out[r, :len(row)] = rng.permutation(row)
  return out


def _assert_never_served(ids, exclude):
  hit = (ids[:, :, None] == exclude[:, None, :]) & (ids[:, :, None] >= 0)
  assert not hit.any()


@pytest.mark.parametrize("method", fairsync.METHODS)
def test_serve_with_exclusion_never_returns_excluded(method):
  u, v, g = _problem(t=96)
  k, b = 6, 16
  m = np.full(5, 0.5 * k * 96 / 5)
  # Every request excludes what it would get unconstrained, plus noise.
  base = fairsync.serve("unconstrained", u, v, g, k, m, b)
  ex = _exclusion(96, 400, 0, base.item_ids)
  r = fairsync.serve(method, u, v, g, k, m, b, eta=1.0, exclude=ex)
  _assert_never_served(r.item_ids, ex)
  assert (r.item_ids >= 0).all()
  assert all(len(set(row)) == k for row in r.item_ids)
  # Exposure counts exactly the served items; relevance is <u, v>.
  np.testing.assert_array_equal(
      r.exposure, np.bincount(g[r.item_ids].reshape(-1), minlength=5))
  np.testing.assert_allclose(r.scores, np.take_along_axis(
      u @ v.T, r.item_ids, 1), rtol=1e-5, atol=1e-5)
  if method == "centralised":
    assert r.esp == 1.0
  r8 = fairsync.serve(method, u, v, g, k, m, b, eta=1.0, exclude=ex,
                      mesh=_mesh())
  np.testing.assert_array_equal(r.item_ids, r8.item_ids)


def test_serve_exclusion_matches_per_batch_retrieval():
  u, v, g = _problem(t=50)
  ex = _exclusion(50, 400, 1, extra=40)
  m = np.full(5, 20.0)
  r = fairsync.serve("FairSync", u, v, g, 4, m, 16, exclude=ex)
  for b in range(4):  # the short last batch included
    rows = slice(16 * b, min(16 * (b + 1), 50))
    _, ids = dual_topk(v, g, u[rows], r.mu_history[b], 4, exclude=ex[rows])
    np.testing.assert_array_equal(r.item_ids[rows], np.asarray(ids))
  none = fairsync.serve("FairSync", u, v, g, 4, m, 16)
  empty = fairsync.serve("FairSync", u, v, g, 4, m, 16,
                         exclude=np.zeros((50, 0), np.int32))
  np.testing.assert_array_equal(none.item_ids, empty.item_ids)
  assert not np.array_equal(none.item_ids, r.item_ids)


@pytest.mark.parametrize("method", fairsync.METHODS)
def test_serve_exclusion_short_lists_count_nowhere(method):
  # 12 items, K = 5: request 0 has only 3 items left, request 1 none.
  rng = np.random.default_rng(3)
  v = rng.normal(size=(12, 4)).astype(np.float32)
  g = np.arange(12, dtype=np.int32) % 3
  u = rng.normal(size=(8, 4)).astype(np.float32)
  ex = np.full((8, 12), -1, np.int32)
  ex[0, :9] = np.arange(9)
  ex[1] = np.arange(12)
  ex[2, :2] = [11, 4]
  m = np.array([4.0, 4.0, 4.0])
  r = fairsync.serve(method, u, v, g, 5, m, 4, exclude=ex)
  _assert_never_served(r.item_ids, ex)
  np.testing.assert_array_equal(np.sort(r.item_ids[0]), [-1, -1, 9, 10, 11])
  assert (r.item_ids[1] == -1).all() and np.isneginf(r.scores[1]).all()
  assert (r.item_ids[2:] >= 0).all()
  served = r.item_ids[r.item_ids >= 0]
  np.testing.assert_array_equal(r.exposure, np.bincount(g[served],
                                                        minlength=3))
  assert r.exposure.sum() == 8 * 5 - 2 - 5


@pytest.mark.parametrize("seed", [0, 1])
def test_centralised_with_exclusion_is_the_constrained_optimum(seed):
  v, u, grp, k = _tiny_centralised_problem(seed)
  ex = np.array([[0, -1], [2, 5], [-1, -1]], np.int32)
  need = np.array([2.0, 2.0, 1.0])
  r = fairsync.serve("centralised", u, v, grp, k, need, 3, exclude=ex)
  _assert_never_served(r.item_ids, ex)
  assert r.esp == 1.0
  s = (u @ v.T).astype(np.float64)
  for row, e in enumerate(ex):
    s[row, e[e >= 0]] = -1e9  # brute force: an excluded item is never worth it
  got = np.take_along_axis(u @ v.T, r.item_ids, 1).sum()
  np.testing.assert_allclose(got, _brute_optimum(s, grp, k, need), rtol=1e-5)


def test_serve_exclusion_errors():
  u, v, g = _problem(t=16)
  with pytest.raises(DataError, match="field 'exclude'.*shape"):
    fairsync.serve("FairSync", u, v, g, 5, np.ones(5), 4,
                   exclude=np.zeros((15, 2), np.int32))
  with pytest.raises(DataError, match="field 'exclude'.*item id 400"):
    fairsync.serve("centralised", u, v, g, 5, np.ones(5), 4,
                   exclude=np.full((16, 2), 400, np.int32))
