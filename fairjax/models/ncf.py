"""Neural collaborative filtering (NeuMF) backbone, Flax Linen.

He et al., "Neural Collaborative Filtering", WWW 2017, in the FADE setting
(DESIGN §3):

    gmf_ui = p_u ⊙ q_i                                 (GMF, 64-d tables)
    h_0    = [x_u ; y_i]                                (MLP tables 64 + 64)
    h_l    = ReLU(W_l h_{l-1}),  l = 1..4, W_l no bias   (widths 64)
    s_ui   = w^T [gmf_ui ; h_4] + c + b_u + b_i          (head 128 -> 1)

Init: every embedding table and kernel N(0, 0.01^2); the head bias c and the
user/item bias tables b_u, b_i start at zero (they are excluded from L2 by
their names, which contain 'bias').

Efficiency: the first MLP layer is split, W_1 [x_u; y_i] = W_1u x_u + W_1i y_i,
so the user half is computed once per user and broadcast over that user's
candidates ([B, n] scoring); the GMF head term is w_g^T (p_u ⊙ q_i) =
(p_u ⊙ w_g)^T q_i, a plain matmul. Full-catalog scoring pre-projects every
item once and maps over user chunks (`jax.lax.map`), so memory is
chunk x I x 64 floats, never B x I x 64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
UserTransform = Callable[[Array], Array] | None


def _expand_user(x: Array, items_ndim: int) -> Array:
  """[B, d] -> [B, 1, ..., 1, d] to broadcast against item terms [B, ..., d]
  of item ids with `items_ndim` axes."""
  return x.reshape(x.shape[:1] + (1,) * (items_ndim - 1) + x.shape[1:])


class NCF(nn.Module):
  """NeuMF with split first layer for broadcast candidate scoring.

  Attributes:
    num_users: size of the user id space.
    num_items: size of the item id space.
    gmf_dim: GMF embedding size.
    mlp_embed_dim: size of each MLP input embedding (input is 2x this).
    mlp_dims: widths of the bias-free ReLU layers.
    init_std: std of the normal initialiser.
  """

  num_users: int
  num_items: int
  gmf_dim: int = 64
  mlp_embed_dim: int = 64
  mlp_dims: Sequence[int] = (64, 64, 64, 64)
  init_std: float = 0.01

  def setup(self):
    init = nn.initializers.normal(stddev=self.init_std)
    zeros = nn.initializers.zeros
    self.gmf_user = nn.Embed(self.num_users, self.gmf_dim, embedding_init=init)
    self.gmf_item = nn.Embed(self.num_items, self.gmf_dim, embedding_init=init)
    self.mlp_user = nn.Embed(self.num_users, self.mlp_embed_dim,
                             embedding_init=init)
    self.mlp_item = nn.Embed(self.num_items, self.mlp_embed_dim,
                             embedding_init=init)
    self.user_bias = nn.Embed(self.num_users, 1, embedding_init=zeros)
    self.item_bias = nn.Embed(self.num_items, 1, embedding_init=zeros)
    dims = tuple(self.mlp_dims)
    ins = (2 * self.mlp_embed_dim,) + dims[:-1]
    self.mlp_kernels = [
        self.param(f"mlp_kernel_{l}", init, (ins[l], dims[l]))
        for l in range(len(dims))]
    self.head_kernel = self.param("head_kernel", init,
                                  (self.gmf_dim + dims[-1],))
    self.head_bias = self.param("head_bias", zeros, ())

  # --- embeddings -----------------------------------------------------------

  def user_embed(self, users: Array) -> Array:
    """[gmf_u ; mlp_u], [..., gmf_dim + mlp_embed_dim]."""
    return jnp.concatenate([self.gmf_user(users), self.mlp_user(users)], -1)

  def item_embed(self, items: Array) -> Array:
    """[gmf_i ; mlp_i], [..., gmf_dim + mlp_embed_dim]."""
    return jnp.concatenate([self.gmf_item(items), self.mlp_item(items)], -1)

  def _user_parts(self, users: Array, user_transform: UserTransform):
    """User-side terms: (p_u ⊙ w_g [B, G], W_1u x_u [B, H], b_u [B])."""
    if user_transform is None:
      p_u, x_u = self.gmf_user(users), self.mlp_user(users)
    else:
      e_u = user_transform(self.user_embed(users))
      p_u, x_u = e_u[..., :self.gmf_dim], e_u[..., self.gmf_dim:]
    w0 = self.mlp_kernels[0]
    return (p_u * self.head_kernel[:self.gmf_dim],
            x_u @ w0[:self.mlp_embed_dim],
            self.user_bias(users)[..., 0])

  def _item_parts(self, items: Array):
    """Item-side terms: (q_i [.., G], W_1i y_i [.., H], b_i [..])."""
    w0 = self.mlp_kernels[0]
    return (self.gmf_item(items),
            self.mlp_item(items) @ w0[self.mlp_embed_dim:],
            self.item_bias(items)[..., 0])

  def _combine(self, gmf_term: Array, pre: Array, bias: Array) -> Array:
    """Finishes the score from the GMF term, the first-layer pre-activation
    and the summed biases (all broadcast to the output shape)."""
    h = jax.nn.relu(pre)
    for w in self.mlp_kernels[1:]:
      h = jax.nn.relu(h @ w)
    mlp_term = h @ self.head_kernel[self.gmf_dim:]
    return gmf_term + mlp_term + bias + self.head_bias

  # --- scoring --------------------------------------------------------------

  def __call__(self, users: Array, items: Array,
               user_transform: UserTransform = None) -> Array:
    """Scores of (users[b], items[b, ...]) pairs.

    Args:
      users: [B] int user ids.
      items: [B] or [B, ...] int item ids (e.g. [B, n] candidates).
      user_transform: optional map applied to [gmf_u ; mlp_u] before scoring.

    Returns:
      scores with the shape of `items`.
    """
    items = jnp.asarray(items)
    ug, up, ub = self._user_parts(users, user_transform)
    ig, ip, ib = self._item_parts(items)
    nd = items.ndim
    gmf = jnp.sum(_expand_user(ug, nd) * ig, axis=-1)
    pre = _expand_user(up, nd) + ip
    ub = ub.reshape(ub.shape + (1,) * (nd - 1))
    return self._combine(gmf, pre, ub + ib)

  def score_all(self, users: Array, chunk_size: int = 32,
                user_transform: UserTransform = None) -> Array:
    """Scores of each user against every item, [B, I], in user chunks.

    Args:
      users: [B] int user ids.
      chunk_size: users per chunk (peak memory chunk x I x H floats).
      user_transform: as in `__call__`.

    Returns:
      [B, I] scores; entry (b, i) equals `__call__(users[b:b+1], [i])`.
    """
    ug, up, ub = self._user_parts(users, user_transform)
    all_items = jnp.arange(self.num_items)
    ig, ip, ib = self._item_parts(all_items)
    # Arrays only from here: lax.map over a pure function of arrays.
    kernels = list(self.mlp_kernels[1:])
    head_m = self.head_kernel[self.gmf_dim:]
    head_b = self.head_bias

    def chunk_scores(args):
      cg, cp, cb = args  # [c, G], [c, H], [c]
      gmf = cg @ ig.T  # [c, I]
      h = jax.nn.relu(cp[:, None, :] + ip[None, :, :])  # [c, I, H]
      for w in kernels:
        h = jax.nn.relu(h @ w)
      return gmf + h @ head_m + cb[:, None] + ib[None, :] + head_b

    b = users.shape[0]
    if b <= chunk_size:
      return chunk_scores((ug, up, ub))
    nc = -(-b // chunk_size)
    pad = nc * chunk_size - b

    def split(x):
      x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
      return x.reshape((nc, chunk_size) + x.shape[1:])

    out = jax.lax.map(chunk_scores, (split(ug), split(up), split(ub)))
    return out.reshape(nc * chunk_size, self.num_items)[:b]
