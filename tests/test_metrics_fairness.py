"""Fairness metrics vs hand computations, and the paired test vs SciPy."""

import math

import jax
import numpy as np
import pytest

from fairjax.metrics import cell_recall
from fairjax.metrics import cv_metrics
from fairjax.metrics import der
from fairjax.metrics import esp
from fairjax.metrics import gini
from fairjax.metrics import group_exposure
from fairjax.metrics import group_gap
from fairjax.metrics import group_means
from fairjax.metrics import max_min_gap
from fairjax.metrics import paired_test
from fairjax.metrics import student_t_two_sided_p


def test_group_gap_and_means():
  values = np.array([1.0, 0.5, np.nan, 0.2, 0.4, np.nan, 0.9])
  groups = np.array([0, 0, 0, 1, 1, 1, 5])  # group 5 is out of range
  np.testing.assert_allclose(group_means(values, groups, 3),
                             [0.75, 0.3, np.nan])
  assert float(group_gap(values, groups)) == pytest.approx(0.45)
  assert math.isnan(float(group_gap(values, np.zeros(7, int))))
  jitted = jax.jit(group_means, static_argnums=2)(values, groups, 2)
  np.testing.assert_allclose(jitted, [0.75, 0.3])


def _cell_recall_loops(top, test, ug, ig, n_a, n_j):
  sums = np.zeros((n_a, n_j))
  counts = np.zeros((n_a, n_j))
  for u in range(top.shape[0]):
    for j in range(n_j):
      t_uj = {i for i in np.flatnonzero(test[u]) if ig[i] == j}
      if not t_uj or not 0 <= ug[u] < n_a:
        continue
      hits = len(t_uj & {i for i in top[u] if i >= 0})
      sums[ug[u], j] += hits / len(t_uj)
      counts[ug[u], j] += 1
  with np.errstate(invalid="ignore"):
    return np.where(counts > 0, sums / counts, np.nan)


def test_cell_recall_hand():
  # 3 users, 6 items; item groups [0, 0, 1, 1, -1, 1]; user groups [0, 0, 1].
  top = np.array([[0, 2, -1], [5, 1, 4], [3, 0, 1]])
  test = np.zeros((3, 6), bool)
  test[0, [0, 1, 2]] = True  # g0: {0,1} hit 0 -> 1/2; g1: {2} hit -> 1
  test[1, [3, 4]] = True  # g1: {3} no hit -> 0; item 4 has no group
  test[2, [0, 3, 5]] = True  # g0: {0} hit -> 1; g1: {3,5} hit 3 -> 1/2
  got = np.asarray(cell_recall(top, test, np.array([0, 0, 1]),
                               np.array([0, 0, 1, 1, -1, 1]), 2, 2))
  np.testing.assert_allclose(got, [[0.5, 0.5], [1.0, 0.5]])


def test_cell_recall_random_vs_loops():
  rng = np.random.default_rng(0)
  n_u, n_i, k = 40, 30, 5
  top = np.argsort(-rng.random((n_u, n_i)), axis=1)[:, :k]
  top[rng.random((n_u, k)) < 0.1] = -1
  test = rng.random((n_u, n_i)) < 0.15
  ug = rng.integers(0, 3, n_u)
  ig = rng.integers(-1, 4, n_i)
  got = np.asarray(cell_recall(top, test, ug, ig, 3, 4))
  np.testing.assert_allclose(got, _cell_recall_loops(top, test, ug, ig, 3, 4),
                             rtol=1e-6)
  # A cell nobody has test items in is NaN.
  got = np.asarray(cell_recall(top, test, ug, ig, 4, 4))
  assert np.isnan(got[3]).all()


def _cv(x):
  x = x[~np.isnan(x)]
  return np.std(x) / np.mean(x)


def test_cv_metrics_hand():
  cells = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.9]])
  got = {k: float(v) for k, v in cv_metrics(cells).items()}
  assert got["cv"] == pytest.approx(_cv(cells.ravel()), rel=1e-5)
  assert got["min"] == pytest.approx(0.1)  # floor(6/4) = 1 smallest
  assert got["ucv"] == pytest.approx(
      np.mean([_cv(cells[:, j]) for j in range(3)]), rel=1e-5)
  assert got["icv"] == pytest.approx(
      np.mean([_cv(cells[a]) for a in range(2)]), rel=1e-5)
  # 12 cells (ITFR ML-1M): MIN averages the 3 smallest.
  cells12 = np.arange(1, 13, dtype=np.float64).reshape(2, 6)[:, ::-1]
  assert float(cv_metrics(cells12)["min"]) == pytest.approx(2.0)


def test_cv_metrics_skips_empty_cells():
  cells = np.array([[0.2, np.nan], [0.4, 0.6]])
  got = {k: float(v) for k, v in cv_metrics(cells).items()}
  assert got["cv"] == pytest.approx(_cv(np.array([0.2, 0.4, 0.6])), rel=1e-5)
  assert got["min"] == pytest.approx(0.2)  # G = 3 -> 1 smallest
  # Column 1 and row 0 have one cell each: CV 0.
  assert got["ucv"] == pytest.approx(np.mean([_cv(np.array([0.2, 0.4])), 0]),
                                     rel=1e-5)
  assert got["icv"] == pytest.approx(np.mean([0, _cv(np.array([0.4, 0.6]))]),
                                     rel=1e-5)
  assert math.isnan(float(cv_metrics(np.full((2, 2), np.nan))["cv"]))


def test_exposure_and_esp():
  item_group = np.array([0, 0, 1, 2, 2, 2, -1])
  lists = np.array([[0, 3, 4], [6, 2, -1], [5, 1, 0]])
  counts = np.asarray(group_exposure(lists, item_group, 3))
  np.testing.assert_array_equal(counts, [3, 1, 3])
  assert float(esp(counts, np.array([3, 2, 1]))) == pytest.approx(2 / 3)
  assert float(esp(counts, np.zeros(3))) == 1.0


def test_der_gap_gini():
  assert float(der(np.array([2.0, 2.0, 2.0]))) == pytest.approx(0.0, abs=1e-7)
  assert float(der(np.array([0.0, 5.0, 0.0]))) == pytest.approx(1.0)
  u = np.array([1.0, 3.0])
  p = u / u.sum()
  assert float(der(u)) == pytest.approx(2 * np.sum((p - 0.5) ** 2))
  assert math.isnan(float(der(np.zeros(3))))
  with pytest.raises(ValueError):
    der(np.array([1.0]))
  assert float(max_min_gap(np.array([0.2, 0.9, np.nan, 0.5]))) == \
      pytest.approx(0.7)
  x = np.array([3.0, 0.0, 1.0, 6.0])
  brute = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
  assert float(gini(x)) == pytest.approx(brute, rel=1e-6)
  assert float(gini(np.ones(5))) == pytest.approx(0.0, abs=1e-7)
  assert float(gini(np.array([0, 0, 0, 4.0]))) == pytest.approx(0.75)


# Significance -----------------------------------------------------------------


def test_paired_test_vs_scipy():
  from scipy import stats  # a JAX dependency: always installed
  rng = np.random.default_rng(4)
  for n, shift in [(200, 0.02), (30, 0.3), (5, 0.0), (1000, 0.1)]:
    a = rng.random(n)
    b = a - shift + 0.2 * rng.standard_normal(n)
    a[rng.random(n) < 0.1] = np.nan  # dropped users
    res = paired_test(a, b)
    ok = ~np.isnan(a) & ~np.isnan(b)
    want = stats.ttest_rel(a[ok], b[ok])
    assert res["n"] == ok.sum()
    assert res["mean_diff"] == pytest.approx(np.mean(a[ok] - b[ok]))
    assert res["t"] == pytest.approx(want.statistic, rel=1e-9)
    assert res["p_value"] == pytest.approx(want.pvalue, rel=1e-6, abs=1e-300)
    w = stats.wilcoxon(a[ok], b[ok], zero_method="wilcox", correction=False,
                       method="approx")
    assert res["wilcoxon_p"] == pytest.approx(w.pvalue, rel=1e-6)


def test_t_pvalue_vs_scipy_tails():
  from scipy import stats  # a JAX dependency: always installed
  for t, df in [(0.0, 3), (1.5, 10), (-4.0, 7), (12.0, 200), (40.0, 5000)]:
    assert student_t_two_sided_p(t, df) == pytest.approx(
        2 * stats.t.sf(abs(t), df), rel=1e-6, abs=1e-300)


def test_paired_test_edge_cases():
  res = paired_test([1.0, np.nan], [0.5, 0.2])
  assert res["n"] == 1 and math.isnan(res["t"]) and math.isnan(res["p_value"])
  res = paired_test([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # constant difference
  assert res["t"] == math.inf and res["p_value"] == 0.0
  res = paired_test([0.3, 0.5], [0.3, 0.5])  # identical
  assert res["t"] == 0.0 and res["p_value"] == 1.0
  assert math.isnan(res["wilcoxon_p"])
  with pytest.raises(ValueError):
    paired_test([1.0, 2.0], [1.0])
