"""Matrix factorisation (MF) backbone, Flax Linen.

Score of user u and item i:

    s_ui = <e_u, e_i>                                  (dot, default)
    s_ui = cos(e_u, e_i) / tau                         (cosine=True)

with embedding tables E_U [U, d], E_I [I, d] initialised N(0, 0.01^2) and no
bias (FADE's MF, d = 64). The cosine form is ITFR's "predicted score
normalization" (tau 0.2 in training, tau = 1, plain cosine, at inference).

Methods (all usable through `model.apply(variables, ..., method=...)`):
  __call__(users [B], items [B, ...]) -> [B, ...]  pair / candidate scores
  score_all(users [B]) -> [B, I]                   against the whole catalog
  user_embed(users) -> [B, d], item_embed(items) -> [..., d]

`user_transform`, an optional callable [B, d] -> [B, d] applied to the user
embedding before scoring, lets ADVER insert its filter without a new model.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
UserTransform = Callable[[Array], Array] | None

_EPS = 1e-12


def normalize_rows(x: Array) -> Array:
  """x / ||x|| along the last axis (norms floored at sqrt(1e-12)): with it,
  <normalize_rows(e_u), normalize_rows(e_i)> / tau is the cosine score of
  MF, LightGCN and ITFR's row-sparse path."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True),
                                       _EPS))


def pair_scores(e_u: Array, e_i: Array, tau: float | Array,
                cosine: bool) -> Array:
  """<e_u[b], e_i[b, ...]> with the shape of e_i minus its last axis; with
  `cosine` the item rows are normalised (e_u already is) and the score is
  divided by tau."""
  if cosine:
    e_i = normalize_rows(e_i)
  e_u = e_u.reshape(e_u.shape[:1] + (1,) * (e_i.ndim - 2) + e_u.shape[1:])
  s = jnp.sum(e_u * e_i, axis=-1)
  return s / tau if cosine else s


class MF(nn.Module):
  """Dot-product (or cosine) matrix factorisation.

  Attributes:
    num_users: size of the user id space.
    num_items: size of the item id space.
    dim: embedding dimension d.
    cosine: score = cos(e_u, e_i) / tau instead of the dot product.
    init_std: std of the normal initialiser.
  """

  num_users: int
  num_items: int
  dim: int = 64
  cosine: bool = False
  init_std: float = 0.01

  def setup(self):
    init = nn.initializers.normal(stddev=self.init_std)
    self.user = nn.Embed(self.num_users, self.dim, embedding_init=init)
    self.item = nn.Embed(self.num_items, self.dim, embedding_init=init)

  def gradient_layout(self) -> str:
    """Scores read rows of the two tables (`models.gradient_layout`)."""
    return "rows"

  def user_embed(self, users: Array) -> Array:
    """Raw user embeddings e_u, [..., d]."""
    return self.user(users)

  def item_embed(self, items: Array) -> Array:
    """Raw item embeddings e_i, [..., d]."""
    return self.item(items)

  def _user_vec(self, users: Array, user_transform: UserTransform) -> Array:
    e_u = self.user(users)
    if user_transform is not None:
      e_u = user_transform(e_u)
    return normalize_rows(e_u) if self.cosine else e_u

  def __call__(self, users: Array, items: Array, tau: float | Array = 1.0,
               user_transform: UserTransform = None) -> Array:
    """Scores of (users[b], items[b, ...]) pairs.

    Args:
      users: [B] int user ids.
      items: [B] or [B, ...] int item ids (e.g. [B, n] candidates per user).
      tau: cosine temperature (ignored for dot scores).
      user_transform: optional map applied to e_u before scoring.

    Returns:
      scores with the shape of `items`.
    """
    e_u = self._user_vec(users, user_transform)  # [B, d]
    e_i = self.item(items)  # [B, ..., d]
    return pair_scores(e_u, e_i, tau, self.cosine)

  def score_all(self, users: Array, tau: float | Array = 1.0,
                user_transform: UserTransform = None) -> Array:
    """Scores of each user against every item: E_U[users] @ E_I^T, [B, I]."""
    e_u = self._user_vec(users, user_transform)
    table = self.item.embedding
    if self.cosine:
      table = normalize_rows(table)
    s = jnp.einsum("bd,id->bi", e_u, table)
    return s / tau if self.cosine else s
