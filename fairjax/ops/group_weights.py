"""Group weights: ITFR's collaborative loss balance and GroupDRO (DESIGN §4).

Both keep a weight q_g per intersectional cell and move it by an exponentiated
update; the model is then updated with sum_g q_g h_g.

GroupDRO (Sagawa et al., "Distributionally Robust Neural Networks", ICLR
2020), per batch:

    a_g = eta L_g 1[g present]

Collaborative loss balance (Wang et al., WWW 2024, the official code), per
batch, only if every active cell is present in the batch:

    w    = (L^SA)^gamma / sum_g (L_g^SA)^gamma
    R_ij = cos(h_i, C_j^prev)  (i != j),  R_ii = 1;   R = I in epoch 0
    M_ij = sqrt(L_i^SA) sqrt(Lbar_j^prev)  (i != j),  M_ii = L_i^SA
           (epoch 0: M = diag(L^SA))
    a    = eta (M o R) w

with C_j^prev the previous epoch's summed gradient of cell j, Lbar_j^prev the
previous epoch's mean sharpness-aware loss of cell j, and cos(x, y) = <x, y> /
max(||x|| ||y||, 1e-12). GroupDRO is the special case R = I, M = diag(L),
w = 1, without sharpness awareness (L^SA = L). Both then apply

    a <- a - max_g a_g,   q <- q exp(a),   q <- q / sum q,   q <- max(q, 1e-5)

(`exp_weight_update`). Cells that are not active (no training interaction at
all: see `fairjax.methods.itfr`) keep q_g = 0 and take no part in the max, the
normalisation or the floor, so the update stays defined without them.

Every function is pure and jittable; the inputs are small [G] / [G, G] arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

COS_EPS = 1e-12
Q_FLOOR = 1e-5


def init_weights(active: Array) -> Array:
  """Uniform q over the active cells, 0 elsewhere: q_g = 1[active_g] / #active.

  Args:
    active: bool [G].

  Returns:
    float32 [G].
  """
  a = jnp.asarray(active, jnp.float32)
  return a / jnp.maximum(jnp.sum(a), 1.0)


def exp_weight_update(q: Array, a: Array, active: Array | None = None,
                      floor: float = Q_FLOOR) -> Array:
  """Exponentiated-gradient step on the simplex of the active cells.

      a' = a - max_{active} a;  q' = q exp(a') / sum_{active} q exp(a');
      q' = max(q', floor) on active cells, 0 on the others.

  Args:
    q: [G] current weights.
    a: [G] exponents.
    active: bool [G] cells taking part (None: all).
    floor: lower bound applied after normalising (1e-5 in ITFR).

  Returns:
    [G] new weights.
  """
  q = jnp.asarray(q)
  a = jnp.asarray(a, q.dtype)
  act = (jnp.ones(q.shape, bool) if active is None
         else jnp.asarray(active, bool))
  a = a - jnp.max(jnp.where(act, a, -jnp.inf))
  new = jnp.where(act, q * jnp.exp(jnp.where(act, a, 0.0)), 0.0)
  new = new / jnp.maximum(jnp.sum(new), jnp.finfo(q.dtype).tiny)
  return jnp.where(act, jnp.maximum(new, floor), 0.0)


def group_dro_update(q: Array, losses: Array, present: Array, eta: float,
                     active: Array | None = None,
                     floor: float = Q_FLOOR) -> Array:
  """GroupDRO: q <- normalise(q exp(eta L_g 1[g present])), floored.

  An absent cell has exponent 0 (its batch loss is 0), as in Sagawa et al.

  Args:
    q: [G] weights.
    losses: [G] mean loss of each cell in the batch (0 if absent).
    present: bool [G] cells with rows in the batch.
    eta: step size.
    active: bool [G] cells taking part (None: all).
    floor: lower bound after normalising.

  Returns:
    [G] new weights.
  """
  a = eta * jnp.where(jnp.asarray(present, bool), losses, 0.0)
  return exp_weight_update(q, a, active, floor)


def relation_matrix(dots: Array, h_norm: Array, c_norm: Array,
                    first_epoch: Array | bool) -> Array:
  """R_ij = <h_i, C_j> / max(||h_i|| ||C_j||, 1e-12), R_ii = 1; I in epoch 0.

  Args:
    dots: [G, G] with dots[i, j] = <h_i, C_j^prev>.
    h_norm: [G] ||h_i||.
    c_norm: [G] ||C_j^prev||.
    first_epoch: bool scalar; True gives R = I.

  Returns:
    [G, G] R.
  """
  dots, h_norm, c_norm = (jnp.asarray(x) for x in (dots, h_norm, c_norm))
  g = dots.shape[0]
  eye = jnp.eye(g, dtype=dots.dtype)
  denom = jnp.maximum(h_norm[:, None] * c_norm[None, :], COS_EPS)
  r = jnp.where(eye > 0, 1.0, dots / denom)
  return jnp.where(first_epoch, eye, r)


def loss_matrix(loss_sa: Array, loss_prev: Array,
                first_epoch: Array | bool) -> Array:
  """M_ij = sqrt(L_i^SA) sqrt(Lbar_j^prev), M_ii = L_i^SA; diag(L^SA) in epoch 0.

  Args:
    loss_sa: [G] sharpness-aware batch losses L^SA.
    loss_prev: [G] previous epoch's mean L^SA per cell.
    first_epoch: bool scalar.

  Returns:
    [G, G] M.
  """
  loss_sa, loss_prev = jnp.asarray(loss_sa), jnp.asarray(loss_prev)
  sq = jnp.sqrt(jnp.maximum(loss_sa, 0.0))
  m = sq[:, None] * jnp.sqrt(jnp.maximum(loss_prev, 0.0))[None, :]
  m = jnp.where(first_epoch, 0.0, m)
  g = loss_sa.shape[0]
  return jnp.where(jnp.eye(g, dtype=bool), loss_sa[:, None], m)


def collaborative_update(q: Array, loss_sa: Array, loss_prev: Array,
                         dots: Array, h_norm: Array, c_norm: Array,
                         first_epoch: Array | bool, present: Array,
                         eta: float, gamma: float,
                         active: Array | None = None,
                         floor: float = Q_FLOOR) -> tuple[Array, Array]:
  """ITFR's collaborative loss balance (module docstring), one batch.

  The weights move only when every active cell is present in the batch;
  otherwise q is returned unchanged.

  Args:
    q: [G] weights.
    loss_sa: [G] L^SA of the batch (0 for absent cells).
    loss_prev: [G] previous epoch's mean L^SA (unused in epoch 0).
    dots: [G, G] <h_i, C_j^prev>.
    h_norm: [G] ||h_i||.
    c_norm: [G] ||C_j^prev||.
    first_epoch: bool scalar (epoch 0: R = I, M = diag(L^SA)).
    present: bool [G] cells with rows in the batch.
    eta: step size (0.05 on ML-1M).
    gamma: loss exponent of w (0.5 on ML-1M).
    active: bool [G] cells taking part (None: all).
    floor: lower bound after normalising.

  Returns:
    (new q [G], updated: bool scalar).
  """
  act = (jnp.ones(q.shape, bool) if active is None
         else jnp.asarray(active, bool))
  q = jnp.asarray(q)
  l = jnp.where(act, jnp.maximum(jnp.asarray(loss_sa, q.dtype), 0.0), 0.0)
  w = l ** gamma
  w = jnp.where(act, w, 0.0)
  w = w / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny)
  r = relation_matrix(dots, h_norm, c_norm, first_epoch)
  m = loss_matrix(l, loss_prev, first_epoch)
  a = eta * ((m * r) @ w)
  ok = jnp.all(jnp.where(act, jnp.asarray(present, bool), True))
  new = exp_weight_update(q, a, act, floor)
  return jnp.where(ok, new, q), ok
