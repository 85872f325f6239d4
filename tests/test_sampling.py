"""Tests for fairjax.data.sampling: seen matrix, training and eval negatives."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.data import sampling as S
from fairjax.errors import DataError


def _random_seen(num_users, num_items, density, seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((num_users, num_items)) < density


def test_interaction_matrix_matches_brute_force():
  rng = np.random.default_rng(0)
  u = rng.integers(0, 7, 50)
  i = rng.integers(0, 11, 50)
  m = S.interaction_matrix(u, i, 7, 11)
  assert m.shape == (7, 11) and m.dtype == jnp.bool_
  ref = np.zeros((7, 11), bool)
  for a, b in zip(u, i):
    ref[a, b] = True
  np.testing.assert_array_equal(np.asarray(m), ref)


def test_negatives_never_seen_dense_matrix():
  seen = _random_seen(64, 200, 0.8, seed=1)
  seen[5, :-3] = True  # only items 197..199 free: exercises the fallback
  users = jnp.asarray(np.tile(np.arange(64), 4))
  for max_rounds in (1, 32):
    neg = np.asarray(S.sample_negatives(jax.random.key(0), jnp.asarray(seen),
                                        users, 8, max_rounds=max_rounds))
    assert neg.shape == (256, 8) and neg.dtype == np.int32
    assert (neg >= 0).all() and (neg < 200).all()
    assert not seen[np.asarray(users)[:, None], neg].any()
    assert set(neg[np.asarray(users) == 5].ravel()) <= {197, 198, 199}


def _chi2(counts):
  e = counts.mean()
  return ((counts - e) ** 2 / e).sum()


@pytest.mark.parametrize("max_rounds", [32, 1])
def test_negatives_uniform_over_free_items(max_rounds):
  # User 0 has 50 free items out of 100 (rejection path); user 1 only 10 of
  # 100, which with max_rounds=1 mostly goes through the exact fallback.
  seen = np.zeros((2, 100), bool)
  seen[0, ::2] = True
  seen[1, 10:] = True
  users = jnp.asarray([0] * 1000 + [1] * 1000)
  neg = np.asarray(S.sample_negatives(jax.random.key(3), jnp.asarray(seen),
                                      users, 20, max_rounds=max_rounds))
  for u, free in ((0, np.arange(1, 100, 2)), (1, np.arange(10))):
    x = neg[np.asarray(users) == u].ravel()
    assert np.isin(x, free).all()
    counts = np.bincount(x, minlength=100)[free].astype(float)
    dof = free.size - 1
    # chi-square with dof degrees of freedom: mean dof, sd sqrt(2 dof).
    assert _chi2(counts) < dof + 5 * np.sqrt(2 * dof)


def test_negatives_not_uniform_would_fail_the_bound():
  # Sanity check of the bound itself: a biased sampler must exceed it.
  rng = np.random.default_rng(0)
  x = rng.choice(50, 20000, p=np.linspace(1, 2, 50) / np.linspace(
      1, 2, 50).sum())
  counts = np.bincount(x, minlength=50).astype(float)
  assert _chi2(counts) > 49 + 5 * np.sqrt(98)


def test_negatives_full_user_and_check():
  seen = np.zeros((3, 5), bool)
  seen[1] = True
  neg = np.asarray(S.sample_negatives(jax.random.key(0), jnp.asarray(seen),
                                      jnp.asarray([0, 1, 2]), 4))
  assert (neg[1] == -1).all()
  assert (neg[[0, 2]] >= 0).all()
  with pytest.raises(DataError, match="user 1"):
    S.check_sampleable(seen)
  S.check_sampleable(seen, users=np.array([0, 2]))  # no error


def test_negatives_inside_jit_step_and_deterministic():
  seen = jnp.asarray(_random_seen(32, 50, 0.5, seed=2))
  users = jnp.arange(32)

  @jax.jit
  def step(key, step_idx):
    return S.sample_negatives(jax.random.fold_in(key, step_idx), seen,
                              users, 4)

  a = step(jax.random.key(1), 3)
  b = S.sample_negatives(jax.random.fold_in(jax.random.key(1), 3), seen,
                         users, 4)
  np.testing.assert_array_equal(a, b)
  c = step(jax.random.key(1), 4)
  assert not np.array_equal(a, c)


# ----------------------------------------------------------- eval negatives


def _eval_setup():
  train = _random_seen(40, 300, 0.3, seed=5)
  test = _random_seen(40, 300, 0.05, seed=6) & ~train
  cand = np.nonzero(train.any(0))[0][:250]
  return train, test, cand


def test_eval_negatives_properties():
  train, test, cand = _eval_setup()
  neg = S.eval_negatives(0, train, test, cand, 40, n=100, chunk=16)
  assert neg.shape == (40, 100) and neg.dtype == np.int32
  assert (neg >= 0).all()
  rows = np.arange(40)[:, None]
  assert not train[rows, neg].any() and not test[rows, neg].any()
  assert np.isin(neg, cand).all()
  for r in neg:
    assert np.unique(r).size == 100 and (np.diff(r) > 0).all()
  np.testing.assert_array_equal(
      neg, S.eval_negatives(0, train, test, cand, 40, n=100, chunk=16))
  assert not np.array_equal(
      neg, S.eval_negatives(1, train, test, cand, 40, n=100, chunk=16))
  # Roughly uniform: over many seeds, each allowed candidate of user 0 is
  # picked with probability 100 / (number allowed).
  allowed = cand[~(train[0, cand] | test[0, cand])]
  hits = np.zeros(300)
  reps = 200
  for s in range(reps):
    row = S.eval_negatives(s, train[:1], test[:1], cand, 1, n=100)[0]
    hits[row] += 1
  p = 100 / allowed.size
  sd = np.sqrt(reps * p * (1 - p))
  assert np.abs(hits[allowed] - reps * p).max() < 5 * sd
  assert hits[np.setdiff1d(np.arange(300), allowed)].sum() == 0


def test_eval_negatives_pads_when_short():
  train = np.zeros((2, 10), bool)
  test = np.zeros((2, 10), bool)
  train[0, :7] = True
  neg = S.eval_negatives(0, train, test, np.arange(10), 2, n=5)
  np.testing.assert_array_equal(neg[0], [7, 8, 9, -1, -1])
  assert (neg[1] >= 0).all()


def test_load_or_create_eval_negatives(tmp_path):
  train, test, cand = _eval_setup()
  calls = []

  def make():
    calls.append(1)
    return S.eval_negatives(0, train, test, cand, 40)

  path = tmp_path / "sub" / "eval_negatives.npy"
  a = S.load_or_create_eval_negatives(path, make)
  b = S.load_or_create_eval_negatives(path, make, expected_shape=(40, 100))
  assert len(calls) == 1
  np.testing.assert_array_equal(a, b)
  assert b.dtype == np.int32
  assert os.listdir(path.parent) == ["eval_negatives.npy"]  # no temp left
  with pytest.raises(DataError, match="shape"):
    S.load_or_create_eval_negatives(path, make, expected_shape=(40, 50))


def test_load_or_create_leaves_nothing_on_failure(tmp_path):
  def boom():
    raise RuntimeError("no")

  with pytest.raises(RuntimeError):
    S.load_or_create_eval_negatives(tmp_path / "n.npy", boom)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("max_rounds", [1, 32])
def test_official_sampler_is_uniform_without_replacement_minus_skip(
    max_rounds):
  """`skip=3, distinct=True` (the official FADE sampler's form): a row's
  negatives are an ordered sample without replacement from the unseen
  items other than 3. With max_rounds=1 the exact fallbacks do most of the
  work."""
  seen = np.zeros((2, 6), bool)
  seen[0, 2] = True  # user 0 may take 0, 1, 4, 5 (never 2, never 3)
  seen[1] = True
  seen[1, 3] = False  # user 1 may take nothing but the skipped item
  rows = 24_000
  users = jnp.zeros(rows, jnp.int32).at[-2:].set(1)
  neg = np.asarray(S.sample_negatives(jax.random.key(5), jnp.asarray(seen),
                                      users, 2, max_rounds=max_rounds, skip=3,
                                      distinct=True))
  np.testing.assert_array_equal(neg[-2:], -1)
  neg = neg[:-2]
  assert set(np.unique(neg)) == {0, 1, 4, 5}
  assert (neg[:, 0] != neg[:, 1]).all()
  pairs, counts = np.unique(neg[:, 0] * 10 + neg[:, 1], return_counts=True)
  assert pairs.size == 12  # 4 x 3 ordered pairs, each 1/12
  expect = (rows - 2) / 12
  sigma = np.sqrt((rows - 2) * (1 / 12) * (11 / 12))
  assert np.abs(counts - expect).max() < 5 * sigma, counts


def test_official_sampler_reads_presampled_rounds_bit_for_bit():
  rng = np.random.default_rng(8)
  seen = jnp.asarray(rng.random((20, 30)) < 0.4)
  users = jnp.asarray(rng.integers(0, 20, 64).astype(np.int32))
  key = jax.random.key(2)
  want = S.sample_negatives(key, seen, users, 4, skip=7, distinct=True)
  drawn = S.draw_rounds(key, 30, (64, 4), 3, skip=7)
  got = S.sample_negatives(key, seen, users, 4, drawn=drawn, skip=7,
                           distinct=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  got = np.asarray(got)
  assert got.min() >= 0 and all(len(set(r)) == 4 for r in got)
  assert not (got == 7).any() and (got == 29).any()
  with pytest.raises(ValueError, match="skip = 30"):
    S.sample_negatives(key, seen, users, 4, skip=30)


@pytest.mark.parametrize("rounds", [1, 4])
def test_presampled_rounds_give_identical_negatives(rounds):
  """`drawn` (the vectorised first rounds) changes nothing, bit for bit,
  including the exact fallback (a user who saw nearly everything)."""
  rng = np.random.default_rng(3)
  seen = rng.random((20, 30)) < 0.5
  seen[4, :-1] = True  # one free item: the rejection rounds mostly fail
  seen[4, -1] = False
  seen = jnp.asarray(seen)
  users = jnp.asarray(rng.integers(0, 20, 64).astype(np.int32).clip(0, 19))
  users = users.at[:8].set(4)
  keys = jax.random.split(jax.random.key(7), 5)
  for key in keys:
    want = S.sample_negatives(key, seen, users, 3, max_rounds=6)
    drawn = S.draw_rounds(key, 30, (64, 3), rounds)
    got = S.sample_negatives(key, seen, users, 3, max_rounds=6, drawn=drawn)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.asarray(seen)[np.asarray(users)[:, None],
                                np.asarray(got)].any()
  batched = jax.vmap(lambda k: S.draw_rounds(k, 30, (64, 3), rounds))(keys)
  np.testing.assert_array_equal(np.asarray(batched[2]), np.asarray(
      S.draw_rounds(keys[2], 30, (64, 3), rounds)))
  with pytest.raises(ValueError, match="drawn has shape"):
    S.sample_negatives(keys[0], seen, users, 3, max_rounds=6,
                       drawn=S.draw_rounds(keys[0], 30, (64, 2), rounds))


@pytest.mark.parametrize("skip,capacity", [(-1, 4096), (5, 7), (-1, 1)])
def test_resolved_epoch_negatives_equal_per_step_sampling(skip, capacity):
  """`resolve_negatives` (the whole epoch's sampling before the scan)
  gives each step's `sample_negatives`, bit for bit: dense users whose
  slots need many rounds, one free item (the exact fallback), no free item
  (-1), and capacities small enough to take several chunks."""
  rng = np.random.default_rng(11)
  seen = rng.random((20, 30)) < 0.3
  seen[2] = rng.random(30) < 0.85
  seen[4, :] = True  # one free item: the rejection rounds mostly fail
  seen[4, 17] = False
  seen[6, :] = True  # none free
  seen = jnp.asarray(seen)
  steps, b, n, rounds = 6, 16, 3, 2
  users = rng.integers(0, 20, (steps, b)).astype(np.int32)
  users[:, :3] = [2, 4, 6]
  users = jnp.asarray(users)
  keys = jax.random.split(jax.random.key(5), steps)
  draws = jax.vmap(lambda k: S.draw_rounds(k, 30, (b, n), rounds, skip))(keys)
  got = jax.jit(lambda *a: S.resolve_negatives(
      *a, skip=skip, max_rounds=6, capacity=capacity))(seen, users, keys,
                                                       draws)
  for s in range(steps):
    want = S.sample_negatives(keys[s], seen, users[s], n, max_rounds=6,
                              drawn=draws[s], skip=skip)
    np.testing.assert_array_equal(np.asarray(got[s]), np.asarray(want))
  got = np.asarray(got)
  assert (got[:, 2] == -1).all()  # user 6 saw every item
  if skip < 0:
    assert (got[:, 1] == 17).all()  # user 4's one free item
  else:
    assert (got != skip).all()


def test_presolved_epoch_feeds_the_same_negatives():
  """presample_negatives(presolve=True) puts `resolve_negatives` of its
  own keys and draws in the batches."""
  rng = np.random.default_rng(2)
  seen = jnp.asarray(rng.random((10, 40)) < 0.4)
  batches = {"user": jnp.asarray(rng.integers(0, 10, (3, 8)).astype(
      np.int32))}

  class State:
    step = jnp.int32(4)

  kw = dict(num_items=40, num_negatives=2)
  _, plain = S.presample_negatives(State, batches, jax.random.key(1), None,
                                   **kw)
  _, pre = S.presample_negatives(State, batches, jax.random.key(1),
                                 {"seen": seen}, presolve=True, **kw)
  assert "neg_draws" not in pre
  np.testing.assert_array_equal(np.asarray(jax.random.key_data(pre["key"])),
                                np.asarray(jax.random.key_data(plain["key"])))
  for s in range(3):
    want = S.sample_negatives(plain["key"][s], seen, batches["user"][s], 2,
                              drawn=plain["neg_draws"][s])
    np.testing.assert_array_equal(np.asarray(pre["negatives"][s]),
                                  np.asarray(want))
