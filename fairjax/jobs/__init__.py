"""Experiment jobs run by `fairjax.runner.train_and_evaluate`.

One module per experiment: `fade`, `itfr`, `fairsync`, `system`. Each
supplies its data, its units, how to run one unit, its metrics rows and its
summary (the job interface is described in `fairjax.runner`).
"""

import importlib

NAMES = ("fade", "itfr", "fairsync", "system")


def get(name: str):
  """The job module `fairjax.jobs.<name>`."""
  if name not in NAMES:
    raise ValueError(f"unknown job {name!r}; jobs: {', '.join(NAMES)}")
  return importlib.import_module(f"fairjax.jobs.{name}")
