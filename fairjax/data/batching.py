"""Shuffled, padded mini-batches of training rows: one batcher for every
training loop (FADE, ADVER, ITFR, the retriever, the system heads).

An epoch's batches are a pure function of `seed_parts`: the rows are
permuted by `numpy.random.default_rng(list(seed_parts))`, cut into
[steps, batch_size] blocks, and the last block is padded with row 0 marked
invalid (`valid` False), so a jitted epoch sees one shape and a resumed run
sees the same data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def shuffled_batches(columns: Mapping[str, np.ndarray], batch_size: int,
                     seed_parts: Sequence[int], rows: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
  """{name: [steps, batch_size]} for each column, plus `valid` (bool).

  Args:
    columns: equal-length arrays (e.g. user, item) indexed by row.
    batch_size: B.
    seed_parts: the shuffle's seed (a sequence of ints).
    rows: the row indices to batch (default: all rows, in order 0..n-1).
  """
  rng = np.random.default_rng(list(seed_parts))
  if rows is None:
    perm = rng.permutation(len(next(iter(columns.values()))))
  else:
    perm = rng.permutation(rows)
  steps = -(-perm.size // batch_size)
  idx = np.concatenate([perm, np.zeros(steps * batch_size - perm.size,
                                       perm.dtype)])
  valid = np.arange(steps * batch_size) < perm.size
  out = {k: np.asarray(v)[idx].reshape(steps, batch_size)
         for k, v in columns.items()}
  out["valid"] = valid.reshape(steps, batch_size)
  return out


def stack_batches(columns: Mapping[str, np.ndarray], rows: np.ndarray,
                  batch_size: int, order: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
  """`rows` cut into consecutive batches without shuffling the rows.

  Batch b holds rows[b * batch_size:(b + 1) * batch_size] (the last one
  padded with row 0, `valid` False); `order`, a permutation of the batch
  indices, reorders whole batches. Returns the same layout as
  `shuffled_batches`.
  """
  rows = np.asarray(rows)
  steps = -(-rows.size // batch_size)
  idx = np.concatenate([rows, np.zeros(steps * batch_size - rows.size,
                                       rows.dtype)]).reshape(steps, batch_size)
  valid = (np.arange(steps * batch_size) < rows.size).reshape(steps,
                                                               batch_size)
  if order is not None:
    idx, valid = idx[order], valid[order]
  out = {k: np.asarray(v)[idx] for k, v in columns.items()}
  out["valid"] = valid
  return out


def pad_steps(batches: Mapping[str, np.ndarray], steps: int
              ) -> dict[str, np.ndarray]:
  """Appends empty batches (row 0, `valid` False) up to `steps` steps."""
  have = batches["valid"].shape[0]
  if steps < have:
    raise ValueError(f"cannot pad {have} steps down to {steps}")
  return {k: np.concatenate([v, np.zeros((steps - have,) + v.shape[1:],
                                         v.dtype)])
          for k, v in batches.items()}
