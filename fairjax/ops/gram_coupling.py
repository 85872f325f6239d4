"""ITFR's per-cell products with a dense Gram matrix, K J with K block diagonal.

Entries a (a batch's gradient segments or slots) carry a key, a row of the
Gram matrix P P^T [N, N], and a cell; K[a, b] = gram[key_a, key_b] when a
and b share a cell in [0, G), else 0 (`group_sam.cell_sam_rows(coupling=)`,
LightGCN). `gram_coupling(gram, num_cells, capacities, impl)` returns that
coupling, `(keys [M], cells [M]) -> (J [M, d] -> K J)`, two ways:

  'native'  `fairjax/native/gram_coupling.cc`: the blocks K_g are read from
            the Gram matrix once per (keys, cells) (target gram_blocks),
            only the entries present (XLA's gather costs its static
            capacities' squares whether a place is used or not), with the
            next row's entries prefetched; each product is a second call
            (gram_apply), rows split over XLA's intra-op threads;
  'jax'     `group_sam.blocked_coupling` with the capacities (static
            per-cell blocks, a dense fallback for a batch over them), or
            `group_sam.dense_coupling` when capacities is None.

The two add the same products in another order (float32 rounding apart);
the native sums are the same for any thread count. `impl='auto'` takes
'native' where it loads and the backend is the CPU (`fairjax.native.resolve`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import native
from fairjax.ops import group_sam

Array = jax.Array

# Floats of the blocks kept between the two products (64 MiB at most): a
# block beyond it is read from the Gram matrix again by each product.
MAX_BLOCK_FLOATS = 1 << 24


def block_budget(num_entries: int, capacities: tuple[int, ...] | None) -> int:
  """Static size of the kept blocks: sum_g capacity_g^2 (the blocks of a
  typical batch) or M^2 without capacities, at most MAX_BLOCK_FLOATS."""
  want = (num_entries * num_entries if capacities is None
          else sum(c * c for c in capacities))
  return int(max(1, min(want, MAX_BLOCK_FLOATS)))


def gram_coupling(gram: Array, num_cells: int,
                  capacities: tuple[int, ...] | None = None,
                  impl: str = "auto") -> group_sam.Coupling:
  """The coupling K of `gram` [N, N] over `num_cells` cells (module
  docstring); capacities: `group_sam.cell_capacities` (the 'jax' blocks and
  the native kept-block budget), or None."""
  if native.resolve("gram_blocks", impl) == "native":
    return _native(gram, num_cells, capacities)

  def kernel_at(a, b):
    return gram[a[:, None], b[None, :]]

  if capacities is None:
    return group_sam.dense_coupling(kernel_at, num_cells)
  return group_sam.blocked_coupling(kernel_at, capacities)


def _native(gram, num_cells, capacities) -> group_sam.Coupling:
  g = np.int64(num_cells)

  def make(keys: Array, cells: Array) -> Callable[[Array], Array]:
    if keys.ndim != 1 or cells.shape != keys.shape:
      raise ValueError(f"gram_coupling: keys and cells must be [M], got "
                       f"{keys.shape} and {cells.shape}")
    keys, cells = keys.astype(jnp.int32), cells.astype(jnp.int32)
    gm = gram.astype(jnp.float32)
    budget = block_budget(keys.shape[0], capacities)
    blocks = jax.ffi.ffi_call(
        native.target("gram_blocks"),
        jax.ShapeDtypeStruct((budget,), jnp.float32))(gm, keys, cells,
                                                      num_cells=g)

    def apply(j: Array) -> Array:
      if j.ndim != 2 or j.shape[0] != keys.shape[0]:
        raise ValueError(f"gram_coupling: J must be [{keys.shape[0]}, d], "
                         f"got {j.shape}")
      out = jax.ffi.ffi_call(
          native.target("gram_apply"),
          jax.ShapeDtypeStruct(j.shape, jnp.float32))(
              gm, keys, cells, blocks, j.astype(jnp.float32), num_cells=g)
      return out.astype(j.dtype)

    return apply

  return make
