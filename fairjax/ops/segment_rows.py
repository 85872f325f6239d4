"""Row sums by segment, `jax.ops.segment_sum` of [S, D] rows, two ways.

out[k] = sum of x[a] over the slots a with seg[a] = k, each row's terms
added in slot order. ITFR's per-cell gradients take these sums twice a
step (`group_sam.cell_sam_rows`); XLA's scatter-add starts each from a
broadcast zero buffer that it copies for the second, which costs as much
as the sums. Two implementations:

  'native'  `fairjax/native/segment_rows.cc`: zeroes the result and adds
            the rows in one call;
  'jax'     `jax.ops.segment_sum`.

Both add the same terms in the same order from zero, so they agree to the
bit here (tests/test_segment_rows.py). `impl='auto'` takes 'native' when it
loads here and the backend is the CPU (`fairjax.native.resolve`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fairjax import native

Array = jax.Array


def segment_rows(x: Array, seg: Array, num_segments: int,
                 impl: str = "auto") -> Array:
  """[num_segments, D] row sums of x [S, D] by segment id seg [S].

  The ids must lie in [0, num_segments): the native kernel raises an error
  on one outside ('jax' drops it, as `jax.ops.segment_sum` does).
  """
  if x.ndim != 2 or seg.shape != x.shape[:1]:
    raise ValueError(f"segment_rows: x must be [S, D] and seg [S], got "
                     f"{x.shape} and {seg.shape}")
  if native.resolve("segment_rows", impl) == "native" and x.dtype == jnp.float32:
    call = jax.ffi.ffi_call(
        native.target("segment_rows"),
        jax.ShapeDtypeStruct((num_segments, x.shape[1]), jnp.float32))
    return call(x, seg.astype(jnp.int32))
  return jax.ops.segment_sum(x, seg, num_segments)
