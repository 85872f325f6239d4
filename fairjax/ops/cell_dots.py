"""Inner products of per-cell gradient segments with a [K, G, D] buffer.

ITFR's collaborative loss balance needs, at every step, the G x G inner
products <h_i, C_j> of this batch's per-cell gradients h_i with the
previous epoch's cumulative per-cell gradients C_j. With MF the h_i are
row-sparse: segment k holds h_{cell[k]} on table row key[k]
(`group_sam.RowCellSam`), and C is stored as a [K, G, D] buffer, so

  out[i, j] = sum_{k : cell[k] = i} <h[k], C[key[k], j]>,

reading C at the touched rows only. Rows the caller knows to be zero can
be named by classes (`key_class`, `cell_class`): the native kernel skips
buffer row (key, j) when key_class[key] >= 0 differs from cell_class[j]
(ITFR on MF: a user's rows of C are zero in the cells of the other user
groups), which changes nothing but the work. Two implementations:

  'native'  `fairjax/native/cell_dots.cc`: reads the touched buffer rows
            in place (prefetched) and sums in float lanes and then double,
            in a fixed order, on XLA's CPU threads (the row gather of the
            'jax' path materialises [segments, G, D] floats, several MB
            per step);
  'jax'     the gather, the products and a segment sum in jnp.

They differ by float32 rounding of the result (the native sums are the
more accurate). `impl='auto'` takes 'native' when it loads here and the
backend is the CPU (`fairjax.native.resolve`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fairjax import native
from fairjax.ops.reductions import row_sums

Array = jax.Array


def cell_dots(c: Array, key: Array, cell: Array, h: Array,
              key_class: Array | None = None, cell_class: Array | None = None,
              impl: str = "auto") -> Array:
  """[G, G] out[i, j] = sum over segments k of cell i of <h[k], c[key[k], j]>.

  Args:
    c: float32 [K, G, D] buffer.
    key: int [S] buffer row of each segment, in [0, K) for the segments of
      a cell.
    cell: int [S] cell of each segment; values outside [0, G) (padding)
      contribute nothing.
    h: float32 [S, D] segment rows.
    key_class: optional int [K]; with cell_class [G], the promise that
      c[k, j] = 0 wherever key_class[k] >= 0 and key_class[k] !=
      cell_class[j] (the native kernel does not read those rows; the 'jax'
      path reads them).
    cell_class: optional int [G], with key_class.
    impl: 'auto', 'native' or 'jax'.
  """
  k, g, d = c.shape
  key = key.reshape(-1).astype(jnp.int32)
  cell = cell.reshape(-1).astype(jnp.int32)
  h = h.reshape(key.shape[0], d).astype(jnp.float32)
  if (key_class is None) != (cell_class is None):
    raise ValueError("key_class and cell_class go together")
  if native.resolve("cell_dots", impl) == "native":
    if key_class is None:
      key_class = jnp.full((k,), -1, jnp.int32)
      cell_class = jnp.zeros((g,), jnp.int32)
    call = jax.ffi.ffi_call(native.target("cell_dots"),
                            jax.ShapeDtypeStruct((g, g), jnp.float32))
    return call(c.astype(jnp.float32), key, cell, h,
                jnp.asarray(key_class, jnp.int32).reshape(k),
                jnp.asarray(cell_class, jnp.int32).reshape(g))
  rows = c.reshape(k, g * d)[key].reshape(-1, g, d)
  prod = (rows * h[:, None, :]).reshape(-1, d)
  per_seg = row_sums(prod).reshape(-1, g)  # (a batched dot is slow too)
  seg_cell = jnp.where((cell >= 0) & (cell < g), cell, g)
  return jax.ops.segment_sum(per_seg, seg_cell, g + 1)[:g]
