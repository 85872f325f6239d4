"""Ranking metrics vs the brute-force NumPy reference (stable argsort)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.metrics import ranking
from fairjax.metrics import rank_metrics
from fairjax.metrics import sampled_rank_metrics
from fairjax.metrics import sampled_scores
from fairjax.metrics import topk_items
from fairjax.metrics import topk_metrics
from fairjax.metrics import reference


def _random_case(seed, n_users=37, n_items=53, ties=False, density=0.15,
                 excl_density=0.2):
  rng = np.random.default_rng(seed)
  scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
  if ties:
    scores = np.round(scores).astype(np.float32)  # ~5 distinct values
  relevant = rng.random((n_users, n_items)) < density
  exclude = rng.random((n_users, n_items)) < excl_density
  relevant[:3] = False  # users with no relevant item
  relevant[3] = exclude[3]  # relevant only through excluded items -> NaN
  relevant[3, 0] = exclude[3, 0] = True
  return scores, relevant, exclude


def _assert_close(got, want):
  assert set(got) == set(want)
  for key in want:
    g = np.asarray(got[key], np.float64)
    np.testing.assert_allclose(g, want[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("use_exclude", [False, True])
def test_rank_metrics_matches_reference(ties, use_exclude):
  scores, relevant, exclude = _random_case(1 + ties + 2 * use_exclude,
                                           ties=ties)
  exclude = exclude if use_exclude else None
  ks = (1, 5, 20)
  got = rank_metrics(scores, relevant, ks, exclude, chunk_size=8)
  want = reference.rank_metrics_np(scores, relevant, ks, exclude)
  _assert_close(got, want)
  assert {f"{m}@{k}" for m in ranking.METRIC_NAMES for k in ks} == set(got)
  # NaN exactly for users with no (non-excluded) relevant item.
  eff = relevant if exclude is None else relevant & ~exclude
  for v in got.values():
    np.testing.assert_array_equal(np.isnan(np.asarray(v)), eff.sum(1) == 0)


def test_heavy_ties_follow_lower_index():
  # Two score values only: the top-k must be the lowest indices among the
  # highest value, exactly as a stable argsort.
  rng = np.random.default_rng(3)
  scores = rng.integers(0, 2, size=(40, 300)).astype(np.float32)
  got = np.asarray(topk_items(scores, 50, chunk_size=16))
  np.testing.assert_array_equal(got, reference.topk_items_np(scores, 50))
  np.testing.assert_array_equal(
      got, np.argsort(-scores, axis=1, kind="stable")[:, :50])


def test_special_values_and_exclusion():
  inf, nan = np.inf, np.nan
  scores = np.array([[-inf, nan, -0.0, 0.0, 1.0, -inf, 2.0, 2.0]],
                    np.float32)
  exclude = np.array([[0, 0, 0, 0, 0, 0, 1, 0]], bool)
  top = np.asarray(topk_items(scores, 8, exclude))
  # 2.0 (idx 7; idx 6 excluded), 1.0, the two zeros by index (-0 == +0), then
  # -inf/NaN as lowest finite by index, and the excluded slot is empty.
  np.testing.assert_array_equal(top, [[7, 4, 2, 3, 0, 1, 5, -1]])
  np.testing.assert_array_equal(top, reference.topk_items_np(scores, 8,
                                                             exclude))


def test_excluded_never_ranked_even_below_minus_inf():
  n_items = 30
  scores = np.full((4, n_items), -np.inf, np.float32)
  exclude = np.zeros((4, n_items), bool)
  exclude[:, :25] = True
  scores[:, :25] = 10.0  # excluded items with the best scores
  relevant = np.zeros((4, n_items), bool)
  relevant[:, 0] = True  # excluded and relevant: does not count
  relevant[1:, 26] = True
  top = np.asarray(topk_items(scores, 10, exclude))
  np.testing.assert_array_equal(top[:, :5], np.tile(np.arange(25, 30), (4, 1)))
  assert (top[:, 5:] == -1).all()
  got = rank_metrics(scores, relevant, (10,), exclude)
  assert np.isnan(got["recall@10"][0])
  np.testing.assert_allclose(got["recall@10"][1:], 1.0)
  np.testing.assert_allclose(got["precision@10"][1:], 0.1)
  np.testing.assert_allclose(got["ndcg@10"][1:], 1.0 / np.log2(3.0))
  _assert_close(got, reference.rank_metrics_np(scores, relevant, (10,),
                                               exclude))


def test_hand_computed_user():
  # Ranking: items 3, 1, 0, 2, 4; relevant {1, 4}.
  scores = np.array([[0.3, 0.8, 0.2, 0.9, 0.1]], np.float32)
  relevant = np.array([[0, 1, 0, 0, 1]], bool)
  got = {k: float(v[0]) for k, v in rank_metrics(scores, relevant,
                                                  (2, 5)).items()}
  assert got["recall@2"] == pytest.approx(0.5)
  assert got["precision@2"] == pytest.approx(0.5)
  assert got["f1@2"] == pytest.approx(0.5)
  assert got["hr@2"] == 1.0
  assert got["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
  assert got["recall@5"] == pytest.approx(1.0)
  assert got["precision@5"] == pytest.approx(0.4)
  assert got["ndcg@5"] == pytest.approx(
      (1 / np.log2(3) + 1 / np.log2(6)) / (1 + 1 / np.log2(3)))


@pytest.mark.parametrize("n_users,chunk", [(50, 16), (48, 16), (10, 16),
                                           (17, 1)])
def test_chunking_invariant(n_users, chunk):
  scores, relevant, exclude = _random_case(7, n_users=n_users, ties=True)
  got = rank_metrics(scores, relevant, (3, 10), exclude, chunk_size=chunk)
  whole = rank_metrics(scores, relevant, (3, 10), exclude,
                       chunk_size=n_users)
  for key in whole:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(whole[key]))
  _assert_close(got, reference.rank_metrics_np(scores, relevant, (3, 10),
                                               exclude))
  np.testing.assert_array_equal(
      np.asarray(topk_items(scores, 10, exclude, chunk_size=chunk)),
      reference.topk_items_np(scores, 10, exclude))


def test_k_larger_than_catalogue():
  scores, relevant, exclude = _random_case(11, n_users=9, n_items=6)
  got = rank_metrics(scores, relevant, (4, 10), exclude)
  _assert_close(got, reference.rank_metrics_np(scores, relevant, (4, 10),
                                               exclude))
  top = np.asarray(topk_items(scores, 10, exclude))
  assert top.shape == (9, 10) and (top[:, 6:] == -1).all()


def test_jit_and_single_trace():
  scores, relevant, exclude = _random_case(5, n_users=45)
  fn = jax.jit(lambda s, r, e: rank_metrics(s, r, (5, 20), e, chunk_size=16))
  got = fn(jnp.asarray(scores), jnp.asarray(relevant), jnp.asarray(exclude))
  _assert_close(got, reference.rank_metrics_np(scores, relevant, (5, 20),
                                               exclude))
  # Same shapes, new values: the internal jitted function is not retraced.
  before = ranking._rank_metrics_jit._cache_size()
  rank_metrics(scores + 1, relevant, (5, 20), exclude, chunk_size=16)
  rank_metrics(scores * 2, ~relevant, (5, 20), exclude, chunk_size=16)
  assert ranking._rank_metrics_jit._cache_size() == before + 1


def test_topk_metrics_from_lists():
  scores, relevant, exclude = _random_case(9)
  top = reference.topk_items_np(scores, 20, exclude)
  got = topk_metrics(top, relevant & ~exclude, (5, 20))
  _assert_close(got, reference.rank_metrics_np(scores, relevant, (5, 20),
                                               exclude))


def test_input_validation():
  with pytest.raises(ValueError, match="ks"):
    rank_metrics(np.zeros((2, 3)), np.zeros((2, 3), bool), ks=(0,))
  with pytest.raises(ValueError, match="relevant has shape"):
    rank_metrics(np.zeros((2, 3)), np.zeros((2, 4), bool))


@pytest.mark.parametrize("ties", [False, True])
def test_sampled_matches_counting_reference(ties):
  rng = np.random.default_rng(21 + ties)
  n_users, n_pos, n_neg = 30, 6, 25
  pos = rng.standard_normal((n_users, n_pos)).astype(np.float32)
  neg = rng.standard_normal((n_users, n_neg)).astype(np.float32)
  if ties:
    pos, neg = np.round(pos), np.round(neg)
  pos_mask = rng.random((n_users, n_pos)) < 0.6
  pos_mask[0] = False
  neg_mask = rng.random((n_users, n_neg)) < 0.9
  pos[~pos_mask] = 100.0  # padding must be ignored however it scores
  ks = (1, 5, 10, 40)
  got = sampled_rank_metrics(pos, neg, pos_mask, ks, neg_mask=neg_mask,
                             chunk_size=8)
  want = reference.sampled_rank_metrics_np(pos, neg, pos_mask, ks, neg_mask)
  _assert_close(got, want)
  assert np.isnan(np.asarray(got["ndcg@5"])[0])


def test_sampled_constant_scorer_gets_no_credit():
  pos = np.zeros((3, 2), np.float32)
  neg = np.zeros((3, 100), np.float32)
  got = sampled_rank_metrics(pos, neg, np.ones((3, 2), bool), (20,))
  np.testing.assert_array_equal(np.asarray(got["hr@20"]), 0.0)


def test_sampled_scores_helper():
  rng = np.random.default_rng(2)
  user_emb = rng.standard_normal((5, 4)).astype(np.float32)
  item_emb = rng.standard_normal((12, 4)).astype(np.float32)

  def score_fn(users, items):
    return jnp.einsum("ud,und->un", jnp.asarray(user_emb)[users],
                      jnp.asarray(item_emb)[items])

  users = np.arange(5)
  pos_items = np.array([[1, 2, -1]] * 5)
  neg_items = rng.integers(0, 12, size=(5, 7))
  ps, ns = sampled_scores(score_fn, users, pos_items, neg_items)
  full = user_emb @ item_emb.T
  np.testing.assert_allclose(np.asarray(ps)[:, :2], full[:, [1, 2]],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ns),
                             np.take_along_axis(full, neg_items, 1),
                             rtol=1e-5, atol=1e-6)
