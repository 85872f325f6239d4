"""Sharpness-aware per-cell gradients (ITFR, DESIGN §4).

For every intersectional cell g present in a batch, from the same parameters
theta (Wang et al., "Intersectional Two-sided Fairness in Recommendation",
WWW 2024, eq. of the sharpness-aware loss; Foret et al., "Sharpness-Aware
Minimization", ICLR 2021):

    L_g      = (1 / n_g) sum_{b in g} l_b(theta)          (mean BPR of g's rows)
    grad_g   = dL_g / dtheta
    eps_g    = rho grad_g / (||grad_g|| + 1e-12)           (global L2 norm)
    L_g^SA   = L_g(theta + eps_g)
    h_g      = dL_g / dtheta evaluated at theta + eps_g    (eps_g held fixed)

Every cell is perturbed from the same theta: no perturbation leaks from one
cell to the next (the official PyTorch code restores theta between cells; here
the cells are computed together). A cell absent from the batch has n_g = 0,
L_g = L_g^SA = 0 and zero gradients (eps_g = 0: the formula stays defined).
rho = 0 gives h_g = grad_g (plain per-cell gradients).

Two implementations of the same quantities:

* `cell_sam_dense(cell_loss, params, num_cells, rho)`: any model. A `vmap`
  over the cell index of (gradient, perturbation, gradient) on the whole
  parameter pytree; per-cell results are dense pytrees with a leading [G]
  axis. Used for backbones without the row structure below (LightGCN above
  `fairjax.models.lightgcn.GRAM_MAX_NODES` nodes) and as the reference in
  tests.

* `cell_sam_rows(example_loss, rows, keys, cell, valid, ...)`: models whose
  loss of example b depends only on gathered embedding rows of that example
  (MF: e_u, e_i, e_j). Then grad_g is non-zero only on the table rows that
  g's examples touch, and its value on row r is the sum of the slot gradients
  of g's slots reading r (duplicates in a batch summed). This is the vmap
  over cells with every cell's all-zero part dropped: since each example
  belongs to one cell, slice g of the vmapped computation differs from theta
  only on g's rows, so one pass over the batch with each slot perturbed by its
  own cell's eps gives every L_g^SA and h_g at once. Cost: two forward and
  backward passes over the gathered rows plus the grouping of S (cell, row)
  keys (`segment_ids`), independent of the table sizes and of G. Per-cell
  gradients come back as segments: (cell, key) pairs with one row of values
  each. This is the deviation from "vmap over cell masks" in DESIGN §4: the
  results are those of the vmap (tested against `cell_sam_dense`), without
  its G-fold work on rows that are zero.

  Linear propagation (`coupling`). When the gathered rows are a linear map
  of the parameters, rows = P theta (LightGCN: the final embeddings are P
  E^0 with P the layer mean of powers of the normalised adjacency), the
  gradient w.r.t. theta is P^T of the row gradient and the perturbation
  moves the rows by P eps_g. With J the slot gradients and K[s, s'] = (P
  P^T)[key_s, key_s'] restricted to pairs of slots of the same cell,
    ||grad_g||^2 = sum_{s in g} J_s . (K J)_s,   rows'_s = rows_s +
    rho (K J)_s / (||grad_g|| + 1e-12),
  and ||h_g|| likewise from the slot gradients at rows'. K = [key_s ==
  key_s'] (P = I) is the plain segment path. The sums over a cell's slots
  with one key are that cell's gradient segment, so K is applied to the
  segments (one entry per (cell, key); `couple_on='segments'`, the
  default): ||grad_g||^2 = sum_k grad_seg_k . (K grad_seg)_k over g's
  segments, and a key repeated in a cell is read from P P^T once (about
  0.64 of the slot pairs on ML-1M batches). K is block diagonal over the cells:
  `dense_coupling` forms all entries and masks them; `blocked_coupling`
  forms only the diagonal blocks (the entries sorted by cell into static
  per-cell capacities, `cell_capacities`), about sum_g (n_g / n)^2 of the
  entries (0.12 on ML-1M's 12 cells), and falls back to the dense product
  for a batch with a cell above its capacity; `ops.gram_coupling` does
  the blocks natively.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fairjax.ops.segment_rows import segment_rows

Array = jax.Array
PyTree = Any

SAM_EPS = 1e-12  # added to the norm as in the official code: rho g / (|g| + eps).


def _check_rho(rho) -> None:
  if isinstance(rho, (int, float)) and rho < 0:
    raise ValueError(f"rho must be >= 0, got {rho}")


def global_norm(tree: PyTree) -> Array:
  """||tree||_2 over all leaves: sqrt(sum of squares)."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


class DenseCellSam(NamedTuple):
  """Per-cell results of `cell_sam_dense` (leading axis G on every field).

  Attributes:
    loss: [G] L_g at theta (0 for an absent cell).
    loss_sa: [G] L_g^SA = L_g(theta + eps_g).
    count: [G] n_g, rows of cell g in the batch.
    grad: pytree of [G, ...] grad_g (dense).
    grad_norm: [G] ||grad_g||.
    h: pytree of [G, ...] h_g (dense).
    h_norm: [G] ||h_g||.
  """

  loss: Array
  loss_sa: Array
  count: Array
  grad: PyTree
  grad_norm: Array
  h: PyTree
  h_norm: Array


def cell_sam_dense(cell_loss: Callable[[PyTree, Array], tuple[Array, Array]],
                   params: PyTree, num_cells: int,
                   rho: float | Array | None) -> DenseCellSam:
  """Sharpness-aware loss and gradient of every cell, vmapped over cells.

  Args:
    cell_loss: `(params, g) -> (L_g, n_g)`, the mean loss of the batch rows
      of cell g (0 when n_g = 0) and their count; g is a traced int32.
    params: the parameters theta (any pytree).
    num_cells: G (static).
    rho: perturbation radius >= 0; None skips the perturbed pass (L^SA = L,
      h = grad).

  Returns:
    `DenseCellSam`; see the module docstring for the formulas.
  """
  if rho is not None:
    _check_rho(rho)
  grad_fn = jax.value_and_grad(cell_loss, has_aux=True)

  def one(g):
    (loss, count), grad = grad_fn(params, g)
    norm = global_norm(grad)
    if rho is None:
      return DenseCellSam(loss, loss, count, grad, norm, grad, norm)
    scale = rho / (norm + SAM_EPS)
    perturbed = jax.tree.map(lambda p, d: p + scale * d, params, grad)
    (loss_sa, _), h = grad_fn(perturbed, g)
    return DenseCellSam(loss, loss_sa, count, grad, norm, h, global_norm(h))

  return jax.vmap(one)(jnp.arange(num_cells, dtype=jnp.int32))


TABLE_MAX = 1 << 20  # largest key bound for the table path of segment_ids


def segment_ids(keys: Array, key_bound: int | None = None
                ) -> tuple[Array, Array]:
  """Segment ids grouping equal keys: seg[a] = seg[b] iff keys[a] = keys[b].

  Two exact paths with the same output convention:
    * table (key_bound given and <= TABLE_MAX): a scatter-min of the slot
      indices into a [key_bound] table; the id of a key is its first slot;
    * sort (otherwise): a stable argsort, ids numbered in key order.

  Args:
    keys: int [S], in [0, key_bound) when key_bound is given.
    key_bound: exclusive upper bound of the keys (static), or None.

  Returns:
    (seg [S] int32 in [0, S), seg_slot [S] int32): seg_slot[k] is a slot of
    segment k, or -1 when no slot has id k.
  """
  s = keys.shape[0]
  slots = jnp.arange(s, dtype=jnp.int32)
  if key_bound is not None and key_bound <= TABLE_MAX:
    table = jnp.full((key_bound,), s, jnp.int32).at[keys].min(slots)
    seg = table[keys]
    return seg, jnp.where(seg == slots, slots, -1)
  order = jnp.argsort(keys, stable=True)
  sk = keys[order]
  new = jnp.concatenate([jnp.ones((1,), bool), sk[1:] != sk[:-1]])
  sid = jnp.cumsum(new.astype(jnp.int32)) - 1
  seg = jnp.zeros((s,), jnp.int32).at[order].set(sid)
  pos = jnp.nonzero(new, size=s, fill_value=s - 1)[0]
  seg_slot = jnp.where(slots <= sid[-1], order[pos].astype(jnp.int32), -1)
  return seg, seg_slot


class RowCellSam(NamedTuple):
  """Per-cell results of `cell_sam_rows`, per-cell gradients as segments.

  A segment k is one (cell, table row) pair touched by the batch: cell
  `seg_cell[k]` (G for unused/padding segments), row key `seg_key[k]`.
  grad_g restricted to row r is `grad_seg[k]` for the segment k of (g, r)
  and 0 on rows g does not touch; likewise h_g with `h_seg`.

  Attributes:
    loss, loss_sa, count, grad_norm, h_norm: [G] as in `DenseCellSam`.
    seg: [S] segment of each slot (`segment_ids`).
    seg_cell: [S] cell of each segment (G = unused or padding).
    seg_key: [S] row key of each segment.
    grad_seg: [S, d] grad_g rows at theta.
    h_seg: [S, d] h_g rows at theta + eps_g.
    slot_grad: [S, d] per-slot gradient of L_{cell(s)} at theta.
    slot_h: [S, d] per-slot gradient of L_{cell(s)} at theta + eps_{cell(s)}
      (pull back `q[cell] * slot_h` through the gather for sum_g q_g h_g).
  """

  loss: Array
  loss_sa: Array
  count: Array
  grad_norm: Array
  h_norm: Array
  seg: Array
  seg_cell: Array
  seg_key: Array
  grad_seg: Array
  h_seg: Array
  slot_grad: Array
  slot_h: Array


def _cell_weights(cell, valid, num_cells, dtype):
  g = num_cells
  valid = valid.astype(bool)
  cell = jnp.where(valid, cell.astype(jnp.int32), g)
  count = jax.ops.segment_sum(valid.astype(dtype), cell, g + 1)[:g]
  inv = 1.0 / jnp.maximum(count, 1.0)
  w = jnp.where(valid, jnp.append(inv, 0.0)[cell], 0.0)  # [B]
  return cell, count, w


def cell_sam_rows(example_loss: Callable[[Array], Array], rows: Array,
                  keys: Array, slot_example: Array, cell: Array, valid: Array,
                  num_cells: int, key_space: int, rho: float | Array | None,
                  coupling: Coupling | None = None,
                  segment_impl: str = "jax",
                  couple_on: str = "segments",
                  loss_vjp: Callable[[Array, Array], tuple[Array, Array]]
                  | None = None) -> RowCellSam:
  """Sharpness-aware loss and gradient of every cell on gathered rows.

  The parameters are embedding tables; the batch reads S slots, rows[s] =
  table row `keys[s]` (the tables share one key space, e.g. user u -> u and
  item i -> U + i). Example b's loss l_b must depend only on its own slots
  (those s with slot_example[s] = b). Then, for cell g and w_b = valid_b /
  n_{cell_b}:

    L_g     = sum_{b in g} w_b l_b(rows)
    grad_g  = scatter over keys of the slot gradients J_s = w_b dl_b/drows_s
              of g's slots (equal keys summed)
    eps_g   = rho grad_g / (||grad_g|| + 1e-12)
    rows'_s = rows_s + eps_{cell(s)}[keys_s]
    L_g^SA, h_g as L_g, grad_g at rows'.

  Equals `cell_sam_dense` on the tables (tested), at the cost of two passes
  over the batch.

  Args:
    example_loss: `rows [S, d] -> [B]` per-example losses.
    rows: [S, d] gathered rows at theta.
    keys: int [S] row key of each slot, in [0, key_space).
    slot_example: int [S] example index (in [0, B)) of each slot.
    cell: int [B] cell of each example, in [0, G).
    valid: bool [B]; invalid (padding) examples belong to no cell.
    num_cells: G (static).
    key_space: K, number of distinct keys (static); (G + 1) K must fit int32.
    rho: perturbation radius >= 0; None skips the perturbed pass (one pass,
      L^SA = L and h = grad: the "no SAM" case, equal to rho = 0).
    coupling: when rows = P theta (module docstring), a function
      `(keys [M], cells [M]) -> apply` (`dense_coupling`,
      `blocked_coupling`, `ops.gram_coupling.gram_coupling`) with
      apply(J)[a] = sum over the entries a' of a's cell of (P P^T)[keys_a,
      keys_a'] J[a'] (0 for entries of cell G): norms and perturbations
      then use the parameter-space geometry. None: rows are parameter rows
      (P = I). The segments (grad_seg, h_seg) stay row-space gradients
      either way.
    segment_impl: the `ops.segment_rows` implementation of the two passes'
      segment sums ('jax', 'native' or 'auto'; the same sums, to the bit).
    couple_on: what the coupling multiplies. 'segments' (default): the
      cells' gradient segments, one entry per (cell, key) (a key repeated
      in a cell is read from P P^T once); 'slots': the slot gradients, one
      entry per slot, the rounding of earlier versions. The same sums in
      another order (within float32 rounding).
    loss_vjp: optional `(rows [S, d], w [B]) -> (losses [B], d(sum_b w_b
      l_b) / drows [S, d])`, the losses and their weighted gradient at once
      (e.g. `ops.triplet_bpr.triplet_bpr_vjp`'s native kernel); it must
      agree with example_loss. None: `jax.vjp` of example_loss.

  Returns:
    `RowCellSam`.
  """
  if rho is not None:
    _check_rho(rho)
  if couple_on not in ("segments", "slots"):
    raise ValueError(f"couple_on must be 'segments' or 'slots', got "
                     f"{couple_on!r}")
  g = num_cells
  if (g + 1) * key_space >= 2 ** 31:
    raise ValueError(f"(num_cells + 1) * key_space = {(g + 1) * key_space} "
                     "does not fit int32")
  cell, count, w = _cell_weights(cell, valid, g, rows.dtype)
  slot_cell = cell[slot_example]  # [S], G for padding
  seg, seg_slot = segment_ids(slot_cell * key_space + keys.astype(jnp.int32),
                              (g + 1) * key_space)
  s = rows.shape[0]
  safe = jnp.maximum(seg_slot, 0)
  seg_cell = jnp.where(seg_slot >= 0, slot_cell[safe], g)
  seg_key = keys[safe].astype(jnp.int32)

  if coupling is None:
    couple = None
  elif couple_on == "segments":
    couple = coupling(seg_key, seg_cell)
  else:
    couple = coupling(keys.astype(jnp.int32), slot_cell)

  def pass_at(x):
    if loss_vjp is None:
      losses, vjp = jax.vjp(example_loss, x)
      (slot_g,) = vjp(w.astype(losses.dtype))
    else:
      losses, slot_g = loss_vjp(x, w.astype(x.dtype))
    per_cell = jax.ops.segment_sum(w * losses, cell, g + 1)[:g]
    grad_seg = segment_rows(slot_g, seg, s, segment_impl)
    if couple is None:
      coupled = grad_seg[seg]  # the cell's gradient on the slot's row
      sq = jax.ops.segment_sum(jnp.sum(grad_seg * grad_seg, -1), seg_cell,
                               g + 1)[:g]
    elif couple_on == "segments":
      coupled_seg = couple(grad_seg)  # (P P^T grad_g) at the cell's rows
      coupled = coupled_seg[seg]
      sq = jax.ops.segment_sum(jnp.sum(grad_seg * coupled_seg, -1),
                               seg_cell, g + 1)[:g]
    else:
      coupled = couple(slot_g)  # (P P^T J) at the slot, within its cell
      sq = jax.ops.segment_sum(jnp.sum(slot_g * coupled, -1), slot_cell,
                               g + 1)[:g]
    return per_cell, slot_g, grad_seg, jnp.sqrt(jnp.maximum(sq, 0.0)), coupled

  loss, slot_grad, grad_seg, grad_norm, coupled = pass_at(rows)
  if rho is None:
    loss_sa, slot_h, h_seg, h_norm = loss, slot_grad, grad_seg, grad_norm
  else:
    scale = jnp.append(rho / (grad_norm + SAM_EPS), 0.0)  # [G + 1]
    eps = scale[slot_cell][:, None] * coupled
    loss_sa, slot_h, h_seg, h_norm, _ = pass_at(rows + eps)
  return RowCellSam(loss=loss, loss_sa=loss_sa, count=count,
                    grad_norm=grad_norm, h_norm=h_norm, seg=seg,
                    seg_cell=seg_cell, seg_key=seg_key, grad_seg=grad_seg,
                    h_seg=h_seg, slot_grad=slot_grad, slot_h=slot_h)


# `cell_sam_rows(coupling=)`: (keys [M], cells [M]) -> (J [M, d] -> [M, d]).
Coupling = Callable[[Array, Array], Callable[[Array], Array]]
_HIGHEST = jax.lax.Precision.HIGHEST


def dense_coupling(kernel_at: Callable[[Array, Array], Array],
                   num_cells: int) -> Coupling:
  """The coupling of the whole [M, M] kernel K[a, b] = (P P^T)[keys_a,
  keys_b]: K masked to pairs of entries of one cell (< num_cells), times J.

  Args:
    kernel_at: `(a [m], b [n]) -> [m, n]`, (P P^T)[a[:, None], b[None, :]].
    num_cells: G; entries of cell G (padding, unused segments) take no part.
  """
  def make(keys, cells):
    same = ((cells[:, None] == cells[None, :])
            & (cells < num_cells)[:, None])
    masked = jnp.where(same, kernel_at(keys, keys), 0.0)
    return lambda j: jnp.matmul(masked.astype(j.dtype), j, precision=_HIGHEST)
  return make


def cell_capacities(cell_counts, batch_size: int, slots_per_example: int,
                    sigmas: float = 6.0) -> tuple[int, ...] | None:
  """Static per-cell slot capacities for `blocked_coupling`.

  A batch of B examples drawn from the training examples holds about
  Binomial(B, p_g) examples of cell g (p_g = cell_counts[g] / total);
  capacity_g = slots_per_example * min(B, ceil(B p_g + sigmas * std)), 0
  for an empty cell. A batch beyond a capacity stays exact (the dense
  fallback), only slower.

  Returns:
    The capacities, or None when the blocks would not halve the dense
    product's S^2 entries (small batches, one dominant cell).
  """
  counts = np.asarray(cell_counts, np.float64)
  p = counts / max(float(counts.sum()), 1.0)
  bound = np.ceil(batch_size * p + sigmas * np.sqrt(batch_size * p * (1 - p)))
  caps = tuple(int(slots_per_example * n) for n in
               np.where(counts > 0, np.minimum(batch_size, bound), 0))
  full = slots_per_example * batch_size
  return caps if 2 * sum(c * c for c in caps) <= full * full else None


def blocked_coupling(kernel_at: Callable[[Array, Array], Array],
                     capacities: tuple[int, ...]) -> Coupling:
  """The coupling from the cells' diagonal blocks only.

  The entries are sorted by cell into static blocks of `capacities[g]`
  places (`cell_capacities`); block g is kernel_at(k_g, k_g) at its
  entries' keys k_g
  (empty places masked), so the work is sum_g capacity_g^2 instead of S^2.
  A batch with more entries in a cell than its capacity takes
  `dense_coupling` (a `lax.cond`): the result is exact for every batch.

  Args:
    kernel_at: `(a [m], b [n]) -> [m, n]`, (P P^T)[a[:, None], b[None, :]].
    capacities: static entry capacity of each cell (G = len).
  """
  num_cells = len(capacities)
  offsets = np.concatenate([[0], np.cumsum(capacities)]).astype(np.int32)
  total = int(offsets[-1])

  def make(keys, slot_cell):
    s = slot_cell.shape[0]
    order = jnp.argsort(slot_cell, stable=True).astype(jnp.int32)
    sorted_cell = slot_cell[order]
    counts = jnp.bincount(slot_cell, length=num_cells + 1)
    rank = (jnp.arange(s, dtype=jnp.int32)
            - (jnp.cumsum(counts) - counts)[sorted_cell])
    cap = jnp.asarray(capacities + (0,), jnp.int32)  # padding cell: none
    place = jnp.where(rank < cap[sorted_cell],
                      jnp.asarray(offsets)[sorted_cell] + rank, total)
    # slot_at[place] = the slot there, s for an empty place.
    slot_at = jnp.full((total + 1,), s, jnp.int32).at[place].set(order)[:total]
    fits = jnp.all(counts[:num_cells] <= cap[:num_cells])
    keys_at = jnp.append(keys, 0)[slot_at]
    filled = slot_at < s
    blocks = []
    for g, c in enumerate(capacities):
      if c:
        part = slice(int(offsets[g]), int(offsets[g]) + c)
        k, f = keys_at[part], filled[part]
        blocks.append((part, jnp.where(f[:, None] & f[None, :],
                                       kernel_at(k, k), 0.0)))

    def blocked(j):
      if not blocks:
        return jnp.zeros_like(j)
      j_at = jnp.append(j, jnp.zeros((1,) + j.shape[1:], j.dtype), 0)[slot_at]
      out = jnp.concatenate([
          jnp.matmul(kb.astype(j.dtype), j_at[part], precision=_HIGHEST)
          for part, kb in blocks])
      return jnp.zeros((s + 1,) + j.shape[1:], j.dtype).at[slot_at].set(
          out)[:s]

    def dense(j):
      return dense_coupling(kernel_at, num_cells)(keys, slot_cell)(j)

    return lambda j: jax.lax.cond(fits, blocked, dense, j)

  return make


def segments_to_dense(seg_values: Array, seg_cell: Array, seg_key: Array,
                      num_cells: int, key_space: int) -> Array:
  """Per-cell dense tables [G, K, d] from segments (tests, diagnostics).

  dense[g, r] = sum of seg_values[k] over segments k with (seg_cell[k],
  seg_key[k]) = (g, r); unused segments (cell G) are dropped.
  """
  d = seg_values.shape[-1]
  out = jnp.zeros((num_cells + 1, key_space, d), seg_values.dtype)
  return out.at[seg_cell, seg_key].add(seg_values)[:num_cells]
