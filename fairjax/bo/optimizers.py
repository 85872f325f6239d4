"""Equal-budget multi-objective optimisers on [0, 1]^d, ask/tell by history.

Every optimiser maximises two objectives and is one pure function,

  x_n = propose(name, X_{<n}, Y_{<n}, n, d, seed, budget),

a deterministic function of (name, seed, history): a killed run that replays
its logged evaluations proposes exactly the point the uninterrupted run would
have (resumability). Failed evaluations are logged as NaN rows of Y.

  bo      GP per objective (`fairjax.bo.gp`) + exact 2-D EHVI
          (`fairjax.bo.ehvi`). Points n < num_init (or while fewer than two
          evaluations succeeded) are scrambled Sobol (point n of the `seed`
          sequence, as 'sobol'); then
            x_n = argmax_{x in [0,1]^d} EHVI(mu(x), sigma(x); PF(Y), r),
          r = min(Y) - 0.1 (max(Y) - min(Y)) per objective unless given.
          The argmax: EHVI on 2048 scrambled-Sobol candidates plus Gaussian
          perturbations of the Pareto-optimal x's; the top few are refined by
          projected Adam ascent (clip to the box) on jax.grad of EHVI; the
          best point visited wins. Randomness: the GP restarts from
          jax.random.fold_in(key(seed), n), the candidate pool from a numpy
          Generator seeded by (seed, n). The history (failed rows dropped) is
          padded to `budget` rows with a mask, so the GP fit and the
          acquisition compile once per (budget, d), never per step; a step
          takes about 0.3 s at 60 points, d = 5, on 2 busy CPU cores (with
          OPENBLAS_NUM_THREADS=1, see `fairjax.bo.gp`).
  random  uniform, numpy Generator seeded by (seed, n).
  sobol   scrambled Sobol point n of the `seed` sequence.
  nsga2   Optuna's NSGAIISampler (population = num_init).
  motpe   Optuna's TPESampler, multi-objective (n_startup_trials = num_init).

Optuna (optional: pip install 'fairjax[bo]') is replayed, not kept: each
call builds a fresh in-memory study, adds the history as finished trials
(NaN rows as failed trials, each with the NSGA-II generation it would have
been given), seeds the sampler from SeedSequence([seed, n]) and asks once.
So the replayed proposal equals the uninterrupted one by construction
(every step, interrupted or not, is this replay). It is not bit-identical to
one long-lived Optuna study, whose sampler RNG advances from trial to trial;
the algorithm (populations, parents, TPE densities) is the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike
from scipy.stats import qmc

from fairjax.bo import gp
from fairjax.bo.ehvi import ehvi
from fairjax.errors import ConfigError

OPTIMIZERS = ("bo", "random", "sobol", "nsga2", "motpe")


class BOConfig(NamedTuple):
  """Settings of the 'bo' proposal (static: a change recompiles)."""
  num_candidates_log2: int = 11  # 2^11 = 2048 Sobol candidates
  num_perturb: int = 8           # perturbations per Pareto-optimal x
  perturb_scale: float = 0.05
  top_k: int = 4                 # candidates refined by gradient ascent
  refine_steps: int = 40
  refine_lr: float = 0.01
  gp_restarts: int = 4           # gp.fit's defaults
  gp_steps: int = 150
  gp_lr: float = 0.05
  noise_floor: float = 1e-6


def sobol_point(dim: int, seed: int, n: int) -> np.ndarray:
  """Point n of the scrambled Sobol sequence seeded by `seed`, [dim]."""
  s = qmc.Sobol(dim, scramble=True, seed=seed)
  if n:
    s.fast_forward(n)
  return s.random(1)[0]


def default_ref(y: ArrayLike) -> np.ndarray:
  """r_j = min_j - 0.1 (max_j - min_j) over the finite rows (span 1 if 0)."""
  y = np.asarray(y, np.float64).reshape(-1, 2)
  y = y[np.all(np.isfinite(y), axis=1)]
  if len(y) == 0:
    raise ConfigError("history_y has no finite row to set ref from")
  lo, hi = y.min(axis=0), y.max(axis=0)
  span = np.where(hi > lo, hi - lo, 1.0)
  return lo - 0.1 * span


def _nondominated(y: jax.Array, mask: jax.Array) -> jax.Array:
  """bool [n]: observed rows no observed row dominates (maximisation)."""
  geq = jnp.all(y[:, None, :] >= y[None, :, :], axis=2)
  gt = jnp.any(y[:, None, :] > y[None, :, :], axis=2)
  dominated = jnp.any(geq & gt & mask[:, None], axis=0)
  return mask & ~dominated


@functools.partial(jax.jit, static_argnames=("cfg",))
def maximise_ehvi(states: gp.GPState, x: jax.Array, y: jax.Array,
                  mask: jax.Array, ref: jax.Array, cand: jax.Array,
                  noise: jax.Array, cfg: BOConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """argmax_{z in [0,1]^d} EHVI(z) for a padded history; (z*, EHVI(z*)).

  EHVI(z) = ehvi(predict(states, z), PF(y[mask]), ref). Pool: `cand` [C, d]
  plus the perturbations x_i + noise_i (clipped to the box) of each
  Pareto-optimal observed x_i; the `top_k` pool points
  are refined by `refine_steps` of projected Adam ascent on jax.grad(EHVI),
  keeping the best point visited (the start included).

  Args:
    states: GPState fitted on y [n, 2] (leading axis 2).
    x, y, mask: padded history [n, d], [n, 2], bool [n].
    ref: [2] reference point.
    cand: [C, d] candidates (scrambled Sobol).
    noise: [n, P, d] perturbations, P of them for each history row.
    cfg: BOConfig (static).
  """
  front = jnp.where(mask[:, None], y, jnp.nan)

  def acq(xq):  # [q, d] -> [q]
    mean, std = gp.predict(states, xq)
    value = ehvi(mean, std, front, ref)
    return jnp.where(jnp.isfinite(value), value, -jnp.inf)

  d = x.shape[1]
  pert = jnp.clip(x[:, None, :] + noise, 0.0, 1.0).reshape(-1, d)
  ok = jnp.concatenate([jnp.ones(cand.shape[0], bool),
                        jnp.repeat(_nondominated(y, mask), noise.shape[1])])
  pool = jnp.concatenate([cand, pert])
  values = jnp.where(ok, acq(pool), -jnp.inf)
  _, top = jax.lax.top_k(values, cfg.top_k)

  opt = optax.adam(cfg.refine_lr)
  value_and_grad = jax.value_and_grad(lambda z: acq(z[None])[0])

  def ascend(z0):
    def step(carry, _):
      z, s, best_z, best_v = carry
      v, g = value_and_grad(z)
      better = v > best_v  # v is EHVI at z, before this step's move
      best_z, best_v = jnp.where(better, z, best_z), jnp.maximum(v, best_v)
      upd, s = opt.update(-g, s, z)
      return (jnp.clip(z + upd, 0.0, 1.0), s, best_z, best_v), None
    init = (z0, opt.init(z0), z0, jnp.array(-jnp.inf, z0.dtype))
    (_, _, best_z, best_v), _ = jax.lax.scan(step, init, None,
                                             length=cfg.refine_steps)
    return best_z, best_v

  zs, vs = jax.vmap(ascend)(pool[top])
  best = jnp.argmax(vs)
  return zs[best], vs[best]


def _propose_bo(hx, hy, n, dim, seed, budget, num_init, ref, cfg):
  valid = np.all(np.isfinite(hx), axis=1) & np.all(np.isfinite(hy), axis=1)
  if n < num_init or valid.sum() < 2:
    return sobol_point(dim, seed, n)
  xv, yv = hx[valid], hy[valid]
  size = max(budget, len(xv))
  xp = np.zeros((size, dim), np.float32)
  yp = np.zeros((size, 2), np.float32)
  xp[:len(xv)], yp[:len(yv)] = xv, yv
  mask = np.arange(size) < len(xv)
  r = default_ref(yv) if ref is None else np.asarray(ref, np.float64)
  # The candidate pool is drawn on the host, the GP restarts in JAX; both
  # are fixed by (seed, n).
  rng = np.random.default_rng([seed, n])
  cand = qmc.Sobol(dim, scramble=True, seed=rng).random_base2(
      cfg.num_candidates_log2)
  noise = cfg.perturb_scale * rng.standard_normal((size, cfg.num_perturb,
                                                   dim))
  key = jax.random.fold_in(jax.random.key(seed), n)
  xp, yp, mask = jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(mask)
  states = gp.fit(xp, yp, key, mask, num_restarts=cfg.gp_restarts,
                  num_steps=cfg.gp_steps, learning_rate=cfg.gp_lr,
                  noise_floor=cfg.noise_floor)
  z, _ = maximise_ehvi(states, xp, yp, mask, jnp.asarray(r, jnp.float32),
                       jnp.asarray(cand, jnp.float32),
                       jnp.asarray(noise, jnp.float32), cfg)
  return np.clip(np.asarray(z, np.float64), 0.0, 1.0)


def _optuna(name: str):
  try:
    import optuna  # optional dependency, imported lazily
  except ImportError as e:
    raise ImportError(
        f"optimizer {name!r} needs Optuna, an optional dependency: "
        "pip install 'fairjax[bo]'") from e
  return optuna


def _propose_optuna(name, hx, hy, n, dim, seed, num_init):
  optuna = _optuna(name)
  sampler_seed = int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
  if name == "nsga2":
    pop = max(num_init, 2)
    sampler = optuna.samplers.NSGAIISampler(population_size=pop,
                                            seed=sampler_seed)
    gen_key = sampler._get_generation_key()  # the key NSGA-II reads
  else:
    sampler = optuna.samplers.TPESampler(n_startup_trials=num_init,
                                         seed=sampler_seed)
  dists = {f"x{j}": optuna.distributions.FloatDistribution(0.0, 1.0)
           for j in range(dim)}
  verbosity = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  try:
    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=sampler)
  finally:
    optuna.logging.set_verbosity(verbosity)
  gen, gen_count = 0, 0  # NSGA-II's rule: a generation fills with pop
  for xi, yi in zip(hx, hy):
    if not np.all(np.isfinite(xi)):
      continue
    params = {f"x{j}": float(np.clip(xi[j], 0.0, 1.0)) for j in range(dim)}
    done = bool(np.all(np.isfinite(yi)))
    attrs = {}
    if name == "nsga2":
      g = gen if gen_count < pop else gen + 1
      if done:
        gen, gen_count = (g, gen_count + 1) if g == gen else (g, 1)
      attrs = {gen_key: g}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=dists, system_attrs=attrs,
        values=[float(v) for v in yi] if done else None,
        state=(optuna.trial.TrialState.COMPLETE if done
               else optuna.trial.TrialState.FAIL)))
  trial = study.ask(fixed_distributions=dists)
  return np.array([trial.params[f"x{j}"] for j in range(dim)], np.float64)


def propose(name: str, history_x: ArrayLike, history_y: ArrayLike,
            n_index: int, dim: int, seed: int, budget: int,
            num_init: int = 12, ref: ArrayLike | None = None,
            config: BOConfig | None = None) -> np.ndarray:
  """Point n_index of optimiser `name` given the evaluations so far.

  Args:
    name: one of OPTIMIZERS.
    history_x: [n, dim] evaluated points in [0, 1]^dim (n may be 0).
    history_y: [n, 2] their objective values (both maximised); NaN marks a
      failed evaluation (skipped by the models).
    n_index: index of the point to propose (normally n).
    dim: d, the number of knobs.
    seed: run seed; with the history it fixes the proposal.
    budget: total evaluations of the run ('bo' pads the history to it).
    num_init: initial design size ('bo' Sobol points, NSGA-II population,
      TPE startup trials).
    ref: [2] reference point r for 'bo' (default `default_ref(history_y)`).
    config: BOConfig for 'bo' (default BOConfig()).

  Returns:
    x [dim] float64 in [0, 1]^dim.

  Raises:
    ConfigError: unknown name, bad sizes or shapes.
    ImportError: 'nsga2' / 'motpe' without Optuna installed.
  """
  if name not in OPTIMIZERS:
    raise ConfigError(f"name must be one of {OPTIMIZERS}, got {name!r}")
  for field, v, lo in (("dim", dim, 1), ("budget", budget, 1),
                       ("num_init", num_init, 1), ("n_index", n_index, 0)):
    if int(v) != v or v < lo:
      raise ConfigError(f"{field} must be an integer >= {lo}, got {v!r}")
  hx = np.asarray(history_x, np.float64)
  hy = np.asarray(history_y, np.float64)
  if hx.size == 0 and hy.size == 0:
    hx, hy = hx.reshape(0, dim), hy.reshape(0, 2)
  if hx.ndim != 2 or hx.shape[1] != dim:
    raise ConfigError(f"history_x must have shape [n, {dim}], got {hx.shape}")
  if hy.shape != (hx.shape[0], 2):
    raise ConfigError(f"history_y must have shape [{hx.shape[0]}, 2], got "
                      f"{hy.shape}")
  if ref is not None and (np.shape(ref) != (2,)
                          or not np.all(np.isfinite(ref))):
    raise ConfigError(f"ref must be a finite [2] vector, got {ref!r}")
  if name == "random":
    return np.random.default_rng([seed, n_index]).random(dim)
  if name == "sobol":
    return sobol_point(dim, seed, n_index)
  if name == "bo":
    return _propose_bo(hx, hy, n_index, dim, seed, budget, num_init, ref,
                       config or BOConfig())
  return _propose_optuna(name, hx, hy, n_index, dim, seed, num_init)


def optimize(name: str, objective: Callable[[np.ndarray], np.ndarray],
             dim: int, budget: int, seed: int, num_init: int = 12,
             history: tuple[np.ndarray, np.ndarray] | None = None,
             **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """Runs (or resumes from `history`) propose -> evaluate up to `budget`.

  Args:
    objective: x [dim] -> y [2] (NaN for a failed evaluation).
    history: optional (X [n, dim], Y [n, 2]) already evaluated.
    kwargs: passed to `propose` (ref, config).

  Returns:
    (X [budget, dim], Y [budget, 2]).
  """
  xs = [] if history is None else list(np.asarray(history[0], np.float64))
  ys = [] if history is None else list(np.asarray(history[1], np.float64))
  for n in range(len(xs), budget):
    hx = np.array(xs).reshape(-1, dim)
    hy = np.array(ys).reshape(-1, 2)
    x = propose(name, hx, hy, n, dim, seed, budget, num_init, **kwargs)
    xs.append(x)
    ys.append(np.asarray(objective(x), np.float64).reshape(2))
  return np.array(xs).reshape(-1, dim), np.array(ys).reshape(-1, 2)
