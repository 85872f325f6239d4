"""Online dual control of group exposure (FairSync, DESIGN.md section 5).

Dual of the amortised exposure problem over a horizon of T requests, K items
each, minimum exposure m_g per group g (mu free, larger mu_g penalises g):

  W(mu) = sum_t max_x (s_t - A mu)^T x + sigma_S(mu),
  sigma_S(mu) = sum_g m_g mu_g + (T K - sum_g m_g) max_g mu_g.

Every B requests the centre sums the per-group counts n_g of the retrieved
lists over the batch and takes one Adam step (optax, lr eta, mu_0 = 0) on the
batch subgradient

  grad_g = -n_g + B (rho_g + 1[g = argmax mu] (K - sum_h rho_h)),

(the sigma_S term scaled by B / T; argmax ties -> lowest g). An over-exposed
group (n_g above its share) gets a negative gradient, so mu_g rises (more
penalty); an under-exposed group's mu_g falls (boost). The per-request rate
rho_g is one of two targets:

  static     rho_g = m'_g / T          (DESIGN §5; the library default)
  remaining  rho_g(t) = max(m'_g - E_g(t), 0) / (T - t)

with m'_g = (1 + h) m_g the aim (headroom h >= 0, default 0), E_g(t) the
exposure served in the first t requests and t counted at the batch's start.
`remaining` is the dual of the problem still left at t: the minimums still
owed, D'_g = (m'_g - E_g)^+, over the T - t requests still to come,
sigma_t(mu) = sum_g D'_g mu_g + ((T - t) K - sum_g D'_g) max_g mu_g. A group
that fell behind (a late start of mu, or drift in the requests) gets a
larger rate and keeps being boosted until the arrears are repaid; a group
whose minimum is met gets rho_g = 0 and stops costing accuracy. With static
rates the dual only tracks the pace m_g / T, so arrears run up while mu
converges are never repaid (issue 17: 'War' on time-ordered ML-1M). The
step is the same; only rho changes. (configs/fairsync.py defaults to
`remaining` with the safety net below, chosen on held-apart tuning streams.)

End-game safety net (safety = gamma in (0, 1], 0 = off). With
D_g(t) = max(m_g - E_g(t), 0) what group g still owes against its real
minimum, c_g = min(K, |I_g|) the most group-g items one list can hold and R
the requests left before a batch of b, group g is *forced* for that batch
when

  D_g(t) > gamma c_g (R - b):

its query entry is mu_g = min_h mu_h - boost (boost > the score span
2 max|u| max|v|), so its items head every list of the batch.

Guarantee (induction on batches). Premise: m_g <= gamma c_g T, and every
forced batch of b requests serves at least gamma c_g b items of each forced
group (true with gamma = 1 when no item of g is excluded from those
requests and the forced groups fit in a list, sum_{forced} c_g <= K; a
gamma < 1 leaves room for exclusion and for forced groups sharing a list).
Invariant: D_g <= gamma c_g R before every batch. A batch that does not
force g leaves D_g unchanged or lower and, by the trigger, D_g <= gamma c_g
(R - b); a forced batch gives D_g - gamma c_g b <= gamma c_g (R - b). At the
horizon R = 0, so D_g = 0: E_g(T) >= m_g for every g, i.e. ESP = 1 whatever
the order of the requests (drift included) and whatever the dual did. The
net fires only when the dual is late, so where the dual keeps up it changes
nothing (the served lists are the dual's). When the premise fails a group
can end short: `query` also reports `infeasible` (D_g > c_g R: the minimum
can no longer be met even at capacity in the requests left) so the caller
can log it; serving goes on with the group forced (best effort).

Joint rule (`safety_rule="joint"`). The per-group trigger above lets each
group count on whole lists; when several groups lag at once (e.g. a drifting
stream over a large catalog, where every c_g = K), they all fire in the last
batches and then share each list, so the premise fails. The joint rule
counts what all groups owe in whole lists, N_g = D_g / c_g, and fires when

  S(t) = sum_g N_g(t) > gamma (R - b),

forcing the most indebted groups, in decreasing N_g, while the need ahead
of a group in that order is below b (the forced set owes about one batch of
lists). Forced groups share each list by affinity, so this rule has no
per-group guarantee like the one above; it starts forcing as soon as the
total owed, not one group's, outgrows the time left. With one group owing,
S = N_g and the two rules coincide.

Pace repair (`safety_rule="repair"`). Forcing puts a group's items at the
head of every list of a batch: a group that owes 300 items gets 3,200 when
c_g = K = 50, and several groups forced together crowd each other out. The
repair instead adds exactly what is missing, to the lists that lose least.
With the allowance a_g = m_g / (gamma T) (gamma T requests' worth of slack;
gamma = 1 is the plain pace m_g / T), after the dual's batch of b lists
with counts n_g, group g is short of

  s_g = ceil( (m_g - E_g - n_g)^+ - a_g (R - b) )^+

items (R the requests left before the batch). A second retrieval over the
short groups' items alone (a copy of the catalog laid out by group, so
only their blocks are scanned) gives each request its best items of the
short groups; each short group takes its s_g best-scored candidates over
the batch (not already listed), and a list taking r of them
drops its r lowest-scored items of groups that are neither short nor
within reach of their own line (a group h may lose at most a_h (R - b) +
E_h + n_h - m_h items, `repair_budget`). The dual still steps on its own
counts n_g; E_g counts what was served.

Guarantee (induction on batches). Invariant: D_g = (m_g - E_g)^+ <= a_g R
before every batch; at t = 0, D_g = m_g = gamma a_g T <= a_g T. A batch
that places its s_g items leaves D_g <= a_g (R - b), and a victim group h
stays within its own line by the budget, so the invariant holds after the
batch; at the horizon R = 0 gives E_g >= m_g for every g, whatever the
order of the requests. Premise: each batch can place its s_g, i.e. the
short groups have s_g unlisted candidates among the b requests and each
list has victims to drop. Since s_g <= a_g b + 1, a list needs room for
about sum_g a_g = sum_g m_g / (gamma T) items: gamma >= sum_g m_g / (T K)
(the exposure fraction; `serve` warns below it). A group the repair cannot
complete in one batch is still short in the next and is tried again. The
cost is the score of the items swapped, paid only in batches where the
dual fell behind the allowed debt.

The retrieval itself is untouched: the query is still q_t = [u_t ; -mu]
with one mu per batch. The repair's second retrieval runs only in batches
with a short group and scans only the short groups' share of the catalog.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax.errors import ConfigError

TARGETS = ("static", "remaining")
SAFETY_RULES = ("group", "joint", "repair")


class DualState(NamedTuple):
  """mu [G] and the Adam state; `step` counts batches seen, `exposure` [G]
  the counts served so far (E_g), `served` the requests served so far (t)."""
  mu: jax.Array
  opt_state: optax.OptState
  step: jax.Array
  exposure: jax.Array
  served: jax.Array


class DualControl(NamedTuple):
  """The static problem: `init() -> DualState`, `update(state, counts)`,
  `query(state, b) -> (mu, forced, infeasible)` (see module doc).

  Fields are pytree leaves (the controller rides through jit as an argument);
  `remaining` is 1.0 for the remaining target, 0.0 for static; `joint` 1.0
  for the joint safety rule, `repair` 1.0 for the pace repair (both 0.0:
  the per-group rule).
  """
  min_exposure: np.ndarray
  k: int
  horizon: int
  batch_size: int
  learning_rate: float
  headroom: float = 0.0
  remaining: float = 0.0
  safety: float = 0.0
  capacity: np.ndarray | None = None
  boost: float = 0.0
  joint: float = 0.0
  repair: float = 0.0

  @property
  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate)

  def init(self) -> DualState:
    g = len(self.min_exposure)
    mu = jnp.zeros((g,), jnp.float32)
    return DualState(mu, self.optimizer.init(mu), jnp.zeros((), jnp.int32),
                     jnp.zeros((g,), jnp.float32), jnp.zeros((), jnp.float32))

  def update(self, state: DualState, counts: jax.Array,
             batch_size: jax.Array | None = None,
             served_counts: jax.Array | None = None
             ) -> tuple[DualState, dict[str, jax.Array]]:
    """One dual step from the batch's group counts n_g (see module doc).

    `batch_size` overrides B for a short last batch (may be traced).
    `served_counts` (default `counts`) is what reaches the exposure E_g
    when the lists served differ from the dual's own (the pace repair):
    the step uses the dual's counts, E_g what was served.
    """
    b = self.batch_size if batch_size is None else batch_size
    served = counts if served_counts is None else served_counts
    return _update(self, state, counts, b, served)

  def repair_need(self, state: DualState, counts: jax.Array,
                  batch_size: jax.Array | None = None) -> jax.Array:
    """Pace repair: items of each group to add to this batch (module doc).

    Returns float [G] whole numbers s_g >= 0 (all 0 unless the rule is
    `repair` with safety > 0).
    """
    b = self.batch_size if batch_size is None else batch_size
    return _repair_need(self, state, counts, b)

  def query(self, state: DualState, batch_size: jax.Array | None = None
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The mu served with the next batch of `batch_size` requests.

    Returns:
      (mu_q [G], forced [G] bool, infeasible [G] bool): mu_q = mu except
      forced groups at min(mu) - boost (safety net; none when safety = 0);
      infeasible: D_g > c_g R, the minimum can no longer be met.
    """
    b = self.batch_size if batch_size is None else batch_size
    return _query(self, state, b)


def check_feasible(min_exposure, k: int, horizon: int,
                   batch_size: int | None = None,
                   capacity=None) -> np.ndarray:
  """Validates (m, K, T, B); returns m as float32.

  Args:
    capacity: optional [G] c_g, the most group-g items one list can hold
      (min(K, |I_g|)); then m_g <= c_g T is checked per group.

  Raises:
    ConfigError: sum_g m_g > K T (infeasible), m_g > c_g T, m_g < 0 or
      non-finite, K < 1, T < 1, B < 1 or B > T.
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
  if capacity is not None:
    c = np.asarray(capacity, np.float64)
    bad = np.nonzero(m > c * horizon)[0]
    if bad.size:
      g = int(bad[0])
      raise ConfigError(
          f"infeasible exposure minimums: group {g} needs m_g = {m[g]:g} > "
          f"c_g T = {c[g]:g} x {horizon} (at most {c[g]:g} of its items fit "
          f"in one list); groups over: {bad.tolist()}")
  if batch_size is not None:
    if batch_size < 1:
      raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > horizon:
      raise ConfigError(f"batch_size {batch_size} is larger than the horizon "
                        f"T = {horizon}")
  return m.astype(np.float32)


def make_dual_control(min_exposure, k: int, horizon: int, batch_size: int,
                      learning_rate: float = 1e-2, *, headroom: float = 0.0,
                      target: str = "static", safety: float = 0.0,
                      capacity=None, boost: float = 0.0,
                      safety_rule: str = "group") -> DualControl:
  """Builds the dual controller after checking feasibility.

  Args:
    min_exposure: [G] minimum exposure m_g over the horizon (may differ).
    k: K, items per request.
    horizon: T, number of requests.
    batch_size: B, requests between dual steps (B <= T).
    learning_rate: Adam step size eta (default 1e-2).
    headroom: h >= 0: the dual aims at (1 + h) m_g (the safety net and the
      score at m_g).
    target: `static` (m'_g / T) or `remaining` ((m'_g - E_g)^+ / (T - t)).
    safety: gamma in [0, 1] for the end-game net (0 = off).
    capacity: [G] c_g = min(K, |I_g|), needed when safety > 0.
    boost: added penalty gap for forced groups (> the score span), needed
      when safety > 0.
    safety_rule: `group` (each group's own trigger), `joint` (the sum of
      what every group owes, in whole lists; the most indebted groups,
      about one batch of lists, forced) or `repair` (the pace repair: the
      missing items added to the lists that lose least, with gamma the
      allowance's slack; see module doc).
  """
  m = check_feasible(min_exposure, k, horizon, batch_size, capacity)
  if not learning_rate > 0:
    raise ConfigError(f"learning_rate must be > 0, got {learning_rate}")
  if not headroom >= 0:
    raise ConfigError(f"headroom must be >= 0, got {headroom}")
  if target not in TARGETS:
    raise ConfigError(f"dual target must be one of {TARGETS}, got "
                      f"{target!r}")
  if not 0.0 <= safety <= 1.0:
    raise ConfigError(f"safety (gamma) must be in [0, 1], got {safety}")
  if safety_rule not in SAFETY_RULES:
    raise ConfigError(f"safety_rule must be one of {SAFETY_RULES}, got "
                      f"{safety_rule!r}")
  cap = None
  if capacity is not None:
    cap = np.asarray(capacity, np.float32)
    if cap.shape != m.shape:
      raise ConfigError(f"capacity has shape {cap.shape}, min_exposure "
                        f"{m.shape}")
  elif safety > 0:
    raise ConfigError("safety > 0 needs the per-group capacity c_g")
  if safety > 0 and not boost > 0:
    raise ConfigError(f"safety > 0 needs boost > 0, got {boost}")
  return DualControl(m, int(k), int(horizon), int(batch_size),
                     float(learning_rate), float(headroom),
                     float(target == "remaining"), float(safety), cap,
                     float(boost), float(safety_rule == "joint"),
                     float(safety_rule == "repair"))


def dual_subgradient(mu: jax.Array, counts: jax.Array, min_exposure: jax.Array,
                     k: int, horizon: int, batch_size: int,
                     rate: jax.Array | None = None) -> jax.Array:
  """-n_g + B (rho_g + 1[g = argmax mu] (K - sum_h rho_h)).

  rho = `rate` when given (per-request target rates), else m_g / T.
  """
  if rate is None:
    rate = jnp.asarray(min_exposure, jnp.float32) / horizon
  top = jax.nn.one_hot(jnp.argmax(mu), mu.shape[0], dtype=jnp.float32)
  share = rate + top * jnp.maximum(k - jnp.sum(rate), 0.0)
  return -counts.astype(jnp.float32) + batch_size * share


def target_rate(ctl: DualControl, state: DualState) -> jax.Array:
  """rho_g per request: static m'_g / T or remaining (m'_g - E_g)^+ / (T - t).

  Past the horizon (t >= T) the remaining rate uses T - t = 1 (it is then
  the whole arrears); `fairsync.serve` never gets there (horizon >= T).
  """
  aim = jnp.asarray(ctl.min_exposure, jnp.float32) * (1.0 + ctl.headroom)
  static = aim / ctl.horizon
  left = jnp.maximum(ctl.horizon - state.served, 1.0)
  remaining = jnp.maximum(aim - state.exposure, 0.0) / left
  return jnp.where(ctl.remaining > 0, remaining, static)


@jax.jit
def _update(ctl: DualControl, state: DualState, counts: jax.Array, b,
            served: jax.Array):
  counts = counts.astype(jnp.float32)
  rate = target_rate(ctl, state)
  grad = dual_subgradient(state.mu, counts, ctl.min_exposure, ctl.k,
                          ctl.horizon, b, rate)
  updates, opt_state = ctl.optimizer.update(grad, state.opt_state, state.mu)
  mu = optax.apply_updates(state.mu, updates)
  return (DualState(mu, opt_state, state.step + 1,
                    state.exposure + served.astype(jnp.float32),
                    state.served + jnp.asarray(b, jnp.float32)),
          {"grad_norm": jnp.linalg.norm(grad)})


def _query(ctl: DualControl, state: DualState, b):
  m = jnp.asarray(ctl.min_exposure, jnp.float32)
  g = m.shape[0]
  if ctl.capacity is None:
    none = jnp.zeros((g,), bool)
    return state.mu, none, none
  owed = jnp.maximum(m - state.exposure, 0.0)
  left = ctl.horizon - state.served
  cap = jnp.asarray(ctl.capacity, jnp.float32)
  after = jnp.maximum(left - b, 0.0)
  per_group = owed > ctl.safety * cap * after
  need = jnp.where(cap > 0, owed / jnp.maximum(cap, 1.0), 0.0)  # whole lists
  order = jnp.argsort(-need)  # most indebted first
  before = jnp.cumsum(need[order]) - need[order]  # need ahead in that order
  fill = jnp.zeros((g,), bool).at[order].set(before < b)
  joint = (jnp.sum(need) > ctl.safety * after) & fill & (owed > 0)
  forced = ((ctl.safety > 0) & (ctl.repair == 0)
            & jnp.where(ctl.joint > 0, joint, per_group))
  infeasible = owed > cap * jnp.maximum(left, 0.0)
  mu = jnp.where(forced, jnp.min(state.mu) - ctl.boost, state.mu)
  return mu, forced, infeasible


def pace_allowance(ctl: DualControl) -> jax.Array:
  """a_g = m_g / (gamma T): the pace repair's allowed debt per request left."""
  m = jnp.asarray(ctl.min_exposure, jnp.float32)
  return m / (jnp.maximum(ctl.safety, 1e-12) * ctl.horizon)


def _line_after(ctl: DualControl, state: DualState, counts, b):
  """(m_g - E_g - n_g, a_g (R - b)): what each group would still owe after
  the batch's lists, and the debt the pace allows it then."""
  m = jnp.asarray(ctl.min_exposure, jnp.float32)
  after = jnp.maximum(ctl.horizon - state.served - b, 0.0)
  return m - state.exposure - counts, pace_allowance(ctl) * after


def _repair_need(ctl: DualControl, state: DualState, counts, b):
  owed, allowed = _line_after(ctl, state, counts, b)
  short = jnp.ceil(jnp.maximum(owed, 0.0) - allowed)
  on = (ctl.safety > 0) & (ctl.repair > 0)
  return jnp.where(on, jnp.maximum(short, 0.0), 0.0)


def repair_budget(ctl: DualControl, state: DualState, counts, b) -> jax.Array:
  """[G] how many group-h items this batch's lists may lose to the pace
  repair while h keeps D_h <= a_h R after the batch (negative: none)."""
  owed, allowed = _line_after(ctl, state, counts, b)
  return allowed - owed


def group_capacity(item_group, num_groups: int, k: int) -> np.ndarray:
  """c_g = min(K, |I_g|): the most group-g items one list can hold."""
  sizes = np.bincount(np.asarray(item_group).reshape(-1),
                      minlength=num_groups)[:num_groups]
  return np.minimum(sizes, k).astype(np.float32)


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
