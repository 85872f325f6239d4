"""ADVER's filter and discriminator MLPs (Flax Linen).

ADVER (the FADE paper's adversarial baseline, after Bose & Hamilton,
"Compositional Fairness Constraints for Graph Embeddings", ICML 2019):

    e~_u = F(e_u)                       filter MLP, d -> hidden -> d
    z_u  = D(e~_u)                      discriminator MLP, d -> hidden -> 1
    recommender step:    min_{theta, F}  L_rec(e~) - gamma L_D(z, a)
    discriminator steps: min_D           L_D(z, a)   (10 per batch)

with L_D the binary cross-entropy `fairjax.ops.discriminator_loss`. The
filtered embedding reaches the backbone through its `user_transform`
argument (`fairjax.models.pair_scores(..., user_transform=fn)`). The
training loop lives in `fairjax.methods`.

Both MLPs use LeakyReLU(0.2) hidden layers and Flax's default Dense init.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class Filter(nn.Module):
  """e~ = W_2 LeakyReLU(W_1 e + b_1) + b_2, maps [..., dim] -> [..., dim]."""

  dim: int
  hidden: int = 64

  @nn.compact
  def __call__(self, e: Array) -> Array:
    h = nn.leaky_relu(nn.Dense(self.hidden, name="dense_0")(e), 0.2)
    return nn.Dense(self.dim, name="dense_1")(h)


class Discriminator(nn.Module):
  """z = w^T LeakyReLU(W e + b) + c, maps [..., dim] -> [...] logits of a=1."""

  hidden: int = 64

  @nn.compact
  def __call__(self, e: Array) -> Array:
    h = nn.leaky_relu(nn.Dense(self.hidden, name="dense_0")(e), 0.2)
    return nn.Dense(1, name="dense_1")(h)[..., 0]


def adversary_init(rng: Array, dim: int, hidden: int = 64) -> dict:
  """Initial variables of ADVER's filter and discriminator.

  Args:
    rng: PRNG key.
    dim: user embedding dimension (e.g. `user_embed(...).shape[-1]`).
    hidden: hidden width of both MLPs.

  Returns:
    {'filter': variables, 'discriminator': variables}, each a Linen
    variables dict for `apply_filter` / `discriminate`.
  """
  k1, k2 = jax.random.split(rng)
  x = jnp.zeros((1, dim), jnp.float32)
  return {"filter": Filter(dim, hidden).init(k1, x),
          "discriminator": Discriminator(hidden).init(k2, x)}


def _hidden(variables: dict) -> int:
  return variables["params"]["dense_0"]["kernel"].shape[-1]


def apply_filter(filter_vars: dict, e: Array) -> Array:
  """F(e): the filtered user embedding, same shape as `e`."""
  return Filter(e.shape[-1], _hidden(filter_vars)).apply(filter_vars, e)


def discriminate(disc_vars: dict, e: Array) -> Array:
  """D(e): logits that the user has attribute a = 1, shape e.shape[:-1]."""
  return Discriminator(_hidden(disc_vars)).apply(disc_vars, e)
