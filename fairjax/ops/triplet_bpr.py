"""Per-example BPR on gathered (u, i, j) rows, with its gradient written out.

x [3B, d] stacks the rows e_u, e_i, e_j of B examples (MF's gathered
embedding rows). The loss of example b is

  l_b = softplus(z_b),  z_b = s(u_b, j_b) - s(u_b, i_b),

with s the dot product or, with `cosine`, the cosine / tau (rows scaled by
rsqrt(max(||x||^2, 1e-12)), as `models.mf.normalize_rows`). ITFR's
per-cell passes (`group_sam.cell_sam_rows`) take the losses and the
gradient of sum_b w_b l_b twice a step: `triplet_bpr_vjp` gives both at
once, two ways:

  'native'  `fairjax/native/triplet_bpr.cc`: one pass over each example's
            rows on XLA's CPU threads, everything from five inner products
            of the raw rows (float32);
  'jax'     the gradient written out in jnp: three row sums per pass as
            matrix-vector products instead of the eight short-axis
            reductions autodiff leaves (any float dtype). XLA runs it as a
            dozen fusions over [3B, d] arrays.

Both equal the derivative of the plain formula up to float rounding
(tests/test_triplet_bpr.py checks them against autodiff in float64). The
native sums run in another order than XLA's. `impl='auto'` takes 'native'
when it loads here, the backend is the CPU and x is float32
(`fairjax.native.resolve`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import native
from fairjax.models import mf as mf_model
from fairjax.ops.reductions import row_sums

Array = jax.Array


def _written_out(x, w, b: int, cosine: bool, tau: float):
  """The 'jax' path: losses [B] and d(sum_b w_b l_b) / dx [3B, d]."""
  eps = mf_model._EPS  # normalize_rows' floor on ||x||^2
  if cosine:
    sq = row_sums(x * x)
    r = jax.lax.rsqrt(jnp.maximum(sq, eps))
    xn = x * r[:, None]
  else:
    xn = x
  eu, ei, ej = xn[:b], xn[b:2 * b], xn[2 * b:]
  s = row_sums(jnp.concatenate([eu * ei, eu * ej]))
  z = s[b:] - s[:b]
  if cosine:
    z = z / tau
  losses = jax.nn.softplus(z)
  gz = w.astype(losses.dtype) * jax.nn.sigmoid(z)  # d softplus(z) / dz
  if cosine:
    gz = gz / tau
  gz = gz[:, None]
  gx = jnp.concatenate([gz * (ej - ei), -gz * eu, gz * eu])
  if cosine:
    # d(x r)/dx with r = rsqrt(max(sq, eps)): r g - r^3 <x, g> x where
    # the max passes sq (half of it at a tie, as jnp.maximum's gradient).
    live = jnp.where(sq > eps, 1.0, jnp.where(sq == eps, 0.5, 0.0))
    proj = row_sums(x * gx)
    gx = r[:, None] * gx - (live * r * r * r * proj)[:, None] * x
  return losses, gx


def triplet_bpr_vjp(x: Array, w: Array, batch_size: int, cosine: bool,
                    tau: float, impl: str = "auto") -> tuple[Array, Array]:
  """(losses [B], d(sum_b w_b l_b) / dx [3B, d]) of x [3B, d], w [B].

  impl: 'auto', 'native' or 'jax' (module docstring).
  """
  b = int(batch_size)
  if x.ndim != 2 or x.shape[0] != 3 * b:
    raise ValueError(f"triplet_bpr: x must be [3B, d] = [{3 * b}, d] for "
                     f"batch_size {b}, got {x.shape}")
  if w.shape != (b,):
    raise ValueError(f"triplet_bpr: w must be [{b}], got {w.shape}")
  if (x.dtype == jnp.float32
      and native.resolve("triplet_bpr", impl) == "native"):
    call = jax.ffi.ffi_call(
        native.target("triplet_bpr"),
        (jax.ShapeDtypeStruct((b,), jnp.float32),
         jax.ShapeDtypeStruct(x.shape, jnp.float32)))
    return tuple(call(x, w.astype(jnp.float32), cosine=np.int32(cosine),
                      tau=np.float32(tau),
                      eps=np.float32(mf_model._EPS)))
  if impl == "native":  # float64: the kernel is float32 only
    raise native.NativeUnavailable(
        f"triplet_bpr's native kernel takes float32, got {x.dtype}")
  return _written_out(x, w, b, bool(cosine), float(tau))
