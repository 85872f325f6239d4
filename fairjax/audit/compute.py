"""One pass over the users' lists in blocks: every sum the report needs.

For a block of users, the slots of their top-kmax lists are matched
against the test pairs (users with at most T_CAP test items by comparing
each slot with the user's padded test row; others by a binary search of
key u * I + i in the block's slice of the sorted test keys), and:

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


P_MAIN = 64  # unmatched test items per user in the main metrics call
T_CAP = 32  # test items per user matched by broadcast (more: binary search)


def accumulate(top: np.ndarray, evaluated: np.ndarray, test: Interactions,
               user_attrs: dict[str, Attribute],
               item_attrs: dict[str, Attribute], ks: Sequence[int],
               long_tail: np.ndarray, utility: Utility | None = None,
               block: int = BLOCK_USERS,
               progress: Callable[[int, int], None] | None = None) -> Sums:
  """Accumulates the report's sums (module docstring).

  Each slot is visited once: slots are cut into segments [K_{j-1}, K_j) and
  a figure at K_j is the sum of segments 0..j.

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
  if kmax != ks[-1]:
    raise ValueError(f"top has {kmax} slots, max(ks) = {ks[-1]}")
  num_items = test.num_items
  ptr = np.searchsorted(test.user, np.arange(num_users + 1))
  n_test = np.diff(ptr).astype(np.int64)
  nan = np.float32(np.nan)
  zeros = lambda *shape: {k: np.zeros(shape) for k in ks}  # noqa: E731
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
      cell_sum={(a, j): zeros(ua.num_groups, ia.num_groups)
                for a, ua in user_attrs.items()
                for j, ia in item_attrs.items()},
      cell_count={(a, j): np.zeros((ua.num_groups, ia.num_groups))
                  for a, ua in user_attrs.items()
                  for j, ia in item_attrs.items()},
      reo_num={j: zeros(ia.num_groups) for j, ia in item_attrs.items()},
      reo_den={j: np.zeros(ia.num_groups) for j, ia in item_attrs.items()})
  starts = np.array((0,) + ks[:-1])
  seg_of_slot = np.searchsorted(np.array(ks), np.arange(kmax), side="right")
  lt_ext = np.concatenate([[False], np.asarray(long_tail, bool)])
  deferred = []
  for lo in range(0, num_users, block):
    hi = min(num_users, lo + block)
    ev = evaluated[lo:hi]
    items = np.where(ev[:, None], top[lo:hi], -1)
    filled = items >= 0
    hit, hrow = _match(items, lo, hi, ptr, test)
    hb, hk = np.nonzero(hit)
    hrow = hrow[hb, hk]
    hitem = items[hb, hk]
    hseg = seg_of_slot[hk]
    deferred += _metrics(s, lo, hi, hit, filled, n_test[lo:hi], ks, block)
    for name, per_slot in (("filled", filled), ("long_tail", lt_ext[items + 1])):
      seg = np.add.reduceat(per_slot.astype(np.int32), starts, axis=1)
      cum = np.cumsum(seg, axis=1)
      for j, k in enumerate(ks):
        getattr(s, name)[k][lo:hi] = cum[:, j]
    groups = {a: ua.codes[lo:hi] for a, ua in user_attrs.items()}
    for j, k in enumerate(ks):
      seg_items = items[:, starts[j]:k]
      counts = np.bincount(seg_items.ravel() + 1,
                           minlength=num_items + 1)[1:]
      for k2 in ks[j:]:
        s.item_slots[k2] += counts
      for a, ua in user_attrs.items():
        g = groups[a][:, None]
        size = ua.num_groups * num_items
        key = np.where((seg_items >= 0) & (g >= 0),
                       g.astype(np.int64) * num_items + seg_items, size)
        by = np.bincount(key.ravel(), minlength=size + 1)[:size].reshape(
            ua.num_groups, num_items)
        for k2 in ks[j:]:
          s.item_slots_by[a][k2] += by
    _utility(s, lo, hi, ev, hb, hseg, hrow, ks, user_attrs, utility)
    _cells(s, lo, hi, ev, hb, hseg, hitem, test, ptr, ks, user_attrs,
           item_attrs)
    if progress is not None:
      progress(hi, num_users)
  _deferred_metrics(s, deferred, ks, block)
  return s


def _match(items, lo, hi, ptr, test):
  """hit bool [B, kmax] and, where hit, the index of the test pair."""
  b, kmax = items.shape
  t_lo, t_hi = int(ptr[lo]), int(ptr[hi])
  cnt = np.diff(ptr[lo:hi + 1])
  hit = np.zeros(items.shape, bool)
  hrow = np.zeros(items.shape, np.int64)
  if t_hi == t_lo:
    return hit, hrow
  small = cnt <= T_CAP
  width = int(cnt[small].max()) if small.any() else 0
  if width:
    tu = test.user[t_lo:t_hi] - lo
    offs = np.arange(t_hi - t_lo) - (ptr[lo + tu] - t_lo)
    keep = small[tu]
    mat = np.full((b, width), -3, np.int32)
    mat[tu[keep], offs[keep]] = test.item[t_lo:t_hi][keep]
    eq = items[:, :, None] == mat[:, None, :]
    hit = eq.any(-1)
    hrow = ptr[lo:hi, None] + eq.argmax(-1)
  big = np.flatnonzero(~small)
  if big.size:
    keys = test.keys[t_lo:t_hi]
    rows = items[big]
    q = (lo + big[:, None]).astype(np.int64) * test.num_items + rows
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    found = (keys[pos] == q) & (rows >= 0)
    hit[big] = found
    hrow[big] = t_lo + pos
  return hit, hrow


def _metrics(s: Sums, lo, hi, hit, filled, n_rel, ks, block) -> list:
  """Per-user metrics of a block by `metrics.topk_metrics` (module doc);
  users with more than P_MAIN unmatched test items are returned for
  `_deferred_metrics` (so the main call has one shape)."""
  b, kmax = hit.shape
  unmatched = n_rel - hit.sum(1)
  over = unmatched > P_MAIN
  rows = np.flatnonzero(~over)
  _topk_metrics_into(s, lo + rows, hit[rows], filled[rows], unmatched[rows],
                     ks, block, P_MAIN)
  big = np.flatnonzero(over)
  if big.size:
    return [(lo + big, hit[big], filled[big], unmatched[big])]
  return []


def _deferred_metrics(s: Sums, deferred: list, ks, block) -> None:
  if not deferred:
    return
  users = np.concatenate([d[0] for d in deferred])
  hit = np.concatenate([d[1] for d in deferred])
  filled = np.concatenate([d[2] for d in deferred])
  unmatched = np.concatenate([d[3] for d in deferred])
  order = np.argsort(unmatched, kind="stable")
  for lo in range(0, users.size, block):
    r = order[lo:lo + block]
    _topk_metrics_into(s, users[r], hit[r], filled[r], unmatched[r], ks,
                       block, _pow2(int(unmatched[r].max())))


def _topk_metrics_into(s: Sums, users, hit, filled, unmatched, ks, block,
                       p: int) -> None:
  """metrics.topk_metrics over the local item space (slots, then the
  unmatched test items), padded to `block` rows (one compiled shape)."""
  b, kmax = hit.shape
  if b == 0:
    return
  rows = max(block, b)
  rel = np.zeros((rows, kmax + p), bool)
  rel[:b, :kmax] = hit
  rel[:b, kmax:] = np.arange(p)[None, :] < unmatched[:, None]
  top = np.full((rows, kmax), -1, np.int32)
  top[:b] = np.where(filled, np.arange(kmax, dtype=np.int32), -1)
  out = jax.device_get(metrics_lib.topk_metrics(top, rel, ks))
  for name, v in out.items():
    s.per_user[name][users] = np.asarray(v)[:b]


def _utility(s: Sums, lo, hi, ev, hb, hseg, hrow, ks, user_attrs, utility):
  n = hi - lo
  if utility is None:
    gain = np.ones(hb.size)
  else:
    g = user_attrs[utility.attr].codes[lo + hb]
    gain = np.where(g >= 0, np.einsum(
        "nm,nm->n", utility.w[np.maximum(g, 0)], utility.y[hrow]), np.nan)
  total = np.zeros(n)
  for j, k in enumerate(ks):
    m = hseg == j
    total = total + np.bincount(hb[m], weights=gain[m], minlength=n)
    u = total
    if utility is not None:
      u = np.where(user_attrs[utility.attr].codes[lo:hi] < 0, np.nan, u)
    s.utility[k][lo:hi] = np.where(ev, u, np.nan)


def _onehot(codes: np.ndarray, num_groups: int) -> np.ndarray:
  """float64 [A, n]: 1 where codes[n] == a (codes < 0: no group)."""
  m = np.zeros((num_groups, codes.size))
  ok = np.flatnonzero(codes >= 0)
  m[codes[ok], ok] = 1.0
  return m


def _cells(s: Sums, lo, hi, ev, hb, hseg, hitem, test, ptr, ks, user_attrs,
           item_attrs):
  n = hi - lo
  tu = test.user[ptr[lo]:ptr[hi]] - lo
  ti = test.item[ptr[lo]:ptr[hi]]
  onehots = {a: _onehot(ua.codes[lo:hi], ua.num_groups)
             for a, ua in user_attrs.items()}
  for j, ia in item_attrs.items():
    nj = ia.num_groups
    tr, tg = ia.pairs(ti)
    n_test_g = np.bincount(tu[tr].astype(np.int64) * nj + tg,
                           minlength=n * nj).reshape(n, nj)
    n_test_g[~ev] = 0
    s.reo_den[j] += n_test_g.sum(0)
    has = n_test_g > 0
    hr, hg = ia.pairs(hitem)
    hits_g = np.zeros((n, nj))
    for m, k in enumerate(ks):
      sel = hseg[hr] == m
      hits_g = hits_g + np.bincount(hb[hr][sel].astype(np.int64) * nj + hg[sel],
                                    minlength=n * nj).reshape(n, nj)
      hits_g[~ev] = 0
      s.reo_num[j][k] += hits_g.sum(0)
      ratio = np.where(has, hits_g / np.maximum(n_test_g, 1), 0.0)
      for a in user_attrs:
        s.cell_sum[(a, j)][k] += onehots[a] @ ratio
    for a in user_attrs:
      s.cell_count[(a, j)] += onehots[a] @ has.astype(np.float64)
