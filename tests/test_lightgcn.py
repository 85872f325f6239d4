"""LightGCN against a dense NumPy propagation; graph as attribute or call
argument; usable with FADE's loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import models as models_lib
from fairjax.models.lightgcn import LightGCN, normalized_adjacency

U, I, D = 5, 6, 4


def _pairs():
  users = np.array([0, 0, 1, 2, 2, 3, 4, 4, 0])
  items = np.array([0, 1, 1, 2, 3, 4, 5, 0, 1])  # (0, 1) twice: counts once
  return users, items


def _dense_final(params, users, items, layers=3):
  a = np.zeros((U + I, U + I))
  a[users, U + items] = 1.0
  a[U + items, users] = 1.0
  deg = a.sum(1)
  inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
  a_hat = inv[:, None] * a * inv[None, :]
  e0 = np.concatenate([np.asarray(params["params"]["user"]["embedding"]),
                       np.asarray(params["params"]["item"]["embedding"])])
  e, total = e0, e0.copy()
  for _ in range(layers):
    e = a_hat @ e
    total += e
  total /= layers + 1
  return total[:U], total[U:]


def _model(layout="sparse", **kw):
  from fairjax.models.lightgcn import adjacency
  users, items = _pairs()
  graph = adjacency(users, items, U, I, layout=layout)
  model = LightGCN(U, I, dim=D, **kw, graph=graph)
  params = models_lib.init_params(model, jax.random.key(0))
  return model, params, graph


def test_adjacency_weights():
  users, items = _pairs()
  g = normalized_adjacency(users, items, U, I)
  assert g.src.shape == (2 * 8,)  # 8 distinct pairs, both directions
  assert np.all(np.diff(g.dst) >= 0)
  deg_u = np.bincount(users[[0, 1, 2, 3, 4, 5, 6, 7]], minlength=U)
  deg_i = np.bincount(items[[0, 1, 2, 3, 4, 5, 6, 7]], minlength=I)
  for s, d, w in zip(g.src, g.dst, g.weight):
    u, i = (s, d - U) if s < U else (d, s - U)
    np.testing.assert_allclose(w, 1 / np.sqrt(deg_u[u] * deg_i[i]), rtol=1e-6)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("cosine", [False, True])
def test_scores_match_dense_propagation(cosine, layout):
  model, params, graph = _model(layout, cosine=cosine)
  eu, ei = _dense_final(params, *_pairs())
  tau = 0.2
  want = eu @ ei.T
  if cosine:
    want = (eu / np.linalg.norm(eu, axis=1, keepdims=True)) @ (
        ei / np.linalg.norm(ei, axis=1, keepdims=True)).T / tau
  users = jnp.arange(U)
  got_all = models_lib.all_scores(model, params, users, tau=tau)
  np.testing.assert_allclose(got_all, want, rtol=1e-4, atol=1e-6)
  cand = jnp.asarray(np.random.default_rng(0).integers(0, I, (U, 3)))
  got = models_lib.pair_scores(model, params, users, cand, tau=tau)
  np.testing.assert_allclose(got, np.take_along_axis(want, np.asarray(cand), 1),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(models_lib.user_embeddings(model, params, users),
                             eu, rtol=1e-4, atol=1e-7)
  # The graph as a traced call argument gives the same scores.
  bare = LightGCN(U, I, dim=D, cosine=cosine)
  fn = jax.jit(lambda p, g: models_lib.all_scores(bare, p, users, tau=tau,
                                                  graph=g))
  np.testing.assert_allclose(fn(params, jax.tree.map(jnp.asarray, graph)),
                             want, rtol=1e-4, atol=1e-6)


def test_missing_graph_is_an_error():
  bare = LightGCN(U, I, dim=D)
  params = models_lib.init_params(bare, jax.random.key(1))  # no graph needed
  with pytest.raises(ValueError, match="graph"):
    models_lib.all_scores(bare, params, jnp.arange(2))


def test_gradient_reaches_neighbours():
  model, params, _ = _model()
  def loss(p):
    return jnp.sum(models_lib.pair_scores(model, p, jnp.array([1]),
                                          jnp.array([1])))
  g = jax.grad(loss)(params)["params"]
  # User 1's score uses item 1's neighbours (users 0, 1) through propagation.
  assert float(jnp.abs(g["user"]["embedding"][0]).sum()) > 0
  assert float(jnp.abs(g["item"]["embedding"][0]).sum()) > 0


def test_fade_loss_gradient_on_lightgcn_matches_finite_differences():
  from fairjax.methods import fade
  model, params, _ = _model()
  loss_fn = fade.make_loss(model, "fade", lam=0.5, tau=3.0, k=1,
                           num_negatives=2)
  seen = np.zeros((U, I), bool)
  users, items = _pairs()
  seen[users, items] = True
  batch = {"user": jnp.asarray(users), "item": jnp.asarray(items),
           "valid": jnp.ones(users.size, bool)}
  context = {"seen": jnp.asarray(seen),
             "user_group": jnp.asarray([0, 1, 0, 1, 0])}
  def value(p):
    return loss_fn(p, batch, jax.random.key(0), {}, context)[0]

  loss, grads = jax.jit(jax.value_and_grad(value))(params)
  # The gradient through propagation matches a central difference along a
  # random direction (same negatives: the key is fixed).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  d = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape)
                                for k, x in zip(keys, leaves)])
  eps = 1e-2
  shift = lambda sgn: jax.tree.map(lambda x, y: x + sgn * eps * y, params, d)  # noqa: E731
  fd = (float(value(shift(1.0))) - float(value(shift(-1.0)))) / (2 * eps)
  want = sum(float(jnp.vdot(g, y)) for g, y in
             zip(jax.tree.leaves(grads), jax.tree.leaves(d)))
  assert abs(want) > 1e-3 and np.isfinite(float(loss))
  np.testing.assert_allclose(fd, want, rtol=2e-2, atol=1e-4)


def test_propagation_gradient_matches_dense_transpose():
  """The custom backward (Â^T = Â) equals the dense P^T g."""
  from fairjax.models.lightgcn import propagate
  users, items = _pairs()
  graph = normalized_adjacency(users, items, U, I)
  rng = np.random.default_rng(3)
  e0 = rng.normal(size=(U + I, D)).astype(np.float32)
  wts = rng.normal(size=(U + I, D)).astype(np.float32)
  g = jax.grad(lambda e: jnp.sum(propagate(e, graph, 3) * wts))(jnp.asarray(e0))
  a = np.zeros((U + I, U + I))
  a[users, U + items] = a[U + items, users] = 1.0
  inv = 1 / np.sqrt(np.maximum(a.sum(1), 1))
  a_hat = inv[:, None] * a * inv[None, :]
  p = sum(np.linalg.matrix_power(a_hat, k) for k in range(4)) / 4
  np.testing.assert_allclose(g, p.T @ wts, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagation_gram_is_p_p_transpose(layers):
  from fairjax.models.lightgcn import propagation_gram
  users, items = _pairs()
  graph = normalized_adjacency(users, items, U, I)
  # P from the reference propagation of the identity: column j = P e_j.
  eye = {"params": {"user": {"embedding": np.eye(U + I)[:U]},
                    "item": {"embedding": np.eye(U + I)[U:]}}}
  pu, pi = _dense_final(eye, users, items, layers)
  p = np.concatenate([pu, pi])
  np.testing.assert_allclose(np.asarray(propagation_gram(graph, U + I, layers)),
                             p @ p.T, rtol=1e-5, atol=1e-6)


def _random_pairs(num_users, num_items, n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_users, n), rng.integers(0, num_items, n)


@pytest.mark.parametrize("shape", [(9, 4), (4, 9)])  # Gram on items / users
@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4])
def test_dense_layout_equals_segment_sums(shape, layers):
  """Both layouts of Â give the same propagation and the same gradient."""
  from fairjax.models.lightgcn import (Bipartite, dense_adjacency,
                                       propagate)
  nu, ni = shape
  users, items = _random_pairs(nu, ni, 20, seed=layers)
  sparse = normalized_adjacency(users, items, nu, ni)
  dense = dense_adjacency(users, items, nu, ni)
  assert isinstance(dense, Bipartite)
  assert dense.gram.shape == (min(nu, ni),) * 2
  rng = np.random.default_rng(7)
  e0 = jnp.asarray(rng.normal(size=(nu + ni, D)).astype(np.float32))
  wts = jnp.asarray(rng.normal(size=(nu + ni, D)).astype(np.float32))
  for fn in (lambda g: propagate(e0, g, layers),
             lambda g: jax.grad(lambda e: jnp.sum(jnp.sin(
                 propagate(e, g, layers)) * wts))(e0)):
    np.testing.assert_allclose(jax.jit(fn)(dense), fn(sparse), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("layers", [0, 3])
def test_dense_layout_gram_matches(layers):
  from fairjax.models.lightgcn import dense_adjacency, propagation_gram
  users, items = _random_pairs(8, 5, 18, seed=1)
  want = propagation_gram(normalized_adjacency(users, items, 8, 5), 13, layers)
  got = propagation_gram(dense_adjacency(users, items, 8, 5), 13, layers)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_adjacency_layout_choice():
  from fairjax.models import lightgcn
  users, items = _pairs()
  assert isinstance(lightgcn.adjacency(users, items, U, I),
                    lightgcn.Bipartite)
  assert isinstance(lightgcn.adjacency(users, items, U, I, layout="sparse"),
                    lightgcn.Graph)
  with pytest.raises(ValueError, match="layout"):
    lightgcn.adjacency(users, items, U, I, layout="csr")
  with pytest.raises(Exception, match="item id"):
    lightgcn.dense_adjacency(users, items + 10, U, I)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("shape", [(9, 4), (4, 9)])
def test_propagate_split_at_users(layout, shape):
  """User rows asked for equal the full propagation's rows, with gradients."""
  from fairjax.models.lightgcn import adjacency, propagate, propagate_split
  nu, ni = shape
  users, items = _random_pairs(nu, ni, 20, seed=5)
  graph = adjacency(users, items, nu, ni, layout=layout)
  rng = np.random.default_rng(2)
  e0 = jnp.asarray(rng.normal(size=(nu + ni, D)).astype(np.float32))
  ask = jnp.array([3, 0, 3, 1])  # duplicates allowed
  full = propagate(e0, graph, 3)
  e_u, e_i = jax.jit(lambda e: propagate_split(e, graph, 3, nu, ask))(e0)
  np.testing.assert_allclose(e_u, full[:nu][ask], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(e_i, full[nu:], rtol=1e-5, atol=1e-6)
  def f_split(e):
    a, b = propagate_split(e, graph, 3, nu, ask)
    return jnp.sum(jnp.sin(a)) + jnp.sum(jnp.cos(b))
  def f_full(e):
    p = propagate(e, graph, 3)
    return jnp.sum(jnp.sin(p[:nu][ask])) + jnp.sum(jnp.cos(p[nu:]))
  np.testing.assert_allclose(jax.grad(f_split)(e0), jax.grad(f_full)(e0),
                             rtol=1e-5, atol=1e-6)
