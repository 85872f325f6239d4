"""report.md and the PNG figures of an audit report (issue 15).

Figures (largest K): `user_<ATTR>.png` per-group NDCG and Recall with 95%
intervals; `cells_<UATTR>_<IATTR>.png` the per-cell recall heat map;
`exposure_<ATTR>.png` exposure per item group against its catalogue share
and the minimum when given.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

DOCS = ("Definitions: `fairjax/audit/report.py` (module docstring) for every "
        "figure; per-user metrics `fairjax/metrics/ranking.py`; cells, CV/MIN/"
        "UCV/ICV, ESP, DER, Gini `fairjax/metrics/fairness.py`; the t-test "
        "`fairjax/metrics/significance.py`.")


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _f(x, digits=4) -> str:
  if x is None:
    return "n/a"
  if isinstance(x, float):
    return f"{x:.{digits}f}"
  return str(x)


def _table(head: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def markdown(report: dict, pngs: list[pathlib.Path]) -> str:
  """The human-readable report."""
  inp = report["input"]
  ks = inp["ks"]
  metrics = ("recall", "precision", "ndcg", "hr", "f1")
  out = ["# Fairness audit", "", DOCS, "",
         "## Input", "",
         _table(["field", "value"], [
             ["recommendations", f"`{inp['files']['recs']}` ({inp['recs_mode']}"
              f", {inp['recs_rows']} rows)"],
             ["test", f"`{inp['files']['test']}` ({inp['test_pairs']} pairs)"],
             ["users evaluated", inp["users_evaluated"]],
             ["users with a list", inp["users_with_list"]],
             ["evaluated without a list (all misses)",
              inp["users_evaluated_without_list"]],
             ["lists shorter than K", ", ".join(
                 f"K={k}: {n}" for k, n in inp["lists_shorter_than_k"].items())],
             ["skipped", str(inp["skipped"])]]), "",
         "## Overall", "",
         _table(["K"] + list(metrics),
                [[k] + [report["overall"][f"{m}@{k}"] for m in metrics]
                 for k in ks]), ""]
  for attr, sec in report["user"].items():
    out += [f"## Users by `{attr}`", ""]
    for k in ks:
      rows = [[g, e["n_users"]] + [e[f"{m}@{k}"] for m in metrics] +
              [e[f"utility@{k}"]] for g, e in sec["groups"].items()]
      rows.append(["gap (max-min)", ""] + [sec["gap"].get(f"{m}@{k}")
                                             for m in metrics] + [""])
      rows.append(["Welch p (best vs worst)", ""] + [
          sec["test"].get(f"{m}@{k}", {}).get("p_value") for m in metrics] +
                  [""])
      rows.append(["MAD (mean pairwise gap)", ""] + [
          sec["mad"].get(f"{m}@{k}") for m in metrics] + [""])
      out += [f"K = {k}, DER of utility {_f(sec['der'][f'der@{k}'])}, "
              f"max-min utility gap {_f(sec['der'][f'max_min_gap@{k}'])} "
              f"(utility: {sec['der']['utility']}).", "",
              _table(["group", "users"] + list(metrics) + ["utility"], rows),
              ""]
    out += ["Test: Welch's unequal-variance t-test between the best and the "
            "worst group (different users in each group, unequal sizes and "
            "variances: no pairing, no pooled variance).", ""]
  for attr, sec in report["item"].items():
    out += [f"## Items by `{attr}`", ""]
    labels = list(sec["catalog_share"])
    head = ["group", "catalogue share"] + [f"exposure@{k}" for k in ks]
    if "min_exposure" in sec:
      head.append("minimum")
    rows = []
    for g in labels:
      r = [g, sec["catalog_share"][g]] + [sec[f"exposure@{k}"][g] for k in ks]
      if "min_exposure" in sec:
        r.append(sec["min_exposure"][g])
      rows.append(r)
    out += [_table(head, rows), ""]
    extra = [[f"K={k}", sec[f"reo@{k}"], sec[f"rsp@{k}"],
              sec.get(f"esp@{k}")] for k in ks]
    out += [_table(["", "REO", "RSP", "ESP"], extra), ""]
  it = report["items"]
  out += ["## Catalogue", "",
          f"Popularity from the {it['popularity_source']} interactions; "
          f"{it['top10_items']} top-10% items, {it['long_tail_items']} "
          "long-tail items.", "",
          _table(["K", "Gini", "coverage", "top-10% share", "ACLT", "APLT"],
                 [[k, it[f"gini@{k}"], it[f"coverage@{k}"],
                   it[f"popularity_top10_share@{k}"], it[f"aclt@{k}"],
                   it[f"aplt@{k}"]] for k in ks]), ""]
  for ua, by in report["cells"].items():
    for ia, c in by.items():
      k = ks[-1]
      out += [f"## Cells `{ua}` x `{ia}` (recall@{k})", "",
              f"CV {_f(c[f'cv@{k}'])}, MIN {_f(c[f'min@{k}'])}, UCV "
              f"{_f(c[f'ucv@{k}'])}, ICV {_f(c[f'icv@{k}'])}.", "",
              _table([ua + " \\ " + ia] + c["item_groups"],
                     [[g] + row for g, row in zip(c["user_groups"],
                                                  c[f"recall@{k}"])]), "",
              f"BiasDisparity BD@{k} = (BR - BS) / BS:", "",
              _table([ua + " \\ " + ia] + c["item_groups"],
                     [[g] + row for g, row in zip(
                         c["user_groups"], c[f"bias_disparity@{k}"]["bd"])]),
              ""]
  if pngs:
    out += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
  return "\n".join(out)


def figures(report: dict, out: pathlib.Path) -> list[pathlib.Path]:
  """Draws the PNG figures into `out`; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  k = report["input"]["ks"][-1]
  paths = []
  for attr, sec in report["user"].items():
    labels = list(sec["groups"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, m in zip(axes, ("ndcg", "recall")):
      name = f"{m}@{k}"
      vals = [sec["groups"][g][name] for g in labels]
      lo = [sec["groups"][g]["ci95"][name][0] for g in labels]
      hi = [sec["groups"][g]["ci95"][name][1] for g in labels]
      v = np.array([np.nan if x is None else x for x in vals], float)
      err = np.array([[0 if (a is None or x is None) else x - a for a, x in
                       zip(lo, vals)],
                      [0 if (b is None or x is None) else b - x for b, x in
                       zip(hi, vals)]], float)
      ax.bar(range(len(labels)), v, yerr=err, capsize=4, color="#4c72b0")
      ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
      ax.set_title(f"{name} by {attr} (95% CI)")
    fig.tight_layout()
    paths.append(_save(fig, out / f"user_{_safe(attr)}.png"))
  for ua, by in report["cells"].items():
    for ia, c in by.items():
      cells = np.array([[np.nan if x is None else x for x in row]
                        for row in c[f"recall@{k}"]], float)
      fig, ax = plt.subplots(figsize=(1.2 + 0.6 * max(1, cells.shape[1]),
                                      1.5 + 0.5 * max(1, cells.shape[0])))
      im = ax.imshow(cells, cmap="viridis", aspect="auto")
      ax.set_xticks(range(len(c["item_groups"])), c["item_groups"],
                    rotation=45, ha="right")
      ax.set_yticks(range(len(c["user_groups"])), c["user_groups"])
      ax.set_title(f"recall@{k}: {ua} x {ia}")
      fig.colorbar(im, ax=ax)
      fig.tight_layout()
      paths.append(_save(fig, out / f"cells_{_safe(ua)}_{_safe(ia)}.png"))
  for attr, sec in report["item"].items():
    labels = list(sec["catalog_share"])
    x = np.arange(len(labels))
    expo = [sec["exposure"][g] or 0.0 for g in labels]
    cat = [sec["catalog_share"][g] or 0.0 for g in labels]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2), 3.2))
    ax.bar(x - 0.2, expo, 0.4, label=f"exposure@{k}")
    ax.bar(x + 0.2, cat, 0.4, label="catalogue share")
    if "min_exposure" in sec:
      ax.scatter(x, [sec["min_exposure"][g] for g in labels], marker="_",
                 s=300, color="red", label="minimum", zorder=3)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_title(f"exposure by {attr}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out / f"exposure_{_safe(attr)}.png"))
  return paths


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  import matplotlib.pyplot as plt
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
