"""Exact expected hypervolume improvement, 2 maximised objectives (JAX).

For a front P, reference r and a new point Y = (Y_1, Y_2) with independent
Y_j ~ N(mu_j, sigma_j^2), EHVI = E[HV(P + {Y}; r) - HV(P; r)].

Decomposition into strips (Emmerich, Deutz & Klinkenberg 2011; Yang, Emmerich,
Deutz & Baeck 2019, 2-D case). Clip every front point to r (a point not
beyond r then adds no area) and sort by the first objective, a_0 = r_1 <= a_1
<= ... <= a_k, with b_i the second objective. Over the strip a_{i-1} < z_1
<= a_i the front dominates up to the height

  h_i = max_{j >= i} b_j    (a suffix maximum; dominated points, ties and
                             duplicates need no cleaning),

and beyond a_k nothing is dominated: the last strip (a_k, inf) has h = r_2.
The non-dominated cells are (a_{i-1}, a_i] x (h_i, inf), and the improvement
of Y is

  HVI(Y) = sum_i (min(Y_1, a_i) - a_{i-1})_+ (Y_2 - h_i)_+
           + (Y_1 - a_k)_+ (Y_2 - r_2)_+.

Each term is a product of one function of Y_1 and one of Y_2, so with
independent Gaussians the expectation is exact. With the Gaussian partial
expectation (z = (mu - l) / sigma)

  psi(l) = E[(Y - l)_+] = sigma phi(z) + (mu - l) Phi(z)

and E[(min(Y_1, a_i) - a_{i-1})_+] = psi_1(a_{i-1}) - psi_1(a_i):

  EHVI = sum_{i=1}^{k} (psi_1(a_{i-1}) - psi_1(a_i)) psi_2(h_i)
         + psi_1(a_k) psi_2(r_2).

psi_1 is evaluated once per a_i, so the cost is O(k) per candidate (plus the
O(k log k) sort of the front, shared by all candidates). In jax.numpy:
jit-able with a padded front (pad rows with r or NaN) and differentiable in
mu and sigma; sigma is floored at `min_std`, so a deterministic prediction
is safe. Phi is 0.5 erfc(-z / sqrt 2), accurate in the lower tail.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fairjax.errors import ConfigError

_INV_SQRT_2PI = 0.3989422804014327
_SQRT_HALF = 0.7071067811865476


def _phi(z: jax.Array) -> jax.Array:
  return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _psi(mu: jax.Array, sigma: jax.Array, l: jax.Array) -> jax.Array:
  """E[(Y - l)_+] for Y ~ N(mu, sigma^2)."""
  z = (mu - l) / sigma
  return sigma * _phi(z) + (mu - l) * (0.5 * jax.lax.erfc(-z * _SQRT_HALF))


def ehvi_cells(front: jax.Array, ref: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """The sorted strip bounds a_0..a_k and heights h_1..h_k of a front.

  Args:
    front: [m, 2] front points (any, unsorted; NaN rows are ignored).
    ref: [2] reference point r.

  Returns:
    (a [m + 1], h [m]): a_0 = r_1 <= a_1 <= ... <= a_m (points clipped to r)
    and h_i = max_{j >= i} b_j; a strip of zero width adds nothing.
  """
  p = jnp.where(jnp.isnan(front), ref, front)
  p = jnp.maximum(p, ref)
  p = jnp.concatenate([ref[None, :], p], axis=0)
  order = jnp.argsort(p[:, 0], stable=True)
  h = jax.lax.cummax(p[order, 1], axis=0, reverse=True)
  return p[order, 0], h[1:]


@functools.partial(jax.jit, static_argnames=("min_std",))
def ehvi(mean: jax.Array, std: jax.Array, front: jax.Array, ref: jax.Array,
         min_std: float = 1e-9) -> jax.Array:
  """Exact EHVI of independent Gaussian candidates (see module docstring).

  EHVI = sum_i (psi_1(a_{i-1}) - psi_1(a_i)) psi_2(h_i)
         + psi_1(a_k) psi_2(r_2).

  Args:
    mean: [n, 2] predictive means mu (both objectives maximised).
    std: [n, 2] predictive standard deviations sigma (floored at min_std).
    front: [m, 2] current front; m may be 0; dominated points, points not
      beyond ref and NaN rows (padding) are allowed and add nothing.
    ref: [2] reference point r.
    min_std: floor on sigma.

  Returns:
    [n] expected hypervolume improvement (>= 0), in the units of
    objective 1 times objective 2.

  Raises:
    ConfigError: shapes other than mean, std [n, 2], front [m, 2], ref [2].
  """
  mean = jnp.asarray(mean)
  if mean.ndim != 2 or mean.shape[1] != 2 or jnp.shape(std) != mean.shape:
    raise ConfigError(f"mean and std must both be [n, 2], got "
                      f"{mean.shape} and {jnp.shape(std)}")
  if jnp.shape(ref) != (2,):
    raise ConfigError(f"ref must be [2], got {jnp.shape(ref)}")
  dtype = jnp.result_type(mean.dtype, jnp.float32)
  mean = mean.astype(dtype)
  sigma = jnp.maximum(jnp.asarray(std, dtype), min_std)
  front = jnp.asarray(front, dtype)
  if front.size == 0:
    front = front.reshape(0, 2)
  if front.ndim != 2 or front.shape[1] != 2:
    raise ConfigError(f"front must be [m, 2], got {front.shape}")
  ref = jnp.asarray(ref, dtype)
  a, h = ehvi_cells(front, ref)
  # One psi call for both objectives: levels a_0..a_m for objective 1 and
  # h_1..h_m, r_2 for objective 2 (the last strip's height).
  levels = jnp.stack([a, jnp.concatenate([h, ref[1:]])])     # [2, m + 1]
  psi = _psi(mean[:, :, None], sigma[:, :, None], levels[None])  # [n, 2, m+1]
  # psi_1(a_{i-1}) - psi_1(a_i), with psi_1(a_{m+1} = inf) = 0 at the end.
  width = psi[:, 0] - jnp.pad(psi[:, 0, 1:], ((0, 0), (0, 1)))
  return jnp.maximum(jnp.sum(width * psi[:, 1], axis=1), 0.0)
