"""The in-memory dataset every reader and protocol shares."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Interactions with dense ids, plus user and item side tables.

  Attributes:
    name: dataset name (`synthetic`, `ml1m`, `ml1m-ts`, `ml100k`, or a path).
    user: int32 [N] dense user ids in [0, num_users).
    item: int32 [N] dense item ids in [0, num_items).
    rating: float32 [N] explicit rating (1.0 for implicit data).
    timestamp: int64 [N] Unix seconds, or None when the source has no time.
    num_users, num_items: sizes of the dense id spaces.
    raw_user_ids, raw_item_ids: original id of each dense id ([U], [I]); the
      mapping dense -> raw. Raw ids are kept as given (int or str).
    user_attrs: per-user attribute arrays, each [U] (e.g. `gender` int 0/1
      with 0 = M and 1 = F for MovieLens, `age` int, `occupation` int).
    user_attr_names: for categorical attributes, the label of each code,
      e.g. {"gender": ("M", "F")}.
    item_genres: bool [I, G] multi-hot genres (or item categories), or None.
    genre_names: the G genre labels, in column order.
    item_first_genre: int32 [I] index of the first listed genre (-1 if none).
  """

  name: str
  user: np.ndarray
  item: np.ndarray
  rating: np.ndarray
  timestamp: np.ndarray | None
  num_users: int
  num_items: int
  raw_user_ids: np.ndarray
  raw_item_ids: np.ndarray
  user_attrs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  user_attr_names: dict[str, tuple[str, ...]] = dataclasses.field(
      default_factory=dict)
  item_genres: np.ndarray | None = None
  genre_names: tuple[str, ...] = ()
  item_first_genre: np.ndarray | None = None

  @property
  def num_interactions(self) -> int:
    return int(self.user.shape[0])

  def subset(self, mask: np.ndarray, name: str | None = None) -> "Dataset":
    """Keeps the interactions where `mask` is True (id spaces unchanged)."""
    ts = None if self.timestamp is None else self.timestamp[mask]
    return dataclasses.replace(
        self, name=name or self.name, user=self.user[mask],
        item=self.item[mask], rating=self.rating[mask], timestamp=ts)
