"""Negative sampling: seen-item matrices, jitted training negatives, and the
fixed per-user evaluation negatives of the sampled protocol (DESIGN §3).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fairjax.checkpoint import save_npy_atomic
from fairjax import rng as rng_lib
from fairjax.rng import step_keys
from fairjax.errors import DataError


def interaction_matrix(users: np.ndarray, items: np.ndarray, num_users: int,
                       num_items: int) -> jax.Array:
  """bool [U, I] with M[u, i] = True iff (u, i) occurs in the pairs.

  Built on the host (ML-1M: 6040 x 3706 = 22 MB) and moved to the device.
  """
  users = np.asarray(users)
  items = np.asarray(items)
  if users.shape != items.shape:
    raise DataError(f"users {users.shape} and items {items.shape} differ",
                    field="item")
  m = np.zeros((num_users, num_items), dtype=bool)
  m[users, items] = True
  return jnp.asarray(m)


def check_sampleable(seen, users: np.ndarray | None = None) -> None:
  """Raises DataError if some user has interacted with every item.

  `sample_negatives` returns -1 for such users; call this once on the host
  before training to fail early instead.

  Args:
    seen: bool [U, I] seen matrix.
    users: optional user ids to check (default: all users).
  """
  seen = np.asarray(seen)
  full = seen.all(axis=1)
  if users is not None:
    mask = np.zeros_like(full)
    mask[np.asarray(users)] = True
    full &= mask
  if full.any():
    bad = np.nonzero(full)[0]
    raise DataError(f"{bad.size} user(s) have interacted with all "
                    f"{seen.shape[1]} items, no negative can be drawn "
                    f"(first: user {int(bad[0])})", field="user")


def _uniform_items(key: jax.Array, shape, num_items: int,
                   skip: int) -> jax.Array:
  """int32 draws uniform over 0..num_items-1, or with `skip` >= 0 over the
  other num_items - 1 ids (a draw x of 0..num_items-2 becomes x + (x >=
  skip)); skip = -1 is exactly `jax.random.randint(key, shape, 0,
  num_items)` (its values, from `fairjax.rng.randint`)."""
  return _past_skip(lambda top: rng_lib.randint(key, shape, 0, top),
                    num_items, skip)


def _past_skip(draw: Callable[[int], jax.Array], num_items: int,
               skip: int) -> jax.Array:
  """`draw(num_items)`, or with `skip` >= 0 `draw(num_items - 1)` moved
  past item `skip` (x -> x + (x >= skip))."""
  if skip < 0:
    return draw(num_items)
  x = draw(num_items - 1)
  return x + (x >= skip).astype(jnp.int32)


def draw_rounds(rng: jax.Array, num_items: int, shape: tuple[int, int],
                rounds: int, skip: int = -1) -> jax.Array:
  """The first `rounds` candidate draws of `sample_negatives`, [rounds, B, n].

  Round r is `_uniform_items(fold_in(rng, r), shape, num_items, skip)`
  (`randint(..., 0, num_items)` when skip = -1), exactly the draw
  `sample_negatives(rng, ..., skip=skip)` makes in round r. Vectorised
  over a leading axis of keys (`jax.vmap`), it moves the per-step PRNG work
  of a training epoch out of the scanned step (on XLA:CPU each threefry call
  is a small rolled loop whose fixed cost dominates a step of MF training).
  """
  return jnp.stack([
      _uniform_items(jax.random.fold_in(rng, r), shape, num_items, skip)
      for r in range(rounds)])


PRESAMPLED_ROUNDS = 4
# fold_in offset of the keys that redraw slot j of a row (`distinct`).
DISTINCT_KEY_BASE = 1 << 20


def presample_negatives(state, batches, rng, context, *, num_items: int,
                        num_negatives: int,
                        rounds: int = PRESAMPLED_ROUNDS, fixed: bool = False,
                        skip: int = -1, presolve: bool = False):
  """An epoch `prepare` (`train.make_epoch`): per-step keys and first
  negative-sampling rounds, drawn once per epoch.

  Adds batches['key'] [S] = `step_keys(rng, state.step, S)` and
  batches['neg_draws'] [S, rounds, B, n] = `draw_rounds` of those keys
  (never item `skip`). A step built with `train.make_step(...,
  keys_in_batch=True)` whose loss calls `sample_negatives(rng_t, ...,
  drawn=batch['neg_draws'], skip=skip)` gets negatives bit-identical to
  sampling inside the step, with one vectorised PRNG call per epoch instead
  of several per step. With `fixed` the keys are `step_keys(rng, 0, S)`,
  independent of the state's step: epochs called with the same `rng` draw
  the same negatives (the official FADE code's fine-tuning reuses one draw
  for all epochs of a period). With `presolve` (and threefry keys,
  `rng.fast_threefry`) the whole sampling is done here instead
  (`resolve_negatives`, context['seen'] and batches['user']):
  batches['negatives'] [S, B, n] holds those same negatives, bit for bit,
  and the step reads them (`fade.make_candidates`) with no sampling of its
  own. Returns (state, batches), the state unchanged.
  """
  steps, b = batches["user"].shape
  keys = step_keys(rng, 0 if fixed else state.step, steps)
  draws = jax.vmap(lambda k: draw_rounds(k, num_items, (b, num_negatives),
                                         rounds, skip))(keys)
  if not (presolve and rng_lib.fast_threefry(keys)):
    return state, dict(batches, key=keys, neg_draws=draws)
  if not context or "seen" not in context:
    raise ValueError("presample_negatives(presolve=True) needs the seen "
                     "matrix as context['seen']")
  neg = resolve_negatives(context["seen"], batches["user"], keys, draws,
                          skip=skip)
  return state, dict(batches, key=keys, negatives=neg)


def first_rounds(seen: jax.Array, users: jax.Array, drawn: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """(cand, rejected) [B, n] after the rounds `drawn` [R, B, n] of
  `sample_negatives`: round 0's draw, each later round replacing the slots
  still rejected (its draw seen by the row's user, seen [U, I]); `rejected`
  marks the slots whose last draw was seen."""
  rows = users[:, None]
  cand = drawn[0]
  rej = seen[rows, cand]
  for r in range(1, drawn.shape[0]):
    cand = jnp.where(rej, drawn[r], cand)
    rej = rej & seen[rows, drawn[r]]
  return cand, rej


def _uniform_items_at(key: jax.Array, shape, index: jax.Array,
                      num_items: int, skip: int) -> jax.Array:
  """`_uniform_items(key, shape, num_items, skip)` at the flat positions
  `index` only (`rng.randint_at`)."""
  return _past_skip(lambda top: rng_lib.randint_at(key, shape, index, 0, top),
                    num_items, skip)


# Rejected slots finished per pass of `resolve_negatives` (more take more
# passes; an ml1m-order pretraining epoch leaves about 700 of its 2 M slots
# after 4 rounds).
RESOLVE_CAPACITY = 4096


def resolve_negatives(seen: jax.Array, users: jax.Array, keys: jax.Array,
                      drawn: jax.Array, *, skip: int = -1,
                      max_rounds: int = 32,
                      capacity: int = RESOLVE_CAPACITY) -> jax.Array:
  """[S, B, n] = `sample_negatives(keys[s], seen, users[s], n, max_rounds,
  drawn=drawn[s], skip=skip)` for every step s of an epoch at once, bit for
  bit (distinct=False; threefry keys, `rng.fast_threefry`).

  The presampled rounds `drawn` [S, R, B, n] are looked up for the whole
  epoch (`first_rounds`). A slot's later rounds depend on that slot alone
  (round r's draw at its place in fold_in(keys[s], r)'s [B, n] block), so
  the slots still rejected (about 700 of 2 M in an ml1m-order pretraining
  epoch) are gathered `capacity` at a time and finished on their own:
  rounds R .. max_rounds - 1 drawn at their positions only
  (`rng.randint_at`), then the exact fallback of `_draw_free` for any slot
  still rejected (one cumulative sum over the items per such slot). In a training step this is
  a loop and a branch on the data, which XLA:CPU runs as programs of their
  own that the step's other work waits on.
  """
  steps, num_rounds, b, n = drawn.shape
  num_items = seen.shape[1]
  if not 1 <= num_rounds <= max_rounds:
    raise ValueError(f"drawn has {num_rounds} rounds; expected 1 <= R <= "
                     f"max_rounds = {max_rounds}")
  cand, rej = jax.vmap(functools.partial(first_rounds, seen))(users, drawn)
  total = steps * b * n
  flat_users = users.reshape(-1)

  def exact(key, index, user):  # `_draw_free` at one slot
    free = _free_items(seen, user[None], skip)[0]
    csum = jnp.cumsum(free, dtype=jnp.int32)
    cnt = csum[-1]
    r = rng_lib.randint_at(jax.random.fold_in(key, max_rounds + 1), (b, n),
                           index, 0, jnp.maximum(cnt, 1))
    idx = jnp.searchsorted(csum, r, side="right").astype(jnp.int32)
    return jnp.where(cnt > 0, idx, -1)

  def chunk(carry):
    cand_f, rej_f = carry
    pos = jnp.nonzero(rej_f, size=capacity, fill_value=total)[0]
    live = pos < total
    p = jnp.minimum(pos, total - 1)
    step, index = p // (b * n), (p % (b * n)).astype(jnp.int32)
    user = flat_users[step * b + index // n]
    key = keys[step]

    def cond(c):
      r, _, rj = c
      return (r < max_rounds) & rj.any()

    def body(c):
      r, c_, rj = c
      new = jax.vmap(lambda k, i: _uniform_items_at(
          jax.random.fold_in(k, r), (b, n), i, num_items, skip))(key, index)
      return r + 1, jnp.where(rj, new, c_), rj & seen[user, new]

    _, c, rj = jax.lax.while_loop(cond, body,
                                  (jnp.int32(num_rounds), cand_f[p], live))

    def fallback(c):
      e = jax.lax.map(lambda a: exact(*a), (key, index, user),
                      batch_size=min(capacity, 256))
      return jnp.where(rj, e, c)

    c = jax.lax.cond(rj.any(), fallback, lambda c: c, c)
    return (cand_f.at[pos].set(c, mode="drop"),
            rej_f.at[pos].set(False, mode="drop"))

  cand_f, _ = jax.lax.while_loop(lambda c: c[1].any(), chunk,
                                 (cand.reshape(-1), rej.reshape(-1)))
  return cand_f.reshape(steps, b, n)


def _draw_free(key: jax.Array, free: jax.Array, m: int) -> jax.Array:
  """m draws per row, uniform over the row's True entries of `free` [B, I]
  (independent, with replacement); -1 for a row with none. With c the
  row's cumsum of `free` and r ~ U{0..sum - 1}, the draw is the first j with
  c_j > r."""
  csum = jnp.cumsum(free, axis=1, dtype=jnp.int32)
  cnt = csum[:, -1:]  # [B, 1]
  r = jax.random.randint(key, (free.shape[0], m), 0, jnp.maximum(cnt, 1),
                         dtype=jnp.int32)
  idx = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(
      csum, r).astype(jnp.int32)
  return jnp.where(cnt > 0, idx, -1)


def _free_items(seen: jax.Array, users: jax.Array, skip: int) -> jax.Array:
  """bool [B, I]: the items each row's user never saw, item `skip` (if
  >= 0) excluded."""
  free = ~seen[users]
  if skip >= 0:
    free = free & (jnp.arange(seen.shape[1]) != skip)
  return free


def _redraw_rejected(key: jax.Array, cand: jax.Array, rej: jax.Array,
                     bad: Callable[[jax.Array], jax.Array],
                     free: Callable[[], jax.Array], start: int,
                     max_rounds: int, num_items: int, skip: int) -> jax.Array:
  """Rejection sampling of the slots `rej` of `cand` [B, m], then the exact
  fallback.

  Rounds r = start..max_rounds-1 (a `lax.while_loop`, left as soon as no
  slot is rejected) draw `_uniform_items(fold_in(key, r))` and replace the
  rejected slots; a slot stays rejected while `bad` of its new draw is True.
  Slots still rejected after that take `_draw_free(fold_in(key, max_rounds
  + 1), free(), m)` (`free()` [B, I] the allowed items per row; built only
  when some slot needs it).
  """
  def cond(c):
    r, _, rej = c
    return (r < max_rounds) & rej.any()

  def body(c):
    r, cand, rej = c
    new = _uniform_items(jax.random.fold_in(key, r), cand.shape, num_items,
                         skip)
    return r + 1, jnp.where(rej, new, cand), rej & bad(new)

  _, cand, rej = jax.lax.while_loop(cond, body, (start, cand, rej))

  def exact(cand):
    idx = _draw_free(jax.random.fold_in(key, max_rounds + 1), free(),
                     cand.shape[1])
    return jnp.where(rej, idx, cand)

  return jax.lax.cond(rej.any(), exact, lambda c: c, cand)


def _make_slot_distinct(key: jax.Array, seen: jax.Array, users: jax.Array,
                        cand: jax.Array, j: int, skip: int,
                        max_rounds: int) -> jax.Array:
  """Redraws slot j of the rows whose slot j repeats one of slots 0..j-1.

  A repeated slot is redrawn uniformly over the items other than `skip`
  that the user never saw and that slots 0..j-1 do not hold
  (`_redraw_rejected` from round 0 with `key`); other rows keep their
  draw. Applied for j = 1..n-1 to n independent draws uniform over the
  unseen items, this gives a uniform sample without replacement: given
  slots 0..j-1, slot j is uniform over the rest.
  """
  earlier = cand[:, :j]  # [B, j]
  rows = users[:, None]

  def repeats(v):  # [B, 1] -> [B, 1]
    return jnp.any(v == earlier, axis=1, keepdims=True)

  def free():
    taken = jnp.any(
        jnp.arange(seen.shape[1])[None, None, :] == earlier[:, :, None], 1)
    return _free_items(seen, users, skip) & ~taken

  x = cand[:, j:j + 1]
  x = _redraw_rejected(key, x, repeats(x),
                       lambda v: seen[rows, v] | repeats(v), free, 0,
                       max_rounds, seen.shape[1], skip)
  return cand.at[:, j:j + 1].set(x)


@functools.partial(jax.jit,
                   static_argnames=("n", "max_rounds", "skip", "distinct"))
def sample_negatives(rng: jax.Array, seen: jax.Array, users: jax.Array,
                     n: int, max_rounds: int = 32,
                     drawn: jax.Array | None = None, skip: int = -1,
                     distinct: bool = False) -> jax.Array:
  """Draws n negatives per row, uniform over the items the user never saw.

  Rejection sampling: draw j ~ U{0..I-1} (minus item `skip` if >= 0) per
  slot; in a `lax.while_loop`
  redraw only the slots with seen[u, j] True, for at most `max_rounds`
  rounds (round r uses fold_in(rng, r)). Slots still rejected after that
  (users who saw most of the catalog) are filled exactly: with f_u the
  free-item indicator and c = cumsum(f_u), draw r ~ U{0..sum f_u - 1} and
  take the first j with c_j > r. Both stages give j uniform over
  {j != skip : seen[u, j] = False}, independently per slot. Pure and
  jittable inside a training step.

  With `distinct` the n negatives of a row are moreover distinct: slot j
  (j = 1..n-1, in order) is redrawn, when it repeats an earlier slot, over
  the unseen items minus the earlier slots (`_make_slot_distinct`, keys
  fold_in(rng, DISTINCT_KEY_BASE + j)). `distinct=True` with `skip` = the
  item the official FADE code numbers 0 is its sampler
  (`Model._sample_neg_items`: Python `randint(1, n_items - 1)` per
  negative, rejecting the user's items and the row's earlier negatives).
  The defaults (`skip=-1, distinct=False`) give the draws of earlier
  versions bit for bit.

  Args:
    rng: a PRNG key.
    seen: bool [U, I] seen matrix (train interactions).
    users: int [B] user of each row.
    n: negatives per row (static).
    max_rounds: rejection rounds before the exact fallback (static).
    drawn: optional [R, B, n] = `draw_rounds(rng, I, (B, n), R, skip)`,
      R <= max_rounds: the first R rounds read it instead of drawing (same
      result, bit for bit).
    skip: an item id never drawn, or -1 for none (static).
    distinct: whether a row's negatives are distinct (static).

  Returns:
    int32 [B, n] item ids; -1 for users with no unseen item (see
    `check_sampleable`), and with `distinct` for the slots beyond the
    number of items a user can still take.
  """
  num_items = seen.shape[1]
  b = users.shape[0]
  rows = users[:, None]
  if not -1 <= skip < num_items:
    raise ValueError(f"skip = {skip} is neither -1 nor an item id of "
                     f"0..{num_items - 1}")

  def draw(r):
    return _uniform_items(jax.random.fold_in(rng, r), (b, n), num_items, skip)

  if drawn is None:
    cand, start = draw(0), 1
    rej = seen[rows, cand]
  else:
    start = drawn.shape[0]
    if not 1 <= start <= max_rounds or drawn.shape[1:] != (b, n):
      raise ValueError(f"drawn has shape {drawn.shape}; expected [R, {b}, "
                       f"{n}] with 1 <= R <= max_rounds = {max_rounds}")
    # Round r replaces the slots still rejected, as the loop below does.
    cand, rej = first_rounds(seen, users, drawn)

  cand = _redraw_rejected(rng, cand, rej, lambda v: seen[rows, v],
                          lambda: _free_items(seen, users, skip), start,
                          max_rounds, num_items, skip)
  if distinct:
    for j in range(1, n):
      cand = _make_slot_distinct(
          jax.random.fold_in(rng, DISTINCT_KEY_BASE + j), seen, users, cand,
          j, skip, max_rounds)
  return cand


def eval_negatives(seed: int, train_seen, test_seen,
                   candidate_items: np.ndarray, num_users: int, n: int = 100,
                   chunk: int = 1024) -> np.ndarray:
  """Fixed per-user negatives for the sampled evaluation protocol.

  For each user u: the n items of lowest key among candidate_items minus
  (train items of u) minus (test items of u), with keys iid U(0, 1) from
  `np.random.default_rng(seed)` drawn chunk by chunk of users; that is, a
  uniform sample without replacement. Rows are sorted by item id; if fewer
  than n items are available the row is padded with -1 at the end.

  Args:
    seed: randomness; equal seeds give equal negatives.
    train_seen, test_seen: bool [U, I] seen matrices (NumPy or JAX).
    candidate_items: int [C] distinct item ids to draw from (e.g. the items
      seen in training).
    num_users: U.
    n: negatives per user.
    chunk: users per block (bounds memory; part of the seed -> output map).

  Returns:
    int32 [U, n].
  """
  train_seen = np.asarray(train_seen, dtype=bool)
  test_seen = np.asarray(test_seen, dtype=bool)
  cand = np.unique(np.asarray(candidate_items, dtype=np.int64))
  for name, m in (("train_seen", train_seen), ("test_seen", test_seen)):
    if m.ndim != 2 or m.shape[0] != num_users:
      raise DataError(f"expected [{num_users}, I], got {m.shape}",
                      field=name)
  if train_seen.shape != test_seen.shape:
    raise DataError(f"train {train_seen.shape} vs test {test_seen.shape}",
                    field="test_seen")
  if cand.size and (cand[0] < 0 or cand[-1] >= train_seen.shape[1]):
    raise DataError("item id out of range", field="candidate_items")
  rng = np.random.default_rng(seed)
  c = cand.size
  take = min(n, c)
  out = np.full((num_users, n), -1, dtype=np.int32)
  for start in range(0, num_users, chunk):
    sl = slice(start, min(start + chunk, num_users))
    keys = rng.random((sl.stop - sl.start, c), dtype=np.float32)
    excl = train_seen[sl][:, cand] | test_seen[sl][:, cand]
    keys[excl] = 2.0
    if take == 0:
      continue
    if take < c:
      part = np.argpartition(keys, take - 1, axis=1)[:, :take]
    else:
      part = np.broadcast_to(np.arange(c), keys.shape)
    ok = np.take_along_axis(keys, part, 1) < 2.0
    items = np.where(ok, cand[part], np.iinfo(np.int64).max)
    items.sort(axis=1)
    out[sl, :take] = np.where(items == np.iinfo(np.int64).max, -1, items)
  return out


def load_or_create_eval_negatives(
    path: str | os.PathLike, make_fn: Callable[[], np.ndarray],
    expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Loads the saved negatives at `path` (.npy), or creates and saves them.

  If `path` is missing, calls `make_fn()`, writes the array to a temporary
  file in the same directory and `os.replace`s it into place (atomic: a
  crash leaves no partial file), so every method run in a workdir faces the
  same candidates.

  Args:
    path: the .npy file.
    make_fn: builds the array when the file does not exist.
    expected_shape: if given, a loaded array of another shape is an error.

  Returns:
    The array (int32 [U, n] for `eval_negatives`).

  Raises:
    DataError (with the path): unreadable file or wrong shape.
  """
  path = os.fspath(path)
  if os.path.exists(path):
    try:
      arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise DataError(f"cannot read saved negatives: {e}", path=path) from e
  else:
    arr = np.asarray(make_fn())
    save_npy_atomic(path, arr)
  if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape):
    raise DataError(f"saved negatives have shape {arr.shape}, expected "
                    f"{tuple(expected_shape)}", path=path)
  return arr
