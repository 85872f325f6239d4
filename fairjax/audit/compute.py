"""One pass over the users' lists in blocks: every sum the report needs.

For a block of users, the slots of their top-kmax lists are matched
against the test pairs (a binary search of key u * I + i in the block's
slice of the sorted test keys), and:

  * per-user Recall/Precision/NDCG/HR/F1@K come from
    `fairjax.metrics.topk_metrics`, the function the models' own
    evaluators use. It needs a relevance row per user; the block builds one
    over a local item space: column r < kmax is slot r of the list (relevant
    iff that slot is a test item), and the next n_u - hits_u columns are
    u's test items that are not in the list (relevant, never ranked). Then
    |T_u| and every hit are exactly those of the user's real test set.
  * per (user group a, item group j) the sums of ITFR's per-user cell
    ratio |topK ∩ T_u ∩ I_j| / |T_u ∩ I_j| and the number of users with
    T_u ∩ I_j non-empty (`metrics.cell_recall`'s definition);
  * per item: the number of slots within the top K (over all users, and
    per user group: BiasDisparity, exposure);
  * per user: the utility (hits@K, or the weighted outcome sum of
    `--weights`) and the number of long-tail items in the top K.

Blocks keep memory at O(block x (kmax + max unmatched test items)) on top
of the [U] per-user vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from fairjax import metrics as metrics_lib
from fairjax.audit.tables import Attribute, Interactions

BLOCK_USERS = 1 << 14


@dataclasses.dataclass(frozen=True)
class Utility:
  """Per-hit utility weights: W [A, M] for user groups of `attr` and
  outcome columns Y [N_test, M] aligned with the test pairs."""

  attr: str
  outcomes: tuple[str, ...]
  w: np.ndarray  # float64 [A, M]
  y: np.ndarray  # float64 [N_test, M]


@dataclasses.dataclass
class Sums:
  """Everything accumulated over the user blocks."""

  ks: tuple[int, ...]
  per_user: dict[str, np.ndarray]  # metric@K -> float32 [U], NaN if not evaluated
  utility: dict[int, np.ndarray]  # K -> float64 [U]
  filled: dict[int, np.ndarray]  # K -> int32 [U] non-empty slots in the top K
  long_tail: dict[int, np.ndarray]  # K -> int32 [U] long-tail items in the top K
  item_slots: dict[int, np.ndarray]  # K -> int64 [I]
  item_slots_by: dict[str, dict[int, np.ndarray]]  # user attr -> K -> [A, I]
  cell_sum: dict[tuple[str, str], dict[int, np.ndarray]]  # -> K -> [A, J]
  cell_count: dict[tuple[str, str], np.ndarray]  # [A, J]
  reo_num: dict[str, dict[int, np.ndarray]]  # item attr -> K -> [J]
  reo_den: dict[str, np.ndarray]  # item attr -> [J]


def _pow2(n: int) -> int:
  return 1 << max(0, int(n - 1).bit_length())


def _pairs(member: np.ndarray, items: np.ndarray):
  """(row index, group) for every group of each item in `items`."""
  if member.shape[1] == 0 or items.size == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  rows, groups = np.nonzero(member[items])
  return rows, groups


def accumulate(top: np.ndarray, evaluated: np.ndarray, test: Interactions,
               user_attrs: dict[str, Attribute],
               item_attrs: dict[str, Attribute], ks: Sequence[int],
               long_tail: np.ndarray, utility: Utility | None = None,
               block: int = BLOCK_USERS,
               progress: Callable[[int, int], None] | None = None) -> Sums:
  """Accumulates the report's sums (module docstring).

  Args:
    top: int32 [U, kmax] lists (-1 = empty slot), kmax = max(ks).
    evaluated: bool [U] users audited (>= 1 test item, list not dropped).
    test: the test pairs as codes (sorted by user, item).
    user_attrs, item_attrs: chosen attributes (users: one group each).
    ks: cut-offs K.
    long_tail: bool [I] long-tail items.
    utility: weights of the end-utility view, or None (utility = hits@K).
    block: users per block.
    progress: called with (users done, U).
  """
  ks = tuple(sorted(set(int(k) for k in ks)))
  num_users, kmax = top.shape
  num_items = test.num_items
  ptr = np.searchsorted(test.user, np.arange(num_users + 1))
  n_test = np.diff(ptr).astype(np.int64)
  nan = np.float32(np.nan)
  s = Sums(
      ks=ks,
      per_user={f"{m}@{k}": np.full(num_users, nan, np.float32)
                for k in ks for m in metrics_lib.METRIC_NAMES},
      utility={k: np.full(num_users, np.nan) for k in ks},
      filled={k: np.zeros(num_users, np.int32) for k in ks},
      long_tail={k: np.zeros(num_users, np.int32) for k in ks},
      item_slots={k: np.zeros(num_items, np.int64) for k in ks},
      item_slots_by={a: {k: np.zeros((at.num_groups, num_items), np.int64)
                         for k in ks} for a, at in user_attrs.items()},
      cell_sum={(a, j): {k: np.zeros((ua.num_groups, ia.num_groups))
                         for k in ks}
                for a, ua in user_attrs.items()
                for j, ia in item_attrs.items()},
      cell_count={(a, j): np.zeros((ua.num_groups, ia.num_groups))
                  for a, ua in user_attrs.items()
                  for j, ia in item_attrs.items()},
      reo_num={j: {k: np.zeros(ia.num_groups) for k in ks}
               for j, ia in item_attrs.items()},
      reo_den={j: np.zeros(ia.num_groups) for j, ia in item_attrs.items()})
  slot = np.arange(kmax)
  for lo in range(0, num_users, block):
    hi = min(num_users, lo + block)
    ev = evaluated[lo:hi]
    items = np.where(ev[:, None], top[lo:hi], -1)
    filled = items >= 0
    b_idx, k_idx = np.nonzero(filled)
    keys_t = test.keys[ptr[lo]:ptr[hi]]
    q = (lo + b_idx).astype(np.int64) * num_items + items[b_idx, k_idx]
    pos = np.searchsorted(keys_t, q)
    found = keys_t[np.minimum(pos, max(keys_t.size - 1, 0))] == q if (
        keys_t.size) else np.zeros(q.size, bool)
    hit = np.zeros(items.shape, bool)
    hit[b_idx[found], k_idx[found]] = True
    hb, hk = b_idx[found], k_idx[found]
    hrow = ptr[lo] + pos[found]  # index of the hit in the test pairs
    hitem = items[hb, hk]
    _metrics(s, lo, hi, hit, filled, n_test[lo:hi], ks, block)
    for k in ks:
      in_k = k_idx < k
      s.filled[k][lo:hi] = np.bincount(b_idx[in_k], minlength=hi - lo)
      lt = in_k & long_tail[items[b_idx, k_idx]]
      s.long_tail[k][lo:hi] = np.bincount(b_idx[lt], minlength=hi - lo)
      it = items[b_idx[in_k], k_idx[in_k]]
      s.item_slots[k] += np.bincount(it, minlength=num_items)
      for a, ua in user_attrs.items():
        g = ua.codes[lo + b_idx[in_k]]
        ok = g >= 0
        s.item_slots_by[a][k] += np.bincount(
            g[ok].astype(np.int64) * num_items + it[ok],
            minlength=ua.num_groups * num_items).reshape(ua.num_groups,
                                                          num_items)
    _utility(s, lo, hi, ev, hb, hk, hrow, ks, user_attrs, utility)
    _cells(s, lo, hi, ev, hb, hk, hitem, test, ptr, ks, user_attrs,
           item_attrs)
    if progress is not None:
      progress(hi, num_users)
  return s


def _metrics(s: Sums, lo, hi, hit, filled, n_rel, ks, block):
  """Per-user metrics of a block by `metrics.topk_metrics` (module doc)."""
  b, kmax = hit.shape
  unmatched = n_rel - hit.sum(1)
  p = _pow2(int(unmatched.max()) if unmatched.size else 1)
  rows = block if b < block else b  # pad: one compiled shape per p
  rel = np.zeros((rows, kmax + p), bool)
  rel[:b, :kmax] = hit
  rel[:b, kmax:] = np.arange(p)[None, :] < unmatched[:, None]
  top = np.full((rows, kmax), -1, np.int32)
  top[:b] = np.where(filled, np.arange(kmax, dtype=np.int32), -1)
  out = metrics_lib.topk_metrics(top, rel, ks)
  out = jax.device_get(out)
  for name, v in out.items():
    s.per_user[name][lo:hi] = np.asarray(v)[:b]


def _utility(s: Sums, lo, hi, ev, hb, hk, hrow, ks, user_attrs, utility):
  n = hi - lo
  if utility is None:
    gain = np.ones(hb.size)
  else:
    g = user_attrs[utility.attr].codes[lo + hb]
    gain = np.where(g >= 0, np.einsum(
        "nm,nm->n", utility.w[np.maximum(g, 0)], utility.y[hrow]), np.nan)
  for k in ks:
    m = hk < k
    u = np.bincount(hb[m], weights=gain[m], minlength=n)
    if utility is not None:
      nogroup = user_attrs[utility.attr].codes[lo:hi] < 0
      u = np.where(nogroup, np.nan, u)
    s.utility[k][lo:hi] = np.where(ev, u, np.nan)


def _cells(s: Sums, lo, hi, ev, hb, hk, hitem, test, ptr, ks, user_attrs,
           item_attrs):
  n = hi - lo
  tu = test.user[ptr[lo]:ptr[hi]] - lo
  ti = test.item[ptr[lo]:ptr[hi]]
  for j, ia in item_attrs.items():
    nj = ia.num_groups
    tr, tg = _pairs(ia.member, ti)
    n_test_g = np.bincount(tu[tr].astype(np.int64) * nj + tg,
                           minlength=n * nj).reshape(n, nj)
    n_test_g[~ev] = 0
    s.reo_den[j] += n_test_g.sum(0)
    has = n_test_g > 0
    hr, hg = _pairs(ia.member, hitem)
    for k in ks:
      m = hk[hr] < k
      hits_g = np.bincount(hb[hr][m].astype(np.int64) * nj + hg[m],
                           minlength=n * nj).reshape(n, nj)
      hits_g[~ev] = 0
      s.reo_num[j][k] += hits_g.sum(0)
      ratio = np.where(has, hits_g / np.maximum(n_test_g, 1), 0.0)
      for a, ua in user_attrs.items():
        g = ua.codes[lo:hi]
        ok = g >= 0
        s.cell_sum[(a, j)][k] += _group_rows(ratio[ok], g[ok], ua.num_groups)
    for a, ua in user_attrs.items():
      g = ua.codes[lo:hi]
      ok = g >= 0
      s.cell_count[(a, j)] += _group_rows(has[ok].astype(np.float64), g[ok],
                                          ua.num_groups)


def _group_rows(x: np.ndarray, g: np.ndarray, num_groups: int) -> np.ndarray:
  """[A, J] sums of the rows of x [n, J] by group g [n]."""
  out = np.zeros((num_groups, x.shape[1]))
  np.add.at(out, g, x)
  return out
