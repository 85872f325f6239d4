"""The ITFR data protocol: a random split with intersectional cells.

DESIGN §4. Load the dataset; keep ratings >= `min_rating` (0: every rating,
ITFR's default); user groups from the attribute `user_attr`; item groups
from `item_grouping` ('one_of': the index of the single genre an item has
among `genres`, items with none or several dropped; 'first_genre': the
first listed genre); drop interactions whose item has no group; k-core
(`k_core`, 5); random split by interaction (`fractions`, 70/10/20, seed
`split_seed`, every user with >= 3 interactions keeps one in each part).
Cell g = a * J + j for user group a and item group j.

Bad input: a user with a missing attribute raises DataError naming the field
(`missing_user_group='error'`) or has its interactions dropped ('drop',
counted in the stats); a cell with no training interaction is reported
(stats `empty_cells`, a log line).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from fairjax.data import protocols
from fairjax.data import registry
from fairjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class ItfrData:
  """The random-split protocol with intersectional cells (built by
  `prepare_data`).

  Cell g = a * J + j for user group a in [0, A) and item group j in [0, J).
  """

  name: str
  num_users: int
  num_items: int
  user_group: np.ndarray  # int32 [U]
  item_group: np.ndarray  # int32 [I]
  user_group_names: tuple[str, ...]
  item_group_names: tuple[str, ...]
  train_user: np.ndarray  # int32 [N_train]
  train_item: np.ndarray
  train_cell: np.ndarray  # int32 [N_train]
  valid_user: np.ndarray
  valid_item: np.ndarray
  test_user: np.ndarray
  test_item: np.ndarray
  cell_counts: np.ndarray  # int64 [G] training interactions per cell
  stats: dict

  @property
  def num_user_groups(self) -> int:
    return len(self.user_group_names)

  @property
  def num_item_groups(self) -> int:
    return len(self.item_group_names)

  @property
  def num_cells(self) -> int:
    return self.num_user_groups * self.num_item_groups

  @property
  def active(self) -> np.ndarray:
    """bool [G]: cells with at least one training interaction."""
    return self.cell_counts > 0

  def cell_names(self) -> list[str]:
    return [f"{a}|{j}" for a in self.user_group_names
            for j in self.item_group_names]

  def seen(self, parts=("train",)) -> np.ndarray:
    """bool [U, I]: interactions of the given parts."""
    m = np.zeros((self.num_users, self.num_items), bool)
    for p in parts:
      m[getattr(self, f"{p}_user"), getattr(self, f"{p}_item")] = True
    return m



def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _missing_users(ds, attr: str) -> np.ndarray:
  """bool [U]: users whose attribute is absent (NaN or a negative code)."""
  raw = np.asarray(ds.user_attrs[attr])
  if raw.dtype.kind == "f":
    return ~np.isfinite(raw) | (raw < 0)
  if raw.dtype.kind in "iu":
    return raw < 0
  return np.zeros(raw.shape, bool)


def _item_groups(ds, config) -> tuple[np.ndarray, tuple[str, ...]]:
  if config.item_grouping == "one_of":
    genres = tuple(config.genres)
    return protocols.item_groups_one_of(ds, genres), genres
  return protocols.item_groups_first_genre(ds), tuple(ds.genre_names)


def prepare_data(config, data_dir: str | None = None) -> ItfrData:
  """Loads the dataset and builds the ITFR protocol (module docstring)."""
  ds = registry.load_configured(config, data_dir, seed=config.split_seed)
  attr = config.user_attr
  stats: dict = {"dataset": ds.name}
  if config.min_rating > 0:
    ds = protocols.binarize(ds, config.min_rating)
  if attr in ds.user_attrs:
    missing = _missing_users(ds, attr)
    if missing.any() and config.missing_user_group == "drop":
      stats["users_dropped_missing_attr"] = int(missing.sum())
      ds = protocols.reindex(ds.subset(~missing[ds.user]))
      _log(f"[itfr] dropped {int(missing.sum())} users without {attr!r}")
  protocols.user_groups(ds, attr)  # DataError (field attr) if missing codes
  ig, _ = _item_groups(ds, config)
  ds = ds.subset(ig[ds.item] >= 0)
  ds = (protocols.k_core(ds, config.k_core) if config.k_core > 1
        else protocols.reindex(ds))
  if ds.num_interactions == 0:
    raise DataError("no interaction left after grouping items and the "
                    f"{config.k_core}-core", field="k_core")
  ug = protocols.user_groups(ds, attr)
  ig, item_names = _item_groups(ds, config)
  user_names = tuple(ds.user_attr_names.get(attr) or
                     (str(a) for a in range(int(ug.max()) + 1)))
  tr, va, te = protocols.random_split(ds, tuple(config.fractions),
                                      seed=config.split_seed)
  nj = len(item_names)
  cells = protocols.cell_ids(ug, ig, ds.user[tr], ds.item[tr], nj)
  g = len(user_names) * nj
  counts = np.bincount(cells[cells >= 0], minlength=g).astype(np.int64)
  data = ItfrData(
      name=ds.name, num_users=ds.num_users, num_items=ds.num_items,
      user_group=ug.astype(np.int32), item_group=ig.astype(np.int32),
      user_group_names=tuple(str(x) for x in user_names),
      item_group_names=tuple(str(x) for x in item_names),
      train_user=ds.user[tr].astype(np.int32),
      train_item=ds.item[tr].astype(np.int32),
      train_cell=cells.astype(np.int32),
      valid_user=ds.user[va].astype(np.int32),
      valid_item=ds.item[va].astype(np.int32),
      test_user=ds.user[te].astype(np.int32),
      test_item=ds.item[te].astype(np.int32), cell_counts=counts, stats={})
  empty = [n for n, c in zip(data.cell_names(), counts) if c == 0]
  stats.update(
      users=ds.num_users, items=ds.num_items,
      interactions=ds.num_interactions, train=int(tr.sum()),
      valid=int(va.sum()), test=int(te.sum()), cells=data.num_cells,
      train_per_cell=dict(zip(data.cell_names(), counts.tolist())),
      empty_cells=empty)
  if empty:
    _log(f"[itfr] warning: cells without training interactions (left out of "
         f"the weights): {empty}")
  return dataclasses.replace(data, stats=stats)
