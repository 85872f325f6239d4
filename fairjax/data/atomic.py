"""Tabular readers: RecBole atomic files and plain CSV, plus shared helpers.

RecBole atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html)
are tab-separated with a typed header, `field:type` per column, type one of
`token`, `token_seq` (space-separated tokens), `float`, `float_seq`:

  NAME.inter   user_id:token  item_id:token  [rating:float]  [timestamp:float]
  NAME.user    user_id:token  gender:token  age:token ...        (optional)
  NAME.item    item_id:token  genre:token_seq ...                (optional)

Plain CSV (`read_csv`) takes the column names as arguments. Both readers map
raw ids to dense ids (sorted by raw id: numerically when every id is a
canonical integer, else as strings) and keep the mapping in
`Dataset.raw_user_ids` / `raw_item_ids`.

The helpers `LineIndex`, `UserTable`, `ItemTable` and `assemble` are shared
with the MovieLens readers: they turn parsed columns into a validated
`Dataset` (unknown ids, duplicated pairs) and name the file and line of the
first bad row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import re
from typing import Callable

import numpy as np
import pandas as pd

from fairjax.data.types import Dataset
from fairjax.errors import DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
GENRE_FIELDS = ("genre", "genres", "category", "categories", "class")
PathLike = str | os.PathLike


def read_bytes(path: PathLike) -> bytes:
  """The bytes of `path`; a missing or unreadable file is a `DataError`."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise DataError("file not found", path=str(path)) from None
  except OSError as e:
    raise DataError(f"cannot read file ({e.strerror})", path=str(path)) from None


class LineIndex:
  """Maps a data row (0-based, blank lines skipped) to its 1-based file line.

  A line is blank when it is empty after dropping a trailing '\\r'. Also counts
  the separator bytes on each non-blank line (for an exact field-count check).
  Computed once, vectorised over the whole buffer.
  """

  def __init__(self, data: bytes, sep: bytes | None = None):
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if buf.size and buf[-1] != 10:
      ends = np.append(ends, buf.size)
    starts = np.concatenate([[0], ends + 1])[:ends.size].astype(np.int64)
    has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    keep = ends - starts - has_cr > 0
    self.lines = np.flatnonzero(keep) + 1
    self.starts = starts[keep]
    self.seps = None
    if sep is not None:
      pos = np.flatnonzero(buf == sep[0])
      counts = np.searchsorted(pos, ends) - np.searchsorted(pos, starts)
      self.seps = counts[keep]

  def __call__(self, row: int) -> int:
    return int(self.lines[row])


@dataclasses.dataclass(frozen=True)
class UserTable:
  """A parsed user side file: raw ids and per-row attributes."""
  path: pathlib.Path
  ids: np.ndarray
  attrs: dict[str, np.ndarray]
  attr_names: dict[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class ItemTable:
  """A parsed item side file: raw ids and multi-hot genres per row."""
  path: pathlib.Path
  ids: np.ndarray
  genres: np.ndarray | None
  genre_names: tuple[str, ...]
  first_genre: np.ndarray | None


def _fmt(x) -> str:
  return repr(str(x)) if isinstance(x, (str, np.str_)) else str(x)


def _lookup(table: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row of each `query` id in `table` and whether it was found."""
  if table.size == 0:
    return np.zeros(query.shape, np.int64), np.zeros(query.shape, bool)
  order = np.argsort(table, kind="stable")
  idx = np.clip(np.searchsorted(table[order], query), 0, table.size - 1)
  return order[idx], table[order][idx] == query


def check_unique(ids: np.ndarray, path: PathLike, line_of: Callable[[int], int],
                 field: str) -> None:
  """Raises `DataError` at the first row whose id repeats an earlier row."""
  _, first, inv = np.unique(ids, return_index=True, return_inverse=True)
  rep = np.flatnonzero(first[inv] != np.arange(ids.size))
  if rep.size:
    r = int(rep[0])
    raise DataError(f"duplicated id {_fmt(ids[r])} (first on line "
                    f"{line_of(int(first[inv[r]]))})", str(path), line_of(r),
                    field)


def assemble(name: str, raw_user: np.ndarray, raw_item: np.ndarray,
             rating: np.ndarray, timestamp: np.ndarray | None, *,
             path: PathLike, line_of: Callable[[int], int], user_field: str,
             item_field: str, users: UserTable | None = None,
             items: ItemTable | None = None,
             require_items: bool = False) -> Dataset:
  """Builds a `Dataset` from raw interaction columns and side tables.

  Dense ids: `np.unique` of the raw ids seen in the interactions (sorted), so
  dense u is the u-th smallest raw user id; side tables are reindexed to them.

  Raises:
    DataError at the first interaction (file `path`, line `line_of(row)`)
    whose user is missing from `users`, whose item is missing from `items`
    (only when `require_items`), or whose (user, item) pair repeats.
  """
  if raw_user.size == 0:
    raise DataError("no interactions", str(path))
  uniq_u, u = np.unique(raw_user, return_inverse=True)
  uniq_i, i = np.unique(raw_item, return_inverse=True)
  attrs, attr_names = {}, {}
  if users is not None:
    pos, found = _lookup(users.ids, uniq_u)
    if not found.all():
      r = int(np.argmax(~found[u]))
      raise DataError(f"{user_field} {_fmt(raw_user[r])} is not in "
                      f"{users.path.name}", str(path), line_of(r), user_field)
    attrs = {k: v[pos] for k, v in users.attrs.items()}
    attr_names = dict(users.attr_names)
  genres = first = None
  genre_names: tuple[str, ...] = ()
  if items is not None:
    pos, found = _lookup(items.ids, uniq_i)
    if require_items and not found.all():
      r = int(np.argmax(~found[i]))
      raise DataError(f"{item_field} {_fmt(raw_item[r])} is not in "
                      f"{items.path.name}", str(path), line_of(r), item_field)
    if items.genres is not None and items.ids.size:
      genres = items.genres[pos] & found[:, None]
      first = np.where(found, items.first_genre[pos], -1).astype(np.int32)
      genre_names = items.genre_names
  key = u.astype(np.int64) * uniq_i.size + i
  _, first_row, inv = np.unique(key, return_index=True, return_inverse=True)
  rep = np.flatnonzero(first_row[inv] != np.arange(key.size))
  if rep.size:
    r = int(rep[0])
    raise DataError(
        f"duplicated (user, item) pair ({_fmt(raw_user[r])}, "
        f"{_fmt(raw_item[r])}), first on line {line_of(int(first_row[inv[r]]))}",
        str(path), line_of(r))
  return Dataset(
      name=name, user=u.astype(np.int32), item=i.astype(np.int32),
      rating=np.asarray(rating, np.float32),
      timestamp=None if timestamp is None else np.asarray(timestamp, np.int64),
      num_users=int(uniq_u.size), num_items=int(uniq_i.size),
      raw_user_ids=uniq_u, raw_item_ids=uniq_i, user_attrs=attrs,
      user_attr_names=attr_names, item_genres=genres, genre_names=genre_names,
      item_first_genre=first)


def categorical_codes(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
  """int32 codes and labels of a string column.

  Label order: ('M', 'F') when the labels are a subset of {M, F} (the
  MovieLens convention 0 = M, 1 = F); numeric when every label is an integer;
  otherwise lexicographic. codes[r] = labels.index(values[r]).
  """
  labels = np.unique(values)
  if set(labels.tolist()) <= {"M", "F"}:
    labels = np.array(["M", "F"])
  elif all(re.fullmatch(r"-?\d+", s) for s in labels.tolist()):
    labels = labels[np.argsort([int(s) for s in labels.tolist()], kind="stable")]
  pos, _ = _lookup(labels, values)
  return pos.astype(np.int32), tuple(labels.tolist())


def _ids_as_int(*cols: np.ndarray) -> list[np.ndarray]:
  """All columns as int64 when every value is a canonical integer, else str."""
  out = []
  for c in cols:
    try:
      v = c.astype(np.int64)
    except (ValueError, OverflowError):
      return [np.asarray(x, str) for x in cols]
    if not np.array_equal(v.astype(str), c.astype(str)):
      return [np.asarray(x, str) for x in cols]
    out.append(v)
  return out


def _read_table(path: PathLike, sep: str, quoted: bool
                ) -> tuple[list[str], pd.DataFrame, Callable[[int], int]]:
  """Header names, string cells and row -> line map of a delimited file.

  Without quoting (or when the file has no '"'), every non-blank line must have
  exactly as many fields as the header; the check is vectorised.
  """
  data = read_bytes(path)
  index = LineIndex(data, sep.encode())
  if index.lines.size == 0:
    raise DataError("empty file (no header line)", str(path))
  exact = not quoted or b'"' not in data
  start = int(index.starts[0])
  head = data[start:].split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
  header = next(csv.reader([head], delimiter=sep)) if quoted else head.split(sep)
  header = [h.strip() for h in header]
  for j, h in enumerate(header):
    if not h or h in header[:j]:
      raise DataError(f"empty or repeated column name {h!r}", str(path),
                      index(0), h or None)
  if exact:
    bad = np.flatnonzero(index.seps != len(header) - 1)
    if bad.size:
      r = int(bad[0])
      raise DataError(f"expected {len(header)} fields separated by {sep!r}, got "
                      f"{int(index.seps[r]) + 1}", str(path), index(r))
  try:
    df = pd.read_csv(
        io.BytesIO(data), sep=sep, header=0, names=header, dtype=str,
        na_filter=False, keep_default_na=False, skip_blank_lines=True,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        encoding="utf-8", engine="c", index_col=False)
  except pd.errors.ParserError as e:
    m = re.search(r"line (\d+)", str(e))
    raise DataError(f"cannot parse ({str(e).strip()})", str(path),
                    int(m.group(1)) if m else None) from None
  except UnicodeDecodeError as e:
    raise DataError(f"not UTF-8 text (byte offset {e.start})", str(path)) from None
  if exact:
    return header, df, lambda r: index(r + 1)
  return header, df, lambda r: r + 2


def _column(df: pd.DataFrame, field: str, path, line_of, kind: str) -> np.ndarray:
  """A validated column: kind 'id' (non-empty str), 'float' or 'time'."""
  s = df[field]
  if kind == "id":
    v = s.to_numpy(str)
    bad = np.flatnonzero(v == "")
    if bad.size:
      raise DataError("empty id", str(path), line_of(int(bad[0])), field)
    return v
  v = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
  bad = ~np.isfinite(v)
  if kind == "time" and bad.any():
    try:
      t = pd.to_datetime(s, format="ISO8601", utc=True)
      secs = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
      return secs.to_numpy(np.int64)
    except (ValueError, TypeError):
      pass
  if bad.any():
    r = int(np.argmax(bad))
    raise DataError(f"value {s.iloc[r]!r} is not a finite number", str(path),
                    line_of(r), field)
  return np.rint(v).astype(np.int64) if kind == "time" else v


def _user_table(path, df, line_of, id_field, kinds: dict[str, str]) -> UserTable:
  """kinds: field -> 'token' (categorical codes) or 'float' or 'auto'."""
  attrs, names = {}, {}
  for field, kind in kinds.items():
    v = df[field].to_numpy(str)
    bad = np.flatnonzero(v == "")
    if bad.size:
      raise DataError("empty attribute value", str(path), line_of(int(bad[0])),
                      field)
    num = pd.to_numeric(df[field], errors="coerce").to_numpy(np.float64)
    if kind == "float" or (kind == "auto" and np.isfinite(num).all()):
      if not np.isfinite(num).all():
        r = int(np.argmax(~np.isfinite(num)))
        raise DataError(f"value {v[r]!r} is not a finite number", str(path),
                        line_of(r), field)
      attrs[field] = (num.astype(np.int64) if (num == np.rint(num)).all()
                      else num.astype(np.float32))
    else:
      attrs[field], names[field] = categorical_codes(v)
  ids = _column(df, id_field, path, line_of, "id")
  return UserTable(pathlib.Path(path), ids, attrs, names)


def _item_table(path, df, line_of, id_field, genre_field, sep) -> ItemTable:
  ids = _column(df, id_field, path, line_of, "id")
  if genre_field is None:
    return ItemTable(pathlib.Path(path), ids, None, (), None)
  seqs = [s.split(sep) if sep != " " else s.split()
          for s in df[genre_field].tolist()]
  seqs = [[g for g in s if g] for s in seqs]
  names = tuple(sorted({g for s in seqs for g in s}))
  col = {g: j for j, g in enumerate(names)}
  genres = np.zeros((len(seqs), len(names)), bool)
  rows = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
  genres[rows, [col[g] for s in seqs for g in s]] = True
  first = np.array([col[s[0]] if s else -1 for s in seqs], np.int32)
  return ItemTable(pathlib.Path(path), ids, genres, names, first)


def _atomic_fields(header: list[str], path, line_of) -> dict[str, str]:
  fields = {}
  for h in header:
    name, colon, typ = h.partition(":")
    if not colon or not name:
      raise DataError("header column must be 'name:type'", str(path), line_of(-1), h)
    if typ not in ATOMIC_TYPES:
      raise DataError(f"unknown type {typ!r} (expected one of "
                      f"{', '.join(ATOMIC_TYPES)})", str(path), line_of(-1), name)
    if name in fields:
      raise DataError("repeated column name", str(path), line_of(-1), name)
    fields[name] = typ
  return fields


def read_atomic(path_prefix_or_dir: PathLike, name: str | None = None) -> Dataset:
  """Reads RecBole atomic files `NAME.inter` (+ optional `.user`, `.item`).

  Args:
    path_prefix_or_dir: a folder holding `NAME.inter` (NAME defaults to the
      folder's name), a `NAME.inter` path, or the prefix `.../NAME`.
    name: NAME of the files inside a folder (default: the folder name).

  Returns:
    A `Dataset` named NAME. `.inter` needs `user_id:token` and `item_id:token`;
    `rating:float` (default 1.0) and `timestamp:float` (rounded to int64
    seconds) are optional. `.user` token columns become categorical codes
    (`categorical_codes`), float columns numbers, seq columns are ignored.
    `.item` genres come from the first of genre/genres/category/categories/
    class, else the first token_seq column (labels sorted; items missing from
    `.item` have no genre).
  """
  p = pathlib.Path(path_prefix_or_dir)
  if p.is_dir():
    stem = name or p.name
    prefix = p / stem
  else:
    prefix = p.with_suffix("") if p.suffix == ".inter" else p
    stem = prefix.name
  inter_path = pathlib.Path(f"{prefix}.inter")
  header, df, line_of = _read_table(inter_path, "\t", quoted=False)
  fields = _atomic_fields(header, inter_path, line_of)
  df.columns = list(fields)
  for need in ("user_id", "item_id"):
    if need not in fields:
      raise DataError("missing required column (header needs "
                      "user_id:token and item_id:token)", str(inter_path),
                      field=need)
  user = _column(df, "user_id", inter_path, line_of, "id")
  item = _column(df, "item_id", inter_path, line_of, "id")
  rating = (_column(df, "rating", inter_path, line_of, "float")
            if "rating" in fields else np.ones(user.size))
  ts = (_column(df, "timestamp", inter_path, line_of, "time")
        if "timestamp" in fields else None)
  users = items = None
  user_path, item_path = pathlib.Path(f"{prefix}.user"), pathlib.Path(f"{prefix}.item")
  if user_path.exists():
    udf, ulines, uf = _side_file(user_path, "user_id")
    kinds = {k: ("float" if t == "float" else "token") for k, t in uf.items()
             if k != "user_id" and t in ("token", "float")}
    users = _user_table(user_path, udf, ulines, "user_id", kinds)
    check_unique(users.ids, user_path, ulines, "user_id")
  if item_path.exists():
    idf, ilines, itf = _side_file(item_path, "item_id")
    cands = [f for f in GENRE_FIELDS if f in itf and itf[f].startswith("token")]
    cands += [f for f, t in itf.items() if t == "token_seq"]
    items = _item_table(item_path, idf, ilines, "item_id",
                        cands[0] if cands else None, " ")
    check_unique(items.ids, item_path, ilines, "item_id")
  return _finish(stem, user, item, rating, ts, inter_path, line_of,
                 ("user_id", "item_id"), users, items)


def _side_file(path: pathlib.Path, id_field: str):
  """A `.user` / `.item` file: (frame with typed column names, line_of,
  {field: type}); DataError if `id_field` is missing."""
  header, df, line_of = _read_table(path, "\t", quoted=False)
  fields = _atomic_fields(header, path, line_of)
  df.columns = list(fields)
  if id_field not in fields:
    raise DataError("missing required column", str(path), field=id_field)
  return df, line_of, fields


def _finish(name, user, item, rating, ts, path, line_of, id_fields, users, items):
  """Casts ids (jointly with the side tables) and calls `assemble`."""
  uside = [] if users is None else [users.ids]
  iside = [] if items is None else [items.ids]
  user, *uside = _ids_as_int(user, *uside)
  item, *iside = _ids_as_int(item, *iside)
  if users is not None:
    users = dataclasses.replace(users, ids=uside[0])
  if items is not None:
    items = dataclasses.replace(items, ids=iside[0])
  return assemble(name, user, item, rating, ts, path=path, line_of=line_of,
                  user_field=id_fields[0], item_field=id_fields[1],
                  users=users, items=items)


def read_csv(path: PathLike, user_col: str = "user", item_col: str = "item",
             rating_col: str | None = None, time_col: str | None = None,
             users_path: PathLike | None = None,
             items_path: PathLike | None = None, genre_col: str = "genres",
             genre_sep: str = "|", sep: str = ",",
             name: str | None = None) -> Dataset:
  """Reads interactions from a plain CSV file with a header row.

  Args:
    path: interactions CSV; columns `user_col`, `item_col`, optionally
      `rating_col` (float; default 1.0 for every row) and `time_col` (Unix
      seconds, or ISO-8601 date-times; rounded to int64 seconds).
    users_path: optional CSV with column `user_col` and one column per user
      attribute: all-numeric columns stay numbers (int64 when integral), other
      columns become categorical codes (`categorical_codes`).
    items_path: optional CSV with column `item_col` and optional `genre_col`
      holding `genre_sep`-separated labels (sorted to form `genre_names`).
    sep: field separator. Quoted fields are allowed; line numbers in errors
      assume one record per line.
    name: dataset name (default: the file stem).

  Returns:
    A `Dataset` with dense ids sorted by raw id.
  """
  path = pathlib.Path(path)
  header, df, line_of = _read_table(path, sep, quoted=True)
  for col in (user_col, item_col, rating_col, time_col):
    if col is not None and col not in header:
      raise DataError(f"missing column (header has {header})", str(path),
                      field=col)
  user = _column(df, user_col, path, line_of, "id")
  item = _column(df, item_col, path, line_of, "id")
  rating = (np.ones(user.size) if rating_col is None
            else _column(df, rating_col, path, line_of, "float"))
  ts = None if time_col is None else _column(df, time_col, path, line_of, "time")
  users = items = None
  if users_path is not None:
    h, udf, ulines = _read_table(users_path, sep, quoted=True)
    if user_col not in h:
      raise DataError("missing column", str(users_path), field=user_col)
    users = _user_table(users_path, udf, ulines, user_col,
                        {c: "auto" for c in h if c != user_col})
    check_unique(users.ids, users_path, ulines, user_col)
  if items_path is not None:
    h, idf, ilines = _read_table(items_path, sep, quoted=True)
    if item_col not in h:
      raise DataError("missing column", str(items_path), field=item_col)
    items = _item_table(items_path, idf, ilines, item_col,
                        genre_col if genre_col in h else None, genre_sep)
    check_unique(items.ids, items_path, ilines, item_col)
  return _finish(name or path.stem, user, item, rating, ts, path, line_of,
                 (user_col, item_col), users, items)
