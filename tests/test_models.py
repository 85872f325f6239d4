"""MF / NCF backbones through the common interface, vs NumPy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import models
from fairjax.errors import ConfigError

U, I = 300, 200


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _np_ncf(p, u, i):
  """NeuMF on concatenated [x_u; y_i] (no split trick), one pair at a time."""
  p = p["params"]
  gmf = p["gmf_user"]["embedding"][u] * p["gmf_item"]["embedding"][i]
  h = np.concatenate([p["mlp_user"]["embedding"][u],
                      p["mlp_item"]["embedding"][i]])
  for l in range(4):
    h = np.maximum(h @ p[f"mlp_kernel_{l}"], 0.0)
  z = np.concatenate([gmf, h]) @ p["head_kernel"]
  return (z + p["head_bias"] + p["user_bias"]["embedding"][u, 0]
          + p["item_bias"]["embedding"][i, 0])


@pytest.fixture(scope="module", params=["mf", "ncf"])
def backbone(request):
  model = models.create(request.param, U, I)
  params = models.init_params(model, jax.random.key(0))
  return request.param, model, params


def test_shapes(backbone):
  _, model, params = backbone
  users = jnp.arange(6)
  assert models.pair_scores(model, params, users, users + 1).shape == (6,)
  cand = jnp.arange(30).reshape(6, 5)
  assert models.pair_scores(model, params, users, cand).shape == (6, 5)
  assert models.pair_scores(model, params, users,
                            cand.reshape(6, 5, 1)).shape == (6, 5, 1)
  assert models.all_scores(model, params, users).shape == (6, I)


def test_init_std(backbone):
  name, model, params = backbone
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in flat:
    key = jax.tree_util.keystr(path)
    x = np.asarray(leaf)
    if "bias" in key:
      np.testing.assert_array_equal(x, 0.0)
    else:
      assert abs(x.std() - 0.01) < 0.0015, (name, key, x.std())
      assert abs(x.mean()) < 0.002, (name, key)


def test_mf_scores_are_dot_products():
  model = models.create("mf", U, I, dim=8)
  params = models.init_params(model, jax.random.key(1))
  pu = np.asarray(params["params"]["user"]["embedding"], np.float64)
  pi = np.asarray(params["params"]["item"]["embedding"], np.float64)
  users = np.array([0, 5, 299, 7])
  cand = np.array([[1, 2], [0, 199], [3, 3], [50, 60]])
  got = models.pair_scores(model, params, users, cand)
  want = np.einsum("bd,bnd->bn", pu[users], pi[cand])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(models.all_scores(model, params, users),
                             pu[users] @ pi.T, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(models.user_embeddings(model, params, users),
                             pu[users], rtol=1e-6)
  # user_transform scales the user side.
  np.testing.assert_allclose(
      models.pair_scores(model, params, users, cand,
                         user_transform=lambda e: 2 * e), 2 * want,
      rtol=1e-5, atol=1e-9)


def test_mf_cosine_option():
  model = models.create("mf", U, I, dim=8, cosine=True)
  params = models.init_params(model, jax.random.key(2))
  pu = np.asarray(params["params"]["user"]["embedding"], np.float64)
  pi = np.asarray(params["params"]["item"]["embedding"], np.float64)
  nu = pu / np.linalg.norm(pu, axis=-1, keepdims=True)
  ni = pi / np.linalg.norm(pi, axis=-1, keepdims=True)
  users = np.array([3, 4, 5])
  items = np.array([10, 11, 12])
  want = np.sum(nu[users] * ni[items], -1) / 0.2
  np.testing.assert_allclose(
      models.pair_scores(model, params, users, items, tau=0.2), want,
      rtol=1e-5)
  np.testing.assert_allclose(models.all_scores(model, params, users),
                             nu[users] @ ni.T, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(models.all_scores(model, params, users))).max() <= 1


def test_ncf_matches_numpy_and_all_scores():
  model = models.create("ncf", U, I)
  params = models.init_params(model, jax.random.key(3))
  # Inflate and perturb so ReLU patterns and biases are non-trivial.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  leaves = [x * 40 + 0.1 * jax.random.normal(k, x.shape)
            for x, k in zip(leaves, keys)]
  params = jax.tree.unflatten(tree, leaves)
  p64 = _np(params)
  users = np.array([0, 1, 17, 299, 42])
  cand = np.array([[0, 1, 2], [199, 5, 5], [7, 8, 9], [3, 1, 4], [100, 0, 50]])
  got = np.asarray(models.pair_scores(model, params, users, cand))
  want = np.array([[_np_ncf(p64, u, i) for i in row]
                   for u, row in zip(users, cand)])
  assert np.abs(want).max() > 1.0
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  same = models.pair_scores(model, params, users, cand,
                            user_transform=lambda e: e + 0.0)
  np.testing.assert_allclose(same, got, rtol=1e-6, atol=1e-6)
  pair = np.asarray(models.pair_scores(model, params, users, cand[:, 0]))
  np.testing.assert_allclose(pair, got[:, 0], rtol=1e-5, atol=1e-5)
  # Full scoring, with and without chunking (5 users, chunks of 2 -> padding).
  full = np.asarray(models.all_scores(model, params, users))
  chunked = np.asarray(models.all_scores(model, params, users, chunk_size=2))
  assert full.shape == chunked.shape == (5, I)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.take_along_axis(full, cand, 1), got,
                             rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_parameter(backbone):
  _, model, params = backbone
  users = jnp.array([0, 1, 2, 3])
  cand = jnp.array([[0, 1], [2, 3], [4, 5], [6, 7]])

  @jax.jit
  def loss(p):
    s = models.pair_scores(model, p, users, cand)
    return jnp.sum(s[:, 0] - s[:, 1]) + jnp.sum(
        models.all_scores(model, p, users[:2]) ** 2)

  g = jax.grad(loss)(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
    assert np.any(np.asarray(leaf) != 0), jax.tree_util.keystr(path)
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_jit_through_interface(backbone):
  _, model, params = backbone
  f = jax.jit(functools.partial(models.pair_scores, model))
  users = jnp.arange(4)
  cand = jnp.arange(12).reshape(4, 3)
  np.testing.assert_allclose(f(params, users, cand),
                             models.pair_scores(model, params, users, cand),
                             rtol=1e-6)


def test_create_errors():
  with pytest.raises(ConfigError, match="field 'model'.*'two-tower'"):
    models.create("two-tower", 3, 3)
  with pytest.raises(ConfigError, match="bad options"):
    models.create("mf", 3, 3, nonsense=1)
  with pytest.raises(ConfigError, match="positive"):
    models.create("ncf", 0, 3)
  assert set(models.available()) >= {"mf", "ncf", "lightgcn"}
  assert models.create("MF", 3, 4, dim=5).dim == 5
