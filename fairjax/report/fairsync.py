"""FairSync figures from a run's workdir (metrics.csv), as PNG.

exposure_over_time.png: one panel per item group, the cumulative exposure
E_g(t) of every method against the requests served t, with the minimum m_g
(dashed) and its pro-rata path m_g t / T (dotted).
exposure_ratio.png: final E_g / m_g per group and method (1 = minimum met).
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


def fairsync_figures(workdir) -> list[pathlib.Path]:
  """Draws exposure_over_time.png and exposure_ratio.png into `workdir`.

  Args:
    workdir: a `launch.fairsync` workdir holding metrics.csv.

  Returns:
    The paths written.
  """
  workdir = pathlib.Path(workdir)
  df = common.metrics(workdir)
  summary = json.loads(common.run_file(workdir, "summary.json").read_text())
  horizon, b = summary["num_requests"], summary["batch_size"]
  expo = df[df.metric == "exposure"].copy()
  expo["requests"] = np.minimum((expo.step + 1) * b, horizon)
  mins = df[df.metric == "min_exposure"].drop_duplicates("group")
  m = dict(zip(mins.group, mins.value.astype(float)))
  groups = list(dict.fromkeys(expo.group))
  methods = list(dict.fromkeys(expo.method))
  cols = min(6, len(groups))
  rows = math.ceil(len(groups) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows),
                           squeeze=False, sharex=True)
  for ax, g in zip(axes.flat, groups):
    for method in methods:
      sel = expo[(expo.group == g) & (expo.method == method)]
      sel = sel.sort_values("requests")
      ax.plot(sel.requests, sel.value, lw=1.2, label=method)
    if g in m:
      ax.axhline(m[g], color="k", ls="--", lw=0.8)
      ax.plot([0, horizon], [0, m[g]], color="k", ls=":", lw=0.8)
    ax.set_title(str(g), fontsize=8)
    ax.tick_params(labelsize=6)
  for ax in list(axes.flat)[len(groups):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=6)
  fig.supxlabel("requests served")
  fig.supylabel("exposure E_g (dashed: m_g)")
  fig.tight_layout()
  out = [common.save(fig, workdir / "exposure_over_time.png", dpi=110)]

  final = expo.sort_values("requests").groupby(["method", "group"]).last()
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(groups)), 3.5))
  width = 0.8 / max(len(methods), 1)
  x = np.arange(len(groups))
  for j, method in enumerate(methods):
    ratio = [final.loc[(method, g), "value"] / m[g] if m.get(g, 0) > 0
             else np.nan for g in groups]
    ax.bar(x + j * width, ratio, width, label=method)
  ax.axhline(1.0, color="k", ls="--", lw=0.8)
  ax.set_xticks(x + 0.4 - width / 2, [str(g) for g in groups], rotation=60,
                fontsize=7)
  ax.set(ylabel="E_g / m_g", title="Final exposure against the minimum")
  ax.set_yscale("log")
  ax.legend(fontsize=7)
  fig.tight_layout()
  out.append(common.save(fig, workdir / "exposure_ratio.png", dpi=110))
  return out
