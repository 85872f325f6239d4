"""Exact sharded dual top-K: NumPy brute force, 8-device mesh vs 1 device.

Also per-query exclusion (`exclude=`): excluded scores set to -inf in the
brute force.
"""

import functools

import jax
import numpy as np
import pytest

from fairjax import native
from fairjax.errors import ConfigError, DataError
from fairjax.retrieval import blocked, dual_topk, shard_items, sharded


def _mesh(s=8):
  return jax.make_mesh((s,), ("shard",),
                       axis_types=(jax.sharding.AxisType.Explicit,))


def _brute(u, v, g, mu, k, exclude=None):
  """Top-k by (score desc, id asc) in float64, plus the scores.

  exclude [B, E] (-1 padded): those (row, id) scores are -inf, and a -inf
  slot gets id -1.
  """
  s = u.astype(np.float64) @ v.T.astype(np.float64) - mu[g][None].astype(
      np.float64)
  if exclude is not None:
    for r, row in enumerate(exclude):  # test reference, not a hot path
      s[r, row[row >= 0]] = -np.inf
  ids = np.broadcast_to(np.arange(v.shape[0]), s.shape)
  order = np.lexsort((ids, -s), axis=1)[:, :k]
  top = np.take_along_axis(s, order, 1)
  return top, np.where(np.isfinite(top), order, -1)


def _exclusion(n, b, e, seed, must=None):
  """[b, e] random distinct ids per row (a random count), -1 padded.

  `must` [b, m]: ids excluded first (e.g. each row's current winners).
  """
  rng = np.random.default_rng(seed)
  out = np.full((b, e), -1, np.int32)
  for r in range(b):
    pick = [] if must is None else list(must[r])
    rest = np.setdiff1d(rng.permutation(n), pick, assume_unique=True)
    cnt = int(rng.integers(0, e - len(pick) + 1))
    row = np.concatenate([pick, rest[:cnt]]).astype(np.int32)
    out[r, :row.size] = rng.permutation(row)
  return out


def _data(n, d=16, b=23, g=5, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  if ties:  # small integers: exact float32 dot products, many exact ties
    v = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    u = rng.integers(-2, 3, size=(b, d)).astype(np.float32)
    mu = rng.integers(-2, 3, size=g).astype(np.float32)
  else:
    v = rng.normal(size=(n, d)).astype(np.float32)
    u = rng.normal(size=(b, d)).astype(np.float32)
    mu = rng.normal(size=g).astype(np.float32)
  grp = rng.integers(0, g, size=n).astype(np.int32)
  return u, v, grp, mu


@pytest.mark.parametrize("n,k", [(1000, 100), (4096, 50), (777, 37),
                                 (100, 100), (130, 1)])
def test_matches_brute_force_and_mesh(n, k):
  u, v, g, mu = _data(n, seed=n)
  s1, i1 = dual_topk(v, g, u, mu, k)
  s8, i8 = dual_topk(v, g, u, mu, k, mesh=_mesh())
  np.testing.assert_array_equal(np.asarray(s1), np.asarray(s8))
  np.testing.assert_array_equal(np.asarray(i1), np.asarray(i8))
  ref_s, ref_i = _brute(u, v, g, mu, k)
  i1 = np.asarray(i1)
  assert i1.min() >= 0 and i1.max() < n
  np.testing.assert_allclose(np.asarray(s1), ref_s, rtol=1e-5, atol=1e-5)
  # Ids agree except where float32 rounding swaps near-equal scores.
  wide_s, _ = _brute(u, v, g, mu, min(k + 1, n))
  gap = np.abs(np.diff(wide_s, axis=1)).min() if wide_s.shape[1] > 1 else 1.
  if gap > 1e-4:
    np.testing.assert_array_equal(i1, ref_i)
  else:
    assert (i1 == ref_i).mean() > 0.99


@pytest.mark.parametrize("n,k,shards", [(1000, 100, 8), (1003, 64, 8),
                                        (512, 100, 4), (257, 20, 2)])
def test_ties_lower_id_first_across_shard_counts(n, k, shards):
  u, v, g, mu = _data(n, ties=True, seed=n)
  ref_s, ref_i = _brute(u, v, g, mu, k)
  s1, i1 = dual_topk(v, g, u, mu, k)
  sm, im = dual_topk(v, g, u, mu, k, mesh=_mesh(shards))
  for s, i in ((s1, i1), (sm, im)):
    np.testing.assert_array_equal(np.asarray(i), ref_i)
    np.testing.assert_array_equal(np.asarray(s), ref_s.astype(np.float32))
  assert (np.diff(ref_s, axis=1) == 0).any()  # the data really has ties


def test_pruned_paths_equal_plain_merge():
  # Many blocks: exercises skip / chunk / full branches and buffer flushes.
  u, v, g, mu = _data(20000, d=8, b=64, seed=3)
  items = shard_items(v, g, block_size=256)
  kw = dict(mesh=None, k=30, block=items.block)
  a = sharded.sharded_topk(items.emb, items.group, u, mu, **kw)
  b = sharded.sharded_topk(items.emb, items.group, u, mu, prune=False, **kw)
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_mu_term_shifts_groups():
  u, v, g, _ = _data(500, seed=1)
  mu = np.zeros(5, np.float32)
  mu[2] = 1e3  # a huge price on group 2: never retrieved
  _, ids = dual_topk(v, g, u, mu, 50)
  assert not (g[np.asarray(ids)] == 2).any()
  mu[2] = -1e3  # a huge boost: group 2 first
  _, ids = dual_topk(v, g, u, mu, 10)
  assert (g[np.asarray(ids)] == 2).all()


def test_presharded_arrays_used_in_place():
  mesh = _mesh(8)
  n = 8 * 128
  u, v, g, mu = _data(n, seed=5)
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("shard"))
  vs = jax.device_put(v, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("shard", None)))
  gs = jax.device_put(g, spec)
  items = shard_items(vs, gs, mesh)
  assert items.emb is vs and items.group is gs
  s, i = dual_topk(vs, gs, u, mu, 10, mesh=mesh)
  s1, i1 = dual_topk(v, g, u, mu, 10)
  np.testing.assert_array_equal(np.asarray(i), np.asarray(i1))


def test_block_size_depends_on_n_only():
  assert sharded.block_size_for(1_000_000) == 2000
  assert sharded.block_size_for(1000) == 128
  assert sharded.padded_size(1000, 8, 128) == 1024
  assert sharded.padded_size(1000, 1, 128) == 1024


def test_errors():
  u, v, g, mu = _data(50)
  with pytest.raises(ConfigError, match="larger than the catalog"):
    dual_topk(v, g, u, mu, 51)
  bad = v.copy()
  bad[7, 3] = np.nan
  with pytest.raises(DataError, match="item_emb.*row 7"):
    dual_topk(bad, g, u, mu, 5)
  g2 = g.copy()
  g2[11] = -1
  with pytest.raises(DataError, match="item 11 has no group"):
    dual_topk(v, g2, u, mu, 5)
  g2[11] = 9
  with pytest.raises(DataError, match="item 11 has group 9"):
    dual_topk(v, g2, u, mu, 5)
  ub = u.copy()
  ub[2, 0] = np.inf
  with pytest.raises(DataError, match="user_emb.*row 2"):
    dual_topk(v, g, ub, mu, 5)
  with pytest.raises(ConfigError, match="no 'shard' axis"):
    dual_topk(v, g, u, mu, 5, mesh=jax.make_mesh(
        (8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,)))


def test_merge_topk_positional_ties():
  s = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]], np.float32)
  ids = np.array([[0, 1, 2, 3, 4]], np.int32)
  top_s, top_i = blocked.merge_topk(s, ids, 4)
  np.testing.assert_array_equal(np.asarray(top_i), [[1, 2, 4, 3]])


def test_never_builds_full_score_matrix():
  b, n = 32, 64 * 128
  u, v, g, mu = _data(n, b=b)
  items = shard_items(v, g, block_size=128)
  hlo = sharded.sharded_topk.lower(
      items.emb, items.group, u, mu, mesh=None, k=10,
      block=items.block).compile().as_text()
  assert f"f32[{b},{items.block}]" in hlo  # one block of scores ...
  assert f"f32[{b},{n}]" not in hlo  # ... never all of them


@pytest.mark.parametrize("n,k,shards,ties", [
    (1000, 100, 8, False), (1003, 64, 8, True), (777, 37, 8, True),
    (257, 20, 2, True), (130, 1, 4, False)])
def test_exclude_matches_brute_force_and_mesh(n, k, shards, ties):
  u, v, g, mu = _data(n, ties=ties, seed=n + 1)
  _, winners = _brute(u, v, g, mu, k)
  # Each row's unconstrained winners are excluded (so the list must change),
  # plus random ids; some rows exclude little.
  ex = _exclusion(n, u.shape[0], 3 * k + 5, seed=n,
                  must=winners[:, :max(1, k // 2)])
  ref_s, ref_i = _brute(u, v, g, mu, k, ex)
  s1, i1 = dual_topk(v, g, u, mu, k, exclude=ex)
  sm, im = dual_topk(v, g, u, mu, k, mesh=_mesh(shards), exclude=ex)
  np.testing.assert_array_equal(np.asarray(s1), np.asarray(sm))
  np.testing.assert_array_equal(np.asarray(i1), np.asarray(im))
  i1 = np.asarray(i1)
  assert not (i1[:, :, None] == ex[:, None, :]).any()  # never excluded
  assert (i1 >= 0).all()
  np.testing.assert_allclose(np.asarray(s1), ref_s, rtol=1e-5, atol=1e-5)
  if ties:  # exact float32 scores: ids must match, lower id first on ties
    np.testing.assert_array_equal(i1, ref_i)
    assert (np.diff(ref_s, axis=1) == 0).any()
  else:
    assert (i1 == ref_i).mean() > 0.99


def test_exclude_pruned_paths_equal_plain_merge_and_brute_force():
  # 20000 items in blocks of 256 (79 blocks): skip / chunk / full branches
  # and buffer flushes; each row excludes its top 40 and 500 random items.
  u, v, g, mu = _data(20000, d=8, b=64, seed=4)
  _, winners = _brute(u, v, g, mu, 40)
  ex = _exclusion(20000, 64, 600, seed=4, must=winners)
  items = shard_items(v, g, block_size=256)
  kw = dict(mesh=None, k=30, block=items.block)
  a = sharded.sharded_topk(items.emb, items.group, u, mu, ex, **kw)
  b = sharded.sharded_topk(items.emb, items.group, u, mu, ex, prune=False,
                           **kw)
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  ids = np.asarray(a[1])
  assert not (ids[:, :, None] == ex[:, None, :]).any()
  ref_s, ref_i = _brute(u, v, g, mu, 30, ex)
  np.testing.assert_allclose(np.asarray(a[0]), ref_s, rtol=1e-5, atol=1e-5)
  assert (ids == ref_i).mean() > 0.99


@pytest.mark.parametrize("mesh_shards", [None, 8])
def test_exclude_leaves_minus_one_when_too_few_items(mesh_shards):
  n, k = 100, 40
  u, v, g, mu = _data(n, b=4, seed=9)
  ex = np.full((4, 100), -1, np.int32)
  ex[0] = np.arange(100)  # nothing left
  ex[1, :70] = np.random.default_rng(0).permutation(100)[:70]  # 30 left
  ex[2, :60] = np.arange(40, 100)  # exactly 40 left
  mesh = None if mesh_shards is None else _mesh(mesh_shards)
  s, i = dual_topk(v, g, u, mu, k, mesh=mesh, exclude=ex)
  s, i = np.asarray(s), np.asarray(i)
  ref_s, ref_i = _brute(u, v, g, mu, k, ex)
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)
  assert (i[0] == -1).all() and np.isneginf(s[0]).all()
  assert (i[1, :30] >= 0).all() and (i[1, 30:] == -1).all()
  assert np.isneginf(s[1, 30:]).all()
  assert (i[2] >= 0).all() and set(i[2]) == set(range(40))
  assert (i[3] >= 0).all()


def test_exclude_none_or_empty_is_the_plain_program():
  u, v, g, mu = _data(1000, seed=2)
  s0, i0 = dual_topk(v, g, u, mu, 20)
  s1, i1 = dual_topk(v, g, u, mu, 20, exclude=np.zeros((u.shape[0], 0),
                                                         np.int32))
  s2, i2 = dual_topk(v, g, u, mu, 20, exclude=np.full((u.shape[0], 3), -1))
  for s, i in ((s1, i1), (s2, i2)):
    np.testing.assert_array_equal(np.asarray(i), np.asarray(i0))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s0))
  items = shard_items(v, g)
  lower = functools.partial(sharded.sharded_topk.lower, items.emb,
                            items.group, u, mu, mesh=None, k=20,
                            block=items.block)
  plain = lower().as_text()
  assert lower(None).as_text() == plain
  assert "scatter" not in plain  # the exclusion step is compiled out ...
  assert "scatter" in lower(np.zeros((u.shape[0], 3), np.int32)).as_text()


def test_exclude_errors():
  u, v, g, mu = _data(50, b=4)
  with pytest.raises(DataError, match="field 'exclude'.*shape"):
    dual_topk(v, g, u, mu, 5, exclude=np.zeros(4, np.int32))
  with pytest.raises(DataError, match="field 'exclude'.*shape"):
    dual_topk(v, g, u, mu, 5, exclude=np.zeros((3, 2), np.int32))
  with pytest.raises(DataError, match="field 'exclude'.*dtype"):
    dual_topk(v, g, u, mu, 5, exclude=np.zeros((4, 2), np.float32))
  ex = np.full((4, 3), -1, np.int32)
  ex[2, 1] = 50
  with pytest.raises(DataError, match=r"field 'exclude'.*query 2, column 1.*"
                     r"item id 50 is outside \[-1, 50\)"):
    dual_topk(v, g, u, mu, 5, exclude=ex)
  ex[2, 1] = -2
  with pytest.raises(DataError, match="field 'exclude'.*item id -2"):
    dual_topk(v, g, u, mu, 5, exclude=ex)
  with pytest.raises(DataError, match="field 'exclude'.*item id -2"):
    dual_topk(v, g, u, mu, 5, exclude=jax.numpy.asarray(ex))


@pytest.mark.parametrize("layout,mesh_shards", [("by_group", None),
                                                ("by_group", 8),
                                                ("ids", None)])
def test_allowed_groups_exact_and_skipping(layout, mesh_shards):
  # 12000 items in blocks of 256, 6 groups; two groups allowed. On the
  # by-group layout most blocks hold no allowed item and are skipped.
  u, v, g, mu = _data(12000, d=8, b=32, g=6, seed=11, ties=True)
  allowed = np.zeros(6, bool)
  allowed[[1, 4]] = True
  ex = _exclusion(12000, 32, 300, seed=11)
  mesh = None if mesh_shards is None else _mesh(mesh_shards)
  if layout == "by_group":
    items, perm = sharded.shard_items_by_group(v, g, mesh, block_size=256)
    # Every shard holds an equal share (+-1) of each group, by group.
    n_loc = perm.size // (mesh_shards or 1)
    for share in perm.reshape(-1, n_loc):
      gs = g[share[share >= 0]]
      assert np.all(np.diff(gs) >= 0)
      np.testing.assert_allclose(np.bincount(gs, minlength=6),
                                 np.bincount(g, minlength=6)
                                 / (mesh_shards or 1), atol=1)
    assert np.array_equal(np.sort(perm[perm >= 0]), np.arange(12000))
    inv = np.empty(12000, np.int32)
    inv[perm[perm >= 0]] = np.nonzero(perm >= 0)[0]
    ex_l = np.where(ex >= 0, inv[np.maximum(ex, 0)], -1)
  else:
    items, perm, ex_l = shard_items(v, g, mesh, block_size=256), None, ex
  kw = dict(mesh=mesh, k=40, block=items.block)
  args = (items.emb, items.group, sharded.replicate(u, mesh),
          sharded.replicate(mu, mesh), sharded.replicate(ex_l, mesh),
          sharded.replicate(allowed, mesh))
  a = sharded.sharded_topk(*args, **kw)
  b = sharded.sharded_topk(*args, prune=False, **kw)
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  ids = np.asarray(a[1])
  if perm is not None:
    ids = np.where(ids >= 0, perm[np.maximum(ids, 0)], -1)
  # Brute force with the other groups' items excluded.
  shut = np.where(allowed[g], -1, np.arange(12000))
  ex_all = np.concatenate([ex, np.broadcast_to(shut, (32, 12000))], 1)
  ref_s, ref_i = _brute(u, v, g, mu, 40, ex_all)
  np.testing.assert_array_equal(np.asarray(a[0]), ref_s.astype(np.float32))
  if perm is None:  # ties by lower id
    np.testing.assert_array_equal(ids, ref_i)
  else:  # ties by layout position: each item carries its own score
    got = np.asarray(a[0])
    for r in range(32):
      real = ids[r] >= 0
      assert len(set(ids[r][real])) == real.sum()
      assert allowed[g[ids[r][real]]].all()
      assert not np.isin(ids[r][real], ex[r]).any()
      exact = (u[r].astype(np.float64) @ v[ids[r][real]].T.astype(np.float64)
               - mu[g[ids[r][real]]])
      np.testing.assert_array_equal(got[r][real], exact.astype(np.float32))
  # Nothing allowed: every slot is (-inf, -1).
  none = sharded.replicate(np.zeros(6, bool), mesh)
  s0, i0 = sharded.sharded_topk(*args[:5], none, **kw)
  assert (np.asarray(i0) == -1).all() and np.isneginf(np.asarray(s0)).all()


@pytest.mark.parametrize("ties,with_exclude,with_allowed", [
    (True, False, False), (False, False, False), (True, True, False),
    (True, True, True)])
def test_warm_start_changes_time_not_result(ties, with_exclude,
                                            with_allowed):
  # 20000 items in blocks of 160 (125 blocks); warm starts of 0 blocks,
  # the default, 3 and every block give the plain merge's result, bit for
  # bit. With integer data many items tie with the warm bound itself.
  u, v, g, mu = _data(20000, d=8, b=64, seed=5, ties=ties)
  items = shard_items(v, g, block_size=256)
  _, winners = _brute(u, v, g, mu, 30)
  ex = (_exclusion(20000, 64, 200, seed=5, must=winners[:, :10])
        if with_exclude else None)
  allowed = np.array([True, False, True, True, False]) if with_allowed else None
  kw = dict(mesh=None, k=30, block=items.block)
  args = (items.emb, items.group, u, mu, ex, allowed)
  ref = sharded.sharded_topk(*args, prune=False, **kw)
  for warm in (0, None, 3, 125):
    got = sharded.sharded_topk(*args, warm_blocks=warm, **kw)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(ref[1]))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
  if ties:
    shut = (np.zeros((64, 0), np.int32) if allowed is None else
            np.broadcast_to(np.where(allowed[g], -1, np.arange(20000)),
                            (64, 20000)))
    ex_all = shut if ex is None else np.concatenate([ex, shut], 1)
    _, ref_i = _brute(u, v, g, mu, 30, ex_all if ex_all.size else None)
    np.testing.assert_array_equal(np.asarray(ref[1]), ref_i)


@pytest.mark.parametrize("ties", [True, False])
def test_warm_start_bound_is_valid_and_tight(ties):
  # tau0 lies strictly below k non-excluded scores of the warm blocks (so
  # below the final k-th score), and within a small step of the k-th best
  # chunk maximum of those blocks.
  u, v, g, mu = _data(8000, d=8, b=32, seed=6, ties=ties)
  items = shard_items(v, g, block_size=256)
  blk, m, k = items.block, 10, 20
  ex = _exclusion(8000, 32, 50, seed=6)
  tau0 = np.asarray(blocked.warm_start_bound(
      u, items.emb, items.group, mu, 0, ex, k=k, block=blk, chunk=16,
      warm_blocks=m))[:, 0]
  s = u.astype(np.float64) @ v[:m * blk].T.astype(np.float64) - mu[
      g[:m * blk]][None]
  for r, row in enumerate(ex):
    s[r, row[(row >= 0) & (row < m * blk)]] = -np.inf
  kth = -np.sort(-s, axis=1)[:, k - 1]
  assert (np.sum(s > tau0[:, None], axis=1) >= k).all()
  chunk_max = s.reshape(32, -1, 16).max(axis=2)
  kth_chunk = -np.sort(-chunk_max, axis=1)[:, k - 1]
  assert (tau0 <= kth).all() and (tau0 <= kth_chunk).all()
  np.testing.assert_allclose(tau0, kth_chunk, rtol=1e-4, atol=1e-4)
  if ties:  # integer scores: tau0 sits just below an attained score
    assert (tau0 < kth_chunk).all()


@pytest.mark.parametrize("n", [1, 31, 32, 125, 200])
def test_first_set_matches_numpy(n):
  rng = np.random.default_rng(n)
  mask = rng.random((40, n)) < rng.random((40, 1))  # densities 0..1 per row
  mask[0] = False
  mask[1] = True
  r = 8
  pos, count = blocked.first_set(jax.numpy.asarray(mask), r)
  np.testing.assert_array_equal(np.asarray(count), mask.sum(axis=1))
  for row, got in zip(mask, np.asarray(pos)):
    want = np.nonzero(row)[0][:r]
    np.testing.assert_array_equal(got[:want.size], want)
    assert (got[want.size:] == n).all()


# precision="bf16": bfloat16 GEMM proposals, exact rescoring; proposed by
# XLA's GEMM and the blocked scan ("jax") or by the AMX kernel ("native",
# its plain loop on a CPU without AMX).

NATIVE_PROPOSALS, _WHY = native.available("dual_proposals")
_NATIVE_PROPOSALS = pytest.param("native", marks=pytest.mark.skipif(
    not NATIVE_PROPOSALS, reason=f"native kernel unavailable: {_WHY}"))


def _formula(u, v, g, mu, k, exclude=None, allowed=None):
  """Top-k of `blocked.exact_scores_numpy` (score desc, id asc): the values
  the bf16 path must return bit for bit."""
  bias = (np.zeros(v.shape[0], np.float32) if mu is None else -mu[g])
  s = blocked.exact_scores_numpy(u, v, bias)
  if allowed is not None:
    s[:, ~allowed[g]] = -np.inf
  if exclude is not None:
    for r, row in enumerate(exclude):
      s[r, row[row >= 0]] = -np.inf
  ids = np.broadcast_to(np.arange(v.shape[0]), s.shape)
  order = np.lexsort((ids, -s), axis=1)[:, :k]
  top = np.take_along_axis(s, order, 1)
  return top, np.where(np.isfinite(top), order, -1)


@pytest.mark.parametrize("d,odd_rows", [(16, False), (65, True), (7, True)])
def test_exact_scores_match_numpy_formula(d, odd_rows):
  # Shared item blocks and per-row item lists give the NumPy values bit for
  # bit (no multiply-add contraction, no dependence on shape or position).
  rng = np.random.default_rng(d)
  u = rng.normal(size=(9 if odd_rows else 8, d)).astype(np.float32)
  v = (rng.normal(size=(300, d)) * 3).astype(np.float32)
  bias = rng.normal(size=300).astype(np.float32)
  want = blocked.exact_scores_numpy(u, v, bias)
  got = np.asarray(blocked.exact_scores(u, v[None], bias[None]))
  np.testing.assert_array_equal(got, want)
  idx = rng.integers(0, 300, size=(u.shape[0], 17))
  got_rows = np.asarray(blocked.exact_scores(u, v[idx], bias[idx]))
  np.testing.assert_array_equal(got_rows, np.take_along_axis(want, idx, 1))


def test_bf16_round_is_bfloat16_rounding_inside_jit():
  # Nearest even, subnormals to zero, also inside a jitted reduction (where
  # XLA may fold an f32 -> bf16 -> f32 convert pair into the identity).
  rng = np.random.default_rng(4)
  x = (rng.normal(size=20000) * 10.0 ** rng.integers(-40, 37, 20000)
       ).astype(np.float32)
  want = x.astype(jax.numpy.bfloat16).astype(np.float32)
  want = np.where(np.abs(x) < 2.0 ** -126, np.float32(0), want)
  np.testing.assert_array_equal(np.asarray(blocked.bf16_round(x)), want)
  err = jax.jit(lambda v: jax.numpy.max(jax.numpy.abs(
      v - blocked.bf16_round(v))))(x)
  assert float(err) == float(np.max(np.abs(x - want))) > 0


@pytest.mark.parametrize("scale", [1.0, 1e-3, 300.0])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_proposal_error_bounds_the_gemm(scale, precision):
  # |s' - s| <= E for every (row, item), for both proposal GEMMs; the bound
  # is not loose by orders of magnitude.
  u, v, g, mu = _data(4000, d=64, b=40, seed=11)
  u, v, mu = u * scale, v * np.float32(2.0), mu * scale
  dtype = jax.numpy.bfloat16 if precision == "bf16" else jax.numpy.float32
  prop = np.asarray(blocked.block_scores(u, v, -mu[g], dtype))
  exact = blocked.exact_scores_numpy(u, v, -mu[g])
  e = np.asarray(blocked.proposal_error(u, v, mu, precision))
  err = np.abs(prop - exact)
  assert (err <= e).all()
  assert err.max() > e.min() * (1e-2 if precision == "bf16" else 1e-4)


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("n,k,shards,ties,with_exclude,no_mu", [
    (20000, 30, 4, False, False, False),
    (3000, 20, 8, True, False, False),
    pytest.param(1003, 64, 8, True, True, False, marks=_SLOW),
    # k = 1, no mu, one item past the first 256-item block
    pytest.param(257, 1, 2, False, True, True, marks=_SLOW)])
@pytest.mark.parametrize("impl", ["jax", _NATIVE_PROPOSALS])
def test_bf16_exact_vs_formula_and_mesh(n, k, shards, ties, with_exclude,
                                        no_mu, impl):
  u, v, g, mu = _data(n, d=32, b=40, seed=n + 7, ties=ties)
  mu = None if no_mu else mu
  ex = (_exclusion(n, 40, 3 * k + 5, seed=n) if with_exclude else None)
  ref_s, ref_i = _formula(u, v, g, mu, k, ex)
  s1, i1 = dual_topk(v, g, u, mu, k, exclude=ex, precision="bf16",
                     proposal_impl=impl)
  sm, im = dual_topk(v, g, u, mu, k, mesh=_mesh(shards), exclude=ex,
                     precision="bf16", block_size=256, proposal_impl=impl)
  for s, i in ((s1, i1), (sm, im)):
    np.testing.assert_array_equal(np.asarray(s), ref_s)
    np.testing.assert_array_equal(np.asarray(i), ref_i)
  # The float32 path agrees up to float32 rounding.
  s32, _ = dual_topk(v, g, u, mu, k, exclude=ex)
  np.testing.assert_allclose(np.asarray(s32), ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["jax", _NATIVE_PROPOSALS])
def test_bf16_allowed_groups_exact(impl):
  u, v, g, mu = _data(12000, d=16, b=32, seed=12)
  allowed = np.array([True, False, False, True, False])
  items, perm = sharded.shard_items_by_group(v, g, _mesh(4), block_size=256)
  s, pos = sharded.sharded_topk(items.emb, items.group, u, None, None,
                                allowed, mesh=_mesh(4), k=25,
                                block=items.block, precision="bf16",
                                proposal_impl=impl)
  ref_s, ref_i = _formula(u, v, g, None, 25, allowed=allowed)
  np.testing.assert_array_equal(np.asarray(s), ref_s)
  np.testing.assert_array_equal(np.asarray(perm)[np.asarray(pos)], ref_i)


@pytest.mark.slow
def test_bf16_fallbacks_give_the_same_result():
  # slack 0 can never prove the proposals complete: both fallbacks run and
  # the exact_scores scan answers. With slack 2 on dense scores the bf16
  # proposals miss some rows' band while float32 proposals cover it.
  u, v, g, mu = _data(12000, d=64, b=48, seed=13)
  ref_s, ref_i = _formula(u, v, g, mu, 40)
  kw = dict(k=40, block=2000)
  scan = dict(chunk=16, num_chunks_small=8, flush_every=4, prune=True,
              warm_blocks=None)

  # jitted as local_topk runs them (eagerly, every lax op compiles alone)
  @functools.partial(jax.jit, static_argnums=1)
  def proposals_and_ok(arrays, precision):
    cat = blocked._catalog(*arrays, 0, None, None, 2000)._replace(
        precision=precision)
    prop_s, prop_i, stats = blocked._scan_topk(cat, k=42, item_stats=True,
                                               **scan)
    ok = blocked._rescore(cat, prop_s, prop_i, 40, precision, stats)[2]
    return stats, ok

  ok = {}
  for precision in ("bf16", "fp32"):
    stats, ok[precision] = proposals_and_ok((u, v, g, mu), precision)
    # the scan's item statistics are the whole table's (the rounding
    # error's too: XLA must not fold the f32 -> bf16 -> f32 round trip)
    np.testing.assert_allclose(np.asarray(stats)[0],
                               np.max(np.sum(v * v, axis=1)), rtol=1e-6)
    e = v - v.astype(jax.numpy.bfloat16).astype(np.float32)
    np.testing.assert_allclose(np.asarray(stats)[1],
                               np.max(np.sum(e * e, axis=1)), rtol=1e-5)
  ok = {p: np.asarray(o) for p, o in ok.items()}
  assert not ok["bf16"].all() and ok["fp32"].all()
  # the native proposals share the fallbacks; slack 2 takes their own
  # wider retry (2 (k + slack) proposals)
  runs = [("jax", 0), ("jax", 2), ("jax", 16)] + (
      [("native", 2)] if NATIVE_PROPOSALS else [])
  for impl, slack in runs:
    s, i = blocked.local_topk(u, v, g, mu, 0, precision="bf16",
                              proposal_slack=slack, proposal_impl=impl, **kw)
    np.testing.assert_array_equal(np.asarray(s), ref_s)
    np.testing.assert_array_equal(np.asarray(i), ref_i)


def test_bf16_precision_errors():
  u, v, g, mu = _data(100)
  with pytest.raises(ConfigError, match="precision"):
    dual_topk(v, g, u, mu, 5, precision="fp16")
  with pytest.raises(ConfigError, match="proposal_impl"):
    dual_topk(v, g, u, mu, 5, precision="bf16", proposal_impl="gpu")


@pytest.mark.slow
def test_retrieval_bench_small_run_is_exact():
  # The benchmark's exactness checks on a small catalog: the fp32 path
  # equals block-and-merge, the bf16 path equals the NumPy formula.
  from fairjax.bench import retrieval as bench  # noqa: PLC0415
  out = bench.run(num_items=20000, dim=16, num_groups=4, k=10,
                  num_queries=32, shards=2, sgemm_size=256)
  assert out["exact_vs_blockmerge"] and out["bf16_exact"]
  assert out["bf16_set_agreement_fp32"] > 0.99
  for key in ("dual_vs_sgemm", "bf16_vs_sgemm", "selection_over_gemm",
              "bf16_selection_over_gemm", "bf16_gemm_loop_s", "mu_overhead"):
    assert np.isfinite(out[key])
