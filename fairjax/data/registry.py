"""Datasets by name: where real data lives, loading, and summary statistics.

Names: `synthetic` (generated, no files), `ml1m` (every ML-1M rating),
`ml1m-ts` (ML-1M ratings with timestamps: the chronological protocol),
`ml1m-order` (every ML-1M rating >= 3 of all users in the FADE paper's
chronological order; an order, not timestamps), `ml100k`, or a path: a RecBole atomic folder or `.inter` file, or a `.csv`.
Real data is found under `--data_dir` or, failing that, `$FAIRJAX_DATA_DIR`
(a folder holding `ml-1m/` and/or `ml-100k/`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from fairjax.data.atomic import read_atomic, read_csv
from fairjax.data.movielens import read_ml100k, read_ml1m, read_ml1m_order
from fairjax.data.types import Dataset
from fairjax.errors import ConfigError

DATASETS = ("synthetic", "ml1m", "ml1m-ts", "ml1m-order", "ml100k")
ENV_VAR = "FAIRJAX_DATA_DIR"
# Integer attributes without labels count as categorical up to this many values.
_MAX_UNLABELLED_GROUPS = 32


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """The real-data folder: `data_dir` if given, else `$FAIRJAX_DATA_DIR`.

  Raises:
    ConfigError when neither is set (the message explains both and how to
    fetch the official archives) or the folder does not exist.
  """
  if data_dir:
    path, source = pathlib.Path(data_dir).expanduser(), "--data_dir"
  elif os.environ.get(ENV_VAR):
    path, source = pathlib.Path(os.environ[ENV_VAR]).expanduser(), ENV_VAR
  else:
    raise ConfigError(
        "data_dir: no data folder given: pass --data_dir=DIR (data_dir=) or "
        f"set {ENV_VAR}=DIR, DIR holding ml-1m/ and/or ml-100k/. To fetch the "
        "official GroupLens archives use fairjax.data.download "
        "(`python -m fairjax.data.download ml-1m`, which prints the folder; "
        "its parent, by default ~/.cache/fairjax, is a valid DIR).")
  if not path.is_dir():
    raise ConfigError(f"data_dir: {str(path)!r} (from {source}) is not a folder")
  return path


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 **synthetic_kwargs: Any) -> Dataset:
  """Loads a dataset by name (see the module docstring).

  Args:
    name: one of `DATASETS`, or an existing path: a folder or `.inter` file
      (RecBole atomic, `read_atomic`) or a `.csv` file (`read_csv` with its
      default columns user, item).
    data_dir: real-data folder for the MovieLens names (`resolve_data_dir`).
    **synthetic_kwargs: passed to `fairjax.data.synthetic.generate` (seed,
      sizes); only valid with `synthetic`.

  Returns:
    The `Dataset`; `Dataset.name` is `name`.

  Raises:
    ConfigError for an unknown name, keyword arguments with a real dataset, or
    a missing data folder; DataError for bad files.
  """
  if name == "synthetic":
    from fairjax.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.generate(**synthetic_kwargs)
  if synthetic_kwargs:
    raise ConfigError(f"dataset: keyword arguments {sorted(synthetic_kwargs)} "
                      f"apply only to 'synthetic', not {name!r}")
  if name in ("ml1m", "ml1m-ts"):
    return read_ml1m(resolve_data_dir(data_dir) / "ml-1m",
                     with_timestamps_only=name == "ml1m-ts")
  if name == "ml1m-order":
    return read_ml1m_order(resolve_data_dir(data_dir) / "ml-1m")
  if name == "ml100k":
    return read_ml100k(resolve_data_dir(data_dir) / "ml-100k")
  path = pathlib.Path(name)
  if path.is_dir() or (path.suffix == ".inter" and path.is_file()):
    return _renamed(read_atomic(path), name)
  if path.suffix == ".csv" and path.is_file():
    return _renamed(read_csv(path), name)
  raise ConfigError(
      f"dataset: unknown name {name!r}; valid names: {', '.join(DATASETS)}, "
      "or an existing path to a RecBole atomic folder / .inter file or a .csv "
      "file")


def load_configured(config, data_dir: str | os.PathLike | None = None,
                    seed: int | None = None) -> Dataset:
  """The dataset a job config names: `config.dataset` from `data_dir`, else
  `config.data_dir`, else $FAIRJAX_DATA_DIR; the synthetic generator gets
  `seed` and every field of `config.synthetic` as a keyword argument of
  `fairjax.data.synthetic.generate` (num_users, num_items, ...)."""
  kwargs = {}
  if config.dataset == "synthetic":
    # num_users, num_items and any other generator argument set there.
    kwargs = dict(config.synthetic.to_dict(), seed=seed)
  return load_dataset(config.dataset, data_dir or config.data_dir or None,
                      **kwargs)


def _renamed(ds: Dataset, name: str) -> Dataset:
  return dataclasses.replace(ds, name=str(name))


def _groups(ds: Dataset) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
  """Categorical user attributes: codes [U] and one label per code.

  Labelled attributes (in `user_attr_names`) use their labels; other integer
  attributes with at most 32 distinct values use str(value) (codes are the
  ranks of the sorted values). Code -1 means no label.
  """
  out = {}
  for attr, v in ds.user_attrs.items():
    v = np.asarray(v)
    if attr in ds.user_attr_names:
      labels = tuple(ds.user_attr_names[attr])
      codes = np.where((v >= 0) & (v < len(labels)), v, -1)
    elif np.issubdtype(v.dtype, np.integer):
      values, codes = np.unique(v, return_inverse=True)
      if values.size > _MAX_UNLABELLED_GROUPS:
        continue
      labels = tuple(str(x) for x in values.tolist())
    else:
      continue
    out[attr] = (codes.astype(np.int64), labels)
  return out


def _count(codes: np.ndarray, labels: tuple[str, ...]) -> dict[str, int]:
  n = np.bincount(codes[codes >= 0], minlength=len(labels))
  out = {label: int(c) for label, c in zip(labels, n)}
  if (codes < 0).any():
    out["(none)"] = int((codes < 0).sum())
  return out


def dataset_stats(ds: Dataset, with_periods: bool = False) -> dict[str, Any]:
  """JSON-serialisable summary of a dataset.

  Keys: dataset, interactions, users, items, positives (rating >= 3),
  positives_ge4 (rating >= 4), rating_counts (per distinct rating, when at
  most 10), has_timestamps, time_range ([min, max] Unix seconds; for
  `ml1m-order` instead time_is_order, its 'timestamps' being positions),
  user_groups ({attr: {label: users}}, over the dataset's users),
  interactions_per_user_group ({attr: {label: interactions}}),
  items_per_first_genre ({genre: items}, '(none)' for items without one) and,
  with `with_periods` and timestamps, period_sizes: the FADE chronological
  period sizes [D0, D1..D10] in interactions after binarising rating >= 3
  (`fairjax.data.protocols.chronological_periods`).
  """
  rating = np.asarray(ds.rating)
  stats: dict[str, Any] = {
      "dataset": ds.name, "interactions": ds.num_interactions,
      "users": int(ds.num_users), "items": int(ds.num_items),
      "positives": int((rating >= 3).sum()),
      "positives_ge4": int((rating >= 4).sum()),
  }
  values, counts = np.unique(rating, return_counts=True)
  if values.size <= 10:
    stats["rating_counts"] = {f"{v:g}": int(c) for v, c in zip(values, counts)}
  stats["has_timestamps"] = ds.timestamp is not None
  if ds.name == "ml1m-order":
    stats["time_is_order"] = True  # positions 0..N-1, not Unix seconds.
  elif ds.timestamp is not None and ds.timestamp.size:
    stats["time_range"] = [int(ds.timestamp.min()), int(ds.timestamp.max())]
  groups = _groups(ds)
  stats["user_groups"] = {a: _count(c, l) for a, (c, l) in groups.items()}
  stats["interactions_per_user_group"] = {
      a: _count(c[ds.user], l) for a, (c, l) in groups.items()}
  if ds.item_first_genre is not None:
    first = np.asarray(ds.item_first_genre, np.int64)
    stats["items_per_first_genre"] = _count(first, tuple(ds.genre_names))
  if with_periods and ds.timestamp is not None:
    # pylint: disable-next=g-import-not-at-top
    from fairjax.data.protocols import binarize, chronological_periods
    periods = chronological_periods(binarize(ds, 3.0))
    stats["period_sizes"] = [int(n) for n in periods.period_sizes]
  return stats
