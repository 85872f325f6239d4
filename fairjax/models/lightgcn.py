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

The graph. Build it with `adjacency(users, items, U, I)` from the training
pairs, in one of two layouts of the same Â (`propagate` takes either):
  * `Bipartite` (dense blocks; `dense_adjacency`): the [U, I] block R of Â
    and the Gram matrix of its smaller side (R^T R when I <= U). Â^k E^0
    then needs no sparse products: with t = R^T E_U and G = R^T R,
        E_U = (E_U + R (E_I + t + G E_I + ...)) / (L + 1),
        E_I = (E_I + t + G E_I + G t + ...) / (L + 1)
    (odd powers R G^j, even powers G^j), two [U, I] x [I, d] products and
    about L small [I, I] x [I, d] ones per propagation, whatever L is: dense
    BLAS, several times faster on a CPU than the edge-wise sums below while
    U I stays moderate (ITFR's ML-1M: a BPR epoch 3.7x faster). Used
    when U I <= DENSE_MAX_ENTRIES.
  * `Graph` (COO edges; `normalized_adjacency`): one segment sum per layer,
    memory linear in the edges; for larger graphs.
It is given either
  * as the module attribute `graph` (`create('lightgcn', U, I, graph=g)`),
    so every method that calls `pair_scores` / `all_scores` without knowing
    about graphs (FADE's losses included) works unchanged; inside `jit` its
    arrays become compile-time constants (COO: 12 bytes per edge; dense:
    4 (U I + min(U, I)^2) bytes, 35 MB for ITFR's ML-1M); or
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
from fairjax.models.mf import normalize_rows
from fairjax.models.mf import pair_scores

Array = jax.Array
UserTransform = Callable[[Array], Array] | None



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


class Bipartite(NamedTuple):
  """Dense bipartite blocks of the normalised adjacency.

  Attributes:
    r: float32 [U, I], Â_{u, U+i} (Â = [[0, r], [r^T, 0]]).
    gram: float32 [m, m], the Gram matrix of r's smaller side: r^T r when
      I <= U (m = I), else r r^T (m = U). Computed in float64.
  """

  r: np.ndarray | Array
  gram: np.ndarray | Array


# Identity hashing: a module holding a graph of either layout stays hashable.
for _layout in (Graph, Bipartite):
  _layout.__hash__ = lambda self: id(self)
  _layout.__eq__ = lambda self, other: self is other
del _layout


DENSE_MAX_ENTRIES = 1 << 25  # U I above this: the COO layout (`adjacency`).


def _normalized_pairs(users, items, num_users: int, num_items: int):
  """Checked distinct (user, item) training pairs (int64 u, i) and their
  weights Â_{u, U+i} = 1 / sqrt(|N_u| |N_i|) (float64 w)."""
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
  return u, i, 1.0 / np.sqrt(deg_u[u] * deg_i[i])


def adjacency(users, items, num_users: int, num_items: int,
              layout: str = "auto") -> Graph | Bipartite:
  """Â of the training pairs in the layout that propagates faster.

  Args:
    users, items: int [N] training pairs (duplicates count once).
    num_users, num_items: U and I.
    layout: 'dense' (`dense_adjacency`), 'sparse' (`normalized_adjacency`)
      or 'auto': dense when U I <= DENSE_MAX_ENTRIES.

  Raises:
    DataError: as `normalized_adjacency`; ValueError: unknown layout.
  """
  if layout == "auto":
    layout = ("dense" if num_users * num_items <= DENSE_MAX_ENTRIES
              else "sparse")
  if layout == "dense":
    return dense_adjacency(users, items, num_users, num_items)
  if layout == "sparse":
    return normalized_adjacency(users, items, num_users, num_items)
  raise ValueError(f"layout must be 'auto', 'dense' or 'sparse', got "
                   f"{layout!r}")


def dense_adjacency(users, items, num_users: int, num_items: int
                    ) -> Bipartite:
  """Â as dense bipartite blocks (`Bipartite`), on the host.

  Same Â as `normalized_adjacency`; memory 4 (U I + min(U, I)^2) bytes.
  """
  u, i, w = _normalized_pairs(users, items, num_users, num_items)
  r = np.zeros((num_users, num_items), np.float64)
  r[u, i] = w
  gram = r.T @ r if num_items <= num_users else r @ r.T
  return Bipartite(r=r.astype(np.float32), gram=gram.astype(np.float32))


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
  u, i, w = _normalized_pairs(users, items, num_users, num_items)
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


def _propagate_bipartite(e0: Array, graph: Bipartite, num_layers: int,
                         users: Array | None = None) -> tuple[Array, Array]:
  """`propagate` on dense blocks (module docstring), any L.

  Returns (E_U, E_I) of the layer mean; with `users`, E_U only at those
  rows (E_U[users]), which saves the [U, I] x [I, d] product when the Gram
  matrix is on the item side.
  """
  r = jnp.asarray(graph.r, e0.dtype)
  gram = jnp.asarray(graph.gram, e0.dtype)
  num_users, num_items = r.shape
  e_a, e_b = e0[:num_users], e0[num_users:]
  swap = gram.shape[0] != num_items  # the Gram matrix is on the user side.
  if swap:
    r, e_a, e_b = r.T, e_b, e_a
  # Side a: rows of r; side b: its columns, the side of G. With t = r^T e_a,
  # an odd power 2j + 1 adds r G^j e_b to a and G^j t to b; an even power 2j
  # adds r G^(j-1) t to a and G^j e_b to b. `inner` collects a's terms
  # before the product with r.
  t = r.T @ e_a
  inner = jnp.zeros_like(e_b)
  side_b = e_b
  x, y = e_b, t  # G^j e_b and G^j t
  for k in range(1, num_layers + 1):
    if k % 2:
      if k > 1:
        y = gram @ y
      inner, side_b = inner + x, side_b + y
    else:
      inner = inner + y
      x = gram @ x
      side_b = side_b + x
  scale = 1.0 / (num_layers + 1)
  if users is not None and not swap:
    return (e_a[users] + r[users] @ inner) * scale, side_b * scale
  side_a = e_a + r @ inner
  if swap:
    side_a, side_b = side_b, side_a
  e_u = side_a if users is None else side_a[users]
  return e_u * scale, side_b * scale


def propagate_split(e0: Array, graph: Graph | Bipartite, num_layers: int,
                    num_users: int, users: Array | None = None
                    ) -> tuple[Array, Array]:
  """`propagate` as (E_U, E_I) (the first `num_users` rows are users); with
  `users`, (E_U[users], E_I).

  The same values as slicing `propagate`; on a `Bipartite` graph with the
  Gram matrix on the item side (I <= U) the user rows not asked for are
  never formed (one [B, I] product instead of a [U, I] one).
  """
  if isinstance(graph, Bipartite):
    return _propagate_bipartite(e0, jax.lax.stop_gradient(graph), num_layers,
                                users)
  e = _propagate_coo(e0, graph, num_layers)
  e_u, e_i = e[:num_users], e[num_users:]
  return (e_u if users is None else e_u[users]), e_i


def propagate(e0: Array, graph: Graph | Bipartite, num_layers: int
              ) -> Array:
  """Layer mean (1 / (L + 1)) sum_{k=0..L} Â^k E^0.

  `Graph`: one segment sum per layer; `Bipartite`: dense block products
  (module docstring). The graph must be symmetric (as the builders make it):
  the backward pass uses Â^T = Â. No gradient flows to the graph.

  Args:
    e0: [N, d] layer-0 embeddings (N = U + I).
    graph: the normalised adjacency, either layout.
    num_layers: L.

  Returns:
    [N, d] final embeddings.
  """
  if isinstance(graph, Bipartite):
    return jnp.concatenate(propagate_split(e0, graph, num_layers,
                                           graph.r.shape[0]))
  return _propagate_coo(e0, graph, num_layers)


def _propagate_coo(e0: Array, graph: Graph, num_layers: int) -> Array:
  src = jnp.asarray(graph.src)
  dst = jnp.asarray(graph.dst)
  w = jnp.asarray(graph.weight, e0.dtype)
  e, total = e0, e0
  for _ in range(num_layers):
    e = _spmm(e, src, dst, w)
    total = total + e
  return total / (num_layers + 1)


GRAM_MAX_NODES = 16_384  # dense [N, N] Gram matrix: 1 GiB of float32 at most


def propagation_gram(graph: Graph | Bipartite, num_nodes: int,
                     num_layers: int) -> Array:
  """The dense Gram matrix P P^T of the propagation, [N, N] float32.

  P = (1 / (L + 1)) sum_{k=0..L} Â^k maps layer-0 embeddings to the final
  ones (E = P E^0, `propagate`); Â is symmetric, so P P^T = P^2. ITFR's
  per-cell sharpness-aware gradients use it to work on the batch's final
  rows only (`fairjax.ops.group_sam.cell_sam_rows(coupling=...)`): the norm
  of P^T J is sqrt(J . P^2 J) and moving E^0 by P^T J moves E by P^2 J.

  Cost: `Graph`, L dense N^3 products (about 30 s for N ~ 7,000 on two CPU
  cores); `Bipartite`, P is the propagation of the identity and one N^3
  product remains (a few seconds). About 5 N^2 floats of memory at the
  peak; refuses N > GRAM_MAX_NODES.
  """
  if num_nodes > GRAM_MAX_NODES:
    raise ValueError(f"{num_nodes} nodes: the dense propagation Gram matrix "
                     f"is limited to {GRAM_MAX_NODES}")
  hi = jax.lax.Precision.HIGHEST
  if isinstance(graph, Bipartite):
    p = propagate(jnp.eye(num_nodes, dtype=jnp.float32), graph, num_layers)
    return jnp.matmul(p, p, precision=hi)
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
  graph: Graph | Bipartite | None = None

  def setup(self):
    init = nn.initializers.normal(stddev=self.init_std)
    self.user = nn.Embed(self.num_users, self.dim, embedding_init=init)
    self.item = nn.Embed(self.num_items, self.dim, embedding_init=init)

  def gradient_layout(self) -> str:
    """'graph' when the default graph's Gram matrix fits (GRAM_MAX_NODES),
    else 'dense' (`models.gradient_layout`)."""
    fits = (self.graph is not None
            and self.num_users + self.num_items <= GRAM_MAX_NODES)
    return "graph" if fits else "dense"

  def final_embeddings(self, graph: Graph | Bipartite | None = None,
                       users: Array | None = None) -> tuple[Array, Array]:
    """Propagated (E_U, E_I), [U, d] and [I, d]; with `users`, E_U only at
    those rows (`propagate_split`)."""
    if self.is_initializing():  # the parameters do not depend on the graph.
      e_u = self.user.embedding
      return (e_u if users is None else e_u[users]), self.item.embedding
    g = graph if graph is not None else self.graph
    if g is None:
      raise ValueError("LightGCN needs its graph: create it with graph=... "
                       "or pass graph=... to the call")
    e0 = jnp.concatenate([self.user.embedding, self.item.embedding])
    return propagate_split(e0, g, self.num_layers, self.num_users, users)

  def user_embed(self, users: Array, graph: Graph | Bipartite | None = None
                 ) -> Array:
    """Final user embeddings e_u, [..., d]."""
    flat = jnp.reshape(users, (-1,))
    e_u = self.final_embeddings(graph, flat)[0]
    return e_u.reshape(jnp.shape(users) + e_u.shape[-1:])

  def item_embed(self, items: Array, graph: Graph | Bipartite | None = None
                 ) -> Array:
    """Final item embeddings e_i, [..., d]."""
    return self.final_embeddings(graph)[1][items]

  def _user_vec(self, e_u, user_transform):
    if user_transform is not None:
      e_u = user_transform(e_u)
    return normalize_rows(e_u) if self.cosine else e_u

  def __call__(self, users: Array, items: Array, tau: float | Array = 1.0,
               graph: Graph | Bipartite | None = None,
               user_transform: UserTransform = None) -> Array:
    """Scores of (users[b], items[b, ...]) pairs, the shape of `items`."""
    e_u, ei_all = self.final_embeddings(graph, users)
    e_u = self._user_vec(e_u, user_transform)
    e_i = ei_all[items]
    return pair_scores(e_u, e_i, tau, self.cosine)

  def score_all(self, users: Array, tau: float | Array = 1.0,
                graph: Graph | Bipartite | None = None,
                user_transform: UserTransform = None) -> Array:
    """Scores of each user against every item, [B, I]."""
    e_u, ei_all = self.final_embeddings(graph, users)
    e_u = self._user_vec(e_u, user_transform)
    table = normalize_rows(ei_all) if self.cosine else ei_all
    s = jnp.einsum("bd,id->bi", e_u, table)
    return s / tau if self.cosine else s
