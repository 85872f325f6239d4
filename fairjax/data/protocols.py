"""Evaluation protocols: binarization, chronological periods, k-core, random
splits, and the user/item group tables the fairness methods consume.

All functions are host-side NumPy on a `Dataset` (DESIGN §2-§4) and are
deterministic (random ones for a given seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fairjax.data.types import Dataset
from fairjax.errors import ConfigError, DataError


def binarize(ds: Dataset, threshold: float) -> Dataset:
  """Keeps the interactions with rating >= `threshold` (id spaces unchanged).

  FADE uses threshold 3 (DESIGN §2); ITFR keeps every rating.
  """
  return ds.subset(ds.rating >= threshold)


# ----------------------------------------------------------------------------
# Chronological periods (FADE, DESIGN §3).


@dataclasses.dataclass(frozen=True)
class ChronoSplit:
  """Interactions cut into periods D0 (pretraining) and D1..D_B.

  Attributes:
    order: int64 [N] indices into the dataset, sorted by time (stable: ties
      keep the original order).
    period: int32 [N] period 0..num_blocks of each interaction, in dataset
      order.
    period_sizes: interactions per period (num_blocks + 1 entries).
    period_batches: mini-batches per period (num_blocks + 1 entries).
    batch_size: the mini-batch size used for the cut.
  """

  order: np.ndarray
  period: np.ndarray
  period_sizes: list[int]
  period_batches: list[int]
  batch_size: int

  @property
  def num_periods(self) -> int:
    return len(self.period_sizes)

  def _check(self, k: int) -> None:
    if not 0 <= k < self.num_periods:
      raise ConfigError(
          f"field 'period': {k} not in [0, {self.num_periods - 1}]")

  def period_mask(self, k: int) -> np.ndarray:
    """bool [N]: interactions of period k."""
    self._check(k)
    return self.period == k

  def history_mask(self, k: int) -> np.ndarray:
    """bool [N]: interactions of periods 0..k (the train history)."""
    self._check(k)
    return self.period <= k

  def future_mask(self, k: int) -> np.ndarray:
    """bool [N]: interactions of periods k+1..last (Task-R test data)."""
    self._check(k)
    return self.period > k


def chronological_periods(ds: Dataset, batch_size: int = 256,
                          pretrain_frac: float = 0.6,
                          num_blocks: int = 10,
                          rounding: str = "half_up") -> ChronoSplit:
  """Cuts the time-sorted interactions into D0 and `num_blocks` blocks.

  Procedure (DESIGN §3): stable sort by timestamp; cut into nb =
  ceil(N / batch_size) consecutive batches (the last one may be partial);
  the first n0 = floor(pretrain_frac * nb + 0.5) batches (round half up;
  with `rounding='floor'`, n0 = floor(pretrain_frac * nb) as in the official
  FADE code) form D0; the remaining r = nb - n0 batches form blocks of q = r //
  num_blocks batches each, the last block also taking the r mod num_blocks
  leftover batches. Sorted position p is in batch b = p // batch_size.

  Args:
    ds: a dataset with timestamps.
    batch_size: mini-batch size (256 in FADE).
    pretrain_frac: share of batches in D0.
    num_blocks: number of incremental blocks D1..D_num_blocks.
    rounding: 'half_up' or 'floor', the rounding of n0.

  Returns:
    A `ChronoSplit`.

  Raises:
    DataError: no timestamps (field 'timestamp'), or too few batches to give
      every block at least one.
    ConfigError: bad batch_size / pretrain_frac / num_blocks.
  """
  if ds.timestamp is None:
    raise DataError(f"dataset {ds.name!r} has no timestamps; the "
                    "chronological protocol needs them", field="timestamp")
  if batch_size < 1:
    raise ConfigError("field 'batch_size': must be >= 1")
  if not 0.0 <= pretrain_frac < 1.0:
    raise ConfigError("field 'pretrain_frac': must be in [0, 1)")
  if num_blocks < 1:
    raise ConfigError("field 'num_blocks': must be >= 1")
  if rounding not in ("half_up", "floor"):
    raise ConfigError(f"field 'rounding': 'half_up' or 'floor', got "
                      f"{rounding!r}")
  n = ds.num_interactions
  order = np.argsort(ds.timestamp, kind="stable").astype(np.int64)
  nb = -(-n // batch_size)
  n0 = int(np.floor(pretrain_frac * nb + (0.5 if rounding == "half_up"
                                          else 0.0)))
  rest = nb - n0
  if rest < num_blocks:
    raise DataError(
        f"{n} interactions give {nb} batches of {batch_size}, {n0} for D0 "
        f"and {rest} left: too few for {num_blocks} blocks")
  q = rest // num_blocks
  batch_period = np.zeros(nb, dtype=np.int32)
  b = np.arange(n0, nb)
  batch_period[n0:] = 1 + np.minimum((b - n0) // q, num_blocks - 1)
  sorted_period = batch_period[np.arange(n) // batch_size]
  period = np.empty(n, dtype=np.int32)
  period[order] = sorted_period
  sizes = np.bincount(period, minlength=num_blocks + 1)
  batches = np.bincount(batch_period, minlength=num_blocks + 1)
  return ChronoSplit(order=order, period=period,
                     period_sizes=[int(x) for x in sizes],
                     period_batches=[int(x) for x in batches],
                     batch_size=batch_size)


# ----------------------------------------------------------------------------
# Re-indexing and k-core.


def reindex(ds: Dataset) -> Dataset:
  """Drops users and items without interactions and re-numbers ids densely.

  New ids keep the old relative order. Raw ids, user attributes and item
  side tables are subset with the same maps, so dense id -> raw id and side
  rows stay consistent.
  """
  used_u = np.zeros(ds.num_users, dtype=bool)
  used_u[ds.user] = True
  used_i = np.zeros(ds.num_items, dtype=bool)
  used_i[ds.item] = True
  map_u = np.cumsum(used_u, dtype=np.int64) - 1
  map_i = np.cumsum(used_i, dtype=np.int64) - 1
  return dataclasses.replace(
      ds,
      user=map_u[ds.user].astype(np.int32),
      item=map_i[ds.item].astype(np.int32),
      num_users=int(used_u.sum()), num_items=int(used_i.sum()),
      raw_user_ids=np.asarray(ds.raw_user_ids)[used_u],
      raw_item_ids=np.asarray(ds.raw_item_ids)[used_i],
      user_attrs={k: np.asarray(v)[used_u] for k, v in ds.user_attrs.items()},
      item_genres=(None if ds.item_genres is None
                   else np.asarray(ds.item_genres)[used_i]),
      item_first_genre=(None if ds.item_first_genre is None
                        else np.asarray(ds.item_first_genre)[used_i]))


def k_core(ds: Dataset, k: int) -> Dataset:
  """The k-core: iteratively drops users and items with < k interactions.

  Repeats (count per user, count per item, drop rows of users or items below
  k) until nothing changes, then `reindex`es. Every remaining user and item
  has >= k interactions. The result may be empty.
  """
  if k < 1:
    raise ConfigError("field 'k': must be >= 1")
  keep = np.ones(ds.num_interactions, dtype=bool)
  while True:
    cu = np.bincount(ds.user[keep], minlength=ds.num_users)
    ci = np.bincount(ds.item[keep], minlength=ds.num_items)
    new = keep & (cu[ds.user] >= k) & (ci[ds.item] >= k)
    if new.sum() == keep.sum():
      break
    keep = new
  return reindex(ds.subset(keep))


# ----------------------------------------------------------------------------
# Random split (ITFR, DESIGN §4).


def random_split(ds: Dataset, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random split by interaction in which every user with >= 3 keeps one
  interaction in each part.

  Procedure (deterministic for a seed, `np.random.default_rng(seed)`):
  1. Draw a random key per interaction; within each user, order the
     interactions by key. For users with >= 3 interactions the first goes to
     train, the second to valid, the third to test (the guarantee).
  2. The targets are n_train = floor(f_train N + 0.5), n_valid likewise and
     n_test = N - n_train - n_valid. The remaining interactions, in key
     order, fill train up to its target, then valid, then test (a part whose
     guaranteed rows already exceed its target gets no more).
  Users with 1-2 interactions take part only in step 2.

  Args:
    ds: the dataset.
    fractions: (train, valid, test) shares, positive, summing to 1.
    seed: randomness.

  Returns:
    (train_mask, valid_mask, test_mask), bool [N], a partition.
  """
  f = np.asarray(fractions, dtype=np.float64)
  if f.shape != (3,) or (f <= 0).any() or abs(f.sum() - 1.0) > 1e-6:
    raise ConfigError(f"field 'fractions': need 3 positive shares summing "
                      f"to 1, got {tuple(fractions)}")
  n = ds.num_interactions
  rng = np.random.default_rng(seed)
  key = rng.random(n)
  order = np.lexsort((key, ds.user))  # by user, then key
  cnt = np.bincount(ds.user, minlength=ds.num_users)
  start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
  pos = np.empty(n, dtype=np.int64)
  pos[order] = np.arange(n) - start[ds.user[order]]
  part = np.full(n, -1, dtype=np.int64)
  eligible = cnt[ds.user] >= 3
  guaranteed = eligible & (pos < 3)
  part[guaranteed] = pos[guaranteed]
  target = np.floor(f[:2] * n + 0.5).astype(np.int64)
  target = np.append(target, n - target.sum())
  need = np.maximum(target - np.bincount(part[guaranteed], minlength=3), 0)
  rest = np.nonzero(part < 0)[0]
  rest = rest[np.argsort(key[rest], kind="stable")]
  cut1 = min(need[0], rest.size)
  cut2 = min(cut1 + need[1], rest.size)
  part[rest[:cut1]] = 0
  part[rest[cut1:cut2]] = 1
  part[rest[cut2:]] = 2
  return part == 0, part == 1, part == 2


# ----------------------------------------------------------------------------
# Group tables.


def user_groups(ds: Dataset, attr: str = "gender") -> np.ndarray:
  """int32 [U]: the user group (attribute code) of every user.

  The number of groups is len(user_attr_names[attr]) when labels are given,
  else max code + 1. Every group must be non-empty.

  Raises:
    DataError (field `attr`): attribute missing, codes negative/non-integer
      or beyond the labels, or a group without users.
  """
  if attr not in ds.user_attrs:
    raise DataError(f"dataset {ds.name!r} has no user attribute {attr!r} "
                    f"(has {sorted(ds.user_attrs)})", field=attr)
  raw = np.asarray(ds.user_attrs[attr])
  if raw.shape != (ds.num_users,):
    raise DataError(f"expected shape ({ds.num_users},), got {raw.shape}",
                    field=attr)
  if raw.dtype.kind == "f":
    bad = ~np.isfinite(raw) | (raw != np.round(raw))
    if bad.any():
      u = int(np.argmax(bad))
      raise DataError(f"{int(bad.sum())} users have a missing/non-integer "
                      f"code (first: user {u}, raw id "
                      f"{ds.raw_user_ids[u]!r})", field=attr)
  elif raw.dtype.kind not in "iub":
    raise DataError(f"codes must be integers, got dtype {raw.dtype}",
                    field=attr)
  g = raw.astype(np.int64)
  if (g < 0).any():
    u = int(np.argmax(g < 0))
    raise DataError(f"{int((g < 0).sum())} users have a negative (missing) "
                    f"code (first: user {u}, raw id {ds.raw_user_ids[u]!r})",
                    field=attr)
  names = ds.user_attr_names.get(attr)
  num = len(names) if names else int(g.max()) + 1 if g.size else 0
  if g.size and g.max() >= num:
    raise DataError(f"code {int(g.max())} beyond the {num} labels {names}",
                    field=attr)
  counts = np.bincount(g, minlength=num)
  if num == 0 or (counts == 0).any():
    empty = [names[j] if names else j for j in np.nonzero(counts == 0)[0]]
    raise DataError(f"empty user group(s) {empty} among {ds.num_users} "
                    "users", field=attr)
  return g.astype(np.int32)


def item_groups_first_genre(ds: Dataset) -> np.ndarray:
  """int32 [I]: each item's first listed genre (-1 if it has none)."""
  if ds.item_first_genre is not None:
    return np.asarray(ds.item_first_genre, dtype=np.int32)
  if ds.item_genres is None:
    raise DataError(f"dataset {ds.name!r} has no item genres",
                    field="genres")
  g = np.asarray(ds.item_genres, dtype=bool)
  return np.where(g.any(1), np.argmax(g, 1), -1).astype(np.int32)


def item_groups_one_of(ds: Dataset, genres: Sequence[str]) -> np.ndarray:
  """int32 [I]: index j into `genres` for items having exactly one of the
  listed genres (genre genres[j]), else -1 (none or several of them).

  ITFR on ML-1M uses (Sci-Fi, Adventure, Children's, Crime, Horror, Romance).

  Raises:
    ConfigError: a name not in `ds.genre_names`, or a repeated name.
    DataError: the dataset has no item genres.
  """
  if ds.item_genres is None:
    raise DataError(f"dataset {ds.name!r} has no item genres",
                    field="genres")
  names = list(ds.genre_names)
  if isinstance(genres, str):
    raise ConfigError(f"field 'genres': expected a sequence of genre names, "
                      f"got the string {genres!r}")
  if not genres:
    raise ConfigError("field 'genres': empty list")
  unknown = [g for g in genres if g not in names]
  if unknown:
    raise ConfigError(f"field 'genres': unknown genre(s) {unknown} "
                      f"(known: {names})")
  if len(set(genres)) != len(genres):
    raise ConfigError(f"field 'genres': repeated names in {list(genres)}")
  cols = np.asarray(ds.item_genres, dtype=bool)[:, [names.index(g)
                                                    for g in genres]]
  one = cols.sum(1) == 1
  return np.where(one, np.argmax(cols, 1), -1).astype(np.int32)


def cell_ids(user_group: np.ndarray, item_group: np.ndarray,
             users: np.ndarray, items: np.ndarray,
             num_item_groups: int) -> np.ndarray:
  """int32 [N]: intersectional cell of each interaction (DESIGN §4).

  cell = ug[u] * num_item_groups + ig[i], or -1 when either group is -1.
  """
  ug = np.asarray(user_group)[np.asarray(users)].astype(np.int64)
  ig = np.asarray(item_group)[np.asarray(items)].astype(np.int64)
  cell = ug * num_item_groups + ig
  return np.where((ug < 0) | (ig < 0), -1, cell).astype(np.int32)
