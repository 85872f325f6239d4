"""Pareto fronts and the 2-D hypervolume indicator (both objectives maximised).

A point p dominates q when p >= q in both objectives and p > q in at least
one. For points P = {p_1, ..., p_n} and a reference point r the hypervolume
is the area of the union of the boxes [r, p_i]:

  HV(P; r) = lambda( U_i {z : r <= z <= p_i} ).

Only points strictly better than r in both objectives add area. With the
non-dominated points beyond r sorted by the first objective, a_1 < ... < a_k
(so their second objectives fall, b_1 > ... > b_k), the union is a staircase
cut into vertical strips:

  HV(P; r) = sum_{i=1}^{k} (a_i - a_{i-1}) (b_i - r_2),   a_0 = r_1

(Zitzler & Thiele 1999; the 2-D sweep of Fonseca, Paquete & Lopez-Ibanez
2006). Host code (NumPy): these run once per optimisation step; the
differentiable acquisition lives in `fairjax.bo.ehvi`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from fairjax.errors import ConfigError


def _as_points(points: ArrayLike, field: str = "points") -> np.ndarray:
  p = np.asarray(points, np.float64)
  if p.ndim == 1 and p.size == 0:
    p = p.reshape(0, 2)
  if p.ndim != 2 or p.shape[1] != 2:
    raise ConfigError(f"{field} must have shape [n, 2] (two objectives), got "
                      f"shape {p.shape}")
  return p


def _as_ref(ref: ArrayLike) -> np.ndarray:
  r = np.asarray(ref, np.float64)
  if r.shape != (2,):
    raise ConfigError(f"ref must have shape [2], got shape {r.shape}")
  if not np.all(np.isfinite(r)):
    raise ConfigError(f"ref must be finite, got {r}")
  return r


def pareto_mask(points: ArrayLike) -> np.ndarray:
  """Marks the non-dominated rows (maximisation).

  Row i is kept when no row j dominates it (p_j >= p_i everywhere, > once);
  of several exact duplicates only the first is kept. Rows holding a NaN
  (failed evaluations) are never kept and dominate nothing.

  Args:
    points: [n, 2] objective values.

  Returns:
    bool [n].
  """
  p = _as_points(points)
  finite = np.nonzero(np.all(np.isfinite(p), axis=1))[0]
  q = p[finite]
  # Sweep in order of the first objective descending, then the second
  # descending, then the row index: row i is dominated (or an exact copy of
  # an earlier row) iff some row before it has a second objective >= its
  # own. O(n log n).
  order = np.lexsort((finite, -q[:, 1], -q[:, 0]))
  b = q[order, 1]
  before = np.concatenate([[-np.inf], np.maximum.accumulate(b)[:-1]])
  keep = np.zeros(p.shape[0], bool)
  keep[finite[order[b > before]]] = True
  return keep


def pareto_front(points: ArrayLike) -> np.ndarray:
  """The non-dominated points, sorted by the first objective (ascending).

  Args:
    points: [n, 2] objective values (maximised).

  Returns:
    [k, 2] float64, first objective increasing and second decreasing.
  """
  p = _as_points(points)
  front = p[pareto_mask(p)]
  return front[np.argsort(front[:, 0], kind="stable")]


def hypervolume(points: ArrayLike, ref: ArrayLike) -> float:
  """HV(P; r), the area dominated by `points` and bounded below by `ref`.

  HV = sum_i (a_i - a_{i-1}) (b_i - r_2) over the Pareto front beyond r
  (module docstring). Dominated points, duplicates, ties and points that are
  not strictly better than r in both objectives add nothing; NaN rows are
  ignored.

  Args:
    points: [n, 2] objective values (both maximised); n may be 0.
    ref: [2] reference point r.

  Returns:
    The area, a float >= 0.

  Raises:
    ConfigError: points is not [n, 2] or ref is not a finite [2] vector.
  """
  p = _as_points(points)
  r = _as_ref(ref)
  beyond = np.all(p > r, axis=1)  # False for NaN rows.
  front = pareto_front(p[beyond])
  if front.shape[0] == 0:
    return 0.0
  a = np.concatenate([[r[0]], front[:, 0]])
  return float(np.sum(np.diff(a) * (front[:, 1] - r[1])))
