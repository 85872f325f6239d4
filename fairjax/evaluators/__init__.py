"""Evaluators, one definition each, chosen by name.

  periodic   sampled and full-ranking evaluation of the dynamic protocol
             (FADE, DESIGN §3): `periodic.Evaluator`, `periodic.summarise`;
  cells      full ranking with per-cell recall and CV/MIN/UCV/ICV (ITFR,
             DESIGN §4): `cells.CellEvaluator`;
  exposure   accuracy of served lists and ESP against minimums (FairSync,
             DESIGN §5): `exposure.accuracy`, `exposure.esp_summary`;
  welfare    welfare, DER and gap of pipeline knob settings, their Pareto
             fronts re-evaluated on test (system, DESIGN §6):
             `welfare.evaluate_knobs`, `welfare.front_on_test`.
"""

import importlib

NAMES = ("periodic", "cells", "exposure", "welfare")


def get(name: str):
  """The evaluator module `fairjax.evaluators.<name>`."""
  if name not in NAMES:
    raise ValueError(f"unknown evaluator {name!r}; choose from {NAMES}")
  return importlib.import_module(f"fairjax.evaluators.{name}")
