"""A small Gaussian process for Bayesian optimisation on [0, 1]^d (JAX).

Model (Rasmussen & Williams 2006, ch. 2 and 5), outputs standardised
internally, y_s = (y - ybar) / s_y over the observed rows:

  y_s = c + f(x) + eps,   f ~ GP(0, k),   eps ~ N(0, sigma_n^2),
  k(x, x') = sigma_f^2 (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r),
  r^2 = sum_j (x_j - x'_j)^2 / ell_j^2              (Matern-5/2, ARD).

Hyperparameters theta = (log ell [d], log sigma_f^2, log sigma_n^2, c) are a
MAP estimate: Adam (optax) on

  -log p(y | theta) - log p(theta),
  log p(y | theta) = -1/2 r^T K^{-1} r - sum_i log L_ii - n/2 log 2 pi,
  K = k(X, X) + sigma_n^2 I = L L^T,   r = y_s - c,

with mild priors, ell ~ Gamma(3, 6) (mode 1/3) and sigma_n^2 ~ Gamma(1.1,
0.05) (BoTorch's former defaults), sigma_f^2 ~ LogNormal(0, 1), c ~ N(0, 1),
and a box projected onto after every step: ell in [0.01, 10], sigma_f^2 in
[0.05, 20], sigma_n^2 in [noise_floor, 1], c in [-10, 10]. A fit runs
`num_steps` Adam steps on the flat vector theta as one lax.scan, vmapped over
`num_restarts` random initial points; the best final objective wins. One GP
per objective: `fit` takes y [n, m] and vmaps over the columns. The gradient
w.r.t. K is the closed form 1/2 (a a^T - K^{-1}), a = K^{-1} r (R&W eq.
5.9), a custom VJP about twice as fast as differentiating through the
Cholesky factorisation. Posterior (latent f, in the units of y):

  mean(x) = ybar + s_y (c + k_x^T K^{-1} r),
  var(x)  = s_y^2 (k(x, x) - |L^{-1} k_x|^2).

Rows can be masked out (mask_i = 0): their kernel row becomes a unit row, so
padding a history to a fixed size changes neither the likelihood nor the
posterior, and nothing recompiles as the history grows.

Why our own small module instead of a GP library: it is jit/vmap friendly end
to end (a fixed padded size compiles once for a whole run), it adds no
dependency (no torch, GPyTorch or BoTorch), and it is exactly the one kernel
we need.

Performance note: the Cholesky factorisation and triangular solves run in
the OpenBLAS that ships with SciPy; from about 32 rows it starts threads that
spin, and on a busy machine with few cores a fit then slows down 20-50x.
Launch with OPENBLAS_NUM_THREADS=1 (set before numpy/scipy/jax load).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fairjax.errors import ConfigError

_LOG_2PI = math.log(2 * math.pi)
_SQRT5 = math.sqrt(5.0)
LENGTHSCALE_BOUNDS = (0.01, 10.0)
SIGNAL_VAR_BOUNDS = (0.05, 20.0)
NOISE_VAR_MAX = 1.0


class GPParams(NamedTuple):
  """Hyperparameters (in standardised y units, except the inputs' scale)."""
  log_lengthscale: jax.Array  # [d]
  log_signal_var: jax.Array   # []
  log_noise_var: jax.Array    # []
  mean: jax.Array             # [] constant c


class GPState(NamedTuple):
  """A fitted GP: everything `predict` needs."""
  params: GPParams
  x: jax.Array        # [n, d] training inputs (masked rows arbitrary)
  mask: jax.Array     # [n] 1 for observed rows, 0 for padding
  chol: jax.Array     # [n, n] L with K = L L^T
  alpha: jax.Array    # [n] K^{-1} r
  y_mean: jax.Array   # [] ybar
  y_std: jax.Array    # [] s_y
  objective: jax.Array  # [] final log marginal likelihood + log prior


def matern52(params: GPParams, x1: jax.Array, x2: jax.Array) -> jax.Array:
  """k(x1, x2) [n1, n2] = sigma_f^2 (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)."""
  diff = (x1[:, None, :] - x2[None, :, :]) * jnp.exp(-params.log_lengthscale)
  r2 = jnp.sum(diff * diff, axis=-1)  # differences: exact for close points
  r = jnp.sqrt(jnp.maximum(r2, 1e-12))  # safe gradient at r = 0
  return (jnp.exp(params.log_signal_var) * (1.0 + _SQRT5 * r + 5.0 / 3.0 * r2)
          * jnp.exp(-_SQRT5 * r))


def _gram(params: GPParams, x: jax.Array, mask: jax.Array) -> jax.Array:
  """K = k(X, X) + sigma_n^2 I on observed rows, unit rows for padding."""
  k = matern52(params, x, x) * (mask[:, None] * mask[None, :])
  diag = mask * jnp.exp(params.log_noise_var) + (1.0 - mask)
  return k + jnp.diag(diag)


def _gauss_fwd(k: jax.Array, r: jax.Array):
  chol = jnp.linalg.cholesky(k)
  w = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
  value = -0.5 * jnp.sum(w * w) - jnp.sum(jnp.log(jnp.diagonal(chol)))
  return value, (chol, w)


@jax.custom_vjp
def _gauss_loglik(k: jax.Array, r: jax.Array) -> jax.Array:
  """-1/2 r^T K^{-1} r - 1/2 log|K| (K symmetric positive definite)."""
  return _gauss_fwd(k, r)[0]


def _gauss_bwd(res, g):
  # d/dK = 1/2 (a a^T - K^{-1}), d/dr = -a, a = K^{-1} r (R&W eq. 5.9):
  # triangular solves instead of differentiating through the Cholesky.
  chol, w = res
  a = jax.scipy.linalg.solve_triangular(chol, w, lower=True, trans=1)
  eye = jnp.eye(chol.shape[0], dtype=chol.dtype)
  kinv = jax.scipy.linalg.cho_solve((chol, True), eye)
  return g * 0.5 * (jnp.outer(a, a) - kinv), -g * a


_gauss_loglik.defvjp(_gauss_fwd, _gauss_bwd)


def log_marginal_likelihood(params: GPParams, x: jax.Array, y: jax.Array,
                            mask: jax.Array | None = None) -> jax.Array:
  """log N(y | c 1, K) over the rows with mask 1 (no standardisation here).

  = -1/2 r^T K^{-1} r - sum_i log L_ii - n/2 log 2 pi, r = y - c.
  """
  mask = jnp.ones(y.shape, y.dtype) if mask is None else mask.astype(y.dtype)
  r = mask * (y - params.mean)
  return (_gauss_loglik(_gram(params, x, mask), r)
          - 0.5 * jnp.sum(mask) * _LOG_2PI)


def log_prior(params: GPParams) -> jax.Array:
  """Gamma(3, 6) on ell, LogNormal(0, 1) on sigma_f^2, Gamma(1.1, 0.05) on
  sigma_n^2, N(0, 1) on c (densities of the variables themselves, constants
  dropped; y is standardised, so c ~ N(0, 1) is weak)."""
  ell = jnp.exp(params.log_lengthscale)
  lp = jnp.sum(2.0 * params.log_lengthscale - 6.0 * ell)
  lp += -0.5 * params.log_signal_var ** 2 - params.log_signal_var
  lp += 0.1 * params.log_noise_var - 0.05 * jnp.exp(params.log_noise_var)
  return lp - 0.5 * params.mean ** 2


def _bounds(dim: int, noise_floor: float, dtype) -> tuple[jax.Array, ...]:
  """Box on the flat vector theta = [log ell (d), log sf2, log sn2, c]."""
  lo = [math.log(LENGTHSCALE_BOUNDS[0])] * dim + [
      math.log(SIGNAL_VAR_BOUNDS[0]), math.log(noise_floor), -10.0]
  hi = [math.log(LENGTHSCALE_BOUNDS[1])] * dim + [
      math.log(SIGNAL_VAR_BOUNDS[1]), math.log(NOISE_VAR_MAX), 10.0]
  return jnp.array(lo, dtype), jnp.array(hi, dtype)


def _unflatten(theta: jax.Array) -> GPParams:
  return GPParams(theta[:-3], theta[-3], theta[-2], theta[-1])


def _adam_run(theta0, x, ys, mask, lo, hi, num_steps, learning_rate):
  """Projected Adam ascent on log p(ys | theta) + log p(theta) from theta0;
  returns (theta, objective(theta)) with -inf for a failed factorisation."""

  def objective(theta):  # log marginal likelihood + log prior (MAP)
    p = _unflatten(theta)
    return log_marginal_likelihood(p, x, ys, mask) + log_prior(p)

  opt = optax.adam(learning_rate)

  def step(carry, _):
    theta, s = carry
    value, g = jax.value_and_grad(objective)(theta)
    upd, s_new = opt.update(-g, s, theta)
    # A failed Cholesky (NaN) keeps the previous point instead of spreading.
    ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(g))
    theta = jnp.where(ok, jnp.clip(theta + upd, lo, hi), theta)
    s = jax.tree.map(lambda a, b: jnp.where(ok, a, b), s_new, s)
    return (theta, s), None

  (theta, _), _ = jax.lax.scan(step, (theta0, opt.init(theta0)), None,
                               length=num_steps)
  value = objective(theta)
  return theta, jnp.where(jnp.isfinite(value), value, -jnp.inf)


def _posterior(theta, x, ys, mask, y_mean, y_std, value) -> GPState:
  p = _unflatten(theta)
  chol = jnp.linalg.cholesky(_gram(p, x, mask))
  alpha = jax.scipy.linalg.cho_solve((chol, True), mask * (ys - p.mean))
  return GPState(p, x, mask, chol, alpha, y_mean, y_std, value)


@functools.partial(jax.jit, static_argnames=("num_restarts", "num_steps",
                                             "learning_rate", "noise_floor"))
def fit(x: jax.Array, y: jax.Array, key: jax.Array,
        mask: jax.Array | None = None, *, num_restarts: int = 4,
        num_steps: int = 150, learning_rate: float = 0.05,
        noise_floor: float = 1e-6) -> GPState:
  """MAP hyperparameters by Adam with restarts; returns the posterior.

  Maximises log p(y | theta) + log p(theta) (module docstring) over theta =
  [log ell, log sigma_f^2, log sigma_n^2, c], projected onto the bounds
  after each step; `num_restarts` runs from random initial points, vmapped,
  and the best final objective is kept.

  Args:
    x: [n, d] inputs in [0, 1]^d.
    y: [n] outputs, or [n, m] for m independent GPs (one per column, fitted
      together under vmap; the state then has a leading axis m). Any scale;
      standardised internally. NaN entries are left out.
    key: PRNG key for the restarts' initial points.
    mask: optional [n] 1/0 (or bool); padding rows get 0.
    num_restarts: R, independent Adam runs (vmapped); the best is kept.
    num_steps: Adam steps per run (one lax.scan).
    learning_rate: Adam step size on theta.
    noise_floor: lower bound on sigma_n^2 in standardised units.

  Returns:
    GPState for `predict`.

  Raises:
    ConfigError: x, y or mask have inconsistent shapes.
  """
  if x.ndim != 2 or y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
    raise ConfigError(f"x must be [n, d] and y [n] or [n, m], got x "
                      f"{x.shape} and y {y.shape}")
  if mask is not None and mask.shape != x.shape[:1]:
    raise ConfigError(f"mask must be [n] = [{x.shape[0]}], got {mask.shape}")
  dtype = jnp.result_type(x.dtype, jnp.float32)
  x = x.astype(dtype)
  m = jnp.ones(x.shape[:1], dtype) if mask is None else mask.astype(dtype)
  m = m * jnp.all(jnp.isfinite(x), axis=1)
  x = jnp.where(m[:, None] > 0, x, 0.0)
  # Column j of y is GP j; its observed rows are mask * finite(y_j).
  y2 = (y[:, None] if y.ndim == 1 else y).T.astype(dtype)        # [k, n]
  mk = m[None, :] * jnp.isfinite(y2)
  y2 = jnp.where(mk > 0, y2, 0.0)
  cnt = jnp.maximum(jnp.sum(mk, axis=1), 1.0)
  y_mean = jnp.sum(mk * y2, axis=1) / cnt
  y_std = jnp.sqrt(jnp.sum(mk * (y2 - y_mean[:, None]) ** 2, axis=1) / cnt)
  y_std = jnp.where(y_std > 1e-12, y_std, 1.0)
  ys = mk * (y2 - y_mean[:, None]) / y_std[:, None]
  # All k x R Adam runs in one vmap; initial points ell in [0.1, 1], sf2 in
  # [0.5, 2], sn2 in [1e-6, 0.1], c = 0, from one uniform draw.
  k, r, dim = y2.shape[0], num_restarts, x.shape[1]
  lo, hi = _bounds(dim, noise_floor, dtype)
  init_lo = jnp.array([math.log(0.1)] * dim
                      + [math.log(0.5), math.log(1e-6), 0.0], dtype)
  init_hi = jnp.array([0.0] * dim + [math.log(2.0), math.log(0.1), 0.0],
                      dtype)
  u = jax.random.uniform(key, (k * r, dim + 3), dtype)
  theta0 = jnp.clip(init_lo + u * (init_hi - init_lo), lo, hi)
  run = functools.partial(_adam_run, x=x, lo=lo, hi=hi, num_steps=num_steps,
                          learning_rate=learning_rate)
  thetas, values = jax.vmap(lambda t, yy, mm: run(t, ys=yy, mask=mm))(
      theta0, jnp.repeat(ys, r, axis=0), jnp.repeat(mk, r, axis=0))
  values = values.reshape(k, r)
  best = jnp.argmax(values, axis=1)
  theta = thetas.reshape(k, r, -1)[jnp.arange(k), best]
  state = jax.vmap(_posterior, in_axes=(0, None, 0, 0, 0, 0, 0))(
      theta, x, ys, mk, y_mean, y_std, values[jnp.arange(k), best])
  if y.ndim == 1:
    return jax.tree.map(lambda a: a[0], state)
  return state


def _predict_one(state: GPState, xq: jax.Array, include_noise: bool):
  p = state.params
  kx = matern52(p, xq.astype(state.x.dtype), state.x) * state.mask[None, :]
  mean = p.mean + kx @ state.alpha
  v = jax.scipy.linalg.solve_triangular(state.chol, kx.T, lower=True)
  var = jnp.exp(p.log_signal_var) - jnp.sum(v * v, axis=0)
  if include_noise:
    var = var + jnp.exp(p.log_noise_var)
  std = jnp.sqrt(jnp.maximum(var, 1e-12))
  return state.y_mean + state.y_std * mean, state.y_std * std


@functools.partial(jax.jit, static_argnames=("include_noise",))
def predict(state: GPState, xq: jax.Array, include_noise: bool = False
            ) -> tuple[jax.Array, jax.Array]:
  """Posterior mean and std at xq [q, d], in the units of y.

  mean = ybar + s_y (c + k_x^T alpha), var = s_y^2 (k(x, x) - |L^{-1} k_x|^2)
  (+ s_y^2 sigma_n^2 with include_noise).

  Returns:
    (mean, std), each [q], or [q, m] for a state fitted on y [n, m].
  """
  if state.alpha.ndim == 1:
    return _predict_one(state, xq, include_noise)
  mean, std = jax.vmap(_predict_one, in_axes=(0, None, None))(
      state, xq, include_noise)
  return mean.T, std.T
