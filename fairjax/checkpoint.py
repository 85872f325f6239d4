"""Checkpoints of pytrees in a workdir (orbax), with atomic JSON side files.

`Checkpointer(directory)` wraps an orbax `CheckpointManager` that saves one
pytree per integer step synchronously (orbax writes to a temporary folder and
renames it when complete, so a killed run never leaves a checkpoint that looks
finished). `restore_latest(target)` returns `(step, tree)` or `None`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from fairjax.errors import ConfigError


class Checkpointer:
  """Saves and restores pytrees of arrays under `directory/<step>/`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self.directory.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False,
        create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree: Any) -> None:
    tree = jax.tree.map(np.asarray, tree)
    self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, target: Any) -> Any:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract))
    # Keep the target's structure (orbax may return lists for tuples).
    leaves = jax.tree.leaves(restored)
    return jax.tree.unflatten(jax.tree.structure(target), leaves)

  def restore_latest(self, target: Any) -> tuple[int, Any] | None:
    step = self.latest_step()
    if step is None:
      return None
    return step, self.restore(step, target)

  def close(self) -> None:
    self._manager.close()


def write_atomic(path: str | os.PathLike, write: Callable, mode: str = "w",
                 newline=None) -> None:
  """Calls `write(file)` on a temporary file beside `path` (opened with
  `mode`, "w" or "wb"), then renames it to `path`: never half-written."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, mode, newline=newline) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON to `path` via a temporary file + rename (never half-written)."""
  def write(f):
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")
  write_atomic(path, write)


def save_npy_atomic(path: str | os.PathLike, arr: np.ndarray) -> None:
  """np.save to `path` via a temporary file + rename (no pickles)."""
  write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False), mode="wb")


def finite_or_none(x):
  """Nested dicts / lists of floats with NaN or inf -> None (strict JSON)."""
  if isinstance(x, dict):
    return {k: finite_or_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [finite_or_none(v) for v in x]
  if isinstance(x, np.floating):
    x = float(x)
  return None if isinstance(x, float) and not math.isfinite(x) else x


def floats(x) -> np.ndarray:
  """Inverse of `finite_or_none` for numeric nested lists: None -> NaN."""
  def back(v):
    if isinstance(v, list):
      return [back(a) for a in v]
    return np.nan if v is None else v
  return np.asarray(back(x), np.float64)


def write_csv_atomic(path: str | os.PathLike, rows: list[dict],
                     fields: list[str]) -> None:
  """Writes dict rows as CSV with header `fields`, atomically."""
  def write(f):
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
  write_atomic(path, write, newline="")


def open_workdir(workdir: str | os.PathLike, config: Any,
                 free_fields: tuple[str, ...] | None = None,
                 added_fields: dict[str, Any] | None = None) -> pathlib.Path:
  """Creates `workdir` (parents too) and records the run's config in
  `workdir/config.json` (atomically; `config` an ml_collections ConfigDict).
  Returns the folder as a Path.

  With `free_fields` (dotted names, e.g. "methods", "itfr.rho"), a workdir
  that already holds a config.json must agree with `config` on every other
  field: results found there were made with the stored values, and a rerun
  that resumes them under different ones would mix the two in one table.
  A difference raises `ConfigError` naming the fields (stored -> new), and
  config.json is left as it was. None: no check. `added_fields` (dotted
  name -> value) are fields a job gained later, with the value that
  reproduces what it did before: a stored config without them counts as
  holding those values.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  new = config.to_dict()
  if free_fields is not None and path.exists():
    changed = config_changes(read_json(path), new, free_fields,
                             added_fields or {})
    if changed:
      raise ConfigError(
          f"{path} holds results made with other values of "
          + "; ".join(f"field '{k}': {a!r} -> {b!r}" for k, a, b in changed)
          + ". Use a new --workdir, or rerun with the stored values.")
  workdir.mkdir(parents=True, exist_ok=True)
  write_json_atomic(path, new)
  return workdir


def _plain(tree: Any) -> Any:
  """JSON round trip: tuples become lists, numpy scalars plain numbers."""
  return json.loads(json.dumps(tree, default=_json_default))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_changes(stored: dict, new: Any, free_fields: tuple[str, ...] = (),
                   added_fields: dict[str, Any] | None = None
                   ) -> list[tuple[str, Any, Any]]:
  """Fields (dotted) whose value differs between two config dicts, as
  (field, stored value, new value), leaving out `free_fields` and the
  fields under them. A field missing on one side shows as None there,
  except `added_fields` missing from `stored`, which take the given value."""
  a = {**(added_fields or {}), **_flatten(_plain(stored))}
  b = _flatten(_plain(new))
  def free(k):
    return any(k == f or k.startswith(f + ".") for f in free_fields)
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if not free(k) and a.get(k) != b.get(k)]


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")
