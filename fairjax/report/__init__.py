"""Report figures of a finished run, as PNG beside its metrics.

`figures(workdir, sweep=())` reads the job from `workdir/config.json` (the
config field `job`) and draws that job's figures:
  fade      pd_over_time.png, tradeoff.png (+ lambda_sweep.png with `sweep`,
            seed_table.md with `seeds`: the run and other seeds' runs)
  itfr      cell_recall*.png, cv_vs_accuracy.png
  fairsync  exposure_over_time.png, exposure_ratio.png, fairsync_dual.png
  system    pareto.png, hypervolume.png, group_utility.png
"""

from __future__ import annotations

import importlib
import json
import pathlib

from fairjax.errors import ConfigError
from fairjax.report.common import run_file

_DRAW = {"fade": "fade_figures", "itfr": "itfr_figures",
         "fairsync": "fairsync_figures", "system": "system_figures"}


def job_of(workdir) -> str:
  """The job that made `workdir` (config.json's `job`; older FADE and
  FairSync workdirs, written before the field existed, by their fields)."""
  cfg = json.loads(run_file(workdir, "config.json").read_text())
  if "job" in cfg:
    return cfg["job"]
  if "fade" in cfg:
    return "fade"
  if "headroom" in cfg:
    return "fairsync"
  raise FileNotFoundError(f"{pathlib.Path(workdir) / 'config.json'}: "
                          "field 'job' missing: not a fairjax run folder")


def figures(workdir, sweep=(), seeds=()) -> list[pathlib.Path]:
  """Draws the figures of the job that made `workdir`; returns the paths.
  `seeds`: workdirs of the same FADE run at other seeds (seed_table.md:
  mean +- std over `workdir` and them)."""
  job = job_of(workdir)
  if job not in _DRAW:
    raise FileNotFoundError(f"{workdir}: no report for job {job!r}")
  module = importlib.import_module(f"fairjax.report.{job}")
  paths = list(getattr(module, _DRAW[job])(workdir))
  if sweep and job == "fade":
    paths.append(module.fade_lambda_sweep(
        sweep, pathlib.Path(workdir) / "lambda_sweep.png"))
  if seeds:
    if job != "fade":
      raise ConfigError(f"--seeds: a seed table is drawn for FADE runs; "
                        f"{workdir} is a {job!r} run")
    paths.append(module.fade_seed_table(
        [workdir, *seeds], pathlib.Path(workdir) / "seed_table.md"))
  return paths
