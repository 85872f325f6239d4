"""MovieLens 1M and 100K readers (GroupLens formats, latin-1 text).

ML-1M comes in two layouts under its `ml-1m` folder:
  (a) this project's copy: `ratings_all_no_timestamp.dat`
      (`UserID::MovieID::Rating`, every rating) and `ratings_users_0001-2999.dat`
      (`UserID::MovieID::Rating::Timestamp`, users 1-2999 only);
  (b) the official single `ratings.dat` (`UserID::MovieID::Rating::Timestamp`,
      every rating). Used whenever it is present.
plus `users.dat` (`UserID::Gender::Age::Occupation::Zip-code`) and
`movies.dat` (`MovieID::Title::Genres`, genres `|`-separated).

Ratings are parsed vectorised (`np.loadtxt` on the whole file, `::` folded to
`:`); only when that fails is the file walked line by line to name the first
bad line. Every error is a `DataError` naming file, 1-based line and field.
"""

from __future__ import annotations

import io
import os
import pathlib
import re

import numpy as np

from fairjax.data.atomic import ItemTable, LineIndex, UserTable, assemble
from fairjax.data.atomic import check_unique, read_bytes
from fairjax.data.types import Dataset
from fairjax.errors import DataError

# Official genre order of the ML-1M README.
ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
# ML-100K `u.genre` order: 'unknown' then the 18 above.
ML100K_GENRES = ("unknown",) + ML1M_GENRES
# ML-1M README occupation codes 0..20.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care",
    "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
GENDERS = ("M", "F")

_INT = re.compile(r"\s*[+-]?\d+\s*\Z")
_ML1M_RATING_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")
_ML100K_RATING_FIELDS = ("user id", "item id", "rating", "timestamp")


def _text(path: pathlib.Path) -> str:
  return read_bytes(path).decode("latin-1")


def _lines(path: pathlib.Path, text: str, sep: str, fields: tuple[str, ...],
           exact: bool = True):
  """Yields (1-based line number, fields) of non-blank lines, checking counts."""
  for n, line in enumerate(text.split("\n"), 1):
    line = line[:-1] if line.endswith("\r") else line
    if not line:
      continue
    parts = line.split(sep)
    bad = len(parts) != len(fields) if exact else len(parts) < len(fields)
    if bad:
      want = f"{len(fields)}" if exact else f"at least {len(fields)}"
      raise DataError(f"expected {want} fields separated by {sep!r} "
                      f"({sep.join(fields)}), got {len(parts)}", str(path), n)
    yield n, parts


def _int(path, n: int, field: str, value: str) -> int:
  if not _INT.match(value) or abs(int(value)) >= 2**63:
    raise DataError(f"{value!r} is not an integer", str(path), n, field)
  return int(value)


def _int_table(path: pathlib.Path, sep: str, fields: tuple[str, ...]
               ) -> tuple[np.ndarray, LineIndex]:
  """int64 [N, len(fields)] of a separated all-integer file, validated.

  Fast path: one `np.loadtxt` over the whole text. On failure the file is
  walked line by line to raise a `DataError` at the first bad line/field.
  """
  data = read_bytes(path)
  text = data.decode("latin-1")
  delim = sep
  ok = True
  if sep == "::":
    ok = text.count(":") == 2 * text.count("::")  # no stray single colons
    text, delim = text.replace("::", ":"), ":"
  table = None
  if ok:
    try:
      table = np.loadtxt(io.StringIO(text), delimiter=delim, dtype=np.int64,
                         ndmin=2, comments=None)
    except ValueError:
      table = None
  if table is None or (table.size and table.shape[1] != len(fields)):
    for n, parts in _lines(path, data.decode("latin-1"), sep, fields):
      for f, v in zip(fields, parts):
        _int(path, n, f, v)
    raise DataError("cannot parse as integers", str(path))
  if table.shape[0] == 0:
    raise DataError("no ratings", str(path))
  return table, LineIndex(data)


def _ratings(path: pathlib.Path, sep: str, fields: tuple[str, ...]):
  table, index = _int_table(path, sep, fields)
  rating = table[:, 2]
  bad = np.flatnonzero((rating < 1) | (rating > 5))
  if bad.size:
    r = int(bad[0])
    raise DataError(f"rating {rating[r]} outside 1..5", str(path), index(r),
                    fields[2])
  ts = table[:, 3] if table.shape[1] > 3 else None
  return table[:, 0], table[:, 1], rating.astype(np.float32), ts, index


def _gender(path, n: int, field: str, value: str) -> int:
  if value not in GENDERS:
    raise DataError(f"missing or invalid gender {value!r} (expected M or F)",
                    str(path), n, field)
  return GENDERS.index(value)


def _ml1m_users(path: pathlib.Path) -> UserTable:
  fields = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
  rows = [(_int(path, n, "UserID", p[0]), _gender(path, n, "Gender", p[1]),
           _int(path, n, "Age", p[2]), _int(path, n, "Occupation", p[3]), n)
          for n, p in _lines(path, _text(path), "::", fields)]
  if not rows:
    raise DataError("no users", str(path))
  ids, gender, age, occ, lines = (np.array(c, np.int64) for c in zip(*rows))
  bad = np.flatnonzero((occ < 0) | (occ >= len(ML1M_OCCUPATIONS)))
  if bad.size:
    raise DataError(f"occupation code {occ[bad[0]]} outside 0..20", str(path),
                    int(lines[bad[0]]), "Occupation")
  check_unique(ids, path, lambda r: int(lines[r]), "UserID")
  attrs = {"gender": gender.astype(np.int32), "age": age.astype(np.int32),
           "occupation": occ.astype(np.int32)}
  names = {"gender": GENDERS, "occupation": ML1M_OCCUPATIONS}
  return UserTable(path, ids, attrs, names)


def _ml1m_movies(path: pathlib.Path) -> ItemTable:
  col = {g: j for j, g in enumerate(ML1M_GENRES)}
  ids, lines, rows, cols, first = [], [], [], [], []
  for n, p in _lines(path, _text(path), "::", ("MovieID", "Title", "Genres"),
                     exact=False):
    ids.append(_int(path, n, "MovieID", p[0]))
    lines.append(n)
    gs = p[-1].split("|") if p[-1] else []
    for g in gs:
      if g not in col:
        raise DataError(f"unknown genre {g!r} (expected one of "
                        f"{', '.join(ML1M_GENRES)})", str(path), n, "Genres")
      rows.append(len(ids) - 1)
      cols.append(col[g])
    first.append(col[gs[0]] if gs else -1)
  if not ids:
    raise DataError("no movies", str(path))
  ids = np.array(ids, np.int64)
  check_unique(ids, path, lambda r: lines[r], "MovieID")
  genres = np.zeros((ids.size, len(ML1M_GENRES)), bool)
  genres[rows, cols] = True
  return ItemTable(path, ids, genres, ML1M_GENRES, np.array(first, np.int32))


def read_ml1m(root: str | os.PathLike,
              with_timestamps_only: bool = False) -> Dataset:
  """Reads MovieLens-1M from its `ml-1m` folder (either layout above).

  Args:
    root: the `ml-1m` folder.
    with_timestamps_only: False ("ml1m"): every rating; timestamps only with
      layout (b), else None. True ("ml1m-ts"): only ratings with timestamps
      (layout (a): users 1-2999; layout (b): all), in file order.

  Returns:
    A `Dataset` whose dense ids cover the users and movies in the kept ratings,
    sorted by raw id. user_attrs: gender (0 = M, 1 = F), age (the README bucket
    code 1, 18, ..., 56), occupation (code 0..20, labels in
    `user_attr_names`). item_genres: bool [I, 18] in README order;
    item_first_genre: the first genre listed in movies.dat.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError("folder not found (expected the MovieLens ml-1m folder)",
                    str(root))
  official = root / "ratings.dat"
  if official.exists():
    path, fields = official, _ML1M_RATING_FIELDS
  elif with_timestamps_only:
    path, fields = root / "ratings_users_0001-2999.dat", _ML1M_RATING_FIELDS
  else:
    path, fields = root / "ratings_all_no_timestamp.dat", _ML1M_RATING_FIELDS[:3]
  users = _ml1m_users(root / "users.dat")
  items = _ml1m_movies(root / "movies.dat")
  user, item, rating, ts, index = _ratings(path, "::", fields)
  return assemble("ml1m-ts" if with_timestamps_only else "ml1m", user, item,
                  rating, ts, path=path, line_of=index, user_field="UserID",
                  item_field="MovieID", users=users, items=items,
                  require_items=True)


ML1M_ORDER_FILE = "ratings_ge3_fade_order.dat"
_ML1M_ORDER_FIELDS = ("UserID", "MovieID", "Rating", "Order")


def read_ml1m_order(root: str | os.PathLike) -> Dataset:
  """Reads `ml1m-order`: every ML-1M rating >= 3 of all users, in time order.

  The file `ratings_ge3_fade_order.dat` (`UserID::MovieID::Rating::Order`,
  836,478 lines, described in the shared data README) gives the FADE
  paper's chronological order of the positives of all 6,039 users who have
  one. `Order` is a 0-based position in time, not a timestamp: it is stored
  as `Dataset.timestamp`, so the chronological protocol
  (`protocols.chronological_periods`, a stable sort on it) reproduces the
  file's order exactly. Dense ids, attributes and genres as in `read_ml1m`
  (6,039 users, 3,628 items).

  Raises:
    DataError naming the file (and the data README that describes it) when it
    is missing, and the file, line and field for a bad line or an order that
    is not 0..N-1 in file order.
  """
  root = pathlib.Path(root)
  path = root / ML1M_ORDER_FILE
  if not path.is_file():
    raise DataError(
        f"{ML1M_ORDER_FILE} not found: the ml1m-order dataset needs the "
        "chronological order of the FADE paper's positives (see the README "
        "of the data folder, section 'Chronological order for all users')",
        str(path))
  users = _ml1m_users(root / "users.dat")
  items = _ml1m_movies(root / "movies.dat")
  user, item, rating, order, index = _ratings(path, "::", _ML1M_ORDER_FIELDS)
  bad = np.flatnonzero(order != np.arange(order.size))
  if bad.size:
    r = int(bad[0])
    raise DataError(f"Order {int(order[r])} where {r} was expected: the file "
                    "must list positions 0..N-1 in order", str(path), index(r),
                    "Order")
  return assemble("ml1m-order", user, item, rating, order, path=path,
                  line_of=index, user_field="UserID", item_field="MovieID",
                  users=users, items=items, require_items=True)


def _ml100k_users(path: pathlib.Path, occupations: tuple[str, ...] | None
                  ) -> UserTable:
  fields = ("user id", "age", "gender", "occupation", "zip code")
  rows = [(_int(path, n, "user id", p[0]), _int(path, n, "age", p[1]),
           _gender(path, n, "gender", p[2]), p[3], n)
          for n, p in _lines(path, _text(path), "|", fields)]
  if not rows:
    raise DataError("no users", str(path))
  occ_names = occupations or tuple(sorted({r[3] for r in rows}))
  code = {o: j for j, o in enumerate(occ_names)}
  for r in rows:
    if r[3] not in code:
      raise DataError(f"occupation {r[3]!r} is not in u.occupation", str(path),
                      r[4], "occupation")
  ids = np.array([r[0] for r in rows], np.int64)
  check_unique(ids, path, lambda i: rows[i][4], "user id")
  attrs = {"gender": np.array([r[2] for r in rows], np.int32),
           "age": np.array([r[1] for r in rows], np.int32),
           "occupation": np.array([code[r[3]] for r in rows], np.int32)}
  return UserTable(path, ids, attrs,
                   {"gender": GENDERS, "occupation": occ_names})


def _ml100k_items(path: pathlib.Path, genre_names: tuple[str, ...]) -> ItemTable:
  g = len(genre_names)
  fields = ("movie id", "title", "release date", "video release date",
            "IMDb URL") + genre_names
  ids, lines, flags = [], [], []
  for n, p in _lines(path, _text(path), "|", fields, exact=False):
    ids.append(_int(path, n, "movie id", p[0]))
    lines.append(n)
    for name, v in zip(genre_names, p[-g:]):
      if v not in ("0", "1"):
        raise DataError(f"genre flag {v!r} is not 0 or 1", str(path), n, name)
    flags.append([v == "1" for v in p[-g:]])
  if not ids:
    raise DataError("no items", str(path))
  ids = np.array(ids, np.int64)
  check_unique(ids, path, lambda r: lines[r], "movie id")
  genres = np.array(flags, bool).reshape(-1, g)
  first = np.where(genres.any(1), genres.argmax(1), -1).astype(np.int32)
  return ItemTable(path, ids, genres, genre_names, first)


def _name_list(path: pathlib.Path, sep: str | None) -> tuple[str, ...] | None:
  """The first field of each non-blank line of an optional list file."""
  if not path.exists():
    return None
  lines = [l.rstrip("\r") for l in _text(path).split("\n")]
  return tuple(l.split(sep)[0] if sep else l for l in lines if l.strip())


def read_ml100k(root: str | os.PathLike) -> Dataset:
  """Reads MovieLens-100K from its `ml-100k` folder.

  Files: `u.data` (`user id \\t item id \\t rating \\t timestamp`), `u.user`
  (`id|age|gender|occupation|zip`), `u.item` (`id|title|release|video
  release|URL|` + 19 genre flags), optional `u.genre` / `u.occupation` for
  the label order (default: the README genres; occupations sorted).

  Returns:
    A `Dataset` named "ml100k" with timestamps; user_attrs gender (0 = M,
    1 = F), age (years), occupation (code into `user_attr_names`); item_genres
    bool [I, 19] including 'unknown' first.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError("folder not found (expected the MovieLens ml-100k folder)",
                    str(root))
  genre_names = _name_list(root / "u.genre", "|") or ML100K_GENRES
  if len(genre_names) != len(ML100K_GENRES):
    raise DataError(f"expected {len(ML100K_GENRES)} genres, got "
                    f"{len(genre_names)}", str(root / "u.genre"))
  users = _ml100k_users(root / "u.user", _name_list(root / "u.occupation", None))
  items = _ml100k_items(root / "u.item", genre_names)
  path = root / "u.data"
  user, item, rating, ts, index = _ratings(path, "\t", _ML100K_RATING_FIELDS)
  return assemble("ml100k", user, item, rating, ts, path=path, line_of=index,
                  user_field="user id", item_field="item id", users=users,
                  items=items, require_items=True)
