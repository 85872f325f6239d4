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
  * max_b n_b <= R    -> the R best chunks of each row (which contain every
                         item above tau) are gathered in id order and merged;
  * otherwise         -> full merge of running list and block.
The chunk path is exact because the chunks above tau are a subset of the R
chunks with the largest maxima.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = float("-inf")


def sort_small(x: jax.Array) -> jax.Array:
  """Sorts the last axis (small, static length) ascending with min/max ops.

  Odd-even transposition network: n rounds of compare-exchange on adjacent
  pairs; only elementwise ops, so it fuses and is cheap for n <= 16.
  """
  n = x.shape[-1]
  cols = [x[..., i] for i in range(n)]
  for r in range(n):
    for i in range(r % 2, n - 1, 2):
      a, b = cols[i], cols[i + 1]
      cols[i], cols[i + 1] = jnp.minimum(a, b), jnp.maximum(a, b)
  return jnp.stack(cols, axis=-1)


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


@functools.partial(jax.jit, static_argnames=("k", "block", "chunk",
                                             "num_chunks_small", "prune"))
def local_topk(user_q: jax.Array, item_emb: jax.Array, item_group: jax.Array,
               mu: jax.Array | None, id_offset: jax.Array | int, *, k: int,
               block: int, chunk: int = 16, num_chunks_small: int = 8,
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
    num_chunks_small: R, chunks gathered on the cheap path.
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
  user_q = user_q.astype(jnp.float32)
  col = jnp.arange(block, dtype=jnp.int32)

  def body(i, carry):
    top_s, top_i = carry
    start = i * block
    v = lax.dynamic_slice_in_dim(item_emb, start, block)
    g = lax.dynamic_slice_in_dim(item_group, start, block)
    s = block_scores(user_q, v, _item_bias(g, mu, g >= 0))
    blk_ids = id_offset + start + col

    def full(_):
      cat_s = jnp.concatenate([top_s, s], axis=1)
      cat_i = jnp.concatenate([top_i, jnp.broadcast_to(blk_ids, s.shape)],
                              axis=1)
      return merge_topk(cat_s, cat_i, k)

    if not prune:
      return full(None)

    tau = top_s[:, k - 1:k]
    cmax = s.reshape(b, nc, chunk).max(axis=2)
    above = cmax > tau
    need = jnp.max(jnp.sum(above, axis=1))

    def small(_):
      _, sel = lax.top_k(jnp.where(above, cmax, NEG_INF), r)
      sel = sort_small(sel)
      cand = jnp.take_along_axis(s.reshape(b, nc, chunk), sel[:, :, None],
                                 axis=1).reshape(b, r * chunk)
      cand_i = (id_offset + start + sel[:, :, None] * chunk
                + jnp.arange(chunk, dtype=jnp.int32)).reshape(b, r * chunk)
      return merge_topk(jnp.concatenate([top_s, cand], axis=1),
                        jnp.concatenate([top_i, cand_i], axis=1), k)

    def skip(_):
      return top_s, top_i

    branch = jnp.where(need == 0, 0, jnp.where(need <= r, 1, 2))
    return lax.switch(branch, (skip, small, full), None)

  init = (jnp.full((b, k), NEG_INF, jnp.float32),
          jnp.full((b, k), -1, jnp.int32))
  return lax.fori_loop(0, nb, body, init)
