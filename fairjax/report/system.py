"""System-level fairness figures from a run's workdir (summary.json and the
units' result.json), as PNG:

pareto.png: each optimiser's Pareto front (seed 0, test welfare against
test DER) with the baselines B1, B2, B3 as markers.
hypervolume.png: validation hypervolume against the number of evaluations,
mean over seeds, per optimiser (the dense grid as a horizontal line).
group_utility.png: per-group test utility of the baselines and of the BO
setting that der_reduction@2% selects (seed 0).
"""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fairjax.checkpoint import floats  # noqa: E402
from fairjax.report import common  # noqa: E402

_BASELINES = (("welfare_optimal", "B1 welfare-optimal alpha", "s"),
              ("model_level", "B2 model-level fairness", "^"),
              ("single_knob", "B3 best single knob", "D"))


def _result(workdir, key) -> dict | None:
  path = pathlib.Path(workdir) / "methods" / key / "result.json"
  return json.loads(path.read_text()) if path.exists() else None


def system_figures(workdir) -> list[pathlib.Path]:
  """Draws pareto.png, hypervolume.png and group_utility.png."""
  workdir = pathlib.Path(workdir)
  summary = json.loads(common.run_file(workdir, "summary.json").read_text())
  opts = list(summary["pareto"])
  base0 = _result(workdir, "baselines/seed0")
  out = []

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for o in opts:
    front = floats(summary["pareto"][o]).reshape(-1, 8)
    front = front[np.argsort(front[:, 0])]
    ax.plot(front[:, 0], front[:, 1], marker="o", ms=3, lw=1, label=o)
  for name, label, marker in _BASELINES:
    t = base0[name]["test"]
    ax.scatter([t["welfare"]], [t["der"]], marker=marker, s=70, c="k",
               label=label, zorder=5)
  ax.set(xlabel="welfare W (test)", ylabel="DER (test)",
         title="Pareto fronts (seed 0) and baselines")
  ax.legend(fontsize=7)
  fig.tight_layout()
  out.append(common.save(fig, workdir / "pareto.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  for o in opts:
    curves = [r["valid_hypervolume_curve"] for s in range(summary["num_seeds"])
              if (r := _result(workdir, f"{o}/seed{s}")) is not None]
    if not curves:
      continue
    n = min(len(c) for c in curves)
    mean = np.mean([c[:n] for c in curves], axis=0)
    if o == "grid":
      ax.axhline(mean[-1], color="grey", ls="--", label="dense grid")
    else:
      ax.plot(np.arange(1, n + 1), mean, label=o)
  ax.set(xlabel="evaluations", ylabel="hypervolume (validation)",
         title="Hypervolume against evaluations (mean over seeds)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  out.append(common.save(fig, workdir / "hypervolume.png"))

  groups = summary["group_names"]
  bars = [(label.split()[0], base0[name]["test"]["group_utility"])
          for name, label, _ in _BASELINES]
  bo0 = _result(workdir, "bo/seed0")
  if bo0 is not None:
    tol = json.loads(common.run_file(workdir, "config.json").read_text())[
        "welfare_tolerance"]
    w_min = (1 - tol) * base0["welfare_optimal"]["test"]["welfare"]
    ok = [r for r in bo0["front"] if r["test"]["ok"]
          and r["test"]["welfare"] >= w_min]
    if ok:
      best = min(ok, key=lambda r: r["test"]["der"])
      bars.append(("BO", best["test"]["group_utility"]))
  fig, ax = plt.subplots(figsize=(6, 4))
  width = 0.8 / len(bars)
  x = np.arange(len(groups))
  for j, (label, util) in enumerate(bars):
    ax.bar(x + j * width, util, width, label=label)
  ax.set_xticks(x + 0.4 - width / 2, groups)
  ax.set(ylabel="mean end utility (test)", title="Per-group utility (seed 0)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  out.append(common.save(fig, workdir / "group_utility.png"))
  return out
