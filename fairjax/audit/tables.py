"""The audit's side inputs: attribute tables and interaction files (issue 15).

Attribute tables (`--users`, `--items`): one row per user (item), the id in
column `user_id` / `user` (`item_id` / `item`) and one column per attribute.
The audited attributes are chosen by name; a missing column is a
`DataError` naming it. A value is a group label (numbers are labels too,
e.g. an age bucket). Multi-valued fields (RecBole `token_seq`, space
separated; or CSV values joined by `multi_sep`, default `|`) give the first
value (`multi_value='first'`) or membership in every listed group
(`'each'`). Label order: `fairjax.data.atomic.categorical_codes` (M before
F, numbers numerically, else lexicographic).

Ids: raw tokens; dense codes are positions in the sorted table ids. When
every id is a canonical integer the ids are int64 and lookups use a direct
table (`IdTable`), so 10^8 lookups take about a second.

Interactions (`--test`, optional `--train`): columns user, item and, when
present, `rating`. Every user must be in the user table and every item in
the item table; a repeated (user, item) pair is an error.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pandas as pd

from fairjax.audit import blocks
from fairjax.data.atomic import categorical_codes
from fairjax.errors import DataError

USER_COLS = ("user_id", "user")
ITEM_COLS = ("item_id", "item")


@dataclasses.dataclass(frozen=True)
class IdTable:
  """Raw ids (sorted, unique; int64 or str) -> dense codes 0..n-1."""

  ids: np.ndarray
  lut: np.ndarray | None = None  # int32 [max_id + 1], -1 = unknown

  @staticmethod
  def build(ids: np.ndarray) -> "IdTable":
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu" and ids.size and ids.min() >= 0 and (
        ids.max() < 4 * ids.size + (1 << 22)):
      lut = np.full(int(ids.max()) + 1, -1, np.int32)
      lut[ids] = np.arange(ids.size, dtype=np.int32)
      return IdTable(ids, lut)
    return IdTable(ids, None)

  def __len__(self) -> int:
    return int(self.ids.size)

  def codes(self, raw: np.ndarray) -> np.ndarray:
    """int32 code of each raw id; -1 where the id is not in the table."""
    raw = np.asarray(raw)
    if self.ids.dtype.kind in "iu" and raw.dtype.kind not in "iu":
      as_int = _as_int_or_none(raw)
      if as_int is None:  # a non-integer token: compare as strings
        text = self.ids.astype(str)
        order = np.argsort(text, kind="stable")
        c = _lookup_str(text[order], np.asarray(raw, str))
        return np.where(c >= 0, order[np.maximum(c, 0)], -1).astype(np.int32)
      raw = as_int
    if self.ids.dtype.kind not in "iu" and raw.dtype.kind in "iu":
      raw = raw.astype(str)
    if self.lut is not None:
      ok = (raw >= 0) & (raw < self.lut.size)
      return np.where(ok, self.lut[np.where(ok, raw, 0)], -1).astype(np.int32)
    return _lookup_str(self.ids, raw)


def _lookup_str(table: np.ndarray, raw: np.ndarray) -> np.ndarray:
  if table.size == 0:
    return np.full(raw.shape, -1, np.int32)
  pos = np.clip(np.searchsorted(table, raw), 0, table.size - 1)
  return np.where(table[pos] == raw, pos, -1).astype(np.int32)


def _as_int_or_none(v: np.ndarray) -> np.ndarray | None:
  """int64 when every value is a canonical integer, else None."""
  try:
    out = v.astype(np.int64)
  except (ValueError, OverflowError):
    return None
  return out if np.array_equal(out.astype(str), v.astype(str)) else None


@dataclasses.dataclass(frozen=True)
class Attribute:
  """Groups of one attribute: labels and membership.

  `codes` int32 [N] is the (first) group of each row (-1: none);
  `member` bool [N, G] is the full membership (one group per row unless the
  field is multi-valued with `multi_value='each'`), also as CSR: row n's
  groups are `flat[ptr[n]:ptr[n + 1]]`.
  """

  name: str
  labels: tuple[str, ...]
  codes: np.ndarray
  member: np.ndarray
  ptr: np.ndarray
  flat: np.ndarray

  @property
  def num_groups(self) -> int:
    return len(self.labels)

  def pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into `rows`, group) for every group of each row in `rows`."""
    rows = np.asarray(rows, np.int64)
    start, stop = self.ptr[rows], self.ptr[rows + 1]
    n = stop - start
    idx = np.repeat(np.arange(rows.size), n)
    if idx.size == 0:
      return idx, np.zeros(0, np.int64)
    offs = np.arange(idx.size) - np.repeat(np.cumsum(n) - n, n)
    return idx, self.flat[np.repeat(start, n) + offs].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Table:
  """An attribute table: ids and the chosen attributes (rows = codes)."""

  path: pathlib.Path
  ids: IdTable
  attrs: dict[str, Attribute]
  missing: dict[str, int]  # attribute -> rows without a value (skip mode)


def _attribute(name: str, values: np.ndarray, seq: bool, sep: str,
               multi_value: str) -> tuple[Attribute, np.ndarray]:
  """The attribute of a column and a bool mask of rows without a value."""
  values = np.asarray(values, str)
  n = values.size
  if seq:
    split = (str.split if sep == " " else
             (lambda v: [t.strip() for t in v.split(sep)]))
    parts = [[t for t in split(v) if t] for v in values.tolist()]
    if multi_value == "first":
      parts = [p[:1] for p in parts]
    rows = np.repeat(np.arange(n), [len(p) for p in parts])
    tokens = np.array([t for p in parts for t in p], dtype=str)
  else:  # one token per row; an empty cell is a missing value
    ok = values != ""
    rows = np.flatnonzero(ok)
    tokens = values[ok]
  counts = np.bincount(rows, minlength=n)
  empty = counts == 0
  if tokens.size == 0:
    labels, codes_flat = (), np.zeros(0, np.int32)
  else:
    uniq_codes, uniq = pd.factorize(tokens)
    order_codes, labels = categorical_codes(np.asarray(uniq, str))
    codes_flat = order_codes[uniq_codes].astype(np.int32)
  first = np.full(n, -1, np.int32)
  order = np.argsort(rows, kind="stable")  # file order kept within a row
  rows, codes_flat = rows[order], codes_flat[order]
  _, at = np.unique(rows, return_index=True)
  first[rows[at]] = codes_flat[at]
  g = max(len(labels), 1)
  key = np.unique(rows * g + codes_flat)  # a label repeated in a row: once
  rows, codes_flat = key // g, (key % g).astype(np.int32)
  member = np.zeros((n, len(labels)), bool)
  member[rows, codes_flat] = True
  ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
  return Attribute(name, tuple(labels), first, member, ptr.astype(np.int64),
                   codes_flat), empty


def read_table(path, id_cols: tuple[str, ...], attrs: list[str], *,
               on_bad: str = "error", multi_value: str = "first",
               multi_sep: str = "|", sep: str | None = None) -> Table:
  """Reads an attribute table (module docstring).

  Args:
    path: `.user` / `.item` atomic file or CSV.
    id_cols: accepted names of the id column, first match wins.
    attrs: attribute columns to read.
    on_bad: "error" or "skip": an empty attribute value is a `DataError`
      (file, line, field) or leaves that row in no group (counted).
    multi_value: "first" or "each" for multi-valued fields.
    multi_sep: value separator inside a CSV field.
    sep: CSV separator (default by file suffix).

  Raises:
    DataError: missing id or attribute column, empty or repeated id, empty
      attribute value (on_bad="error").
  """
  header = blocks.read_header(path, sep)
  id_col = header.find(*id_cols)
  if id_col is None:
    raise DataError(f"no id column (expected one of {', '.join(id_cols)}; "
                    f"columns: {', '.join(header.names)})", str(header.path),
                    header.line, id_cols[0])
  for a in attrs:
    if a not in header.names:
      raise DataError(f"no such attribute column (columns: "
                      f"{', '.join(header.names)})", str(header.path),
                      header.line, a)
  cols = {id_col: "int", **{a: "str" for a in attrs}}
  parts = list(blocks.iter_blocks(header, cols))
  lines = np.concatenate([b.lines for b in parts])
  raw = [b.cols[id_col] for b in parts]
  if any(r.dtype.kind not in "iu" for r in raw):
    raw = [r.astype(str) for r in raw]
  raw = np.concatenate(raw)
  if raw.dtype.kind not in "iu":
    as_int = _as_int_or_none(raw)
    raw = raw if as_int is None else as_int
    empty = np.flatnonzero(np.char.str_len(raw.astype(str)) == 0) if (
        raw.dtype.kind not in "iu") else np.zeros(0, int)
    if empty.size:
      raise DataError("empty id", str(header.path), int(lines[empty[0]]),
                      id_col)
  order = np.argsort(raw, kind="stable")
  sorted_raw = raw[order]
  rep = np.flatnonzero(sorted_raw[1:] == sorted_raw[:-1])
  if rep.size:
    first, second = sorted(order[rep[0]:rep[0] + 2])
    raise DataError(f"duplicated id {sorted_raw[rep[0]]!r} (first on line "
                    f"{lines[first]})", str(header.path), int(lines[second]),
                    id_col)
  out, missing = {}, {}
  for a in attrs:
    values = np.concatenate([b.cols[a] for b in parts])[order]
    seq = header.types.get(a, "").endswith("_seq") or (
        header.kind == "csv" and multi_sep != "" and any(
            multi_sep in v for v in values[:10000].tolist()))
    attr, empty = _attribute(a, values, seq, multi_sep if header.kind == "csv"
                             else " ", multi_value)
    if empty.any():
      if on_bad != "skip":
        r = int(order[np.argmax(empty)])
        raise DataError("empty attribute value (pass --on_bad=skip to leave "
                        "such rows in no group)", str(header.path),
                        int(lines[r]), a)
      missing[a] = int(empty.sum())
    out[a] = attr
  return Table(header.path, IdTable.build(sorted_raw), out, missing)


@dataclasses.dataclass(frozen=True)
class Interactions:
  """(user, item) pairs as codes, sorted by key user * I + item."""

  path: pathlib.Path
  user: np.ndarray  # int32 [N]
  item: np.ndarray  # int32 [N]
  rating: np.ndarray | None  # float64 [N]
  keys: np.ndarray  # int64 [N] sorted
  num_items: int
  skipped_rows: dict[str, int]

  def counts_per_user(self, num_users: int) -> np.ndarray:
    return np.bincount(self.user, minlength=num_users).astype(np.int32)


def read_interactions(path, users: IdTable, items: IdTable, *,
                      on_bad: str = "error", sep: str | None = None,
                      with_rating: bool = False, progress=None
                      ) -> Interactions:
  """Reads test (or train) interactions as codes.

  Raises:
    DataError: missing user/item column, a user or item not in its table
      (on_bad="error"; with "skip" the row is dropped and counted), a
      repeated (user, item) pair, no rows.
  """
  header = blocks.read_header(path, sep)
  ucol, icol = header.find(*USER_COLS), header.find(*ITEM_COLS)
  for col, names in ((ucol, USER_COLS), (icol, ITEM_COLS)):
    if col is None:
      raise DataError(f"no {names[-1]} column (expected one of "
                      f"{', '.join(names)}; columns: {', '.join(header.names)})",
                      str(header.path), header.line, names[0])
  rcol = header.find("rating") if with_rating else None
  cols = {ucol: "int", icol: "int"}
  if rcol:
    cols[rcol] = "float"
  us, its, rs, ls = [], [], [], []
  skipped = {"unknown_user": 0, "unknown_item": 0}
  for b in blocks.iter_blocks(header, cols):
    u, i = users.codes(b.cols[ucol]), items.codes(b.cols[icol])
    for name, code, col, raw in (("unknown_user", u, ucol, b.cols[ucol]),
                                 ("unknown_item", i, icol, b.cols[icol])):
      bad = code < 0
      if bad.any():
        if on_bad != "skip":
          r = int(np.argmax(bad))
          table = "users" if name == "unknown_user" else "items"
          raise DataError(f"{col} {str(raw[r])!r} is not in the {table} file "
                          "(pass --on_bad=skip to drop such rows)",
                          str(header.path), int(b.lines[r]), col)
        skipped[name] += int(bad.sum())
    ok = (u >= 0) & (i >= 0)
    us.append(u[ok])
    its.append(i[ok])
    ls.append(b.lines[ok])
    if rcol:
      rs.append(b.cols[rcol][ok])
    if progress is not None:
      progress(b)
  user, item, lines = np.concatenate(us), np.concatenate(its), np.concatenate(ls)
  if user.size == 0:
    raise DataError("no usable rows", str(header.path))
  keys = user.astype(np.int64) * len(items) + item
  order = np.argsort(keys, kind="stable")
  keys = keys[order]
  rep = np.flatnonzero(keys[1:] == keys[:-1])
  if rep.size:
    a, b = sorted(order[rep[0]:rep[0] + 2])
    raise DataError(f"repeated (user, item) pair, first on line {lines[a]}",
                    str(header.path), int(lines[b]))
  rating = np.concatenate(rs)[order] if rcol else None
  return Interactions(header.path, user[order], item[order], rating, keys,
                      len(items), skipped)
