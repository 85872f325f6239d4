"""Tests for fairjax.data.protocols: periods, k-core, splits, group tables."""

import dataclasses

import numpy as np
import pytest

from fairjax.data import protocols as P
from fairjax.data.types import Dataset
from fairjax.errors import ConfigError, DataError


def _ds(user, item, rating=None, timestamp=None, num_users=None,
        num_items=None, **kw) -> Dataset:
  user = np.asarray(user, dtype=np.int32)
  item = np.asarray(item, dtype=np.int32)
  nu = int(user.max()) + 1 if num_users is None else num_users
  ni = int(item.max()) + 1 if num_items is None else num_items
  if rating is None:
    rating = np.ones(user.shape, np.float32)
  return Dataset(
      name="t", user=user, item=item,
      rating=np.asarray(rating, np.float32),
      timestamp=None if timestamp is None else np.asarray(timestamp,
                                                          np.int64),
      num_users=nu, num_items=ni,
      raw_user_ids=np.arange(100, 100 + nu), raw_item_ids=np.arange(
          500, 500 + ni), **kw)


def _timed(n, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  ts = rng.integers(0, 50 if ties else 10**9, n)
  return _ds(rng.integers(0, 30, n), rng.integers(0, 40, n), timestamp=ts)


# ---------------------------------------------------------------- binarize


def test_binarize_keeps_rating_at_least_threshold():
  ds = _ds([0, 0, 1, 1], [0, 1, 0, 1], rating=[1, 3, 5, 2.5])
  out = P.binarize(ds, 3)
  np.testing.assert_array_equal(out.rating, [3, 5])
  np.testing.assert_array_equal(out.user, [0, 1])
  np.testing.assert_array_equal(out.item, [1, 0])
  assert out.num_users == 2 and out.num_items == 2


# ----------------------------------------------------- chronological periods


@pytest.mark.parametrize(
    "n,frac,blocks,expected",
    [
        # 11 batches (last has 40); D0 = floor(6.6 + .5) = 7 batches; 4 left
        # over 3 blocks -> 1, 1, 2 batches.
        (2600, 0.6, 3, [7 * 256, 256, 256, 256 + 40]),
        # 101 batches (last has 10); D0 = floor(60.6 + .5) = 61; 40 left ->
        # 4 batches per block; the partial batch is in the last block.
        (25610, 0.6, 10, [61 * 256] + [1024] * 9 + [3 * 256 + 10]),
        # round half up: 5 batches * 0.5 = 2.5 -> 3.
        (5 * 256, 0.5, 2, [768, 256, 256]),
        # 23 batches: D0 = floor(13.8 + .5) = 14; 9 left over 4 blocks ->
        # 2, 2, 2, 3.
        (23 * 256, 0.6, 4, [14 * 256, 512, 512, 512, 768]),
    ])
def test_period_sizes_by_hand(n, frac, blocks, expected):
  ds = _timed(n)
  cs = P.chronological_periods(ds, 256, frac, blocks)
  assert cs.period_sizes == expected
  assert sum(cs.period_sizes) == n
  assert cs.num_periods == blocks + 1
  assert cs.batch_size == 256
  assert sum(cs.period_batches) == -(-n // 256)


def test_chrono_order_is_stable_time_sort_and_periods_are_contiguous():
  ds = _timed(3000, seed=1, ties=True)
  cs = P.chronological_periods(ds, 64, 0.6, 5)
  ref = sorted(range(3000), key=lambda i: (ds.timestamp[i], i))
  np.testing.assert_array_equal(cs.order, ref)
  assert cs.order.dtype == np.int64 and cs.period.dtype == np.int32
  # The period of sorted position p is a function of its batch p // 64.
  sorted_period = cs.period[cs.order]
  assert (np.diff(sorted_period) >= 0).all()
  batch = np.arange(3000) // 64
  for b in np.unique(batch):
    assert np.unique(sorted_period[batch == b]).size == 1
  # Time never goes backwards across periods.
  for k in range(cs.num_periods - 1):
    assert (ds.timestamp[cs.period == k].max()
            <= ds.timestamp[cs.period == k + 1].min())


def test_chrono_masks_partition():
  ds = _timed(9000, seed=2)
  cs = P.chronological_periods(ds)
  assert cs.num_periods == 11
  masks = np.stack([cs.period_mask(k) for k in range(cs.num_periods)])
  np.testing.assert_array_equal(masks.sum(0), np.ones(9000))
  np.testing.assert_array_equal(masks.sum(1), cs.period_sizes)
  for k in range(cs.num_periods):
    h, f = cs.history_mask(k), cs.future_mask(k)
    assert not (h & f).any() and (h | f).all()
    np.testing.assert_array_equal(h, masks[:k + 1].any(0))
  assert not cs.future_mask(cs.num_periods - 1).any()
  with pytest.raises(ConfigError):
    cs.period_mask(cs.num_periods)


def test_chrono_errors():
  with pytest.raises(DataError, match="field 'timestamp'") as e:
    P.chronological_periods(_ds([0, 1], [0, 1]))
  assert e.value.field == "timestamp"
  with pytest.raises(DataError, match="too few"):
    P.chronological_periods(_timed(256 * 12), 256, 0.6, 10)  # 5 left < 10
  with pytest.raises(ConfigError):
    P.chronological_periods(_timed(100), 0)


# ------------------------------------------------------------------- k-core


def _brute_k_core(pairs, k):
  pairs = set(pairs)
  while True:
    cu, ci = {}, {}
    for u, i in pairs:
      cu[u] = cu.get(u, 0) + 1
      ci[i] = ci.get(i, 0) + 1
    keep = {(u, i) for u, i in pairs if cu[u] >= k and ci[i] >= k}
    if keep == pairs:
      return pairs
    pairs = keep


def test_k_core_matches_brute_force_and_is_dense():
  rng = np.random.default_rng(3)
  n = 4000
  # Skewed ids so that the peeling takes several rounds.
  u = (rng.pareto(1.0, n) * 5).astype(int) % 400
  i = (rng.pareto(1.0, n) * 5).astype(int) % 300
  pairs = sorted(set(zip(u.tolist(), i.tolist())))
  u, i = map(np.array, zip(*pairs))
  gender = rng.integers(0, 2, 400)
  genres = rng.random((300, 4)) < 0.3
  ds = _ds(u, i, num_users=400, num_items=300,
           user_attrs={"gender": gender}, item_genres=genres,
           item_first_genre=np.where(genres.any(1), genres.argmax(1), -1))
  k = 5
  out = P.k_core(ds, k)
  assert out.num_interactions > 0
  raw = {(int(a) - 100, int(b) - 500) for a, b in zip(
      out.raw_user_ids[out.user], out.raw_item_ids[out.item])}
  assert raw == _brute_k_core(pairs, k)
  # k-core and dense ids.
  assert np.bincount(out.user).min() >= k
  assert np.bincount(out.item).min() >= k
  np.testing.assert_array_equal(np.unique(out.user),
                                np.arange(out.num_users))
  np.testing.assert_array_equal(np.unique(out.item),
                                np.arange(out.num_items))
  # Side tables follow the raw ids.
  old_u = out.raw_user_ids - 100
  old_i = out.raw_item_ids - 500
  np.testing.assert_array_equal(out.user_attrs["gender"], gender[old_u])
  np.testing.assert_array_equal(out.item_genres, genres[old_i])
  np.testing.assert_array_equal(out.item_first_genre,
                                ds.item_first_genre[old_i])


def test_reindex_drops_unused():
  ds = _ds([0, 3, 3], [5, 1, 5], num_users=6, num_items=7,
           user_attrs={"gender": np.array([0, 1, 0, 1, 0, 1])})
  out = P.reindex(ds)
  assert out.num_users == 2 and out.num_items == 2
  np.testing.assert_array_equal(out.user, [0, 1, 1])
  np.testing.assert_array_equal(out.item, [1, 0, 1])
  np.testing.assert_array_equal(out.raw_user_ids, [100, 103])
  np.testing.assert_array_equal(out.raw_item_ids, [501, 505])
  np.testing.assert_array_equal(out.user_attrs["gender"], [0, 1])


# ------------------------------------------------------------- random split


def test_random_split_fractions_guarantee_and_determinism():
  rng = np.random.default_rng(4)
  n_per = rng.integers(1, 40, 300)
  u = np.repeat(np.arange(300), n_per)
  ds = _ds(u, rng.integers(0, 500, u.size))
  tr, va, te = P.random_split(ds, (0.7, 0.1, 0.2), seed=7)
  n = u.size
  assert (tr.astype(int) + va + te == 1).all()
  assert abs(tr.sum() - round(0.7 * n)) <= 1
  assert abs(va.sum() - round(0.1 * n)) <= 1
  for m in (tr, va, te):
    c = np.bincount(u[m], minlength=300)
    assert (c[n_per >= 3] >= 1).all()
  again = P.random_split(ds, (0.7, 0.1, 0.2), seed=7)
  for a, b in zip((tr, va, te), again):
    np.testing.assert_array_equal(a, b)
  other = P.random_split(ds, (0.7, 0.1, 0.2), seed=8)
  assert not np.array_equal(tr, other[0])


@pytest.mark.parametrize("fr", [(0.7, 0.3), (0.5, 0.5, 0.5), (1.0, 0, 0)])
def test_random_split_bad_fractions(fr):
  with pytest.raises(ConfigError, match="fractions"):
    P.random_split(_ds([0, 1], [0, 1]), fr)


# ------------------------------------------------------------- group tables


def test_user_groups_and_errors():
  names = {"gender": ("M", "F")}
  ds = _ds([0, 1, 2], [0, 0, 0], user_attrs={"gender": np.array([0, 1, 0])},
           user_attr_names=names)
  np.testing.assert_array_equal(P.user_groups(ds), [0, 1, 0])
  assert P.user_groups(ds).dtype == np.int32
  with pytest.raises(DataError, match="field 'age'") as e:
    P.user_groups(ds, "age")
  assert e.value.field == "age"
  bad = dataclasses.replace(ds, user_attrs={"gender": np.array([0, -1, 1])})
  with pytest.raises(DataError, match="field 'gender'.*negative"):
    P.user_groups(bad)
  nan = dataclasses.replace(
      ds, user_attrs={"gender": np.array([0.0, np.nan, 1.0])})
  with pytest.raises(DataError, match="field 'gender'.*missing"):
    P.user_groups(nan)
  empty = dataclasses.replace(ds, user_attrs={"gender": np.zeros(3, int)})
  with pytest.raises(DataError, match="empty user group.*F"):
    P.user_groups(empty)


def test_item_groups():
  genres = np.array([[1, 0, 0, 1],   # A, D
                     [0, 1, 0, 0],   # B
                     [0, 0, 0, 0],   # none
                     [0, 1, 1, 0],   # B, C
                     [0, 0, 1, 1]],  # C, D
                    dtype=bool)
  ds = _ds([0] * 5, range(5), item_genres=genres,
           genre_names=("A", "B", "C", "D"))
  np.testing.assert_array_equal(P.item_groups_first_genre(ds),
                                [0, 1, -1, 1, 2])
  # Exactly one of (C, A, B).
  np.testing.assert_array_equal(P.item_groups_one_of(ds, ["C", "A", "B"]),
                                [1, 2, -1, -1, 0])
  with pytest.raises(ConfigError, match="unknown genre.*'Z'"):
    P.item_groups_one_of(ds, ["A", "Z"])
  with pytest.raises(ConfigError):
    P.item_groups_one_of(ds, "A")
  with pytest.raises(DataError, match="genres"):
    P.item_groups_one_of(dataclasses.replace(ds, item_genres=None), ["A"])


def test_cell_ids():
  ug = np.array([0, 1, -1])
  ig = np.array([2, -1, 0, 1])
  users = np.array([0, 1, 1, 2, 0, 1])
  items = np.array([0, 0, 3, 3, 1, 2])
  out = P.cell_ids(ug, ig, users, items, 3)
  ref = [ug[u] * 3 + ig[i] if ug[u] >= 0 and ig[i] >= 0 else -1
         for u, i in zip(users, items)]
  np.testing.assert_array_equal(out, ref)
  assert out.dtype == np.int32
