"""Paired significance tests over per-user metric vectors.

Two methods evaluated on the same users give paired per-user values a_u, b_u
(e.g. `ndcg@20` from `rank_metrics`). This module tests H0: E[a - b] = 0
with the paired Student t-test, and also gives the Wilcoxon signed-rank test
(normal approximation). Host-side (the set of users present varies), so not
jittable; no SciPy dependency: the t CDF is the regularised incomplete beta
function `jax.scipy.special.betainc`, evaluated in float64.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.scipy.special import betainc

__all__ = ["paired_test", "student_t_two_sided_p"]


def student_t_two_sided_p(t: float, df: float) -> float:
  """Two-sided p-value P(|T| >= |t|) of Student's t with df degrees of freedom.

  P = I_{df / (df + t^2)}(df / 2, 1 / 2), I the regularised incomplete beta.

  Args:
    t: the statistic (may be +-inf).
    df: degrees of freedom, > 0.

  Returns:
    The p-value in [0, 1] (NaN if t is NaN).
  """
  if math.isnan(t):
    return math.nan
  if math.isinf(t):
    return 0.0
  x = df / (df + t * t)
  with jax.enable_x64(True):
    p = betainc(np.float64(df / 2.0), np.float64(0.5), np.float64(x))
    return float(np.clip(np.asarray(p), 0.0, 1.0))


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
  """Wilcoxon signed-rank z and two-sided p (zeros dropped, tie-corrected)."""
  d = d[d != 0]
  n = d.size
  if n == 0:
    return math.nan, math.nan
  absd = np.abs(d)
  _, inv, counts = np.unique(absd, return_inverse=True, return_counts=True)
  avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
  ranks = avg_rank[inv]
  w_plus = ranks[d > 0].sum()
  mean = n * (n + 1) / 4.0
  var = n * (n + 1) * (2 * n + 1) / 24.0 - np.sum(counts ** 3 - counts) / 48.0
  if var <= 0:
    return math.nan, math.nan
  z = (w_plus - mean) / math.sqrt(var)
  return float(z), float(math.erfc(abs(z) / math.sqrt(2.0)))


def paired_test(a, b) -> dict[str, float]:
  """Paired t-test (and Wilcoxon signed-rank) of per-user values a vs b.

  Users where a or b is NaN are dropped; with d_u = a_u - b_u over the n
  remaining users,
    mean_diff = dbar = (1/n) sum_u d_u,
    s^2 = (1/(n-1)) sum_u (d_u - dbar)^2,
    t = dbar / (s / sqrt(n)),   df = n - 1,
    p_value = P(|T_df| >= |t|) (two-sided).
  Edge cases, explicit: n < 2 -> t = p_value = NaN; s = 0 -> t = 0 and
  p_value = 1 if dbar = 0 (all d_u equal), else t = sign(dbar) inf and p_value = 0.
  Wilcoxon: zero differences dropped, average ranks for ties, W+ = sum of
  ranks of positive d_u, z = (W+ - n'(n'+1)/4) / sqrt(n'(n'+1)(2n'+1)/24 -
  sum(t^3 - t)/48), p = erfc(|z| / sqrt 2), no continuity correction
  (meaningful for n' >~ 20).

  Args:
    a: float [U] per-user values of method A.
    b: float [U] per-user values of method B (same users, same order).

  Returns:
    Dict with `mean_diff`, `t`, `df`, `p_value`, `n` (int), `wilcoxon_z`,
    `wilcoxon_p`.
  """
  a = np.asarray(a, np.float64).reshape(-1)
  b = np.asarray(b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired_test needs equal shapes, got {a.shape} and "
                     f"{b.shape}")
  d = (a - b)[~(np.isnan(a) | np.isnan(b))]
  n = int(d.size)
  mean_diff = float(d.mean()) if n else math.nan
  out = dict(mean_diff=mean_diff, n=n, df=float(n - 1) if n else math.nan)
  if n < 2:
    out.update(t=math.nan, p_value=math.nan)
  else:
    sd = float(np.std(d, ddof=1))
    if np.all(d == d[0]):  # exact zero variance (np.std may round to ~1e-17)
      t = 0.0 if mean_diff == 0.0 else math.copysign(math.inf, mean_diff)
      out.update(t=t, p_value=1.0 if t == 0.0 else 0.0)
    else:
      t = mean_diff / (sd / math.sqrt(n))
      out.update(t=t, p_value=student_t_two_sided_p(t, n - 1.0))
  z, p = _wilcoxon(d)
  out.update(wilcoxon_z=z, wilcoxon_p=p)
  return out
