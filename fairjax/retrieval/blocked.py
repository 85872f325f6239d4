"""Exact blocked top-K on one device: a running top-K over item blocks.

The per-device program of the sharded retrieval (`sharded.py`). Scores of one
query batch against one item block are a single GEMM `[B, d + 1] x [d + 1,
blk]` of [u_b ; 1] against [v_i ; bias_i] (the bias folded into the GEMM, so
the [B, blk] scores are written once, with no separate add pass); the full
`[B, N]` score matrix is never built. Every block is scored by the same
compiled GEMM at the same column position, so an item's float32 score does
not depend on how the catalog is cut into shards (blocks are aligned to
global item ids).

Exactness and ties. Results are ordered by (score desc, global id asc). The
running list is always sorted this way; `lax.top_k` breaks ties by position,
so every candidate array handed to it is laid out in increasing id order:
running list first (all earlier ids), then buffered candidates (earlier
blocks first), then the current block.

Pruning (exact). With tau_b a lower bound on row b's final K-th score, an
item with score <= tau_b cannot enter row b's top-K. Two bounds are used,
and tau is their maximum:
  * the running K-th score (taken at the last merge): an item scoring the
    same has a higher id than every running entry, so it loses the tie;
  * a warm start tau0 (when `warm_blocks` > 0): the first m blocks are
    scored once beforehand (dot and chunk maxima only) and tau0_b is the
    K-th largest of their chunk maxima, lowered by a rounding margin. Those
    are K distinct items, and however the GEMM orders its sums each of their
    scores in the main pass is within 2 gamma_(d+1) (|u| |v| + |bias|) of
    the warm-pass value (gamma_n = n 2^-24 / (1 - n 2^-24)); tau0 subtracts
    twice that bound (max |v| over the warm blocks, max |mu|; rounded up
    for the float32 norms, and for bfloat16 operands' rounding), then one
    float step. So K items score > tau0 in the main pass and an item <=
    tau0 loses to all of them. Without it the early blocks take the full
    merge of step 2 below while too many chunks pass a low tau (22 of 250
    blocks at K = 50, 1,024 rows, 2,000-item blocks; 1 with it).
Per block of blk = c * nc items, chunk j holds the c contiguous items
[j c, (j + 1) c) (one 64-byte line at c = 16). Then
  1. if every row has at most R chunks whose maximum exceeds tau, those
     chunks (found in increasing chunk id by `first_set`: the row's chunk
     flags packed into 32-bit words, then R "lowest set bit" rounds on
     [B] arrays) are gathered: [R, c] scores whose row-major order is
     increasing id order; items <= tau are set to -inf; they are written
     after the running list's k scores into a [B, k + F R c] buffer, and
     every F blocks they are merged with the running list by one
     `lax.top_k`. Only the chunk ids are kept ([B, F R], nc marking an
     unused slot); the ids of the k winners of a merge are computed from
     them (no per-candidate id buffer). Most slots are unused (a row gains
     about k / blocks items per block), so when no row used more than R of
     its F R chunk slots, only the used ones are gathered (slot order, so
     still id order) and the top_k runs on [B, k + R c] columns instead of
     [B, k + F R c];
  2. otherwise (early blocks, while tau is still low) the block is merged in
     full with the running list and the buffer.
XLA:CPU notes: a column slice of a `lax.top_k` result makes the compiler
fall back to a full sort, hence `jnp.min` for the K-th score. A separate
bias add after the dot was fused into each of its consumers (the chunk
maxima, the gather, the full merge), three extra passes over the block's
scores: folding the bias into the GEMM removes them.

bf16 proposals (`precision="bf16"`). The block GEMMs take bfloat16
operands (float32 sums; products of bfloat16 values are exact in float32),
2.2-2.6x the float32 GEMM's rate on this project's CPU (AVX-512 bf16).
The scan above runs on these proposal scores s' for k2 = k + slack items
(`proposal_slack_for`); on a CPU with AMX-BF16 one native call
(`fairjax.ops.bf16_proposals`, `proposal_impl`) proposes them instead:
tile multiplies whose scores are compared with each row's running k2-th
at once, never written out (the bias then enters in float32, unrounded).
The proposals are rescored with `exact_scores` (one fixed float32 formula
per pair, [B, k2, d] work) and the top-k taken by (score desc, id asc).
Proof of exactness: `proposal_error` bounds |s' - s| <= E_b for every item
of the row (rounding of u, v, mu to bfloat16 and float32 summation, by
Cauchy-Schwarz). An item left out has s' <= t_b, the k2-th proposal score,
so s <= t_b + E_b; when that is below S_b, the k-th exact score among the
proposals (or t_b = -inf: every item with a finite score is proposed), it
cannot enter the top-k. Otherwise (more than `slack` items within about
E_b of the k-th score) the native kernel, if it proposed, is asked for
2 k2, then float32 GEMM proposals with their much smaller bound are
tried, then a scan with `exact_scores` as the block scores (needed only
when many items tie; slow, the same values, so the same result). The
bound's operand errors use `bf16_round`, an integer rounding XLA cannot
fold: an f32 -> bf16 -> f32 convert pair it may turn into the identity
(inside the scan it did, and the item term of E came out 0). The
returned scores are `exact_scores` values, which may differ from the
float32 GEMM's in the last bits (the GEMM's rounding depends on its shape),
so items within that rounding of each other may order differently between
the two precisions.

Exclusion. An optional int32 [B, E] list of global ids per query (padded
with -1) is removed from that query's candidates: after a block is scored,
a scatter of -inf at [b, id - block_start] (ids outside the block dropped,
O(B E) per block, never a dense [B, N] mask) makes an excluded item exactly
like padding (also in the warm start, so tau0 never counts an excluded
item). Such an item never enters the running list: the running list
starts as (-inf, -1) and precedes every candidate in every merge, so among
-inf scores the running slots win the positional tie-break; by induction
every -inf slot of the running list holds id -1. It never passes the
pruning test either (-inf > tau is false), and chunk maxima ignore it. So
the result is the exact top-k of the non-excluded items; when a row has
fewer than k of them, its trailing slots hold (-inf, -1). exclude=None
traces the program without the scatter (identical to no exclusion).

Allowed groups. An optional bool [G] mask `allowed` scores the items of
groups outside it -inf, exactly like excluded items, and skips (lax.cond)
every block that holds no item of an allowed group (in the warm start too,
which is off by default with a mask):
the result is the exact top-k over the allowed groups' items, and on a
catalog laid out by group the cost falls with the share of the catalog the
mask allows (FairSync's pace repair looks for items of the few groups
behind their pace this way). Skipping a block is exact: a block of -inf
scores changes neither the running list nor tau.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fairjax.ops import bf16_proposals

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
                 bias_blk: jax.Array | None,
                 dtype=jnp.float32) -> jax.Array:
  """s_bi = <u_b, v_i> + bias_i for one block: one GEMM.

  With a bias, [u_b ; 1] against [v_i ; bias_i] (a [B, d + 1] x [d + 1, blk]
  GEMM: the bias is the last term of each sum, and no add pass follows);
  without, [B, d] x [d, blk]. bias_i = -inf (padding, excluded groups)
  gives s_bi = -inf. `dtype`: the operands' type (bfloat16: the proposal
  GEMM of `precision="bf16"`); the sums are float32 either way.
  """
  if bias_blk is not None:
    user_q = jnp.concatenate(
        [user_q, jnp.ones((user_q.shape[0], 1), user_q.dtype)], axis=1)
    item_blk = jnp.concatenate(
        [item_blk, bias_blk[:, None].astype(item_blk.dtype)], axis=1)
  return lax.dot_general(user_q.astype(dtype), item_blk.astype(dtype),
                         (((1,), (1,)), ((), ())),
                         precision=lax.Precision.HIGHEST,
                         preferred_element_type=jnp.float32)


def _exact_block(user_q: jax.Array, item_blk: jax.Array,
                 bias_blk: jax.Array, max_items: int = 256) -> jax.Array:
  """`exact_scores` of one block, [B, blk], in pieces of <= max_items
  items (the formula's [B, piece, d / 2] intermediate stays small)."""
  blk = item_blk.shape[0]
  pieces = next(p for p in range(1, blk + 1)
                if blk % p == 0 and blk // p <= max_items)
  if pieces == 1:
    return exact_scores(user_q, item_blk[None], bias_blk[None])
  out = lax.map(lambda vb: exact_scores(user_q, vb[0][None], vb[1][None]),
                (item_blk.reshape(pieces, blk // pieces, -1),
                 bias_blk.reshape(pieces, blk // pieces)))
  return jnp.transpose(out, (1, 0, 2)).reshape(user_q.shape[0], blk)


def _runtime_zero(x: jax.Array) -> jax.Array:
  """uint32 0 for finite x[0, ...], not known to the compiler."""
  first = x.reshape(-1)[0]
  return (first != first).astype(jnp.uint32)


def exact_scores(user_q: jax.Array, item_vecs: jax.Array,
                 bias: jax.Array) -> jax.Array:
  """The scores of `precision="bf16"`: one fixed float32 formula per pair.

  s_bi = tree(u_b * v_i) + bias_i, where the d products are rounded to
  float32 and summed as a balanced tree (halves added elementwise, an odd
  width padded with one 0), then the bias is added; -0.0 becomes 0.0. The
  value depends on (u_b, v_i, bias_i) only, never on shapes or positions,
  so NumPy reproduces it bit for bit (except where XLA:CPU flushes a
  subnormal product to zero; `proposal_error` allows for that). The
  products pass through an integer XOR with a zero the compiler cannot
  see: without it XLA:CPU contracts a product and the add after it into
  one FMA, and the value would depend on how the expression was fused.

  Args:
    user_q: float32 [B, d].
    item_vecs: float32 [B, n, d] (one list per row) or [1, n, d] (shared).
    bias: float32 [B, n] or [1, n] (-inf: padding, excluded).

  Returns:
    float32 [B, n].
  """
  p = user_q[:, None, :] * item_vecs
  z = _runtime_zero(user_q)
  p = lax.bitcast_convert_type(lax.bitcast_convert_type(p, jnp.uint32) ^ z,
                               jnp.float32)
  while p.shape[-1] > 1:
    if p.shape[-1] % 2:
      p = jnp.concatenate([p, jnp.zeros(p.shape[:-1] + (1,), p.dtype)], -1)
    h = p.shape[-1] // 2
    p = p[..., :h] + p[..., h:]
  s = p[..., 0] + bias
  return jnp.where(s == 0, 0.0, s)


def exact_scores_numpy(user_q: np.ndarray, item_vecs: np.ndarray,
                       bias: np.ndarray) -> np.ndarray:
  """`exact_scores` in NumPy (the reference of tests and the bench).

  user_q [B, d], item_vecs [n, d], bias [n] -> [B, n]; NumPy never fuses
  a multiply and an add, so these are the same float32 values.
  """
  p = (user_q[:, None, :] * item_vecs[None, :, :]).astype(np.float32)
  while p.shape[-1] > 1:
    if p.shape[-1] % 2:
      p = np.concatenate([p, np.zeros(p.shape[:-1] + (1,), p.dtype)], -1)
    h = p.shape[-1] // 2
    p = p[..., :h] + p[..., h:]
  s = (p[..., 0] + bias[None, :].astype(np.float32)).astype(np.float32)
  return np.where(s == 0, np.float32(0), s)


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


def proposal_slack_for(k: int) -> int:
  """The default extra bf16 proposals per row: max(16, ceil(0.6 k)).

  The items within about E of the k-th score, which the proposals must
  hold, grow with k (on 5 x 10^5 standard normal items, d = 64, 1,024
  rows, 18 groups: every row's proposals are proven complete with 17 at
  k = 10, 25 at k = 50 (17: 97% of the rows) and 50 at k = 100 (33:
  99.8%)).
  """
  return max(16, -(-3 * k // 5))


def warm_blocks_for(k: int, num_blocks: int) -> int:
  """The default warm start: m = min(ceil(0.7 k), num_blocks // 8) blocks.

  After m blocks of chunk maxima about k / m items per block and row score
  above tau0; with R = 8 chunks gathered per row and block, m ~ 0.7 k keeps
  a batch of ~1,000 rows on the cheap path (an overflow of any row sends the
  whole block to the full merge). At most 1/8 of the blocks are scored
  twice; catalogs of fewer than 8 blocks get no warm start.
  """
  return min(-(-7 * k // 10), num_blocks // 8)


@functools.partial(jax.jit, static_argnums=1)
def first_set(mask: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
  """The first r True columns of each row, and each row's True count.

  Args:
    mask: bool [B, n].
    r: how many positions to return (static).

  Returns:
    (pos int32 [B, r] ascending, n in the slots beyond a row's count;
    count int32 [B]). The row is packed into ceil(n / 32) uint32 words (one
    reduction over the mask); then r rounds of "lowest set bit of the first
    nonzero word, then clear it" run on [B] arrays only, one elementwise
    chain that XLA fuses, instead of r reductions over [B, n]. Jitted, so
    that the r x ceil(n / 32) written-out steps are traced once per shape
    (XLA inlines the call into the scan: the same compiled program).
  """
  b, n = mask.shape
  nw = -(-n // 32)
  bits = jnp.pad(mask, ((0, 0), (0, nw * 32 - n))).reshape(b, nw, 32)
  packed = jnp.sum(bits.astype(jnp.uint32)
                   << jnp.arange(32, dtype=jnp.uint32), axis=2)
  words = [packed[:, w] for w in range(nw)]
  count = sum(lax.population_count(w).astype(jnp.int32) for w in words)
  out = []
  for _ in range(r):
    pos = jnp.full((b,), n, jnp.int32)
    found = jnp.zeros((b,), bool)
    for w in range(nw):
      here = ~found & (words[w] != 0)
      low = words[w] & (~words[w] + jnp.uint32(1))  # lowest set bit
      bit = 31 - lax.clz(low).astype(jnp.int32)
      pos = jnp.where(here, 32 * w + bit, pos)
      words[w] = jnp.where(here, words[w] & (words[w] - jnp.uint32(1)),
                           words[w])
      found = found | here
    out.append(pos)
  return jnp.stack(out, axis=1), count


def _chunk_max(s: jax.Array, chunk: int) -> jax.Array:
  """[B, blk] -> [B, blk / c]: the maximum of each contiguous chunk."""
  return s.reshape(s.shape[0], -1, chunk).max(axis=2)


class _Catalog(NamedTuple):
  """The local item range and the per-call inputs a block is scored with."""
  user_q: jax.Array
  item_emb: jax.Array
  item_group: jax.Array
  mu: jax.Array | None
  id_offset: jax.Array | int
  exclude: jax.Array | None
  allowed: jax.Array | None
  block: int
  precision: str = "fp32"  # "fp32" | "bf16" (proposal GEMM) | "exact"

  def valid(self, start):
    """(group, valid) of the block at `start`; valid = real and allowed."""
    g = lax.dynamic_slice_in_dim(self.item_group, start, self.block)
    if self.allowed is None:
      return g, g >= 0
    a = self.allowed
    return g, (g >= 0) & a[jnp.clip(g, 0, a.shape[0] - 1)]

  def bias(self):
    """[n] bias of every local item (-inf: padding, not allowed)."""
    g = self.item_group
    valid = g >= 0
    if self.allowed is not None:
      valid = valid & self.allowed[jnp.clip(g, 0, self.allowed.shape[0] - 1)]
    return _item_bias(g, self.mu, valid)

  def scores(self, start, g, valid):
    """[B, blk] scores of the block at `start` (-inf: padding, groups
    outside `allowed`, excluded ids)."""
    v = lax.dynamic_slice_in_dim(self.item_emb, start, self.block)
    bias = _item_bias(g, self.mu, valid)
    if self.precision == "exact":
      s = _exact_block(self.user_q, v, bias)
    else:
      s = block_scores(self.user_q, v, bias, jnp.bfloat16
                       if self.precision == "bf16" else jnp.float32)
    if self.exclude is not None:
      s = exclude_block(s, self.exclude, self.id_offset + start)
    return s

  def unless_empty(self, valid, fn, carry):
    """fn(carry) for a block holding an allowed item; else carry as is."""
    if self.allowed is None:
      return fn(carry)
    return lax.cond(jnp.any(valid), fn, lambda c: c, carry)


def _catalog(user_q, item_emb, item_group, mu, id_offset, exclude, allowed,
             block) -> _Catalog:
  """A `_Catalog` with float32 queries and int32 exclusion ids."""
  return _Catalog(user_q.astype(jnp.float32), item_emb, item_group, mu,
                  id_offset, None if exclude is None else
                  exclude.astype(jnp.int32), allowed, block)


def _warm_bound(cat: _Catalog, k: int, chunk: int, m: int) -> jax.Array:
  """tau0 [B, 1] from the first m blocks (module doc, "Pruning")."""
  b, d = cat.user_q.shape
  nc = cat.block // chunk
  if m * nc < k:  # fewer chunks than k: no bound
    return jnp.full((b, 1), NEG_INF, jnp.float32)

  def warm(i, cms):
    start = i * cat.block
    g, valid = cat.valid(start)
    return cat.unless_empty(valid, lambda c: lax.dynamic_update_slice_in_dim(
        c, _chunk_max(cat.scores(start, g, valid), chunk), i * nc, 1), cms)

  cms = lax.fori_loop(0, m, warm,
                      jnp.full((b, m * nc), NEG_INF, jnp.float32))
  t = jnp.min(lax.top_k(cms, k)[0], axis=1, keepdims=True)
  # Upper bounds on |v_i| and |bias_i| over the warm blocks' items.
  v = cat.item_emb[:m * cat.block]
  vmax = jnp.sqrt(jnp.max(jnp.sum(v * v, axis=1)))
  bmax = 0.0 if cat.mu is None else jnp.max(jnp.abs(cat.mu))
  qn = jnp.sqrt(jnp.sum(cat.user_q * cat.user_q, axis=1, keepdims=True))
  # 2 x 2 gamma_(d+1) (|u| |v| + |bias|), rounded up by 2^-10 for the
  # float32 norms; bfloat16 operands: |bf16(x)| <= (1 + 2^-8) |x| each, and
  # flushed subnormal products.
  gamma = (d + 1) * 2.0 ** -24 / (1.0 - (d + 1) * 2.0 ** -24)
  margin = 4.0 * gamma * (qn * vmax + bmax) * (1.0 + 2.0 ** -10)
  if cat.precision == "bf16":
    margin = margin * (1.0 + 2.0 ** -6) + (d + 1) * 2.0 ** -118
  tau0 = jnp.nextafter(t - margin, NEG_INF)
  return jnp.where(jnp.isfinite(tau0), tau0, NEG_INF)


@functools.partial(jax.jit, static_argnames=("k", "block", "chunk",
                                             "warm_blocks"))
def warm_start_bound(user_q: jax.Array, item_emb: jax.Array,
                     item_group: jax.Array, mu: jax.Array | None,
                     id_offset: jax.Array | int,
                     exclude: jax.Array | None = None,
                     allowed: jax.Array | None = None, *, k: int,
                     block: int, chunk: int = 16,
                     warm_blocks: int) -> jax.Array:
  """The warm-start pruning bound tau0 of `local_topk` (module doc).

  Arguments as `local_topk`. Returns float32 [B, 1]: for every row, k
  non-excluded items of the first `warm_blocks` blocks score strictly above
  it in any float32 evaluation of their sums (-inf when those blocks hold
  fewer than k chunks with a finite maximum).
  """
  cat = _catalog(user_q, item_emb, item_group, mu, id_offset, exclude,
                 allowed, block)
  return _warm_bound(cat, k, chunk, min(warm_blocks, item_emb.shape[0]
                                        // block))


@functools.partial(jax.jit, static_argnames=(
    "k", "block", "chunk", "num_chunks_small", "flush_every", "prune",
    "warm_blocks", "precision", "proposal_slack", "proposal_impl"))
def local_topk(user_q: jax.Array, item_emb: jax.Array, item_group: jax.Array,
               mu: jax.Array | None, id_offset: jax.Array | int,
               exclude: jax.Array | None = None,
               allowed: jax.Array | None = None, *, k: int,
               block: int, chunk: int = 16, num_chunks_small: int = 8,
               flush_every: int = 8, prune: bool = True,
               warm_blocks: int | None = None, precision: str = "fp32",
               proposal_slack: int | None = None,
               proposal_impl: str = "auto"
               ) -> tuple[jax.Array, jax.Array]:
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
    warm_blocks: m, blocks scored beforehand for the warm-start bound tau0
      (module doc); None: `warm_blocks_for(k, n / block)` without
      `allowed`, 0 with it (a restricted scan covers few blocks, and on a
      catalog laid out by group its first blocks would be scored twice);
      0: none.
    precision: "fp32": the scores are the float32 GEMM's; "bf16": a
      bfloat16 GEMM proposes the k + `proposal_slack` best items, which are
      rescored exactly (`exact_scores`) with a proven bound on the proposal
      error (module doc, "bf16 proposals"); the scores are then
      `exact_scores`' values. Both are exact top-k of their float32 scores.
      With prune=False the float32 block-and-merge baseline runs either way.
    proposal_slack: extra proposals per row with precision="bf16"; None:
      `proposal_slack_for(k)`. Too few make the check fail and the float32
      proposals run as well (exact, about twice the time).
    proposal_impl: who makes the bf16 proposals: "native" (one call of
      `fairjax.ops.bf16_proposals`: AMX tiles, each score compared with
      its row's running k2-th at once), "jax" (the blocked scan above on a
      bfloat16 GEMM), "auto" (native on a CPU with AMX-BF16 where the
      kernel loads, else jax); d > 128 always takes jax. Either way the
      result is the exact top-k.

  Returns:
    (scores [B, k] float32, ids [B, k] int32), sorted by (score desc, id asc);
    slots beyond the local count of non-excluded items hold (-inf, -1).
  """
  if precision not in ("fp32", "bf16"):
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
  cat = _catalog(user_q, item_emb, item_group, mu, id_offset, exclude,
                 allowed, block)
  kw = dict(chunk=chunk, num_chunks_small=num_chunks_small,
            flush_every=flush_every, warm_blocks=warm_blocks)
  if precision == "fp32" or not prune:
    return _scan_topk(cat, k=k, prune=prune, **kw)
  slack = proposal_slack_for(k) if proposal_slack is None else proposal_slack
  return _bf16_topk(cat, k=k, slack=slack,
                    native=(bf16_proposals.resolve(proposal_impl) == "native"
                            and user_q.shape[1] <= bf16_proposals.MAX_DIM),
                    **kw)


def _scan_topk(cat: _Catalog, *, k: int, chunk: int, num_chunks_small: int,
               flush_every: int, prune: bool, warm_blocks: int | None,
               item_stats: bool = False):
  """The blocked running top-k of `cat`'s scores (module doc).

  Returns (scores, ids); with `item_stats` also float32 [2]: the largest
  |v_i|^2 and |v_i - bf16(v_i)|^2 over the scanned blocks (computed while
  each block is in cache; skipped blocks hold no allowed item).
  """
  block, id_offset = cat.block, cat.id_offset
  b = cat.user_q.shape[0]
  n = cat.item_emb.shape[0]
  nb = n // block
  nc = block // chunk
  r = min(num_chunks_small, nc)
  slot = r * chunk  # buffer columns per block
  width = flush_every * slot
  col = jnp.arange(block, dtype=jnp.int32)
  slot_pos = jnp.arange(width, dtype=jnp.int32)[None, :]

  if warm_blocks is None:  # a restricted scan is short: no warm start
    m = warm_blocks_for(k, nb) if cat.allowed is None else 0
  else:
    m = min(warm_blocks, nb)
  if prune and m > 0:
    tau0 = _warm_bound(cat, k, chunk, m)
  else:
    tau0 = jnp.full((b, 1), NEG_INF, jnp.float32)

  if not prune:  # the block-and-merge baseline
    def plain(i, carry):
      start = i * block
      g, valid = cat.valid(start)

      def merge_block(c):
        top_s, top_i = c
        s = cat.scores(start, g, valid)
        return merge_topk(
            jnp.concatenate([top_s, s], axis=1),
            jnp.concatenate([top_i, jnp.broadcast_to(id_offset + start + col,
                                                     s.shape)], axis=1), k)

      return cat.unless_empty(valid, merge_block, carry)

    return lax.fori_loop(0, nb, plain,
                         (jnp.full((b, k), NEG_INF, jnp.float32),
                          jnp.full((b, k), -1, jnp.int32)))

  # buf [B, k + F R c]: the running list's scores, then the candidates of
  # up to F cheap blocks. Candidate ids are not stored: slot q of cheap
  # block f is item starts[f] + picks[b, f R + q // c] c + q mod c, and
  # only the k winners of a merge have their ids computed.
  def slot_ids(sl, j, picks, starts):
    """Item ids at offset j of chunk slots sl (indices into [B, F R])."""
    return (starts[sl // r] + jnp.take_along_axis(picks, sl, axis=1) * chunk
            + j)

  def list_or(pos, top_i, ids):
    """Winners at positions < k come from the running list."""
    return jnp.where(pos < k, jnp.take_along_axis(
        top_i, jnp.minimum(pos, k - 1), axis=1), ids)

  def winner_ids(pos, top_i, picks, starts, start):
    q = jnp.clip(pos - k, 0, width - 1)
    ids = slot_ids((q // slot) * r + (q % slot) // chunk, q % chunk, picks,
                   starts)
    ids = jnp.where(pos >= k + width, id_offset + start + pos - k - width,
                    ids)
    return list_or(pos, top_i, ids)

  def merge(scores, top_i, picks, starts, start):
    ns, pos = lax.top_k(scores, k)
    # min over the sorted row = its k-th score (a column slice of a top_k
    # result would make XLA:CPU fall back to a full sort).
    return (ns, winner_ids(pos, top_i, picks, starts, start),
            jnp.maximum(jnp.min(ns, axis=1, keepdims=True), tau0))

  def body(i, carry):
    start = i * block
    g, valid = cat.valid(start)
    return cat.unless_empty(valid, lambda c: scan_block(start, c, g, valid),
                            carry)

  def scan_block(start, carry, g, valid_blk):
    buf, top_i, picks, starts, fill, tau, stats = carry
    if item_stats:
      v = lax.dynamic_slice_in_dim(cat.item_emb, start, block)
      e = v - bf16_round(v)
      stats = jnp.maximum(stats, jnp.stack([jnp.max(jnp.sum(v * v, axis=1)),
                                            jnp.max(jnp.sum(e * e, axis=1))]))
    s = cat.scores(start, g, valid_blk)
    s3 = s.reshape(b, nc, chunk)  # chunk j: items [j c, (j + 1) c)
    above = s3.max(axis=2) > tau  # [b, nc] chunks holding an item > tau
    srt, count = first_set(above, r)  # [b, r] ascending chunk ids
    ok = jnp.all(count <= r)
    used = (srt < nc) & ok  # nothing is buffered from a fully merged block
    srt = jnp.minimum(srt, nc - 1)
    cand = jnp.take_along_axis(
        s3, jnp.broadcast_to(srt[:, :, None], (b, r, chunk)), axis=1)
    cand = jnp.where(used[:, :, None] & (cand > tau[:, :, None]), cand,
                     NEG_INF).reshape(b, -1)
    # Buffer writes stay outside the conds (in place in the loop carry); the
    # conds only produce the small running list.
    buf = lax.dynamic_update_slice_in_dim(buf, cand, k + fill * slot, 1)
    picks = lax.dynamic_update_slice_in_dim(
        picks, jnp.where(used, srt, nc), fill * r, 1)  # nc: unused slot
    starts = lax.dynamic_update_slice_in_dim(
        starts, jnp.reshape(id_offset + start, (1,)).astype(jnp.int32), fill,
        0)

    def full(_):
      # slots written since the last merge (the list's k columns included)
      fresh = slot_pos < fill * slot
      return merge(jnp.concatenate(
          [buf[:, :k], jnp.where(fresh, buf[:, k:], NEG_INF), s], axis=1),
          top_i, picks, starts, start)

    def flush(_):
      # Most of the F R chunk slots are unused (each row gains about k /
      # blocks items per block): when no row used more than r of them,
      # only those (in slot order, i.e. id order) go through top_k.
      slots, used_count = first_set(picks < nc, r)
      return lax.cond(jnp.all(used_count <= r), compact_merge,
                      lambda sl: merge(buf, top_i, picks, starts, start),
                      slots)

    def compact_merge(slots):
      real = slots < flush_every * r
      slots = jnp.minimum(slots, flush_every * r - 1)
      cand = jnp.take_along_axis(
          buf[:, k:].reshape(b, flush_every * r, chunk),
          jnp.broadcast_to(slots[:, :, None], (b, r, chunk)), axis=1)
      cand = jnp.where(real[:, :, None], cand, NEG_INF).reshape(b, -1)
      ns, pos = lax.top_k(jnp.concatenate([buf[:, :k], cand], axis=1), k)
      q = jnp.clip(pos - k, 0, slot - 1)
      ids = slot_ids(jnp.take_along_axis(slots, q // chunk, axis=1),
                     q % chunk, picks, starts)
      return (ns, list_or(pos, top_i, ids),
              jnp.maximum(jnp.min(ns, axis=1, keepdims=True), tau0))

    def keep(_):
      return buf[:, :k], top_i, tau

    branch = jnp.where(ok, jnp.where(fill + 1 == flush_every, 1, 2), 0)
    top_s, top_i, tau = lax.switch(branch, (full, flush, keep), None)
    buf = lax.dynamic_update_slice_in_dim(buf, top_s, 0, 1)
    fill = jnp.where(branch == 2, fill + 1, 0)
    return buf, top_i, picks, starts, fill, tau, stats

  init = (jnp.full((b, k + width), NEG_INF, jnp.float32),
          jnp.full((b, k), -1, jnp.int32),
          jnp.full((b, flush_every * r), nc, jnp.int32),
          jnp.zeros((flush_every,), jnp.int32), jnp.int32(0), tau0,
          jnp.zeros((2,), jnp.float32))
  buf, top_i, picks, starts, fill, _, stats = lax.fori_loop(0, nb, body,
                                                             init)
  fresh = jnp.concatenate([jnp.ones((1, k), bool), slot_pos < fill * slot],
                          axis=1)
  top_s, top_i, _ = merge(jnp.where(fresh, buf, NEG_INF), top_i, picks,
                          starts, 0)
  if item_stats:
    return top_s, top_i, stats
  return top_s, top_i


def bf16_round(x: jax.Array) -> jax.Array:
  """x rounded to bfloat16 (nearest even), as float32; |x| < 2^-126 gives 0.

  The operands of the proposal GEMMs: the tile and dot instructions read a
  subnormal as zero, and an error of |x| bounds either reading. Rounded on
  the float32 bits (add 0x7fff plus the lowest kept bit, clear the low 16
  bits): XLA may fold an f32 -> bf16 -> f32 convert pair into the
  identity (it did inside the scan), an integer formula it cannot.
  """
  x = x.astype(jnp.float32)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  odd = (bits >> 16) & jnp.uint32(1)
  r = lax.bitcast_convert_type(
      (bits + jnp.uint32(0x7FFF) + odd) & jnp.uint32(0xFFFF0000), jnp.float32)
  return jnp.where(jnp.abs(x) < np.float32(2.0 ** -126), jnp.zeros_like(x), r)


def proposal_error(user_q: jax.Array, item_emb: jax.Array,
                   mu: jax.Array | None, precision: str = "bf16"
                   ) -> jax.Array:
  """E [B, 1]: |s'_bi - s_bi| <= E_b for every item of the table.

  s' is the proposal GEMM's score, s the `exact_scores` value. With u' =
  [u ; 1], v' = [v ; bias], S = <u', v'> (the real value) and gamma_n = n
  2^-24 / (1 - n 2^-24), by Cauchy-Schwarz on the d products:
    |s - S|  <= gamma_(d+1) (|u| |v| + |bias|)
  and for precision="fp32" (float32 operands, sums in any order) the same
  bound on |s' - S|; for "bf16" (operands rounded to bfloat16 with errors
  e, products exact in float32, float32 sums in any order)
    |s' - S| <= |e_u| |v| + |bf16(u)| |e_v| + |e_bias|
                + gamma_(d+1) (|bf16(u)| |bf16(v)| + |bf16(bias)|)
  with |v| <= max_i |v_i|, |bias| <= max |mu|, |e_v| <= max_i |e_(v_i)|
  over the whole table (|bf16(x)| <= (1 + 2^-8) |x|), plus (d + 1) 2^-118
  for flushed subnormals; the sum is rounded up by 2^-10 relative.
  """
  v = item_emb.astype(jnp.float32)
  e = v - bf16_round(v)
  return _proposal_error(user_q, jnp.max(jnp.sum(v * v, axis=1)),
                         jnp.max(jnp.sum(e * e, axis=1)), mu, precision)


def _proposal_error(user_q, vmax2, evmax2, mu, precision):
  """`proposal_error` from max_i |v_i|^2 and max_i |e_(v_i)|^2."""
  u = user_q.astype(jnp.float32)

  def norm(x):
    return jnp.sqrt(jnp.sum(x * x, axis=-1))

  d = u.shape[1]
  gamma = (d + 1) * 2.0 ** -24 / (1.0 - (d + 1) * 2.0 ** -24)
  vmax, evmax = jnp.sqrt(vmax2), jnp.sqrt(evmax2)
  if mu is None:
    bmax = ebmax = 0.0
  else:
    bmax = jnp.max(jnp.abs(mu))
    ebmax = jnp.max(jnp.abs(mu - bf16_round(mu)))
  un = norm(u)[:, None]
  ubn = norm(bf16_round(u))[:, None]
  eu = norm(u - bf16_round(u))[:, None]
  tiny = (d + 1) * 2.0 ** -118
  if precision == "fp32":
    e = 2.0 * gamma * (un * vmax + bmax) + tiny
  else:
    e = (eu * vmax + ubn * evmax + ebmax
         + gamma * (ubn * vmax + bmax) * (1.0 + 2.0 ** -7)
         + gamma * (un * vmax + bmax) + tiny)
  return e * (1.0 + 2.0 ** -10)


def _rescore(cat: _Catalog, prop_s: jax.Array, prop_i: jax.Array, k: int,
             precision: str, item_stats: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact top-k among a row's proposals, and whether they hold it.

  prop_s / prop_i [B, k2]: the top-k2 of the proposal scores s', by (s'
  desc, id asc). With t_b the k2-th s' (every item left out has s' <=
  t_b), E_b the proposal bound and S_b the k-th exact score among the
  proposals: an item left out has s <= t_b + E_b, so when t_b + E_b < S_b
  (or t_b = -inf: every item with a finite score is proposed) it scores
  below k proposed items and the proposals hold the exact top-k.
  item_stats: the scan's max |v_i|^2 and |e_(v_i)|^2 (`_scan_topk`).

  Returns:
    (scores [B, k], ids [B, k], ok [B] bool).
  """
  n = cat.item_emb.shape[0]
  real = prop_i >= 0
  loc = jnp.clip(prop_i - cat.id_offset, 0, n - 1)
  g = cat.item_group[loc]
  valid = real & (g >= 0)
  s = exact_scores(cat.user_q, cat.item_emb[loc],
                   _item_bias(g, cat.mu, valid))
  ids = jnp.where(valid, prop_i, -1)
  neg, ids = lax.sort((-s, ids), dimension=1, num_keys=2)
  top = -neg[:, :k]
  kth = jnp.min(top, axis=1, keepdims=True)
  e = _proposal_error(cat.user_q, item_stats[0], item_stats[1], cat.mu,
                      precision)
  lower = jnp.nextafter(kth - e, NEG_INF)  # <= S_b - E_b in real numbers
  tail = jnp.min(prop_s, axis=1, keepdims=True)
  ok = (tail < lower) | (tail == NEG_INF)
  return top, ids[:, :k], ok[:, 0]


def _bf16_topk(cat: _Catalog, *, k: int, slack: int, chunk: int,
               num_chunks_small: int, flush_every: int,
               warm_blocks: int | None, native: bool = False
               ) -> tuple[jax.Array, jax.Array]:
  """precision="bf16": bfloat16 proposals, exact rescoring (module doc).

  native: the proposals come from `fairjax.ops.bf16_proposals` (one
  kernel call) instead of the blocked scan on a bfloat16 GEMM.
  When a row's proposals may miss an item of its exact top-k (more than
  `slack` items within E of the k-th exact score), the native kernel is
  asked for 2 (k + slack) proposals, then float32 GEMM proposals
  (E about 1e-3 of bfloat16's) are tried, then, if those too may miss one
  (many tied items), the local range is scanned with `exact_scores` as the
  block scores (slow; the same values, so the same result).
  """
  kw = dict(chunk=chunk, num_chunks_small=num_chunks_small,
            flush_every=flush_every, prune=True)

  def proposed(precision):
    prop_s, prop_i, stats = _scan_topk(
        cat._replace(precision=precision), k=k + slack,
        warm_blocks=warm_blocks, item_stats=True, **kw)
    return _rescore(cat, prop_s, prop_i, k, precision, stats)

  def fp32_then_exact():
    s, ids, ok = proposed("fp32")
    return lax.cond(jnp.all(ok), lambda: (s, ids), lambda: _scan_topk(
        cat._replace(precision="exact"), k=k, warm_blocks=0, **kw))

  def native_proposed(k2):
    prop_s, prop_i, stats = bf16_proposals.bf16_proposals(
        cat.user_q, cat.item_emb, cat.bias(), cat.exclude, cat.id_offset, k2)
    return _rescore(cat, prop_s, prop_i, k, "bf16", stats)

  if native:
    # A failed check costs one more native call with 2 (k + slack)
    # proposals before the float32 scan.
    def wider():
      s, ids, ok = native_proposed(2 * (k + slack))
      return lax.cond(jnp.all(ok), lambda: (s, ids), fp32_then_exact)

    s, ids, ok = native_proposed(k + slack)
    return lax.cond(jnp.all(ok), lambda: (s, ids), wider)
  s, ids, ok = proposed("bf16")
  return lax.cond(jnp.all(ok), lambda: (s, ids), fp32_then_exact)
