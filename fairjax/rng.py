"""The per-step PRNG key schedule shared by training and negative sampling.

Step t of a run uses rng_t = fold_in(rng, t) (`fairjax.train.make_step`);
`step_keys` computes a block of them at once, so an epoch can draw its keys
(and first negative-sampling rounds) before the scan, bit-identically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def step_keys(rng: jax.Array, first_step, num_steps: int) -> jax.Array:
  """[num_steps] keys fold_in(rng, first_step + i): the keys `make_step`
  derives for steps first_step, ..., first_step + num_steps - 1."""
  steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
  return jax.vmap(lambda s: jax.random.fold_in(rng, s))(steps)
