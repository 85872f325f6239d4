"""FADE figures from a run's workdir (metrics.csv, summary.json), as PNG: PD over time per method (paper Fig. 3), accuracy vs |PD| trade-off
(Fig. 2), and a lambda sweep over several workdirs (Fig. 4).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fairjax.checkpoint import write_atomic  # noqa: E402
from fairjax.errors import ConfigError  # noqa: E402
from fairjax.report.common import metrics, run_file, save  # noqa: E402


def fade_figures(workdir, metric: str = "ndcg@20", task: str = "task_r",
                 protocol: str = "sampled") -> list[pathlib.Path]:
  """Draws pd_over_time.png (signed PD per period; the official measure in
  a second panel when recorded) and tradeoff.png into `workdir`."""
  workdir = pathlib.Path(workdir)
  df = metrics(workdir)
  sel = df[(df.split == f"{task}/{protocol}") & (df.metric == metric)]
  out = []
  official = df[(df.split == f"{task}/official") & (df.metric == metric)]
  panels = [(sel, f"standard ({protocol})")]
  if len(official):
    panels.append((official, "official measure (warm users, found NDCG)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4),
                           squeeze=False)
  for ax, (frame, title) in zip(axes[0], panels):
    for method, g in frame[frame.group == "pd"].groupby("method"):
      g = g.sort_values("step")
      ax.plot(g.step, g.value, marker="o", label=method)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="period", ylabel=f"signed PD ({metric}, {task})",
           title=f"User-group gap over time: {title}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  out.append(save(fig, workdir / "pd_over_time.png"))

  fig, ax = plt.subplots(figsize=(5, 4))
  for method, g in sel.groupby("method"):
    acc = g[g.group == "all"].value.mean()
    gap = g[g.group == "pd"].value.abs().mean()
    ax.scatter(gap, acc, s=40)
    ax.annotate(method, (gap, acc), fontsize=8, xytext=(3, 3),
                textcoords="offset points")
  ax.set(xlabel=f"mean |PD| ({metric})", ylabel=f"mean {metric}",
         title="Accuracy vs disparity")
  fig.tight_layout()
  out.append(save(fig, workdir / "tradeoff.png"))
  return out


def fade_lambda_sweep(workdirs, out_path, method: str = "FADE",
                      metric: str = "ndcg@20", task: str = "task_r"
                      ) -> pathlib.Path:
  """Accuracy and |PD| against lambda, one point per workdir (Fig. 4)."""
  points = []
  for d in map(pathlib.Path, workdirs):
    lam = json.loads((d / "config.json").read_text())["fade"]["lam"]
    s = json.loads((d / "summary.json").read_text())[task][method]
    points.append((lam, s[metric], s[f"pd_{metric}"]))
  points.sort()
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=metric)
  ax2 = ax.twinx()
  ax2.plot([p[0] for p in points], [p[2] for p in points], "s--", color="C3",
           label=f"|PD| {metric}")
  ax.set(xlabel="lambda", ylabel=metric, title=f"{method}: lambda sweep")
  ax2.set_ylabel(f"|PD| {metric}")
  fig.legend(fontsize=8, loc="upper center")
  fig.tight_layout()
  return save(fig, out_path)


def summary_table(summary: dict, workdir, figures=()) -> str:
  """The end-of-run table: per method, Task-R NDCG@20 and mean |PD| under
  the standard measure (sampled protocol) and the official one, and the
  training seconds per period; then where the files are."""
  head = (f"{'method':<13} {'NDCG@20':>8} {'|PD|':>7} {'off.NDCG':>9} "
          f"{'off.|PD|':>9} {'s/period':>9}")
  lines = ["Task-R, mean over periods (|PD| = |NDCG@20(M) - NDCG@20(F)|; "
           "off. = official measure, snapshots 1-6)", head, "-" * len(head)]
  off = summary.get("official", {}).get("task_r", {})
  for method, v in summary["task_r"].items():
    o = off.get(method, {})
    lines.append(
        f"{method:<13} {v['ndcg@20']:>8.4f} {v['pd_ndcg@20']:>7.4f} "
        f"{o.get('ndcg@20', float('nan')):>9.4f} "
        f"{o.get('pd_ndcg@20', float('nan')):>9.4f} "
        f"{summary['seconds_per_period'][method]:>9.2f}")
  workdir = pathlib.Path(workdir)
  lines.append(f"files: {workdir / 'summary.json'} (every figure), "
               f"{workdir / 'metrics.csv'} (per period and group)")
  if figures:
    lines.append("figures: " + ", ".join(str(p) for p in figures))
  return "\n".join(lines)


SEED_MEASURES = (("standard", ("task_r",)), ("full-ranking", ("full", "task_r")),
                 ("official", ("official", "task_r")))
# Fields that may differ between the workdirs of one seed table.
SEED_FREE_FIELDS = ("seed", "methods", "data_dir", "retrain_epochs")
# Config blocks read by one method only: they may differ too when the table
# reports none of those methods (e.g. FADE-DUAL's `dual` for FINETUNE, FADE).
METHOD_FIELDS = {"dual": ("FADE-DUAL",), "rec": ("REC",),
                 "adver": ("ADVER",)}


def fade_seed_table(workdirs, out_path) -> pathlib.Path:
  """Writes a Markdown table of Task-R NDCG@20 and mean |PD| of NDCG@20,
  mean +- std over the runs in `workdirs` (one per seed; std with ddof 1),
  under the standard, full-ranking and official measures, per method found
  in every run. The runs must share their config but for SEED_FREE_FIELDS
  and the METHOD_FIELDS of methods the table does not report (ConfigError
  naming the field otherwise)."""
  workdirs = [pathlib.Path(w) for w in workdirs]
  cfgs = [json.loads(run_file(w, "config.json").read_text())
          for w in workdirs]
  sums = [json.loads(run_file(w, "summary.json").read_text())
          for w in workdirs]
  methods = [m for m in sums[0]["task_r"]
             if all(m in s["task_r"] for s in sums)]
  free = set(SEED_FREE_FIELDS) | {
      field for field, users in METHOD_FIELDS.items()
      if not set(users) & set(methods)}
  for w, c in zip(workdirs[1:], cfgs[1:]):
    for field in sorted(set(c) | set(cfgs[0])):
      if field not in free and c.get(field) != cfgs[0].get(field):
        raise ConfigError(f"{w / 'config.json'}: field {field!r} is "
                          f"{c.get(field)!r}, {workdirs[0]} has "
                          f"{cfgs[0].get(field)!r}: not seeds of one run")

  def cell(path, method, key):
    vals = []
    for s in sums:
      node = s
      for p in path:
        node = node.get(p, {})
      vals.append(node.get(method, {}).get(key, float("nan")))
    v = np.asarray(vals, np.float64)
    std = v.std(ddof=1) if v.size > 1 else float("nan")
    return f"{v.mean():.4f} +- {std:.4f}"

  seeds = ", ".join(str(c.get("seed")) for c in cfgs)
  lines = [f"Task-R, {cfgs[0].get('dataset')}, {cfgs[0].get('model')}, "
           f"protocol {cfgs[0].get('protocol')}, seeds {seeds}: mean +- std "
           "of NDCG@20 / mean abs PD of NDCG@20", "",
           "| method | " + " | ".join(f"{name} NDCG | {name} abs PD"
                                      for name, _ in SEED_MEASURES) + " |",
           "|---|" + "---|---|" * len(SEED_MEASURES)]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(
        f"{cell(path, m, 'ndcg@20')} | {cell(path, m, 'pd_ndcg@20')}"
        for _, path in SEED_MEASURES) + " |")
  out_path = pathlib.Path(out_path)
  write_atomic(out_path, lambda f: f.write("\n".join(lines) + "\n"))
  return out_path
