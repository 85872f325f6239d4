"""Online dual control of group exposure (FairSync, DESIGN.md section 5).

Dual of the amortised exposure problem over a horizon of T requests, K items
each, minimum exposure m_g per group g (mu free, larger mu_g penalises g):

  W(mu) = sum_t max_x (s_t - A mu)^T x + sigma_S(mu),
  sigma_S(mu) = sum_g m_g mu_g + (T K - sum_g m_g) max_g mu_g.

Every B requests the centre sums the per-group counts n_g of the retrieved
lists over the batch and takes one Adam step (optax, lr eta, mu_0 = 0) on the
batch subgradient

  grad_g = -n_g + B (m_g / T + 1[g = argmax mu] (K - sum_h m_h / T)),

(the sigma_S term scaled by B / T; argmax ties -> lowest g). An over-exposed
group (n_g above its share) gets a negative gradient, so mu_g rises (more
penalty); an under-exposed group's mu_g falls (boost).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax.errors import ConfigError


class DualState(NamedTuple):
  """mu [G] and the Adam state; `step` counts batches seen."""
  mu: jax.Array
  opt_state: optax.OptState
  step: jax.Array


class DualControl(NamedTuple):
  """The static problem: `init() -> DualState`, `update(state, counts)`."""
  min_exposure: np.ndarray
  k: int
  horizon: int
  batch_size: int
  learning_rate: float

  @property
  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate)

  def init(self) -> DualState:
    mu = jnp.zeros((len(self.min_exposure),), jnp.float32)
    return DualState(mu, self.optimizer.init(mu), jnp.zeros((), jnp.int32))

  def update(self, state: DualState, counts: jax.Array,
             batch_size: jax.Array | None = None
             ) -> tuple[DualState, dict[str, jax.Array]]:
    """One dual step from the batch's group counts n_g (see module doc).

    `batch_size` overrides B for a short last batch (may be traced).
    """
    b = self.batch_size if batch_size is None else batch_size
    return _update(self, state, counts, b)


def check_feasible(min_exposure, k: int, horizon: int,
                   batch_size: int | None = None) -> np.ndarray:
  """Validates (m, K, T, B); returns m as float32.

  Raises:
    ConfigError: sum_g m_g > K T (infeasible), m_g < 0 or non-finite,
      K < 1, T < 1, B < 1 or B > T.
  """
  m = np.asarray(min_exposure, np.float64)
  if m.ndim != 1 or m.size == 0:
    raise ConfigError(f"min_exposure must be a non-empty [G] vector, got "
                      f"shape {m.shape}")
  if not np.all(np.isfinite(m)) or np.any(m < 0):
    raise ConfigError(f"min_exposure must be finite and >= 0, got {m}")
  if k < 1 or horizon < 1:
    raise ConfigError(f"k and horizon must be >= 1, got k={k}, "
                      f"horizon={horizon}")
  if m.sum() > k * horizon:
    raise ConfigError(
        f"infeasible exposure minimums: sum_g m_g = {m.sum():g} > K T = "
        f"{k} x {horizon} = {k * horizon}")
  if batch_size is not None:
    if batch_size < 1:
      raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > horizon:
      raise ConfigError(f"batch_size {batch_size} is larger than the horizon "
                        f"T = {horizon}")
  return m.astype(np.float32)


def make_dual_control(min_exposure, k: int, horizon: int, batch_size: int,
                      learning_rate: float = 1e-2) -> DualControl:
  """Builds the dual controller after checking feasibility.

  Args:
    min_exposure: [G] minimum exposure m_g over the horizon (may differ).
    k: K, items per request.
    horizon: T, number of requests.
    batch_size: B, requests between dual steps (B <= T).
    learning_rate: Adam step size eta (default 1e-2).
  """
  m = check_feasible(min_exposure, k, horizon, batch_size)
  if not learning_rate > 0:
    raise ConfigError(f"learning_rate must be > 0, got {learning_rate}")
  return DualControl(m, int(k), int(horizon), int(batch_size),
                     float(learning_rate))


def dual_subgradient(mu: jax.Array, counts: jax.Array, min_exposure: jax.Array,
                     k: int, horizon: int, batch_size: int) -> jax.Array:
  """-n_g + B (m_g / T + 1[g = argmax mu] (K - sum_h m_h / T))."""
  m = jnp.asarray(min_exposure, jnp.float32)
  top = jax.nn.one_hot(jnp.argmax(mu), mu.shape[0], dtype=jnp.float32)
  share = m / horizon + top * (k - jnp.sum(m) / horizon)
  return -counts.astype(jnp.float32) + batch_size * share


@jax.jit
def _update(ctl: DualControl, state: DualState, counts: jax.Array, b):
  grad = dual_subgradient(state.mu, counts, ctl.min_exposure, ctl.k,
                          ctl.horizon, b)
  updates, opt_state = ctl.optimizer.update(grad, state.opt_state, state.mu)
  mu = optax.apply_updates(state.mu, updates)
  return (DualState(mu, opt_state, state.step + 1),
          {"grad_norm": jnp.linalg.norm(grad)})


def group_counts(item_ids: jax.Array, item_group: jax.Array, num_groups: int,
                 weight: jax.Array | None = None) -> jax.Array:
  """n_g = number of retrieved items of group g (rows weighted by `weight`).

  Args:
    item_ids: int [B, K] retrieved global ids; an empty slot (id -1, e.g. a
      request with fewer than K non-excluded items) counts nowhere.
    item_group: int [N] group of each item.
    num_groups: G.
    weight: optional [B] row weights (0 drops padding rows).
  """
  # Empty slots go to group G, which the scatter drops.
  g = jnp.where(item_ids >= 0, item_group[jnp.maximum(item_ids, 0)],
                num_groups)
  w = jnp.ones(item_ids.shape, jnp.float32)
  if weight is not None:
    w = w * weight[:, None]
  return jnp.zeros((num_groups,), jnp.float32).at[g.reshape(-1)].add(
      w.reshape(-1), mode="drop")
