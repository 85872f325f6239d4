"""ITFR figures from a run's workdir (summary.json), as PNG.

cell_recall.png: one heat map per method of the test recall@K in every
(user group x item group) cell (mean over seeds), on a shared colour scale,
so unequal cells stand out.
cv_vs_accuracy.png: CV@K (lower is fairer) against NDCG@K per method, with
the seed standard deviations as error bars when the run has several seeds.
"""

from __future__ import annotations

import json
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fairjax.report import common  # noqa: E402


def _summary(workdir: pathlib.Path) -> dict:
  return json.loads(common.run_file(workdir, "summary.json").read_text())


def _k_of(summary: dict) -> int:
  for values in summary.get("test", {}).values():
    for key in values:
      if key.startswith("cv@"):
        return int(key.split("@")[1])
  raise ValueError("summary.json: field 'test' has no cv@K entry")


def itfr_figures(workdir) -> list[pathlib.Path]:
  """Draws cell_recall.png and cv_vs_accuracy.png into `workdir`.

  Args:
    workdir: a `launch.itfr` workdir holding summary.json.

  Returns:
    The paths written.
  """
  workdir = pathlib.Path(workdir)
  summary = _summary(workdir)
  k = _k_of(summary)
  out = []

  cells = summary.get("cells", {})
  if cells:
    methods = list(cells)
    tables = {m: np.asarray(cells[m][f"recall@{k}"], float) for m in methods}
    finite = np.concatenate([t[np.isfinite(t)] for t in tables.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size \
        else (0.0, 1.0)
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    first = cells[methods[0]]
    ncols_cells = len(first["item_groups"])
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(1.5 + 0.75 * ncols_cells * cols,
                                      1.6 + 0.5 * len(first["user_groups"])
                                      * rows + 0.6 * rows))
    for ax, m in zip(axes.flat, methods):
      table = tables[m]
      im = ax.imshow(table, vmin=vmin, vmax=vmax, cmap="viridis",
                     aspect="auto")
      ax.set_xticks(range(table.shape[1]), cells[m]["item_groups"],
                    rotation=45, ha="right", fontsize=7)
      ax.set_yticks(range(table.shape[0]), cells[m]["user_groups"],
                    fontsize=7)
      for (a, j), v in np.ndenumerate(table):
        if np.isfinite(v):
          ax.text(j, a, f"{v:.2f}", ha="center", va="center", fontsize=6,
                  color="w" if v < (vmin + vmax) / 2 else "k")
      ax.set_title(m, fontsize=9)
    for ax in list(axes.flat)[len(methods):]:
      ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label=f"test recall@{k}")
    out.append(common.save(fig, workdir / "cell_recall.png", dpi=110,
                          bbox_inches="tight"))

  test = summary["test"]
  std = summary.get("std", {})
  fig, ax = plt.subplots(figsize=(5, 4))
  for m, values in test.items():
    x, y = values[f"ndcg@{k}"], values[f"cv@{k}"]
    err = std.get(m, {})
    ax.errorbar(x, y, xerr=err.get(f"ndcg@{k}"), yerr=err.get(f"cv@{k}"),
                fmt="o", capsize=2)
    ax.annotate(m, (x, y), fontsize=7, xytext=(3, 3),
                textcoords="offset points")
  ax.set(xlabel=f"NDCG@{k} (higher is better)",
         ylabel=f"CV@{k} over cells (lower is fairer)",
         title="Intersectional fairness against accuracy")
  fig.tight_layout()
  out.append(common.save(fig, workdir / "cv_vs_accuracy.png", dpi=110))
  return out
