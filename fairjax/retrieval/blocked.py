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
running list first (all earlier ids), then block candidates in id order.

Pruning (exact). With tau_b the running K-th score of row b, an item with score
<= tau_b cannot enter row b's top-K: it has a higher id than every running
entry, so it loses ties. Per block we compute chunk maxima M (chunks of `c`
items) and the number of chunks with M > tau per row, n_b:
  * max_b n_b = 0     -> the block is skipped (only the GEMM and a reduce);
  * max_b n_b <= R    -> each row's chunks above tau are compacted (in id
                         order) into R slots, gathered and appended to a
                         buffer; the buffer is merged every F such blocks;
  * otherwise         -> full merge of running list and block.
The chunk path is exact: every item above tau lies in a chunk above tau, and
a stale tau (the buffer is merged later) is still a valid lower bound.
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


@functools.partial(jax.jit, static_argnames=(
    "k", "block", "chunk", "num_chunks_small", "flush_every", "prune"))
def local_topk(user_q: jax.Array, item_emb: jax.Array, item_group: jax.Array,
               mu: jax.Array | None, id_offset: jax.Array | int, *, k: int,
               block: int, chunk: int = 16, num_chunks_small: int = 8,
               flush_every: int = 4,
               prune: bool = True) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of s_bi = <u_b, v_i> - mu[g_i] over a local item range.

  Args:
    user_q: float32 [B, d] queries.
    item_emb: float32 [n, d] local items, n a multiple of `block`.
    item_group: int32 [n] group of each item; < 0 marks padding (score -inf).
    mu: float32 [G] dual prices, or None for plain <u, v> scores.
    id_offset: global id of local item 0.
    k: results per query.
    block: items per GEMM block.
    chunk: items per chunk for the pruning maxima (divides `block`).
    num_chunks_small: R, chunks gathered per block on the cheap path.
    flush_every: F, cheap-path blocks buffered before one merge (the merge is
      a `lax.top_k` over k + F R chunk candidates).
    prune: False gives the plain block-and-merge baseline (full merge every
      block).

  Returns:
    (scores [B, k] float32, ids [B, k] int32), sorted by (score desc, id asc);
    slots beyond the local item count hold (-inf, -1).
  """
  b = user_q.shape[0]
  n = item_emb.shape[0]
  nb = n // block
  nc = block // chunk
  r = min(num_chunks_small, nc)
  width = r * chunk
  user_q = user_q.astype(jnp.float32)
  col = jnp.arange(block, dtype=jnp.int32)
  # tri[i, j] = 1 if i < j: hits @ tri = number of hits before each chunk.
  tri = jnp.triu(jnp.ones((nc, nc), jnp.float32), k=1)
  slots = jnp.arange(r, dtype=jnp.float32)
  chunk_ids = jnp.arange(nc, dtype=jnp.int32)
  empty_s = jnp.full((b, flush_every * width), NEG_INF, jnp.float32)
  empty_i = jnp.full((b, flush_every * width), -1, jnp.int32)

  def flush(top_s, top_i, buf_s, buf_i):
    return merge_topk(jnp.concatenate([top_s, buf_s], axis=1),
                      jnp.concatenate([top_i, buf_i], axis=1), k)

  def body(i, carry):
    top_s, top_i, buf_s, buf_i, fill = carry
    start = i * block
    v = lax.dynamic_slice_in_dim(item_emb, start, block)
    g = lax.dynamic_slice_in_dim(item_group, start, block)
    s = block_scores(user_q, v, _item_bias(g, mu, g >= 0))
    blk_ids = id_offset + start + col

    def full(_):
      cat_s = jnp.concatenate([top_s, buf_s, s], axis=1)
      cat_i = jnp.concatenate(
          [top_i, buf_i, jnp.broadcast_to(blk_ids, s.shape)], axis=1)
      new_s, new_i = merge_topk(cat_s, cat_i, k)
      return new_s, new_i, empty_s, empty_i, jnp.int32(0)

    if not prune:
      new_s, new_i = merge_topk(
          jnp.concatenate([top_s, s], axis=1),
          jnp.concatenate([top_i, jnp.broadcast_to(blk_ids, s.shape)], axis=1),
          k)
      return new_s, new_i, buf_s, buf_i, fill

    tau = top_s[:, k - 1:k]
    cmax = s.reshape(b, nc, chunk).max(axis=2)
    above = cmax > tau
    need = jnp.max(jnp.sum(above, axis=1))

    def small(_):
      # Compact the (<= r) chunks above tau into r slots in id order, with
      # slot j <- the chunk whose exclusive prefix count of hits is j. Prefix
      # counts come from a 0/1 matmul with a triangular matrix (exact).
      hits = above.astype(jnp.float32)
      pos = jnp.dot(hits, tri, precision=lax.Precision.HIGHEST)  # [b, nc]
      onehot = (above[:, None, :]
                & (pos[:, None, :] == slots[None, :, None]))  # [b, r, nc]
      sel = jnp.sum(jnp.where(onehot, chunk_ids[None, None, :], 0), axis=2)
      used = jnp.any(onehot, axis=2)  # [b, r]
      cand = jnp.take_along_axis(s.reshape(b, nc, chunk), sel[:, :, None],
                                 axis=1)
      cand = jnp.where(used[:, :, None], cand, NEG_INF).reshape(b, width)
      cand_i = (id_offset + start + sel[:, :, None] * chunk
                + jnp.arange(chunk, dtype=jnp.int32)).reshape(b, width)
      nbuf_s = lax.dynamic_update_slice_in_dim(buf_s, cand, fill * width, 1)
      nbuf_i = lax.dynamic_update_slice_in_dim(buf_i, cand_i, fill * width, 1)

      def do_flush(_):
        ns, ni = flush(top_s, top_i, nbuf_s, nbuf_i)
        return ns, ni, empty_s, empty_i, jnp.int32(0)

      def keep(_):
        return top_s, top_i, nbuf_s, nbuf_i, fill + 1

      return lax.cond(fill + 1 == flush_every, do_flush, keep, None)

    def skip(_):
      return top_s, top_i, buf_s, buf_i, fill

    branch = jnp.where(need == 0, 0, jnp.where(need <= r, 1, 2))
    return lax.switch(branch, (skip, small, full), None)

  init = (jnp.full((b, k), NEG_INF, jnp.float32),
          jnp.full((b, k), -1, jnp.int32), empty_s, empty_i, jnp.int32(0))
  top_s, top_i, buf_s, buf_i, _ = lax.fori_loop(0, nb, body, init)
  if prune:
    top_s, top_i = flush(top_s, top_i, buf_s, buf_i)
  return top_s, top_i
