"""The bfloat16 proposals of the exact dual top-K in one native call.

`bf16_proposals(user_q, item_emb, bias, exclude, id_offset, k2)` returns,
per query, k2 items with the largest proposal scores

  s'_bi = fl32(sum_j bf16(u_bj) bf16(v_ij)) + bias_i

(products exact in float32, float32 sums, the float32 bias added after;
bf16 rounds to nearest even and flushes results below 2^-126 to zero), so
that every item left out has s' <= the smallest score returned, and the
item statistics of the proposal bound: max |v_i|^2 and max |v_i -
bf16(v_i)|^2 over the items with a finite bias. Items of a query's
exclusion row are never proposed; items with bias -inf never are.

The kernel (`fairjax/native/dual_proposals.cc`) keeps the GEMM in the
cache: 32 items at a time are converted to bfloat16 tiles and multiplied
with pairs of 16-query tiles by AMX (TDPBF16PS), and each score is compared
with its query's running k2-th score at once; the [B, n] scores are never
written. `fairjax.retrieval.blocked` uses it for `precision="bf16"` when
`proposal_impl` resolves to 'native' ('auto': the kernel loads, the backend
is the CPU and the CPU has AMX-BF16; elsewhere the XLA scan is faster than
the kernel's plain loop). `mode=1` forces the plain loop (tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import native

Array = jax.Array

MAX_DIM = 128  # the kernel's largest embedding width (four 32-wide blocks)


def cpu_has_amx() -> bool:
  """True when /proc/cpuinfo lists amx_tile and amx_bf16."""
  return native.has_cpu_flags("amx_tile", "amx_bf16")


def amx_active() -> bool:
  """True when the kernel loads with its AMX tiles and the OS grants the
  tile state to this process (`arch_prctl(ARCH_REQ_XCOMP_PERM)`): what
  mode 0 runs; else it runs the plain loop."""
  if not native.available("dual_proposals")[0]:
    return False
  return bool(native.library("dual_proposals").FairjaxDualProposalsAmx())


def resolve(impl: str) -> str:
  """'native' or 'jax' for `impl` in {'auto', 'native', 'jax'} ('auto':
  native only on a CPU with AMX-BF16, where it is the faster)."""
  if impl == "auto":
    if not cpu_has_amx():
      return "jax"
    return native.resolve("dual_proposals", "auto")
  return native.resolve("dual_proposals", impl)


def bf16_proposals(user_q: Array, item_emb: Array, bias: Array,
                   exclude: Array | None, id_offset: Array | int, k2: int,
                   mode: int = 0) -> tuple[Array, Array, Array]:
  """(scores [B, k2], global ids [B, k2], stats [2]) of the module doc.

  Args:
    user_q: float32 [B, d] queries (d <= MAX_DIM).
    item_emb: float32 [n, d] local items.
    bias: float32 [n]: -mu[g_i], or -inf (padding, groups not allowed).
    exclude: int32 [B, E] global ids never to propose (-1 pads), or None.
    id_offset: global id of local item 0.
    k2: proposals per query.
    mode: 0 AMX where the OS allows it, else the plain loop; 1 the plain
      loop.

  Returns:
    rows sorted by (score desc, id asc), slots beyond a row's count of
    proposable items (-inf, -1); stats float32 [2].
  """
  if (user_q.ndim != 2 or item_emb.ndim != 2
      or user_q.shape[1] != item_emb.shape[1]
      or bias.shape != item_emb.shape[:1]):
    raise ValueError(f"bf16_proposals: user_q must be [B, d], item_emb "
                     f"[n, d] and bias [n], got {user_q.shape}, "
                     f"{item_emb.shape}, {bias.shape}")
  if not 1 <= user_q.shape[1] <= MAX_DIM or k2 < 1:
    raise ValueError(f"bf16_proposals: needs 1 <= d <= {MAX_DIM} and "
                     f"k2 >= 1, got d = {user_q.shape[1]}, k2 = {k2}")
  b = user_q.shape[0]
  if exclude is None:
    exclude = jnp.full((b, 1), -1, jnp.int32)
  else:
    exclude = jnp.sort(exclude.astype(jnp.int32), axis=1)
  call = jax.ffi.ffi_call(
      native.target("dual_proposals"),
      (jax.ShapeDtypeStruct((b, k2), jnp.float32),
       jax.ShapeDtypeStruct((b, k2), jnp.int32),
       jax.ShapeDtypeStruct((2,), jnp.float32)))
  return call(user_q.astype(jnp.float32), item_emb.astype(jnp.float32),
              bias.astype(jnp.float32), exclude,
              jnp.reshape(jnp.asarray(id_offset, jnp.int32), (1,)),
              mode=np.int64(mode))
