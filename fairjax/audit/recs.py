"""Top-K lists from a recommendation file, streamed in blocks (issue 15).

The file has a user column (`user_id` or `user`), an item column (`item_id`
or `item`) and either `rank` (1 = top; RecBole `rank:float`) or `score`
(larger first). Rows may come in any order: the lists built here do not
depend on it.

Only the first `kmax` = max(K) slots of each list are stored (int32 [U,
kmax], -1 = empty), so memory is 4 U kmax bytes whatever the list length.

Rank files. The ranks of a user must be 1..n (integers, no repeat, no gap).
This is checked, without keeping the ranks, on the power sums of each
user's ranks: sum r^p equals the value for 1..n for p = 0 (count), 1, 2
and, for n <= 10^4, 3 (exact in float64). Equal power sums up to p = 3 for
a multiset other than 1..n need a contrived input; a failing user is
re-read to name the repeated or missing rank and its line.
Score files. The list of a user is its rows sorted by score, descending,
ties to the smaller item code (the item's position among the sorted item
ids), truncated to kmax as blocks arrive (a row outside a block's top kmax
of its user cannot enter the final top kmax).

Bad rows, with `on_bad='error'` (default) a `DataError` naming file, line
and field; with `on_bad='skip'` counted in `Lists.skipped` and:
  unknown_user: the row is dropped;
  unknown_item: the slot stays empty (a miss that exposes no item);
  bad_rank (not an integer >= 1, or a non-finite score), duplicate_item,
  rank_gap (ranks not 1..n: a repeat or a gap): the user's whole list is
  dropped (counted per user), so the outcome does not depend on the row
  order.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np

from fairjax.audit import blocks
from fairjax.audit.tables import ITEM_COLS, USER_COLS, IdTable
from fairjax.errors import DataError

_UNKNOWN = -2  # an occupied slot whose item is not in the item table


@dataclasses.dataclass(frozen=True)
class Lists:
  """The audited lists: item codes [U, kmax] (-1 empty) and bookkeeping."""

  top: np.ndarray  # int32 [U, kmax]
  length: np.ndarray  # int32 [U] rows given per user (its list length)
  has_list: np.ndarray  # bool [U] a kept (not dropped) list
  mode: str  # "rank" or "score"
  rows: int
  skipped: dict[str, int]
  path: pathlib.Path


class _Source:
  """Header and column names of a recommendation file."""

  def __init__(self, path, sep):
    self.header = h = blocks.read_header(path, sep)
    self.user, self.item = h.find(*USER_COLS), h.find(*ITEM_COLS)
    self.rank, self.score = h.find("rank"), h.find("score")
    for col, names in ((self.user, USER_COLS), (self.item, ITEM_COLS)):
      if col is None:
        raise DataError(f"no {names[-1]} column (expected one of "
                        f"{', '.join(names)}; columns: {', '.join(h.names)})",
                        str(h.path), h.line, names[0])
    if self.rank is None and self.score is None:
      raise DataError(f"no rank or score column (columns: "
                      f"{', '.join(h.names)})", str(h.path), h.line, "rank")
    self.mode = "rank" if self.rank else "score"
    self.value = self.rank or self.score
    self.cols = {self.user: "int", self.item: "int", self.value: "float"}

  def blocks(self, block_bytes):
    return blocks.iter_blocks(self.header, self.cols, block_bytes)

  def fail(self, msg, line, field):
    raise DataError(msg, str(self.header.path), line, field)

  def rows_of(self, users: IdTable, items: IdTable, user: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, values, lines) of one user's rows in file order (error
    path only)."""
    its, vals, lines = [], [], []
    for b in self.blocks(blocks.BLOCK_BYTES):
      m = users.codes(b.cols[self.user]) == user
      its.append(items.codes(b.cols[self.item][m]))
      vals.append(b.cols[self.value][m])
      lines.append(b.lines[m])
    return np.concatenate(its), np.concatenate(vals), np.concatenate(lines)

  def find_line(self, users: IdTable, items: IdTable,
                match: Callable[[np.ndarray, np.ndarray, np.ndarray],
                                np.ndarray], nth: int = 0) -> int | None:
    """Line of the `nth` row (0-based, in file order) where
    match(user codes, item codes, values) holds; the error path only."""
    seen = 0
    for b in self.blocks(blocks.BLOCK_BYTES):
      m = np.flatnonzero(match(users.codes(b.cols[self.user]),
                               items.codes(b.cols[self.item]),
                               b.cols[self.value]))
      if seen + m.size > nth:
        return int(b.lines[m[nth - seen]])
      seen += m.size
    return None


def line_of_user(path, users: IdTable, items: IdTable, user: int,
                 sep: str | None = None) -> tuple[int | None, str]:
  """(line of the first row of `user`, name of the user column) in a
  recommendation file (error messages only)."""
  src = _Source(path, sep)
  return src.find_line(users, items, lambda u, i, v: u == user), src.user


def read_lists(path, users: IdTable, items: IdTable, kmax: int, *,
               on_bad: str = "error", sep: str | None = None,
               block_bytes: int = blocks.BLOCK_BYTES,
               progress: Callable[[blocks.Block, int], None] | None = None
               ) -> Lists:
  """Reads the top-`kmax` list of every user (module docstring).

  Args:
    path: the recommendation file (atomic or CSV).
    users, items: id tables of the attribute files.
    kmax: slots kept per user (the largest K audited).
    on_bad: "error" or "skip".
    sep: CSV separator (default by suffix).
    block_bytes: bytes read per block.
    progress: called after each block with (block, rows so far).

  Returns:
    `Lists`.
  """
  src = _Source(path, sep)
  num_users = len(users)
  st = _State(num_users, kmax, src.mode)
  skip = on_bad == "skip"
  rows = 0
  for b in src.blocks(block_bytes):
    rows += len(b)
    u, i = users.codes(b.cols[src.user]), items.codes(b.cols[src.item])
    v = b.cols[src.value]
    bad_u = u < 0
    if bad_u.any():
      st.skipped["unknown_user"] += _bad_rows(
          src, bad_u, skip, b.lines, src.user,
          lambda r: f"{src.user} {str(b.cols[src.user][r])!r} is not in the "
          "users file (pass --on_bad=skip to drop such rows)")
      keep = ~bad_u
      u, i, v, lines = u[keep], i[keep], v[keep], b.lines[keep]
      cols_item = b.cols[src.item][keep]
    else:
      lines, cols_item = b.lines, b.cols[src.item]
    bad_i = i < 0
    if bad_i.any():
      st.skipped["unknown_item"] += _bad_rows(
          src, bad_i, skip, lines, src.item,
          lambda r: f"{src.item} {str(cols_item[r])!r} is not in the items "
          "file (pass --on_bad=skip to leave such slots empty)")
      i = np.where(bad_i, _UNKNOWN, i).astype(np.int32)
    if src.mode == "rank":
      bad_v = ~np.isfinite(v) | (v < 1) | (v != np.rint(v))
    else:
      bad_v = ~np.isfinite(v)
    if bad_v.any():
      what = "an integer >= 1" if src.mode == "rank" else "a finite number"
      _bad_rows(src, bad_v, skip, lines, src.value,
                lambda r: f"{src.value} {float(v[r]):g} is not {what}")
      st.drop(u[bad_v], "bad_rank")
      u, i, v, lines = u[~bad_v], i[~bad_v], v[~bad_v], lines[~bad_v]
      cols_item = cols_item[~bad_v]
    if src.mode == "rank":
      dup = st.add_ranks(u, i, v.astype(np.int64))
    else:
      dup = st.add_scores(u, i, v)
    if dup is not None:
      r, first_line = dup
      if not skip:
        what = "rank" if src.mode == "rank" else "item"
        col = src.rank if src.mode == "rank" else src.item
        earlier = (f" (first on line {first_line})" if first_line else
                   " (already given on an earlier line)")
        src.fail(f"user {str(users.ids[u[r]])!r} has {what} "
                 f"{int(v[r]) if what == 'rank' else str(cols_item[r])!r} "
                 f"twice{earlier}", int(lines[r]), col)
    if progress is not None:
      progress(b, rows)
  st.finish(src, users, items, skip)
  top = st.top  # in place: no second [U, kmax] copy
  top[top == _UNKNOWN] = -1
  has = (st.count > 0) & ~st.dropped
  top[~has] = -1
  return Lists(top, st.count, has, src.mode, rows, dict(st.skipped),
               src.header.path)


class _State:
  """Mutable accumulation of the lists over blocks (private to read_lists)."""

  def __init__(self, num_users, kmax, mode):
    self.kmax = kmax
    self.top = np.full((num_users, kmax), -1, np.int32)
    self.count = np.zeros(num_users, np.int32)
    self.dropped = np.zeros(num_users, bool)
    self.skipped = {k: 0 for k in ("unknown_user", "unknown_item",
                                   "bad_rank", "duplicate_item", "rank_gap")}
    if mode == "rank":
      self.powers = np.zeros((3, num_users), np.float64)
    else:
      self.score = np.full((num_users, kmax), -np.inf, np.float64)

  def drop(self, users: np.ndarray, reason: str) -> None:
    users = np.unique(users)
    new = users[~self.dropped[users]]
    self.dropped[new] = True
    self.skipped[reason] += int(new.size)

  def add_ranks(self, u, i, r):
    """Scatters rows into their slots and adds the ranks' power sums
    (repeats and gaps are found by `finish`)."""
    n = self.count.size
    self.count += np.bincount(u, minlength=n).astype(np.int32)
    r1 = r.astype(np.float64)
    r2 = r1 * r1
    for p, w in enumerate((r1, r2, r2 * r1)):
      self.powers[p] += np.bincount(u, weights=w, minlength=n)
    sel = r <= self.kmax
    self.top.reshape(-1)[u[sel].astype(np.int64) * self.kmax + (r[sel] - 1)
                         ] = i[sel]
    return None

  def add_scores(self, u, i, s):
    """Merges rows into the users' running top-kmax by score."""
    n = self.count.size
    self.count += np.bincount(u, minlength=n).astype(np.int32)
    ub = np.unique(u)
    old_i = self.top[ub]
    ok = old_i != -1
    ou = np.repeat(ub, ok.sum(1))
    au = np.concatenate([u, ou])
    ai = np.concatenate([i, old_i[ok]])
    as_ = np.concatenate([s, self.score[ub][ok]])
    known = ai >= 0
    key = au[known].astype(np.int64) * (1 << 31) + ai[known]
    ks = np.sort(key)
    rep = np.flatnonzero(ks[1:] == ks[:-1])
    result = None
    if rep.size:
      dup_keys = np.unique(ks[rep])
      is_dup = np.isin(au.astype(np.int64) * (1 << 31) + ai, dup_keys) & (
          np.arange(au.size) < u.size)
      rows = np.flatnonzero(is_dup)
      self.drop(u[rows], "duplicate_item")
      result = (int(rows[-1]) if rows.size else 0, None)
    order = np.lexsort((ai, -as_, au))
    su, si, ss = au[order], ai[order], as_[order]
    start = np.searchsorted(su, su, side="left")
    rank = np.arange(su.size) - start
    keep = rank < self.kmax
    self.top[ub] = -1
    self.score[ub] = -np.inf
    self.top[su[keep], rank[keep]] = si[keep]
    self.score[su[keep], rank[keep]] = ss[keep]
    return result

  def finish(self, src: _Source, users, items, skip: bool,
             block: int = 1 << 16) -> None:
    """End-of-file checks: ranks 1..n (rank files), repeated items."""
    if src.mode == "rank":
      n = self.count.astype(np.float64)
      bad = (self.powers[0] != n * (n + 1) / 2) | (
          self.powers[1] != n * (n + 1) * (2 * n + 1) / 6) | (
              (n <= 1e4) & (self.powers[2] != (n * (n + 1) / 2) ** 2))
      bad &= (self.count > 0) & ~self.dropped
      if bad.any():
        if not skip:
          _rank_error(src, users, items, int(np.argmax(bad)))
        self.drop(np.flatnonzero(bad), "rank_gap")
    for lo in range(0, self.count.size, block):
      srt = np.sort(self.top[lo:lo + block], axis=1)
      dup = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(1)
      bad = np.flatnonzero(dup & ~self.dropped[lo:lo + block]) + lo
      if bad.size:
        if not skip:
          _item_error(src, users, items, int(bad[0]))
        self.drop(bad, "duplicate_item")


def _bad_rows(src: _Source, bad: np.ndarray, skip: bool, lines, field: str,
              message) -> int:
  """How many rows `bad` marks; unless `skip`, fails on the first of them
  with `message(row)`, naming its line and `field`."""
  if not skip:
    r = int(np.argmax(bad))
    src.fail(message(r), int(lines[r]), field)
  return int(bad.sum())


def _rank_error(src: _Source, users, items, u0: int):
  """Raises the DataError naming a repeated or missing rank of user u0."""
  _, ranks, lines = src.rows_of(users, items, u0)
  name = str(users.ids[u0])
  order = np.argsort(ranks, kind="stable")
  sr = ranks[order]
  rep = np.flatnonzero(sr[1:] == sr[:-1])
  if rep.size:
    first, second = sorted(order[rep[0]:rep[0] + 2])
    src.fail(f"user {name!r} has rank {int(ranks[first])} twice (first on "
             f"line {lines[first]})", int(lines[second]), src.rank)
  n = ranks.size
  missing = np.setdiff1d(np.arange(1, n + 1), ranks.astype(np.int64))
  beyond = np.flatnonzero(ranks > n)
  r = int(beyond[0]) if beyond.size else 0
  src.fail(f"ranks of user {name!r} must be 1..{n} ({n} rows): rank "
           f"{int(missing[0]) if missing.size else '?'} is missing",
           int(lines[r]), src.rank)


def _item_error(src: _Source, users, items, u0: int):
  """Raises the DataError naming a repeated item of user u0."""
  its, _, lines = src.rows_of(users, items, u0)
  order = np.argsort(its, kind="stable")
  si = its[order]
  rep = np.flatnonzero((si[1:] == si[:-1]) & (si[1:] >= 0))
  first, second = sorted(order[rep[0]:rep[0] + 2])
  src.fail(f"user {str(users.ids[u0])!r} has item "
           f"{str(items.ids[its[first]])!r} twice (first on line "
           f"{lines[first]})", int(lines[second]), src.item)
