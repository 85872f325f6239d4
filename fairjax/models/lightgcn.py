"""LightGCN backbone, Flax Linen (He et al., "LightGCN: Simplifying and
Powering Graph Convolution Network for Recommendation", SIGIR 2020).

Nodes are the U users followed by the I items (node U + i is item i). With
the training interactions as the bipartite adjacency A (A_{u, U+i} =
A_{U+i, u} = 1) and node degrees D, the normalised adjacency is

    Â = D^{-1/2} A D^{-1/2},   Â_{u, U+i} = 1 / sqrt(|N_u| |N_i|).

From layer-0 embeddings E^0 = [E_U ; E_I] (the parameters, N(0, init_std^2)),
propagation E^{k+1} = Â E^k for k < L (L = 3) and the final representation is
the layer mean E = (1 / (L + 1)) sum_{k=0..L} E^k. Scores are those of MF on
the final rows: <e_u, e_i>, or cos(e_u, e_i) / tau with `cosine=True` (ITFR's
predicted score normalisation).

The graph. Build it with `normalized_adjacency(users, items, U, I)` from the
training pairs. It is given either
  * as the module attribute `graph` (`create('lightgcn', U, I, graph=g)`),
    so every method that calls `pair_scores` / `all_scores` without knowing
    about graphs (FADE's losses included) works unchanged; inside `jit` its
    arrays become compile-time constants (about 12 bytes per edge, 6.6 MB on
    ML-1M: fine); or
  * as the call keyword `graph=g` (a pytree of arrays, traced like any
    input), which overrides the attribute.
At `init` no graph is needed (parameters do not depend on it); a call
without any graph raises ValueError.

Methods (the interface of `fairjax.models`, as MF):
  __call__(users [B], items [B, ...], tau=1., graph=None, user_transform=None)
  score_all(users [B], tau=1., graph=None, user_transform=None) -> [B, I]
  user_embed(users, graph=None), item_embed(items, graph=None): final rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax.errors import DataError

Array = jax.Array
UserTransform = Callable[[Array], Array] | None

_EPS = 1e-12


class Graph(NamedTuple):
  """COO normalised adjacency, edges sorted by destination node.

  Attributes:
    src: int32 [E] source node of each directed edge.
    dst: int32 [E] destination node (non-decreasing).
    weight: float32 [E] Â_{dst, src} = 1 / sqrt(deg_src deg_dst).
  """

  src: np.ndarray | Array
  dst: np.ndarray | Array
  weight: np.ndarray | Array

  # Identity hashing: a module holding a graph stays hashable.
  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other


def normalized_adjacency(users, items, num_users: int, num_items: int
                         ) -> Graph:
  """Â of the bipartite user-item graph (module docstring), on the host.

  Duplicate pairs count once. Nodes without edges have no row.

  Args:
    users, items: int [N] training pairs.
    num_users, num_items: U and I.

  Returns:
    `Graph` with 2 x (distinct pairs) edges, NumPy arrays.

  Raises:
    DataError: ids out of range or shapes that differ.
  """
  users = np.asarray(users, np.int64).reshape(-1)
  items = np.asarray(items, np.int64).reshape(-1)
  if users.shape != items.shape:
    raise DataError(f"users {users.shape} and items {items.shape} differ",
                    field="item")
  if users.size and (users.min() < 0 or users.max() >= num_users):
    raise DataError(f"user id out of [0, {num_users})", field="user")
  if items.size and (items.min() < 0 or items.max() >= num_items):
    raise DataError(f"item id out of [0, {num_items})", field="item")
  pairs = np.unique(users * num_items + items)
  u, i = pairs // num_items, pairs % num_items
  deg_u = np.bincount(u, minlength=num_users).astype(np.float64)
  deg_i = np.bincount(i, minlength=num_items).astype(np.float64)
  w = 1.0 / np.sqrt(deg_u[u] * deg_i[i])
  src = np.concatenate([u, num_users + i])
  dst = np.concatenate([num_users + i, u])
  weight = np.concatenate([w, w])
  order = np.argsort(dst, kind="stable")
  return Graph(src=src[order].astype(np.int32), dst=dst[order].astype(np.int32),
               weight=weight[order].astype(np.float32))


@jax.custom_vjp
def _spmm(x: Array, src: Array, dst: Array, w: Array) -> Array:
  """Â x for the symmetric Â of `Graph` (edges sorted by destination)."""
  return jax.ops.segment_sum(w[:, None] * x[src], dst, x.shape[0],
                             indices_are_sorted=True)


def _spmm_fwd(x, src, dst, w):
  return _spmm(x, src, dst, w), (src, dst, w)


def _spmm_bwd(res, g):
  # Â is symmetric, so the cotangent Â^T g = Â g is the same sorted segment
  # sum (autodiff would scatter-add by source, unsorted and slower). The
  # graph itself is constant: no cotangent for it.
  src, dst, w = res
  return _spmm(g, src, dst, w), None, None, None


_spmm.defvjp(_spmm_fwd, _spmm_bwd)


def propagate(e0: Array, graph: Graph, num_layers: int) -> Array:
  """Layer mean (1 / (L + 1)) sum_{k=0..L} Â^k E^0, Â^k E by segment sums.

  The graph must be symmetric (as `normalized_adjacency` builds it): the
  backward pass uses Â^T = Â. No gradient flows to the graph's weights.

  Args:
    e0: [N, d] layer-0 embeddings.
    graph: the normalised adjacency.
    num_layers: L.

  Returns:
    [N, d] final embeddings.
  """
  src = jnp.asarray(graph.src)
  dst = jnp.asarray(graph.dst)
  w = jnp.asarray(graph.weight, e0.dtype)
  e, total = e0, e0
  for _ in range(num_layers):
    e = _spmm(e, src, dst, w)
    total = total + e
  return total / (num_layers + 1)


GRAM_MAX_NODES = 16_384  # dense [N, N] Gram matrix: 1 GiB of float32 at most


def propagation_gram(graph: Graph, num_nodes: int, num_layers: int) -> Array:
  """The dense Gram matrix P P^T of the propagation, [N, N] float32.

  P = (1 / (L + 1)) sum_{k=0..L} Â^k maps layer-0 embeddings to the final
  ones (E = P E^0, `propagate`); Â is symmetric, so P P^T = P^2. ITFR's
  per-cell sharpness-aware gradients use it to work on the batch's final
  rows only (`fairjax.ops.group_sam.cell_sam_rows(kernel=...)`): the norm of
  P^T J is sqrt(J . P^2 J) and moving E^0 by P^T J moves E by P^2 J.

  Cost: L dense N^3 products (seconds for N ~ 7,000 on a CPU), about 5 N^2
  floats of memory at the peak; refuses N > GRAM_MAX_NODES.
  """
  if num_nodes > GRAM_MAX_NODES:
    raise ValueError(f"{num_nodes} nodes: the dense propagation Gram matrix "
                     f"is limited to {GRAM_MAX_NODES}")
  hi = jax.lax.Precision.HIGHEST
  a = jnp.zeros((num_nodes, num_nodes), jnp.float32).at[
      jnp.asarray(graph.dst), jnp.asarray(graph.src)].add(
          jnp.asarray(graph.weight, jnp.float32))
  total = jnp.eye(num_nodes, dtype=jnp.float32)
  power = None
  for _ in range(num_layers):
    power = a if power is None else jnp.matmul(a, power, precision=hi)
    total = total + power
  del a, power
  p = total / (num_layers + 1)
  return jnp.matmul(p, p, precision=hi)


def _normalize(x: Array) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True),
                                       _EPS))


class LightGCN(nn.Module):
  """LightGCN with dot or cosine scores.

  Attributes:
    num_users: U.
    num_items: I.
    dim: embedding dimension d.
    num_layers: propagation layers L (3).
    cosine: score = cos / tau instead of the dot product.
    init_std: std of the normal initialiser of E^0 (0.1, as the paper).
    graph: default normalised adjacency (see the module docstring).
  """

  num_users: int
  num_items: int
  dim: int = 64
  num_layers: int = 3
  cosine: bool = False
  init_std: float = 0.1
  graph: Graph | None = None

  def setup(self):
    init = nn.initializers.normal(stddev=self.init_std)
    self.user = nn.Embed(self.num_users, self.dim, embedding_init=init)
    self.item = nn.Embed(self.num_items, self.dim, embedding_init=init)

  def final_embeddings(self, graph: Graph | None = None
                       ) -> tuple[Array, Array]:
    """Propagated (E_U, E_I), [U, d] and [I, d]."""
    e0 = jnp.concatenate([self.user.embedding, self.item.embedding])
    if self.is_initializing():
      e = e0  # the parameters do not depend on the graph.
    else:
      g = graph if graph is not None else self.graph
      if g is None:
        raise ValueError("LightGCN needs its graph: create it with graph=... "
                         "or pass graph=... to the call")
      e = propagate(e0, g, self.num_layers)
    return e[:self.num_users], e[self.num_users:]

  def user_embed(self, users: Array, graph: Graph | None = None) -> Array:
    """Final user embeddings e_u, [..., d]."""
    return self.final_embeddings(graph)[0][users]

  def item_embed(self, items: Array, graph: Graph | None = None) -> Array:
    """Final item embeddings e_i, [..., d]."""
    return self.final_embeddings(graph)[1][items]

  def _user_vec(self, e_u, user_transform):
    if user_transform is not None:
      e_u = user_transform(e_u)
    return _normalize(e_u) if self.cosine else e_u

  def __call__(self, users: Array, items: Array, tau: float | Array = 1.0,
               graph: Graph | None = None,
               user_transform: UserTransform = None) -> Array:
    """Scores of (users[b], items[b, ...]) pairs, the shape of `items`."""
    eu_all, ei_all = self.final_embeddings(graph)
    e_u = self._user_vec(eu_all[users], user_transform)
    e_i = ei_all[items]
    if self.cosine:
      e_i = _normalize(e_i)
    e_u = e_u.reshape(e_u.shape[:1] + (1,) * (e_i.ndim - 2) + e_u.shape[1:])
    s = jnp.sum(e_u * e_i, axis=-1)
    return s / tau if self.cosine else s

  def score_all(self, users: Array, tau: float | Array = 1.0,
                graph: Graph | None = None,
                user_transform: UserTransform = None) -> Array:
    """Scores of each user against every item, [B, I]."""
    eu_all, ei_all = self.final_embeddings(graph)
    e_u = self._user_vec(eu_all[users], user_transform)
    table = _normalize(ei_all) if self.cosine else ei_all
    s = jnp.einsum("bd,id->bi", e_u, table)
    return s / tau if self.cosine else s
