"""Dense Adam + coupled L2 on an embedding table whose gradient is a few rows.

torch's Adam(weight_decay=l2), the optimiser of FADE's official code and of
`optax.chain(add_decayed_weights(l2), adam(lr, b1, b2, eps))`, moves every
row of a table at every step: the L2 term and the moments' decay are dense
even when the loss reads a few rows. Autodiff of the row gather gives a
table-shaped gradient (zeros with the rows scattered in) that the update
then reads whole. `update_rows` takes the rows instead:

  g = G + l2 p,  m <- (1 - b1) g + b1 m,  v <- (1 - b2) g^2 + b2 v,
  p <- p - lr (m / c1) / (sqrt(v / c2) + eps),   c_k = 1 - b_k^t,

G the gradient rows summed per row id (zero elsewhere), t the step count
after this step (optax's `count`). Two implementations compute it:

  'native'  one pass over p, m, v in place, on XLA's CPU threads
            (`fairjax/native/sparse_adam.cc`, built on first use);
  'jax'     the same formula in jnp, with G built by a scatter-add.

Both round slightly differently from optax's update (they multiply by
1 / c_k; duplicate rows are summed in another order): parameters agree to
about 1e-6 relative after a thousand steps (tests/test_sparse_adam.py checks
both against a float64 reference). The native kernel rounds as XLA's CPU
code does (multiply-adds, denormals flushed to zero), so rows without
gradient come out bit-identical to the 'jax' path's. Rows that Adam only
decays are where this matters: idle users' rows fall to ~1e-33 under
coupled L2, and when each coordinate stops moving there depends on the
flush and the contraction (README, Benchmarks: the fused FADE run).
`impl='auto'` takes 'native' when it loads on this machine and the arrays
live on the CPU, else 'jax'.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import native

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AdamL2:
  """Adam's hyperparameters and the coupled L2 weight (0 on bias leaves)."""

  lr: float
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  l2: float = 0.0


def inverse_corrections(count: Array, hyper: AdamL2) -> Array:
  """[1 / (1 - b1^t), 1 / (1 - b2^t)] in float32 for step count t >= 1,
  with 1 - b^t computed as optax's bias correction computes it."""
  c = jnp.stack([1 - hyper.b1 ** count, 1 - hyper.b2 ** count])
  return 1.0 / c.astype(jnp.float32)


def resolve(impl: str) -> str:
  """'native' or 'jax' for `impl` in {'auto', 'native', 'jax'}; 'native'
  raises `native.NativeUnavailable` with the reason when it cannot load."""
  return native.resolve("sparse_adam", impl)


def update_rows(p: Array, m: Array, v: Array, count: Array, ids: Array,
                grads: Array, hyper: AdamL2, impl: str = "auto"
                ) -> tuple[Array, Array, Array]:
  """One dense Adam + L2 step of table p [N, D] with moments m, v.

  ids: int32 [...] row ids in [0, N) (any shape; duplicates add up);
  grads: float32 [..., D], the loss gradient of each id's row; count: the
  step count t >= 1 after this step (int32 scalar). Returns (p, m, v).
  Under `jit` with donated inputs the native kernel updates in place.
  """
  ids = ids.reshape(-1).astype(jnp.int32)
  grads = grads.reshape(ids.shape[0], p.shape[1]).astype(jnp.float32)
  inv_c = inverse_corrections(count, hyper)
  if resolve(impl) == "native":
    call = jax.ffi.ffi_call(
        native.target("sparse_adam"),
        (jax.ShapeDtypeStruct(p.shape, jnp.float32),) * 3,
        input_output_aliases={0: 0, 1: 1, 2: 2})
    return tuple(call(p, m, v, ids, grads, inv_c,
                      lr=np.float32(hyper.lr), b1=np.float32(hyper.b1),
                      b2=np.float32(hyper.b2), a1=np.float32(1 - hyper.b1),
                      a2=np.float32(1 - hyper.b2), eps=np.float32(hyper.eps),
                      l2=np.float32(hyper.l2)))
  g = jnp.zeros_like(p).at[ids].add(grads) + hyper.l2 * p
  m = (1 - hyper.b1) * g + hyper.b1 * m
  v = (1 - hyper.b2) * (g * g) + hyper.b2 * v
  p = p + (-hyper.lr) * ((m * inv_c[0]) / (jnp.sqrt(v * inv_c[1]) + hyper.eps))
  return p, m, v
