"""The audit report: every figure as a JSON-ready dict (issue 15).

Definitions (K a cut-off, U_e the evaluated users: >= 1 test item and a
kept list; all means are over U_e or its groups):

  user side, per user attribute and group a (`report["user"][ATTR]`):
    groups[a][m@K]  mean over the group's users of m@K, m in recall,
                    precision, ndcg, hr, f1 (`fairjax.metrics.ranking`);
                    n_users, a 95% interval mean +- 1.96 sd / sqrt(n)
                    (normal approximation), and the mean utility@K;
    gap[m@K]        max_a - min_a of the group means;
    test[m@K]       Welch's unequal-variance t-test between the best and the
                    worst group: users differ across groups (no pairing), and
                    group sizes and variances differ, so neither the paired
                    test nor Student's pooled test applies;
    mad[m@K]        mean over pairs of groups of |mean_a - mean_b| (Elliot's
                    UserMADranking on ndcg, Deldjoo et al. 2020);
    der@K           DER (`metrics.der`) of the group mean utilities, with the
                    max-min gap (DESIGN §6).
  item side, per item attribute and group g (`report["item"][ATTR]`):
    exposure@K[g]   share of all filled top-K slots holding an item of g;
                    `exposure` = exposure@K at the largest K;
    esp@K           share of groups with exposure@K >= the minimum m_g
                    (`metrics.esp`), when minimums are given;
    reo@K, rsp@K    Zhu et al. 2020 (Elliot REO/RSP): std/mean over groups
                    (population std) of P(ranked in top K | g, test item)
                    = sum_u |topK_u ∩ I_g ∩ T_u| / sum_u |I_g ∩ T_u| and of
                    P(ranked | g) = sum_u |topK_u ∩ I_g| / sum_u |I_g \\ S_u|
                    (S_u the user's --train items; empty without --train).
  catalogue (`report["items"]`): Gini of the slots per item over all items
    (`metrics.gini`), coverage (share of items recommended at least once;
    RecBole's ItemCoverage), entropy = -sum_i p_i ln p_i of the slot shares
    p_i (RecBole's ShannonEntropy),
    popularity bias = share of slots to the top 10% items by popularity
    (--train interactions, else test), ACLT = mean number and APLT = mean
    share of long-tail items in a user's top K (Abdollahpouri et al. 2017,
    Elliot's ACLT/APLT; short head = the most popular items holding 80% of
    the interactions, long tail = the rest).
  cells (`report["cells"][UATTR][IATTR]`): ITFR's R_{a,j}@K (mean over users
    of group a with test items in group j of |topK ∩ T_u ∩ I_j| /
    |T_u ∩ I_j|; `metrics.cell_recall`), CV/MIN/UCV/ICV (`metrics.cv_metrics`)
    and BiasDisparity (Tsintzou et al. 2019, Elliot BiasDisparityBR/BS/BD):
    BR(a, c) = P_R(c | a) / P(c), P_R(c | a) the share of group a's top-K
    slots holding category c, P(c) the share of catalogue items in c; BS the
    same on the source interactions (--train, else test); BD = (BR - BS) / BS.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from fairjax import metrics as metrics_lib
from fairjax.audit.compute import Sums
from fairjax.audit.tables import Attribute, Interactions
from fairjax.checkpoint import finite_or_none

Z95 = 1.959963984540054


def _mean(x: np.ndarray) -> float:
  x = x[~np.isnan(x)]
  return float(x.astype(np.float64).mean()) if x.size else math.nan


def welch_test(mean_a: float, var_a: float, n_a: int, mean_b: float,
               var_b: float, n_b: int) -> dict:
  """Welch's t-test of two group means from their summary statistics.

  t = (abar - bbar) / sqrt(s_a^2/n_a + s_b^2/n_b) with sample variances s^2
  (ddof 1), df by Welch-Satterthwaite (s_a^2/n_a + s_b^2/n_b)^2 /
  ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)), p two-sided
  (`metrics.student_t_two_sided_p`). NaN when a group has < 2 users; t = 0
  and p = 1 (t = +-inf, p = 0) when both variances are 0 and the means are
  equal (differ).
  """
  out = dict(test="welch_t", n=[int(n_a), int(n_b)],
             mean_diff=math.nan, t=math.nan, df=math.nan, p_value=math.nan)
  if n_a < 2 or n_b < 2:
    return out
  va, vb = var_a / n_a, var_b / n_b
  diff = float(mean_a - mean_b)
  out["mean_diff"] = diff
  if va + vb == 0:
    out.update(t=0.0 if diff == 0 else math.copysign(math.inf, diff),
               df=float(n_a + n_b - 2), p_value=1.0 if diff == 0 else 0.0)
    return out
  t = diff / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
  out.update(t=t, df=df, p_value=metrics_lib.student_t_two_sided_p(t, df))
  return out


def group_stats(values: np.ndarray, codes: np.ndarray, num_groups: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, sample variance, n) per group of the non-NaN values whose code
  is in [0, G); two passes (the variance around the group mean)."""
  v = np.asarray(values, np.float64)
  ok = ~np.isnan(v) & (codes >= 0) & (codes < num_groups)
  g, x = codes[ok], v[ok]
  n = np.bincount(g, minlength=num_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.bincount(g, weights=x, minlength=num_groups) / n
    ss = np.bincount(g, weights=(x - mean[g]) ** 2, minlength=num_groups)
    var = np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan)
  return mean, var, n


def user_section(s: Sums, attr: Attribute, evaluated: np.ndarray,
                 utility_desc: str) -> dict:
  """report["user"][ATTR] (module docstring)."""
  labels = list(attr.labels)
  codes = np.where(evaluated, attr.codes, -1)
  n_users = np.bincount(codes[codes >= 0], minlength=len(labels))
  groups = {lab: {"n_users": int(n_users[g]), "ci95": {}}
            for g, lab in enumerate(labels)}
  gap, gap_groups, test, mad = {}, {}, {}, {}
  for name, v in s.per_user.items():
    mean, var, n = group_stats(v, codes, len(labels))
    with np.errstate(invalid="ignore", divide="ignore"):
      half = Z95 * np.sqrt(var / n)
    for g, lab in enumerate(labels):
      groups[lab][name] = float(mean[g])
      groups[lab]["ci95"][name] = [float(mean[g] - half[g]),
                                   float(mean[g] + half[g])]
    ok = np.flatnonzero(~np.isnan(mean))
    if ok.size == 0:
      gap[name] = math.nan
      continue
    hi = int(ok[np.argmax(mean[ok])])
    lo = int(ok[np.argmin(mean[ok])])
    gap[name] = float(mean[hi] - mean[lo])
    gap_groups[name] = [labels[hi], labels[lo]]
    t = welch_test(mean[hi], var[hi], n[hi], mean[lo], var[lo], n[lo])
    t["between"] = [labels[hi], labels[lo]]
    test[name] = t
    pairs = list(itertools.combinations(ok.tolist(), 2))
    mad[name] = (float(np.mean([abs(mean[i] - mean[j]) for i, j in pairs]))
                 if pairs else math.nan)
  for k in s.ks:
    mean, _, _ = group_stats(s.utility[k], codes, len(labels))
    for g, lab in enumerate(labels):
      groups[lab][f"utility@{k}"] = float(mean[g])
  der = {"utility": utility_desc}
  for k in s.ks:
    util = np.array([groups[lab][f"utility@{k}"] for lab in labels])
    fin = util[np.isfinite(util)]
    der[f"der@{k}"] = float(metrics_lib.der(fin)) if fin.size >= 2 else (
        math.nan)
    der[f"max_min_gap@{k}"] = float(fin.max() - fin.min()) if fin.size else (
        math.nan)
    der[f"group_utility@{k}"] = dict(zip(labels, util.tolist()))
  return {"groups": groups, "gap": gap, "gap_groups": gap_groups,
          "test": test, "mad": mad, "der": der}


def _shares(slots_by_group: np.ndarray, total: float) -> np.ndarray:
  return slots_by_group / total if total > 0 else np.full(
      slots_by_group.shape, np.nan)


def item_section(s: Sums, attr: Attribute, evaluated: np.ndarray,
                 train_counts: np.ndarray | None,
                 min_exposure: dict[str, float] | None) -> dict:
  """report["item"][ATTR] (module docstring)."""
  labels = list(attr.labels)
  member = attr.member.astype(np.float64)
  kmax = max(s.ks)
  out = {"catalog_share": dict(zip(labels, (member.sum(0) / max(
      member.shape[0], 1)).tolist()))}
  n_users = int(evaluated.sum())
  rsp_den = n_users * member.sum(0)
  if train_counts is not None:
    rsp_den = rsp_den - train_counts @ member
  for k in s.ks:
    slots = s.item_slots[k].astype(np.float64)
    share = _shares(slots @ member, slots.sum())
    out[f"exposure@{k}"] = dict(zip(labels, share.tolist()))
    p_reo = s.reo_num[attr.name][k] / np.where(
        s.reo_den[attr.name] > 0, s.reo_den[attr.name], np.nan)
    p_rsp = (slots @ member) / np.where(rsp_den > 0, rsp_den, np.nan)
    out[f"reo@{k}"] = _cv(p_reo)
    out[f"rsp@{k}"] = _cv(p_rsp)
    out[f"reo_groups@{k}"] = dict(zip(labels, p_reo.tolist()))
    out[f"rsp_groups@{k}"] = dict(zip(labels, p_rsp.tolist()))
    if min_exposure is not None:
      m = np.array([min_exposure[lab] for lab in labels])
      out[f"esp@{k}"] = float(metrics_lib.esp(share, m))
      out[f"satisfied@{k}"] = dict(zip(labels, (share >= m).tolist()))
  out["exposure"] = out[f"exposure@{kmax}"]
  if min_exposure is not None:
    out["min_exposure"] = {lab: min_exposure[lab] for lab in labels}
  return out


def _cv(p: np.ndarray) -> float:
  p = p[~np.isnan(p)]
  if p.size == 0 or p.mean() == 0:
    return math.nan
  return float(p.std() / p.mean())


def popularity(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(top-10% items, long-tail items) as bool [I] from interaction counts.

  Top 10%: the ceil(I / 10) items with most interactions (ties to the lower
  code). Short head: the most popular items, in that order, up to the first
  whose cumulative count reaches 80% of all interactions; long tail: the rest.
  """
  n = counts.size
  order = np.lexsort((np.arange(n), -counts))
  top = np.zeros(n, bool)
  top[order[:max(1, math.ceil(n / 10))]] = True
  cum = np.cumsum(counts[order])
  head_n = int(np.searchsorted(cum, 0.8 * cum[-1])) + 1 if cum[-1] > 0 else 0
  tail = np.ones(n, bool)
  tail[order[:head_n]] = False
  return top, tail


def items_section(s: Sums, evaluated: np.ndarray, top10: np.ndarray,
                  tail: np.ndarray, source: str) -> dict:
  out = {"popularity_source": source, "top10_items": int(top10.sum()),
         "long_tail_items": int(tail.sum())}
  for k in s.ks:
    slots = s.item_slots[k]
    total = slots.sum()
    out[f"gini@{k}"] = float(metrics_lib.gini(slots.astype(np.float64)))
    out[f"coverage@{k}"] = float((slots > 0).mean())
    p = slots[slots > 0] / total if total else np.zeros(0)
    out[f"entropy@{k}"] = float(-(p * np.log(p)).sum()) if p.size else (
        math.nan)
    out[f"popularity_top10_share@{k}"] = float(slots[top10].sum() / total) if (
        total) else math.nan
    out[f"aclt@{k}"] = _mean(s.long_tail[k][evaluated].astype(np.float64))
    f = s.filled[k][evaluated]
    lt = s.long_tail[k][evaluated]
    out[f"aplt@{k}"] = _mean(np.where(f > 0, lt / np.maximum(f, 1), np.nan))
  return out


def source_shares(inter: Interactions, uattr: Attribute,
                  iattr: Attribute) -> np.ndarray:
  """P_S(c | a) [A, C]: share of group a's interactions in category c."""
  g = uattr.codes[inter.user]
  idx, c = iattr.pairs(inter.item)
  ok = g[idx] >= 0
  a, c = g[idx][ok].astype(np.int64), c[ok]
  counts = np.bincount(a * iattr.num_groups + c, minlength=uattr.num_groups *
                       iattr.num_groups).reshape(uattr.num_groups,
                                                 iattr.num_groups)
  tot = np.bincount(g[g >= 0], minlength=uattr.num_groups).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return counts / np.where(tot > 0, tot, np.nan)[:, None]


def cell_section(s: Sums, uattr: Attribute, iattr: Attribute,
                 source: Interactions) -> dict:
  """report["cells"][UATTR][IATTR] (module docstring)."""
  key = (uattr.name, iattr.name)
  count = s.cell_count[key]
  member = iattr.member.astype(np.float64)
  p_c = member.sum(0) / max(member.shape[0], 1)
  bs = source_shares(source, uattr, iattr) / np.where(p_c > 0, p_c, np.nan)
  out = {"user_groups": list(uattr.labels), "item_groups": list(iattr.labels),
         "n_users": count.astype(int).tolist()}
  for k in s.ks:
    cells = np.where(count > 0, s.cell_sum[key][k] / np.maximum(count, 1),
                     np.nan)
    out[f"recall@{k}"] = cells.tolist()
    disp = metrics_lib.cv_metrics(cells.astype(np.float32))
    for m in ("cv", "min", "ucv", "icv"):
      out[f"{m}@{k}"] = float(disp[m])
    by = s.item_slots_by[uattr.name][k].astype(np.float64) @ member
    tot = s.item_slots_by[uattr.name][k].sum(1).astype(np.float64)
    br = (by / np.where(tot > 0, tot, np.nan)[:, None]) / np.where(
        p_c > 0, p_c, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
      bd = (br - bs) / np.where(bs != 0, bs, np.nan)
    out[f"bias_disparity@{k}"] = {"br": br.tolist(), "bs": bs.tolist(),
                                  "bd": bd.tolist()}
  return out


def overall_section(s: Sums, evaluated: np.ndarray) -> dict:
  out = {"n_users": int(evaluated.sum())}
  for name, v in s.per_user.items():
    out[name] = _mean(v[evaluated])
  for k in s.ks:
    out[f"utility@{k}"] = _mean(s.utility[k][evaluated])
  return out


def to_json(report: dict) -> dict:
  """NaN/inf -> None, numpy scalars -> Python (strict JSON)."""
  return finite_or_none(_plain(report))


def _plain(x):
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return _plain(x.tolist())
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x
