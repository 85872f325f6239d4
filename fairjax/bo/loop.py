"""The optimisation loop with an evaluation log that survives a kill.

  for n = len(log), ..., budget - 1:
    x_n = propose(name, X_{<n}, Y_{<n}, n, ...)     (`fairjax.bo.propose`)
    record_n = evaluate(x_n); append record_n to the log (flushed, fsynced)

Every optimiser's proposal is a deterministic function of its seed and the
history, so a run killed at any point and restarted on the same log
proposes and evaluates exactly what the uninterrupted run would have, and
finishes with the same front. `run_points` does the same for a fixed design
(a lattice, a grid). Records are JSON dicts; `objectives(records)` maps
them to Y [n, 2] (both maximised; NaN rows are failed evaluations, which
the models skip).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Sequence

import numpy as np

from fairjax.bo.hypervolume import hypervolume, pareto_mask
from fairjax.bo.optimizers import propose


class EvalLog:
  """`<folder>/evaluations.jsonl`: one JSON line per evaluation, flushed and
  fsynced as it is written. On open, the lines are read back; a truncated
  last line (a kill while writing) is dropped and the file rewritten."""

  def __init__(self, folder: str | os.PathLike):
    self.path = pathlib.Path(folder) / "evaluations.jsonl"
    self.records: list[dict] = []
    if self.path.exists():
      for line in self.path.read_text().splitlines():
        try:
          self.records.append(json.loads(line))
        except json.JSONDecodeError:
          break
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

  def add(self, record: dict) -> dict:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.records.append(record)
    return record


def run_points(log: EvalLog, points: Sequence, evaluate: Callable,
               on_record: Callable | None = None) -> list[dict]:
  """Evaluates the fixed design `points` in order, from where `log` ends.

  `evaluate(n, point) -> record`; `on_record(n, total, records)` after each.
  """
  for n in range(len(log.records), len(points)):
    log.add(evaluate(n, points[n]))
    if on_record is not None:
      on_record(n, len(points), log.records)
  return log.records


def run_optimizer(name: str, log: EvalLog, evaluate: Callable,
                  objectives: Callable, *, budget: int, dim: int, seed: int,
                  num_init: int, ref=None,
                  on_record: Callable | None = None) -> list[dict]:
  """`budget` evaluations of optimiser `name` (`fairjax.bo.OPTIMIZERS`),
  resuming from `log`. Records must hold the proposed point under 'x'."""
  for n in range(len(log.records), budget):
    hist = log.records
    x = propose(name, [r["x"] for r in hist], objectives(hist), n, dim, seed,
                budget, num_init, ref=ref)
    log.add(evaluate(n, x))
    if on_record is not None:
      on_record(n, budget, log.records)
  return log.records


def pareto_indices(y: np.ndarray) -> np.ndarray:
  """Indices of the non-dominated finite rows of Y [n, 2] (maximised)."""
  y = np.asarray(y, np.float64).reshape(-1, 2)
  ok = np.isfinite(y).all(1)
  if not ok.any():
    return np.zeros(0, np.int64)
  return np.nonzero(ok)[0][pareto_mask(y[ok])]


def finite_hypervolume(y: np.ndarray, ref) -> float:
  """Hypervolume of the finite rows of Y [n, 2] above `ref` (0 if none)."""
  y = np.asarray(y, np.float64).reshape(-1, 2)
  y = y[np.isfinite(y).all(1)]
  return float(hypervolume(y, ref)) if y.size else 0.0
