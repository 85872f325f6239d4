"""One 'bo' proposal (GP fit of both objectives + EHVI maximisation) at 60
evaluated points, d = 5 knobs: the system job's per-step optimiser cost.

Reported: `bo_step_seconds` (median of `repeats` proposals after one
compiling call) and `compile_seconds`. Set OPENBLAS_NUM_THREADS=1 before
numpy loads (launch.bench does): spinning OpenBLAS threads under JAX's
Cholesky make a step ~10x slower on 2 busy cores.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from fairjax import bo


def run(seed: int = 0, repeats: int = 5) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.random((60, 5))
  y = np.stack([-np.sum((x - 0.2) ** 2, 1), -np.sum((x - 0.7) ** 2, 1)], 1)
  t = time.perf_counter()
  bo.propose("bo", x, y, 60, 5, seed, 60)
  compile_seconds = time.perf_counter() - t
  times = []
  for r in range(repeats):
    t = time.perf_counter()
    bo.propose("bo", x, y, 60, 5, seed + 1 + r, 60)
    times.append(time.perf_counter() - t)
  return {"points": 60, "dim": 5, "compile_seconds": compile_seconds,
          "bo_step_seconds": statistics.median(times)}
