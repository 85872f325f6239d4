"""BPR, group-gap fairness, discriminator and L2 losses vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import models, ops


def _np_softplus(x):
  return np.logaddexp(0.0, x)


def test_bpr_matches_numpy_and_is_stable():
  rng = np.random.default_rng(0)
  pos = rng.normal(size=7).astype(np.float32)
  neg = rng.normal(size=(7, 4)).astype(np.float32)
  want = np.mean(-np.log(1.0 / (1.0 + np.exp(-(pos[:, None] - neg)))), -1)
  got = np.asarray(ops.bpr_loss(pos, neg))
  assert got.shape == (7,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(ops.bpr_loss(pos, neg[:, 0]),
                             _np_softplus(neg[:, 0] - pos), rtol=1e-5)
  # A badly ranked pair 1000 apart: loss ~1000, gradient finite.
  big = ops.bpr_loss(jnp.array([-500.0]), jnp.array([[500.0, 0.0]]))
  np.testing.assert_allclose(big, [(1000.0 + 500.0) / 2], rtol=1e-5)
  g = jax.grad(lambda p: ops.bpr_loss(p, jnp.array([[500.0]]))[0])(
      jnp.array([-500.0]))
  np.testing.assert_allclose(g, [-1.0])


def test_group_gap_matches_numpy_with_mask():
  rng = np.random.default_rng(1)
  dh = rng.random(12).astype(np.float32)
  group = rng.integers(0, 2, 12)
  group[:2] = [0, 1]
  valid = rng.random(12) < 0.7
  valid[:2] = True
  v0, v1 = valid & (group == 0), valid & (group == 1)
  gap = dh[v0].mean() - dh[v1].mean()
  loss, both = ops.fade_fairness_loss(dh, group, valid)
  np.testing.assert_allclose(loss, _np_softplus(gap), rtol=1e-5)
  np.testing.assert_allclose(loss, -np.log(1 / (1 + np.exp(gap))), rtol=1e-5)
  assert bool(both)
  # Rows outside the mask do not matter.
  dh2 = np.where(valid, dh, 99.0).astype(np.float32)
  np.testing.assert_allclose(ops.fade_fairness_loss(dh2, group, valid)[0],
                             loss, rtol=1e-6)
  loss_all, _ = ops.group_gap_loss(dh, group)
  np.testing.assert_allclose(
      loss_all, _np_softplus(dh[group == 0].mean() - dh[group == 1].mean()),
      rtol=1e-5)
  # Gradient: d/d dh_b = sigmoid(gap) * (+1/n0 for group 0, -1/n1 group 1).
  g = np.asarray(jax.grad(lambda x: ops.fade_fairness_loss(x, group, valid)[0])(
      jnp.asarray(dh)))
  sig = 1 / (1 + np.exp(-gap))
  want = np.where(v0, sig / v0.sum(), np.where(v1, -sig / v1.sum(), 0.0))
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


def test_one_group_batch_gives_zero_loss_and_finite_grad():
  dh = jnp.array([0.2, 0.7, 0.4])
  for group, valid in [(jnp.array([0, 0, 0]), None),
                       (jnp.array([1, 1, 1]), None),
                       (jnp.array([0, 1, 1]), jnp.array([False, True, True])),
                       (jnp.array([0, 1, 0]), jnp.zeros(3, bool))]:
    f = jax.jit(lambda x: ops.fade_fairness_loss(x, group, valid))
    loss, both = f(dh)
    assert float(loss) == 0.0 and not bool(both)
    g = jax.grad(lambda x: f(x)[0])(dh)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_rec_uses_positive_scores():
  pos = jnp.array([2.0, 1.0, -1.0, 0.5])
  group = jnp.array([0, 0, 1, 1])
  loss, both = ops.rec_fairness_loss(pos, group)
  np.testing.assert_allclose(loss, _np_softplus(1.5 - (-0.25)), rtol=1e-6)
  assert bool(both)
  np.testing.assert_array_equal(ops.rec_fairness_statistic(pos), pos)


def test_discriminator_loss_matches_bce():
  rng = np.random.default_rng(2)
  z = rng.normal(size=9).astype(np.float32) * 3
  a = rng.integers(0, 2, 9)
  p = 1 / (1 + np.exp(-z))
  bce = -(a * np.log(p) + (1 - a) * np.log(1 - p))
  np.testing.assert_allclose(ops.discriminator_loss(z, a), bce.mean(),
                             rtol=1e-5)
  valid = np.arange(9) < 5
  np.testing.assert_allclose(ops.discriminator_loss(z, a, valid),
                             bce[:5].mean(), rtol=1e-5)
  assert np.isfinite(float(ops.discriminator_loss(jnp.array([1e4]),
                                                  jnp.array([0]))))


def test_l2_penalty_skips_biases():
  model = models.create("ncf", 11, 9)
  params = models.init_params(model, jax.random.key(0))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  want = 0.0
  names = []
  for path, leaf in flat:
    name = jax.tree_util.keystr(path)
    names.append(name)
    if "bias" not in name:
      want += float(np.sum(np.asarray(leaf, np.float64) ** 2))
  assert any("user_bias" in n for n in names)
  assert any("head_bias" in n for n in names)
  # Make the biases non-zero so that including them would change the value.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 5.0 if "bias" in jax.tree_util.keystr(p) else x, params)
  np.testing.assert_allclose(ops.l2_penalty(params, 1e-4), 1e-4 * want,
                             rtol=1e-5)
  everything = sum(float(np.sum(np.asarray(x) ** 2))
                   for x in jax.tree.leaves(params))
  np.testing.assert_allclose(ops.l2_penalty(params, 1.0, exclude=()),
                             everything, rtol=1e-5)


def test_adversary_shapes_and_gradients():
  adv = models.adversary_init(jax.random.key(0), dim=16, hidden=8)
  e = jax.random.normal(jax.random.key(1), (5, 16))
  f = models.apply_filter(adv["filter"], e)
  z = models.discriminate(adv["discriminator"], f)
  assert f.shape == (5, 16) and z.shape == (5,)
  a = jnp.array([0, 1, 1, 0, 1])

  def loss(v):
    return ops.discriminator_loss(
        models.discriminate(v["discriminator"],
                            models.apply_filter(v["filter"], e)), a)

  g = jax.grad(loss)(adv)
  for leaf in jax.tree.leaves(g):
    assert np.any(np.asarray(leaf) != 0)


def test_masked_bpr_mean_against_a_loop():
  rng = np.random.default_rng(3)
  s = rng.standard_normal((6, 5)).astype(np.float32)
  valid = np.array([1, 0, 1, 1, 0, 1], bool)
  want = np.mean([np.mean(np.log1p(np.exp(s[b, 1:] - s[b, 0])))
                  for b in range(6) if valid[b]])
  got = float(ops.masked_bpr_mean(jnp.asarray(s), jnp.asarray(valid)))
  assert got == pytest.approx(want, rel=1e-5)
  assert float(ops.masked_bpr_mean(jnp.asarray(s), jnp.zeros(6, bool))) == 0.0
