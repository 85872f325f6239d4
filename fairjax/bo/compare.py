"""Comparing optimisers over seeds: hypervolume statistics and paired tests.

Each optimiser o has one hypervolume HV_o(s) per seed s (at full budget and
at half budget); the summary is the mean over seeds (NaN-aware, `nan_mean`),
the population standard deviation and the per-seed values. Against a dense
grid reference, the mean over seeds of the ratio HV_o(s) / HV_grid(s). BO is
compared with every other optimiser by a paired t-test (and Wilcoxon) over
seeds (`fairjax.metrics.paired_test`), and BO at half budget with random
search at full budget.
"""

from __future__ import annotations

import numpy as np

from fairjax import metrics as metrics_lib


def nan_mean(values) -> float:
  """Mean of the finite values (NaNs skipped); NaN if none is finite."""
  v = np.asarray(values, np.float64)
  return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def hypervolume_summary(hv: dict, half: dict, names, grid: bool) -> dict:
  """Per-optimiser hypervolume statistics over seeds.

  Args:
    hv: {name: [HV per seed]} at full budget (with `grid` when `grid`).
    half: {name: [HV per seed]} at half budget.
    names: the optimisers to report (not the grid).
    grid: whether `hv["grid"]` holds the dense-grid reference.

  Returns:
    {hypervolume: {name: mean}, hypervolume_std: {name: std},
    hypervolume_per_seed: {name: list}, hypervolume_half_budget: {name:
    mean}} and, with `grid`, grid_hypervolume (mean) and
    hypervolume_vs_grid {name: mean of HV / HV_grid}.
  """
  out = {"hypervolume": {o: nan_mean(hv[o]) for o in names},
         "hypervolume_std": {o: float(np.std(hv[o])) for o in names},
         "hypervolume_per_seed": {o: hv[o] for o in names},
         "hypervolume_half_budget": {o: nan_mean(half[o]) for o in names}}
  if grid:
    out["grid_hypervolume"] = nan_mean(hv["grid"])
    out["hypervolume_vs_grid"] = {
        o: nan_mean(np.asarray(hv[o]) / np.asarray(hv["grid"]))
        for o in names}
  return out


def paired_tests(hv: dict, half: dict, names) -> dict:
  """{bo_vs_O: paired test of BO's vs O's per-seed HV} for every other
  optimiser O of `names`, and bo_half_budget_vs_random (BO at half budget vs
  random at full) when random ran. Needs `hv["bo"]`."""
  tests = {f"bo_vs_{o}": metrics_lib.paired_test(hv["bo"], hv[o])
           for o in names if o != "bo"}
  if "random" in hv:
    tests["bo_half_budget_vs_random"] = metrics_lib.paired_test(
        half["bo"], hv["random"])
  return tests
