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
  1. if every row has at most R chunks whose maximum exceeds tau, those
     chunks (found in increasing chunk id by R min-reductions) are gathered:
     [c, R] scores whose row-major order is increasing id order; items <= tau
     are set to -inf; they are appended to a [B, F R c] buffer, merged into
     the running list with one `lax.top_k` every F blocks;
  2. otherwise (early blocks, while tau is still low) the block is merged in
     full with the running list and the buffer.
XLA:CPU notes: a column slice of a `lax.top_k` result makes the compiler
fall back to a full sort, hence `jnp.min` for the K-th score.

Exclusion. An optional int32 [B, E] list of global ids per query (padded
with -1) is removed from that query's candidates: after a block is scored,
a scatter of -inf at [b, id - block_start] (ids outside the block dropped,
O(B E) per block, never a dense [B, N] mask) makes an excluded item exactly
like padding. Such an item never enters the running list: the running list
starts as (-inf, -1) and precedes every candidate in every merge, so among
-inf scores the running slots win the positional tie-break; by induction
every -inf slot of the running list holds id -1. It never passes the
pruning test either (-inf > tau is false), and chunk maxima ignore it. So
the result is the exact top-k of the non-excluded items; when a row has
fewer than k of them, its trailing slots hold (-inf, -1). exclude=None
traces the program without the scatter (identical to no exclusion).

Allowed groups. An optional bool [G] mask `allowed` scores the items of
groups outside it -inf, exactly like excluded items, and skips (lax.cond)
every block that holds no item of an allowed group: the result is the
exact top-k over the allowed groups' items, and on a catalog laid out by
group the cost falls with the share of the catalog the mask allows
(FairSync's pace repair looks for items of the few groups behind their
pace this way). Skipping a block is exact: a block of -inf scores changes
neither the running list nor tau.
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


def exclude_block(s: jax.Array, exclude: jax.Array,
                  block_start: jax.Array | int) -> jax.Array:
  """Sets s[b, j] = -inf for every excluded id exclude[b, e] = block_start + j.

  Args:
    s: float32 [B, blk] scores of one block (column j = id block_start + j).
    exclude: int32 [B, E] global ids per row, -1 (or any id outside the
      block) ignored.
    block_start: global id of the block's first column.

  Returns:
    s with the excluded in-block entries at -inf: one scatter of B E
    updates, out-of-block ones dropped (mode="drop").
  """
  blk = s.shape[1]
  col = exclude - block_start
  col = jnp.where((col >= 0) & (col < blk), col, blk)  # blk: dropped
  rows = jnp.broadcast_to(
      jnp.arange(s.shape[0], dtype=jnp.int32)[:, None], col.shape)
  return s.at[rows, col].set(NEG_INF, mode="drop")


def _item_bias(group_blk, mu, valid_blk):
  """bias_i = -mu[g_i] for real items, -inf for padding (group < 0)."""
  if mu is None:
    return jnp.where(valid_blk, 0.0, NEG_INF).astype(jnp.float32)
  g = jnp.clip(group_blk, 0, mu.shape[0] - 1)
  return jnp.where(valid_blk, -mu[g], NEG_INF).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=(
    "k", "block", "chunk", "num_chunks_small", "flush_every", "prune"))
def local_topk(user_q: jax.Array, item_emb: jax.Array, item_group: jax.Array,
               mu: jax.Array | None, id_offset: jax.Array | int,
               exclude: jax.Array | None = None,
               allowed: jax.Array | None = None, *, k: int,
               block: int, chunk: int = 16, num_chunks_small: int = 8,
               flush_every: int = 8,
               prune: bool = True) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of s_bi = <u_b, v_i> - mu[g_i] over a local item range.

  Over the items i not excluded for row b (i not in exclude[b]): excluded
  scores are -inf (see module doc).

  Args:
    user_q: float32 [B, d] queries.
    item_emb: float32 [n, d] local items, n a multiple of `block`.
    item_group: int32 [n] group of each item; < 0 marks padding (score -inf).
    mu: float32 [G] dual prices, or None for plain <u, v> scores.
    id_offset: global id of local item 0.
    exclude: int32 [B, E] global ids to leave out per query, padded with -1
      (ids outside the local range are ignored), or None: no exclusion (the
      compiled program has no exclusion step).
    allowed: bool [G] groups whose items may be returned, or None (all);
      blocks without an allowed item are skipped (module doc).
    k: results per query.
    block: items per GEMM block (a multiple of `chunk`).
    chunk: c, items per pruning chunk.
    num_chunks_small: R, chunks gathered per row and block on the cheap path.
    flush_every: F, cheap blocks buffered before one merge.
    prune: False gives the plain block-and-merge baseline (a `lax.top_k`
      over running list + whole block, every block).

  Returns:
    (scores [B, k] float32, ids [B, k] int32), sorted by (score desc, id asc);
    slots beyond the local count of non-excluded items hold (-inf, -1).
  """
  b = user_q.shape[0]
  n = item_emb.shape[0]
  nb = n // block
  nc = block // chunk
  r = min(num_chunks_small, nc)
  slot = r * chunk  # buffer columns per block
  width = flush_every * slot
  user_q = user_q.astype(jnp.float32)
  if exclude is not None:
    exclude = exclude.astype(jnp.int32)
  col = jnp.arange(block, dtype=jnp.int32)
  row_in_chunk = jnp.arange(chunk, dtype=jnp.int32)[None, :, None] * nc
  chunk_ids = jnp.arange(nc, dtype=jnp.int32)
  empty_s = jnp.full((b, width), NEG_INF, jnp.float32)
  empty_i = jnp.full((b, width), -1, jnp.int32)
  slot_pos = jnp.arange(width, dtype=jnp.int32)[None, :]

  def merge(top_s, top_i, parts_s, parts_i):
    ns, ni = merge_topk(jnp.concatenate([top_s] + parts_s, axis=1),
                        jnp.concatenate([top_i] + parts_i, axis=1), k)
    # min over the sorted row = its k-th score (a column slice of a top_k
    # result would make XLA:CPU fall back to a full sort).
    return ns, ni, jnp.min(ns, axis=1, keepdims=True)

  def body(i, carry):
    start = i * block
    g = lax.dynamic_slice_in_dim(item_group, start, block)
    if allowed is None:
      return scan_block(start, carry, g, g >= 0)
    ok = (g >= 0) & allowed[jnp.clip(g, 0, allowed.shape[0] - 1)]
    return lax.cond(jnp.any(ok), lambda c: scan_block(start, c, g, ok),
                    lambda c: c, carry)

  def scan_block(start, carry, g, valid_blk):
    top_s, top_i, buf_s, buf_i, fill, tau = carry
    v = lax.dynamic_slice_in_dim(item_emb, start, block)
    s = block_scores(user_q, v, _item_bias(g, mu, valid_blk))
    if exclude is not None:
      s = exclude_block(s, exclude, id_offset + start)
    blk_ids = id_offset + start + col

    if not prune:
      ns, ni, _ = merge(top_s, top_i, [s],
                        [jnp.broadcast_to(blk_ids, s.shape)])
      return ns, ni, buf_s, buf_i, fill, tau

    s3 = s.reshape(b, chunk, nc)  # column j of the block -> chunk j mod nc
    above = s3.max(axis=1) > tau  # [b, nc] chunks holding an item > tau
    ok = jnp.all(jnp.sum(above, axis=1) <= r)
    # The (<= r) chunks above tau in increasing chunk id: r successive
    # "smallest id above the previous one" reductions (slot -> nc if none).
    prev = jnp.full((b, 1), -1, jnp.int32)
    picks = []
    for _ in range(r):
      prev = jnp.min(jnp.where(above & (chunk_ids > prev), chunk_ids, nc),
                     axis=1, keepdims=True)
      picks.append(prev)
    srt = jnp.concatenate(picks, axis=1)  # [b, r] ascending
    used = (srt < nc) & ok  # nothing is buffered from a fully merged block
    srt = jnp.minimum(srt, nc - 1)
    cand = jnp.take_along_axis(
        s3, jnp.broadcast_to(srt[:, None, :], (b, chunk, r)), axis=2)
    cand = jnp.where(used[:, None, :] & (cand > tau[:, :, None]), cand,
                     NEG_INF).reshape(b, -1)
    cand_i = (id_offset + start + row_in_chunk
              + srt[:, None, :]).reshape(b, -1)
    # Buffer writes stay outside the conds (in place in the loop carry); the
    # conds only produce the small running list.
    buf_s = lax.dynamic_update_slice_in_dim(buf_s, cand, fill * slot, 1)
    buf_i = lax.dynamic_update_slice_in_dim(buf_i, cand_i, fill * slot, 1)
    valid = slot_pos < fill * slot  # slots written since the last merge

    def full(_):
      return merge(top_s, top_i, [jnp.where(valid, buf_s, NEG_INF), s],
                   [buf_i, jnp.broadcast_to(blk_ids, s.shape)])

    def flush(_):
      return merge(top_s, top_i, [buf_s], [buf_i])

    def keep(_):
      return top_s, top_i, tau

    branch = jnp.where(ok, jnp.where(fill + 1 == flush_every, 1, 2), 0)
    top_s, top_i, tau = lax.switch(branch, (full, flush, keep), None)
    fill = jnp.where(branch == 2, fill + 1, 0)
    return top_s, top_i, buf_s, buf_i, fill, tau

  init = (jnp.full((b, k), NEG_INF, jnp.float32),
          jnp.full((b, k), -1, jnp.int32), empty_s, empty_i, jnp.int32(0),
          jnp.full((b, 1), NEG_INF, jnp.float32))
  top_s, top_i, buf_s, buf_i, fill, _ = lax.fori_loop(0, nb, body, init)
  if prune:
    top_s, top_i, _ = merge(top_s, top_i,
                            [jnp.where(slot_pos < fill * slot, buf_s,
                                       NEG_INF)], [buf_i])
  return top_s, top_i
