"""Exact blocked top-K on one device: a running top-K over item blocks.

The per-device program of the sharded retrieval (`sharded.py`). Scores of one
query batch against one item block are a single GEMM `[B, d] x [d, blk]`; the
full `[B, N]` score matrix is never built. Every block is scored by the same
compiled GEMM at the same column position, so an item's float32 score does not
depend on how the catalog is cut into shards (blocks are aligned to global
item ids).

Exactness and ties. Results are ordered by (score desc, global id asc). The
running list is always sorted this way; `lax.top_k` breaks ties by position,
so every candidate array handed to it is laid out in increasing id order:
running list first (all earlier ids), then buffered candidates (earlier
blocks first), then the current block.

Pruning (exact). With tau_b the running K-th score of row b, an item with
score <= tau_b cannot enter row b's top-K: it has a higher id than every
running entry, so it loses ties; a stale tau (taken at the last merge) is
still a valid lower bound. Per block of blk = c * nc items, column j of the
block belongs to chunk j mod nc (strided chunks: the chunk maxima are a
vectorised max over c contiguous rows of nc scores). Then
  1. chunks above tau are compacted, in chunk order, into R slots (an
     exclusive prefix count and a one-hot select), and gathered: [c, R]
     scores whose row-major order is increasing id order;
  2. their items above tau are compacted into R2 slots the same way and
     appended to a [B, F R2] buffer; a full buffer is merged into the running
     list with one `lax.top_k` (every F blocks);
  3. if some row has more than R chunks or R2 items above tau, the block
     falls back to a full merge of running list, buffer and block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = float("-inf")


def merge_topk(scores: jax.Array, ids: jax.Array,
               k: int) -> tuple[jax.Array, jax.Array]:
  """Top-k of candidate rows laid out in increasing-id order.

  Args:
    scores: float [B, n] candidate scores, columns in increasing id order.
    ids: int [B, n] their ids.
    k: how many to keep (k <= n).

  Returns:
    (scores [B, k], ids [B, k]) sorted by (score desc, id asc).
  """
  top_s, pos = lax.top_k(scores, k)
  return top_s, jnp.take_along_axis(ids, pos, axis=1)


def block_scores(user_q: jax.Array, item_blk: jax.Array,
                 bias_blk: jax.Array | None) -> jax.Array:
  """s_bi = <u_b, v_i> + bias_i for one block: one [B, d] x [d, blk] GEMM."""
  s = lax.dot_general(user_q, item_blk, (((1,), (1,)), ((), ())),
                      precision=lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)
  if bias_blk is not None:
    s = s + bias_blk[None, :]
  return s


def _item_bias(group_blk, mu, valid_blk):
  """bias_i = -mu[g_i] for real items, -inf for padding (group < 0)."""
  if mu is None:
    return jnp.where(valid_blk, 0.0, NEG_INF).astype(jnp.float32)
  g = jnp.clip(group_blk, 0, mu.shape[0] - 1)
  return jnp.where(valid_blk, -mu[g], NEG_INF).astype(jnp.float32)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  """Exclusive prefix sum along the last axis (log-depth, elementwise ops)."""
  inc = lax.associative_scan(jnp.add, x, axis=x.ndim - 1)
  return inc - x


def _compact(mask: jax.Array, slots: int) -> tuple[jax.Array, jax.Array]:
  """One-hot [..., slots, n]: slot j <- the j-th True of `mask` (in order).

  Returns (onehot, count): count [...] is the number of True entries; slots
  beyond it are empty.
  """
  pos = _exclusive_cumsum(mask.astype(jnp.int32))
  j = jnp.arange(slots, dtype=jnp.int32)
  onehot = mask[..., None, :] & (pos[..., None, :] == j[:, None])
  return onehot, jnp.sum(mask, axis=-1)


@functools.partial(jax.jit, static_argnames=(
    "k", "block", "chunk", "num_chunks_small", "num_items_small",
    "flush_every", "prune"))
def local_topk(user_q: jax.Array, item_emb: jax.Array, item_group: jax.Array,
               mu: jax.Array | None, id_offset: jax.Array | int, *, k: int,
               block: int, chunk: int = 16, num_chunks_small: int = 8,
               num_items_small: int = 8, flush_every: int = 32,
               prune: bool = True) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of s_bi = <u_b, v_i> - mu[g_i] over a local item range.

  Args:
    user_q: float32 [B, d] queries.
    item_emb: float32 [n, d] local items, n a multiple of `block`.
    item_group: int32 [n] group of each item; < 0 marks padding (score -inf).
    mu: float32 [G] dual prices, or None for plain <u, v> scores.
    id_offset: global id of local item 0.
    k: results per query.
    block: items per GEMM block (a multiple of `chunk`).
    chunk: c, items per pruning chunk.
    num_chunks_small: R, chunks above tau kept per row and block.
    num_items_small: R2, items above tau kept per row and block.
    flush_every: F, blocks buffered before one merge.
    prune: False gives the plain block-and-merge baseline (a `lax.top_k`
      over running list + whole block, every block).

  Returns:
    (scores [B, k] float32, ids [B, k] int32), sorted by (score desc, id asc);
    slots beyond the local item count hold (-inf, -1).
  """
  b = user_q.shape[0]
  n = item_emb.shape[0]
  nb = n // block
  nc = block // chunk
  r = min(num_chunks_small, nc)
  r2 = min(num_items_small, r * chunk)
  width = flush_every * r2
  user_q = user_q.astype(jnp.float32)
  col = jnp.arange(block, dtype=jnp.int32)
  chunk_ids = jnp.arange(nc, dtype=jnp.int32)
  # id of (row e, chunk j) in the [c, nc] view of a block: e * nc + j.
  empty_s = jnp.full((b, width), NEG_INF, jnp.float32)
  empty_i = jnp.full((b, width), -1, jnp.int32)

  def merge(top_s, top_i, parts_s, parts_i):
    return merge_topk(jnp.concatenate([top_s] + parts_s, axis=1),
                      jnp.concatenate([top_i] + parts_i, axis=1), k)

  def body(i, carry):
    top_s, top_i, buf_s, buf_i, fill, tau = carry
    start = i * block
    v = lax.dynamic_slice_in_dim(item_emb, start, block)
    g = lax.dynamic_slice_in_dim(item_group, start, block)
    s = block_scores(user_q, v, _item_bias(g, mu, g >= 0))
    blk_ids = id_offset + start + col

    if not prune:
      ns, ni = merge(top_s, top_i, [s], [jnp.broadcast_to(blk_ids, s.shape)])
      return ns, ni, buf_s, buf_i, fill, tau

    s3 = s.reshape(b, chunk, nc)
    cmax = s3.max(axis=1)  # [b, nc]
    above = cmax > tau
    sel_hot, n_chunks = _compact(above, r)  # [b, r, nc]
    sel = jnp.sum(jnp.where(sel_hot, chunk_ids, 0), axis=2)  # [b, r]
    used = jnp.any(sel_hot, axis=2)
    cand = jnp.take_along_axis(s3, jnp.broadcast_to(sel[:, None, :],
                                                    (b, chunk, r)), axis=2)
    cand = jnp.where(used[:, None, :], cand, NEG_INF).reshape(b, chunk * r)
    cand_i = (jnp.arange(chunk, dtype=jnp.int32)[None, :, None] * nc
              + sel[:, None, :]).reshape(b, chunk * r)
    item_hot, n_items = _compact(cand > tau, r2)  # [b, r2, c r]
    new_s = jnp.max(jnp.where(item_hot, cand[:, None, :], NEG_INF), axis=2)
    new_i = jnp.max(jnp.where(item_hot, cand_i[:, None, :], -1), axis=2)
    new_i = jnp.where(new_i >= 0, new_i + id_offset + start, -1)
    ok = (jnp.max(n_chunks) <= r) & (jnp.max(n_items) <= r2)

    def append(_):
      nbuf_s = lax.dynamic_update_slice_in_dim(buf_s, new_s, fill * r2, 1)
      nbuf_i = lax.dynamic_update_slice_in_dim(buf_i, new_i, fill * r2, 1)

      def flush(_):
        ns, ni = merge(top_s, top_i, [nbuf_s], [nbuf_i])
        return ns, ni, empty_s, empty_i, jnp.int32(0), jnp.min(ns, axis=1, keepdims=True)

      def keep(_):
        return top_s, top_i, nbuf_s, nbuf_i, fill + 1, tau

      return lax.cond(fill + 1 == flush_every, flush, keep, None)

    def full(_):
      ns, ni = merge(top_s, top_i, [buf_s, s],
                     [buf_i, jnp.broadcast_to(blk_ids, s.shape)])
      return ns, ni, empty_s, empty_i, jnp.int32(0), jnp.min(ns, axis=1, keepdims=True)

    return lax.cond(ok, append, full, None)

  init = (jnp.full((b, k), NEG_INF, jnp.float32),
          jnp.full((b, k), -1, jnp.int32), empty_s, empty_i, jnp.int32(0),
          jnp.full((b, 1), NEG_INF, jnp.float32))
  top_s, top_i, buf_s, buf_i, _, _ = lax.fori_loop(0, nb, body, init)
  if prune:
    top_s, top_i = merge(top_s, top_i, [buf_s], [buf_i])
  return top_s, top_i
