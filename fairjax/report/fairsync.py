"""FairSync figures from a run's workdir (metrics.csv), as PNG.

exposure_over_time.png: one panel per item group, the cumulative exposure
E_g(t) of every method against the requests served t, with the minimum m_g
(dashed) and its pro-rata path m_g t / T (dotted).
exposure_ratio.png: final E_g / m_g per group and method (1 = minimum met).
fairsync_dual.png (when FairSync ran): the controller over time, the
diagnosis of issue 17. Top: each group's pace E_g(t) / (m_g t / T) (1 = on
the pro-rata path to its minimum; a group ending below 1 misses m_g);
bottom: the mu_g served with each batch. Groups that end below their minimum
are drawn thick and named in the title; batches where the safety net forced
(or repaired) a group are shaded (from methods/FairSync/result.json when
present).
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
  if "FairSync" in methods:
    out.append(_dual_figure(df, workdir, horizon, b, m))
  return out


def _dual_figure(df, workdir, horizon: int, b: int, m: dict
                 ) -> pathlib.Path:
  """fairsync_dual.png: FairSync's pace E_g / (m_g t / T) and mu over time."""
  fs = df[df.method == "FairSync"].copy()
  fs["requests"] = np.minimum((fs.step + 1) * b, horizon)
  expo = fs[fs.metric == "exposure"].pivot(index="requests", columns="group",
                                          values="value")
  mu = fs[fs.metric == "mu"].pivot(index="requests", columns="group",
                                   values="value")
  groups = [g for g in expo.columns if m.get(g, 0) > 0]
  t = expo.index.to_numpy(np.float64)
  missed = [g for g in groups if expo[g].iloc[-1] < m[g]]
  forced, off_scale = [], []
  res = workdir / "methods" / "FairSync" / "result.json"
  if res.exists():
    result = json.loads(res.read_text())
    forced = result.get("forced_batches", [])
    # A repaired batch is served with the dual's own mu; a forced one not.
    if result.get("setting", {}).get("safety_rule") != "repair":
      off_scale = forced
  fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
  cmap = plt.get_cmap("tab20")
  for j, g in enumerate(groups):
    bad = g in missed
    kw = dict(color=cmap(j % 20), lw=2.4 if bad else 0.9,
              label=f"{g} (misses)" if bad else g, zorder=3 if bad else 2)
    pace = expo[g].to_numpy() / (m[g] * t / horizon)
    axes[0].plot(t, pace, **kw)
    # mu_history[b] is the mu the batch ending at t was served with.
    axes[1].plot(t - b / 2, mu[g].to_numpy(), **kw)
  for ax in axes:
    for step in forced:
      ax.axvspan(step * b, min((step + 1) * b, horizon), color="0.85",
                 zorder=0)
  # Forced entries sit ~boost below the rest: scale to the dual's own mu.
  own = mu.drop(index=[i for i in mu.index
                       if (i - 1) // b in set(off_scale)], errors="ignore")
  if len(own) and np.isfinite(own.to_numpy()).any():
    lo, hi = np.nanmin(own.to_numpy()), np.nanmax(own.to_numpy())
    pad = 0.05 * max(hi - lo, 1e-3)
    axes[1].set_ylim(lo - pad, hi + pad)
  axes[0].axhline(1.0, color="k", ls="--", lw=0.8)
  axes[0].set_yscale("log")
  axes[0].set_ylabel("pace E_g(t) / (m_g t / T)")
  axes[1].set_ylabel("mu_g served (forced: off scale)" if off_scale
                     else "mu_g served")
  axes[1].set_xlabel("requests served t")
  title = ("FairSync: groups below m_g at T: " + ", ".join(missed)
           if missed else "FairSync: every minimum met at T")
  axes[0].set_title(title, fontsize=9)
  axes[0].legend(fontsize=6, ncol=3, loc="upper right")
  fig.tight_layout()
  return common.save(fig, workdir / "fairsync_dual.png", dpi=110)
