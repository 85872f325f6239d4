"""Large synthetic audit inputs as RecBole atomic files, written fast.

`write_synthetic(folder, num_users, num_items, k)` writes
  users.user  user_id:token gender:token age:token   (30% F; 7 age buckets)
  items.item  item_id:token genre:token_seq          (1-3 of 18 genres)
  test.inter  user_id:token item_id:token            (2-5 per user)
  recs.inter  user_id:token item_id:token rank:float (k per user)
with the recommendation rows ordered by rank, then user (not grouped by
user: the reader must not rely on order). User u's list is the items
(a_u + r b_u) mod I, r = 0..k-1, with b_u coprime to I (distinct items);
a_u is skewed towards low item ids (popularity). Each user has up to two
hits (at two distinct ranks; group F hits less often) and three test items
outside the list. Lines are formatted by NumPy digit arithmetic, so 10^8
rows take seconds. Used by the scale check and the tests.
"""

from __future__ import annotations

import pathlib

import numpy as np

USER_BASE = 1_000_000
ITEM_BASE = 100_000


def _digits(x: np.ndarray, width: int) -> np.ndarray:
  """uint8 [n, width] ASCII digits of non-negative ints (zero-padded)."""
  x = np.asarray(x, np.int64)
  p = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
  return ((x[:, None] // p[None, :]) % 10 + 48).astype(np.uint8)


def _lines(*fields: np.ndarray) -> bytes:
  """Tab-separated lines from uint8 [n, w_j] field blocks."""
  n = fields[0].shape[0]
  tab = np.full((n, 1), 9, np.uint8)
  nl = np.full((n, 1), 10, np.uint8)
  parts = []
  for j, f in enumerate(fields):
    parts += [f, tab if j + 1 < len(fields) else nl]
  return np.concatenate(parts, axis=1).tobytes()


def _ids(values: np.ndarray, base: int) -> np.ndarray:
  width = len(str(base * 2 - 1))
  if values.size and values.max() >= base * 9:
    raise ValueError("too many ids for the fixed-width synthetic writer")
  return _digits(values + base, width)


def write_synthetic(folder, num_users: int = 1000, num_items: int = 500,
                    k: int = 20, seed: int = 0) -> dict[str, pathlib.Path]:
  """Writes the four files (module docstring); returns their paths."""
  if k + 3 > num_items:
    raise ValueError("num_items must exceed k + 3")
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  female = rng.random(num_users) < 0.3
  age = rng.integers(0, 7, num_users)
  a = (num_items * rng.beta(0.6, 3.0, num_users)).astype(np.int64)
  b = rng.integers(1, num_items, num_users)
  for _ in range(64):
    bad = np.gcd(b, num_items) != 1
    if not bad.any():
      break
    b[bad] = rng.integers(1, num_items, int(bad.sum()))
  b[np.gcd(b, num_items) != 1] = 1
  paths = {n: folder / f for n, f in (("users", "users.user"),
                                      ("items", "items.item"),
                                      ("test", "test.inter"),
                                      ("recs", "recs.inter"))}
  uid = _ids(np.arange(num_users), USER_BASE)
  with open(paths["users"], "wb") as f:
    f.write(b"user_id:token\tgender:token\tage:token\n")
    g = np.where(female, ord("F"), ord("M")).astype(np.uint8)[:, None]
    f.write(_lines(uid, g, _digits(age * 10 + 18, 2)))
  genres = [" ".join(f"g{x}" for x in sorted(set(row)))
            for row in rng.zipf(1.6, (num_items, 3)).clip(1, 18).tolist()]
  n_gen = rng.integers(1, 4, num_items)
  with open(paths["items"], "w") as f:
    f.write("item_id:token\tgenre:token_seq\n")
    for i in range(num_items):
      gs = genres[i].split(" ")[:n_gen[i]]
      f.write(f"{ITEM_BASE + i}\t{' '.join(gs)}\n")
  item = lambda r: (a + r * b) % num_items  # noqa: E731
  r1 = rng.integers(0, k, num_users)
  r2 = (r1 + 1 + rng.integers(0, max(k - 1, 1), num_users)) % k
  p_hit = np.where(female, 0.25, 0.45)
  take1 = rng.random(num_users) < p_hit
  take2 = (rng.random(num_users) < p_hit) & (r2 != r1)
  tu = [np.flatnonzero(take1), np.flatnonzero(take2)]
  ti = [item(r1)[take1], item(r2)[take2]]
  for extra in range(3):
    tu.append(np.arange(num_users))
    ti.append(item(k + extra))
  tu, ti = np.concatenate(tu), np.concatenate(ti)
  order = np.lexsort((ti, tu))
  with open(paths["test"], "wb") as f:
    f.write(b"user_id:token\titem_id:token\n")
    f.write(_lines(_ids(tu[order], USER_BASE), _ids(ti[order], ITEM_BASE)))
  with open(paths["recs"], "wb") as f:
    f.write(b"user_id:token\titem_id:token\trank:float\n")
    for r in range(k):
      rank = np.frombuffer(str(r + 1).encode(), np.uint8)[None, :].repeat(
          num_users, 0)
      f.write(_lines(uid, _ids(item(r), ITEM_BASE), rank))
  return paths
