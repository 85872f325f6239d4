"""Probability calibration: Platt scaling and reliability (ECE).

Generic host-side pieces any method can use to turn raw scores into
probabilities and to audit them:

  Platt scaling (Platt 1999), `platt_fit`:
      p = sigmoid(a s + b),
      (a, b) = argmin sum_j w_j [softplus(z_j) - y_j z_j],  z_j = a s_j + b,
  with optional weights w_j (e.g. the inverse sampling rates of a
  case-control sample, so the fit estimates the population's base rate).

  Reliability and expected calibration error (Guo et al. 2017),
  `reliability`: per bin b of the predictions, with W_b = sum_{j in b} w_j,
      mean_pred_b = sum_j w_j p_j / W_b,   frac_pos_b = sum_j w_j y_j / W_b,
      ECE = sum_b (W_b / W) |mean_pred_b - frac_pos_b|,
  bins of equal width or of equal (weighted) mass.

Both run in float64 NumPy on the host (two parameters, one pass of bins).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fairjax.errors import ConfigError, DataError


def platt_fit(scores, labels, weights=None, max_iter: int = 100,
              tol: float = 1e-10) -> tuple[float, float]:
  """Platt scaling by weighted logistic regression (Platt 1999).

      (a, b) = argmin sum_j w_j [softplus(z_j) - y_j z_j],  z_j = a s_j + b,

  solved by Newton's method with step halving on standardised scores (float64
  on the host; two parameters).

  Args:
    scores: float [n] raw scores s_j.
    labels: [n] binary labels y_j.
    weights: optional [n] non-negative weights (e.g. inverse sampling rates).
    max_iter: Newton iterations.
    tol: stop when the step's max-norm falls below it.

  Returns:
    (a, b) as floats.

  Raises:
    DataError: empty input, a single class, or non-finite scores.
  """
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels, np.float64).reshape(-1)
  w = (np.ones_like(s) if weights is None
       else np.asarray(weights, np.float64).reshape(-1))
  if s.size == 0 or s.shape != y.shape or s.shape != w.shape:
    raise DataError(f"scores {s.shape}, labels {y.shape} and weights "
                    f"{w.shape} must be equal non-empty vectors",
                    field="scores")
  if not np.all(np.isfinite(s)):
    raise DataError("non-finite scores", field="scores")
  wp, wn = float(w[y > 0.5].sum()), float(w[y <= 0.5].sum())
  if wp <= 0 or wn <= 0:
    raise DataError("need both positive and negative labels",
                    field="labels")
  mu, sd = float(np.average(s, weights=w)), float(s.std()) or 1.0
  x = (s - mu) / sd
  theta = np.array([0.0, math.log(wp / wn)])

  def loss(t):
    z = t[0] * x + t[1]
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)))

  cur = loss(theta)
  for _ in range(max_iter):
    z = theta[0] * x + theta[1]
    p = 1.0 / (1.0 + np.exp(-z))
    r = w * (p - y)
    h = w * p * (1 - p)
    grad = np.array([np.sum(r * x), np.sum(r)])
    hess = np.array([[np.sum(h * x * x), np.sum(h * x)],
                     [np.sum(h * x), np.sum(h)]]) + 1e-12 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    t, new = 1.0, None
    for _ in range(30):
      cand = theta - t * step
      new = loss(cand)
      if new <= cur + 1e-12 * abs(cur):
        break
      t *= 0.5
    theta, cur = cand, new
    if np.max(np.abs(t * step)) < tol:
      break
  a = theta[0] / sd
  return float(a), float(theta[1] - a * mu)


def reliability(p, y, bins: int = 10, weights=None,
                strategy: str = "uniform") -> dict[str, Any]:
  """Reliability table and expected calibration error (Guo et al. 2017).

  Bins: 'uniform' = equal-width bins of [0, 1] (a prediction on an edge goes
  to the upper bin, p = 1 to the last); 'quantile' = equal (weighted) mass:
  edge j is the smallest p whose cumulative weight (p ascending) reaches
  j / bins of the total, bins are right-closed (a prediction on an edge
  goes to the lower bin). Per bin b with weight
  W_b = sum_{j in b} w_j:

      mean_pred_b = sum_j w_j p_j / W_b,   frac_pos_b = sum_j w_j y_j / W_b,
      ECE = sum_b (W_b / W) |mean_pred_b - frac_pos_b|.

  Args:
    p: float [n] predicted probabilities.
    y: [n] binary outcomes.
    bins: number of bins.
    weights: optional [n] weights (default 1).
    strategy: 'uniform' or 'quantile'.

  Returns:
    dict: mean_pred [bins], frac_pos [bins] (NaN for an empty bin), count
    [bins] (weighted), num [bins] (rows), edges [bins + 1], ece, base_rate
    (weighted mean of y), mean_pred_all (weighted mean of p).
  """
  p = np.asarray(p, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  w = (np.ones_like(p) if weights is None
       else np.asarray(weights, np.float64).reshape(-1))
  if bins < 1:
    raise ConfigError(f"field 'bins': must be >= 1, got {bins}")
  if p.size == 0 or p.shape != y.shape or p.shape != w.shape:
    raise DataError("p, y and weights must be equal non-empty vectors",
                    field="p")
  if strategy == "uniform":
    edges = np.linspace(0.0, 1.0, bins + 1)
  elif strategy == "quantile":
    order = np.argsort(p, kind="stable")
    cw = np.cumsum(w[order])
    qs = np.arange(1, bins) / bins * cw[-1]
    inner = p[order][np.minimum(np.searchsorted(cw, qs, side="left"),
                                p.size - 1)]
    edges = np.concatenate([[min(0.0, p.min())], inner,
                            [max(1.0, p.max())]])
  else:
    raise ConfigError(f"field 'strategy': 'uniform' or 'quantile', got "
                      f"{strategy!r}")
  side = "right" if strategy == "uniform" else "left"
  b = np.clip(np.searchsorted(edges[1:-1], p, side=side), 0, bins - 1)
  cnt = np.bincount(b, weights=w, minlength=bins)
  num = np.bincount(b, minlength=bins)
  sp = np.bincount(b, weights=w * p, minlength=bins)
  sy = np.bincount(b, weights=w * y, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mp = np.where(cnt > 0, sp / cnt, np.nan)
    fy = np.where(cnt > 0, sy / cnt, np.nan)
  tot = cnt.sum()
  ece = float(np.nansum(cnt / tot * np.abs(mp - fy)))
  return {"mean_pred": mp, "frac_pos": fy, "count": cnt, "num": num,
          "edges": edges, "ece": ece, "base_rate": float(sy.sum() / tot),
          "mean_pred_all": float(sp.sum() / tot)}
