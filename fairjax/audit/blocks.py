"""Delimited files read in blocks: RecBole atomic files and CSV (issue 15).

A file is RecBole atomic when every header field is `name:type` with a
RecBole type (`token`, `token_seq`, `float`, `float_seq`); it is then
tab-separated (https://recbole.io/docs/user_guide/data/atomic_files.html).
Otherwise it is CSV with a header row, separated by `,` (`\\t` for `.tsv`
files, or the separator given). Column names are the header names without
their `:type`.

`iter_blocks` reads the data rows in blocks of about `block_bytes` bytes cut
at line ends, so a file of 10^8 rows is never in memory at once. Each block
is checked before it is parsed: every non-blank line must have exactly as
many separators as the header (a line that does not is reported with its
line number, and a hint when it holds another common separator: mixed
separators). Columns are parsed by pandas' C parser: `int` columns as int64
(falling back to strings when a value is not an integer, so ids may be any
token), `float` columns as float64 (a non-number is a `DataError` naming
file, line and column), `str` columns as strings.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd

from fairjax.data.atomic import ATOMIC_TYPES, LineIndex
from fairjax.errors import DataError

BLOCK_BYTES = 1 << 25
_OTHER_SEPS = {"\t": ",;|", ",": "\t;|", ";": "\t,", "|": "\t,", " ": "\t,"}


@dataclasses.dataclass(frozen=True)
class Header:
  """A parsed header: format, separator, column names (without `:type`),
  the RecBole type of each column (atomic files only), the header's line."""

  path: pathlib.Path
  kind: str  # "atomic" or "csv"
  sep: str
  names: tuple[str, ...]
  types: dict[str, str]
  line: int
  data_start: int  # byte offset of the first data line

  def find(self, *candidates: str) -> str | None:
    """The first of `candidates` that is a column, or None."""
    return next((c for c in candidates if c in self.names), None)


def _is_atomic(fields: list[str]) -> bool:
  return all(f.partition(":")[1] and f.partition(":")[2] in ATOMIC_TYPES
             for f in fields)


def read_header(path: str | os.PathLike, sep: str | None = None) -> Header:
  """Reads and validates the header line of `path` (see the module doc).

  Raises:
    DataError: missing or empty file, no data rows, empty or repeated
      column names, an atomic header that is not tab-separated.
  """
  path = pathlib.Path(path)
  try:
    f = open(path, "rb")
  except FileNotFoundError:
    raise DataError("file not found", str(path)) from None
  except OSError as e:
    raise DataError(f"cannot read file ({e.strerror})", str(path)) from None
  with f:
    line_no, offset, head = 0, 0, None
    for raw in f:
      line_no += 1
      offset += len(raw)
      text = raw.rstrip(b"\r\n")
      if text.strip():
        head = text.decode("utf-8", "replace")
        break
    if head is None:
      raise DataError("empty file (no header line)", str(path))
    rest = f.read(1 << 16)
  if not rest.strip():
    raise DataError("no data rows after the header", str(path), line_no)
  tab_fields = head.split("\t")
  if _is_atomic(tab_fields):
    kind, use_sep, fields = "atomic", "\t", tab_fields
  elif sep is None and path.suffix in (".inter", ".user", ".item") and any(
      _is_atomic(head.split(s)) for s in ",; |"):
    raise DataError("RecBole atomic files are tab-separated; this header "
                    "uses another separator", str(path), line_no)
  else:
    use_sep = sep or ("\t" if path.suffix == ".tsv" else ",")
    kind = "csv"
    fields = next(csv.reader([head], delimiter=use_sep))
  names, types = [], {}
  for j, fld in enumerate(fields):
    name = fld.strip()
    if kind == "atomic":
      name, _, types_ = name.partition(":")
      types[name] = types_
    if not name or name in names:
      raise DataError(f"empty or repeated column name {name!r} (column "
                      f"{j + 1})", str(path), line_no, name or None)
    names.append(name)
  return Header(path, kind, use_sep, tuple(names), types, line_no, offset)


@dataclasses.dataclass(frozen=True)
class Block:
  """Parsed columns of consecutive data rows, with their file lines."""

  cols: dict[str, np.ndarray]
  lines: np.ndarray  # int64 [n] 1-based file line of each row
  done_bytes: int
  total_bytes: int

  def __len__(self) -> int:
    return int(self.lines.size)


def _bad_field_count(header: Header, chunk: bytes, index: LineIndex,
                     base_line: int) -> None:
  bad = np.flatnonzero(index.seps != len(header.names) - 1)
  if not bad.size:
    return
  r = int(bad[0])
  start = int(index.starts[r])
  text = chunk[start:chunk.find(b"\n", start) if b"\n" in chunk[start:]
               else len(chunk)].decode("utf-8", "replace")
  hint = ""
  others = [s for s in _OTHER_SEPS.get(header.sep, "") if s in text]
  if others:
    hint = (f" (the line holds {others[0]!r}: mixed separators? this file "
            f"is separated by {header.sep!r})")
  raise DataError(
      f"expected {len(header.names)} fields separated by {header.sep!r}, got "
      f"{int(index.seps[r]) + 1}{hint}", str(header.path),
      base_line + index(r))


def _lines_fast(header: Header, chunk: bytes, n_nl: int) -> np.ndarray | None:
  """1-based chunk lines of the rows, assuming no blank line, when the chunk
  has exactly (fields - 1) separators per line on average; else None (the
  exact per-line check of `LineIndex` is needed).

  Exact together with the parser: a line with too few separators (or a
  blank line) then implies a line with too many, which pandas rejects; and
  a blank line is also seen as a row count below the line count. Either
  way the block is re-checked line by line.
  """
  n = n_nl + (0 if chunk.endswith(b"\n") else 1)
  if header.sep == " " or chunk.count(header.sep.encode()) != n * (
      len(header.names) - 1):
    return None
  return np.arange(1, n + 1, dtype=np.int64)


def _parse(header: Header, chunk: bytes, columns: dict[str, str],
           lines: np.ndarray, quoted: bool) -> dict[str, np.ndarray]:
  def read(dtypes):
    return pd.read_csv(
        io.BytesIO(chunk), sep=header.sep, header=None,
        names=list(header.names), usecols=list(columns), dtype=dtypes,
        na_filter=False, keep_default_na=False, skip_blank_lines=True,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        engine="c", index_col=False)

  want = {c: {"int": np.int64, "float": np.float64, "str": str}[t]
          for c, t in columns.items()}
  try:
    try:
      df = read(want)
    except pd.errors.ParserError:
      raise
    except (ValueError, OverflowError):
      df = read({c: str for c in columns})
  except pd.errors.ParserError as e:
    m = re.search(r"line (\d+)", str(e))
    row = int(m.group(1)) - 1 if m else -1
    line = int(lines[row]) if 0 <= row < lines.size else None
    raise DataError(f"cannot parse ({str(e).strip()})", str(header.path),
                    line) from None
  if len(df) != lines.size:
    raise DataError(f"parsed {len(df)} rows from {lines.size} lines (quoted "
                    "fields spanning lines are not supported)",
                    str(header.path), int(lines[0]) if lines.size else None)
  out = {}
  for c, t in columns.items():
    s = df[c]
    if t == "float" and s.dtype.kind != "f":
      v = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
      bad = ~np.isfinite(v)
      if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"value {str(s.iloc[r])!r} is not a number",
                        str(header.path), int(lines[r]), c)
      out[c] = v
    elif t == "int" and s.dtype.kind in "iu":
      out[c] = s.to_numpy(np.int64)
    elif t == "float":
      out[c] = s.to_numpy(np.float64)
    else:
      out[c] = s.to_numpy(str)
  return out


def iter_blocks(header: Header, columns: dict[str, str],
                block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
  """Yields the data rows of `header.path` in blocks (see the module doc).

  Args:
    header: from `read_header`.
    columns: column name -> "int" (int64, or str when a value is not an
      integer), "float" (float64) or "str".
    block_bytes: bytes per block (rounded up to a line end).

  Raises:
    DataError: a missing column (field named), a line with the wrong number
      of fields, a value that is not a number in a float column.
  """
  for c in columns:
    if c not in header.names:
      raise DataError(f"no such column (columns: {', '.join(header.names)})",
                      str(header.path), field=c)
  total = os.path.getsize(header.path)
  base_line = header.line
  with open(header.path, "rb") as f:
    f.seek(header.data_start)
    done = header.data_start
    carry = b""
    while True:
      data = f.read(block_bytes)
      chunk = carry + data
      if data:
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
          carry = chunk
          continue
        chunk, carry = chunk[:cut], chunk[cut:]
      else:
        carry = b""
      if not chunk:
        break
      done += len(chunk)
      n_nl = chunk.count(b"\n")
      lines = _lines_fast(header, chunk, n_nl)
      quoted = header.kind == "csv" and b'"' in chunk
      if lines is None or quoted:
        index = LineIndex(chunk, None if quoted else header.sep.encode())
        if not quoted:
          _bad_field_count(header, chunk, index, base_line)
        lines = index.lines.astype(np.int64)
      lines = base_line + lines
      if lines.size:
        try:
          cols = _parse(header, chunk, columns, lines, quoted)
        except DataError:
          if quoted:
            raise
          # a bad line or a blank line on the fast path: check line by line
          index = LineIndex(chunk, header.sep.encode())
          _bad_field_count(header, chunk, index, base_line)
          lines = base_line + index.lines.astype(np.int64)
          cols = _parse(header, chunk, columns, lines, quoted)
        yield Block(cols, lines, done, total)
      base_line += n_nl
      if not data:
        break
