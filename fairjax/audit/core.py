"""The audit of someone else's top-K lists: inputs -> report (issue 15).

`audit(options)` reads the attribute tables, the test (and optional train)
interactions and the recommendation file (streamed in blocks), accumulates
every sum in one pass over user blocks (`compute.accumulate`) and returns
the report dict (`report` module: definitions). `write_outputs` writes
report.json, report.md and the figures into a fresh temporary folder and
renames it to `--out` only when everything is written, so a failed audit
never leaves a half-written `--out`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

import numpy as np

from fairjax.audit import compute
from fairjax.audit import recs as recs_lib
from fairjax.audit import report as rep
from fairjax.audit import tables
from fairjax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Options:
  """The audit's inputs and knobs (the flags of `launch.audit`)."""

  recs: str
  test: str
  users: str
  items: str
  user_attrs: tuple[str, ...] = ()
  item_attrs: tuple[str, ...] = ()
  ks: tuple[int, ...] = (10, 20)
  train: str | None = None
  min_exposure: str | None = None
  weights: str | None = None
  on_bad: str = "error"
  multi_value: str = "first"
  multi_sep: str = "|"
  sep: str | None = None
  block_users: int = compute.BLOCK_USERS
  block_bytes: int = 1 << 25
  quiet: bool = False


def validate(o: Options) -> None:
  """ConfigError naming the flag of the first invalid option."""
  if not o.ks or min(o.ks) < 1:
    raise ConfigError(f"k: cut-offs must be integers >= 1, got {list(o.ks)}")
  if o.on_bad not in ("error", "skip"):
    raise ConfigError(f"on_bad: 'error' or 'skip', got {o.on_bad!r}")
  if o.multi_value not in ("first", "each"):
    raise ConfigError(f"multi_value: 'first' or 'each', got {o.multi_value!r}")
  if len(set(o.user_attrs)) != len(o.user_attrs) or len(
      set(o.item_attrs)) != len(o.item_attrs):
    raise ConfigError("user_attr/item_attr: an attribute is repeated")
  if o.block_users < 1 or o.block_bytes < 1:
    raise ConfigError("block_users/block_bytes must be >= 1")


class Progress:
  """A progress line on stderr with rate and ETA, at most every `every` s."""

  def __init__(self, label: str, quiet: bool, every: float = 2.0):
    self.label, self.quiet, self.every = label, quiet, every
    self.t0 = time.perf_counter()
    self.last = -1e9

  def __call__(self, done: float, total: float, extra: str = "",
               final: bool = False) -> None:
    now = time.perf_counter()
    if self.quiet or (now - self.last < self.every and not final):
      return
    self.last = now
    el = now - self.t0
    frac = done / total if total else 1.0
    eta = el / frac - el if frac > 0 else float("nan")
    print(f"[audit] {self.label} {100 * frac:5.1f}% {extra} {el:6.1f} s, "
          f"ETA {eta:5.1f} s", file=sys.stderr, flush=True)


def parse_min_exposure(spec: str | None, item_attrs: dict[str, tables.Attribute]
                       ) -> dict[str, dict[str, float]] | None:
  """`0.05` (every group) or `LABEL:share,...` (other groups 0), as shares of
  the top-K slots, per item attribute."""
  if not spec:
    return None
  spec = spec.strip()
  out = {a: {lab: 0.0 for lab in at.labels} for a, at in item_attrs.items()}
  try:
    value = float(spec)
  except ValueError:
    value = None
  if value is not None:
    if not 0 <= value <= 1:
      raise ConfigError(f"min_exposure: a share in [0, 1], got {spec!r}")
    return {a: {lab: value for lab in m} for a, m in out.items()}
  for part in spec.split(","):
    lab, colon, v = part.rpartition(":")
    try:
      share = float(v)
    except ValueError:
      share = None
    if not colon or share is None or not 0 <= share <= 1:
      raise ConfigError(f"min_exposure: expected LABEL:share with a share in "
                        f"[0, 1], got {part!r}")
    hits = [a for a in out if lab in out[a]]
    if not hits:
      raise ConfigError(f"min_exposure: {lab!r} is not a group of "
                        f"{', '.join(item_attrs) or 'any item attribute'}")
    for a in hits:
      out[a][lab] = share
  return out


_OUTCOME = re.compile(r"^rating\s*>=\s*(-?[0-9.]+)$")


def parse_weights(spec: str | None, user_attrs: dict[str, tables.Attribute],
                  test: tables.Interactions) -> compute.Utility | None:
  """`--weights`: JSON (inline or a file) {ATTR: {GROUP: {OUTCOME: w}}};
  OUTCOME `interact` (a test item) or `rating>=X` (a test item rated >= X).
  U_u = sum over top-K slots of sum_m w_{g(u),m} y_m(u, i) (DESIGN §6)."""
  if not spec:
    return None
  text = spec
  if not spec.lstrip().startswith("{"):
    try:
      text = pathlib.Path(spec).read_text()
    except OSError as e:
      raise ConfigError(f"weights: cannot read {spec!r} ({e.strerror})") from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"weights: not JSON ({e})") from None
  if not isinstance(obj, dict) or len(obj) != 1:
    raise ConfigError("weights: expected {ATTR: {GROUP: {OUTCOME: weight}}} "
                      "for one user attribute")
  (attr, groups), = obj.items()
  if attr not in user_attrs:
    raise ConfigError(f"weights: {attr!r} is not a --user_attr "
                      f"({', '.join(user_attrs)})")
  at = user_attrs[attr]
  outcomes = sorted({o for g in groups.values() for o in g})
  for g in at.labels:
    if g not in groups:
      raise ConfigError(f"weights: no weights for group {g!r} of {attr!r}")
  for g in groups:
    if g not in at.labels:
      raise ConfigError(f"weights: {g!r} is not a group of {attr!r}")
  y = np.zeros((test.user.size, len(outcomes)))
  for m, o in enumerate(outcomes):
    if o == "interact":
      y[:, m] = 1.0
      continue
    match = _OUTCOME.match(o)
    if not match:
      raise ConfigError(f"weights: outcome {o!r} is not 'interact' or "
                        "'rating>=X'")
    if test.rating is None:
      raise DataError("outcome needs a rating column", str(test.path),
                      field="rating")
    y[:, m] = test.rating >= float(match.group(1))
  w = np.array([[float(groups[g].get(o, 0.0)) for o in outcomes]
                for g in at.labels])
  return compute.Utility(attr, tuple(outcomes), w, y)


def audit(o: Options) -> dict:
  """Runs the audit; returns the report dict (JSON-ready)."""
  validate(o)
  t0 = time.perf_counter()
  say = (lambda m: None) if o.quiet else (
      lambda m: print(f"[audit] {m}", file=sys.stderr, flush=True))
  users = tables.read_table(o.users, tables.USER_COLS, list(o.user_attrs),
                            on_bad=o.on_bad, multi_value="first",
                            multi_sep=o.multi_sep, sep=o.sep)
  items = tables.read_table(o.items, tables.ITEM_COLS, list(o.item_attrs),
                            on_bad=o.on_bad, multi_value=o.multi_value,
                            multi_sep=o.multi_sep, sep=o.sep)
  say(f"{len(users.ids)} users, {len(items.ids)} items")
  test = tables.read_interactions(o.test, users.ids, items.ids,
                                  on_bad=o.on_bad, sep=o.sep,
                                  with_rating=bool(o.weights))
  train = None if not o.train else tables.read_interactions(
      o.train, users.ids, items.ids, on_bad=o.on_bad, sep=o.sep)
  utility = parse_weights(o.weights, users.attrs, test)
  min_exp = parse_min_exposure(o.min_exposure, items.attrs)
  say(f"test: {test.user.size} pairs; reading {o.recs}")
  ks = tuple(sorted(set(int(k) for k in o.ks)))
  prog = Progress("read", o.quiet)
  lists = recs_lib.read_lists(
      o.recs, users.ids, items.ids, max(ks), on_bad=o.on_bad, sep=o.sep,
      block_bytes=o.block_bytes,
      progress=lambda b, n: prog(b.done_bytes, b.total_bytes,
                                 f"({n / 1e6:.1f}M rows)"))
  n_test = test.counts_per_user(len(users.ids))
  no_test = lists.has_list & (n_test == 0)
  skipped_users = {}
  if no_test.any():
    if o.on_bad != "skip":
      u0 = int(np.argmax(no_test))
      line, col = recs_lib.line_of_user(o.recs, users.ids, items.ids, u0,
                                        o.sep)
      raise DataError(f"user {str(users.ids.ids[u0])!r} has a list but no "
                      f"test items in {test.path.name} (pass --on_bad=skip to "
                      "leave such users out)", str(lists.path), line, col)
    skipped_users["users_without_test"] = int(no_test.sum())
  has_list = lists.has_list & ~no_test
  dropped = (lists.length > 0) & ~lists.has_list
  evaluated = (n_test > 0) & ~dropped
  say(f"{lists.rows} rows, {int(has_list.sum())} lists, "
      f"{int(evaluated.sum())} users evaluated")
  pop_src = train if train is not None else test
  pop = np.bincount(pop_src.item, minlength=len(items.ids))
  top10, tail = rep.popularity(pop)
  prog2 = Progress("metrics", o.quiet)
  lists.top[~has_list] = -1  # in place: no second [U, kmax] copy
  sums = compute.accumulate(
      lists.top, evaluated, test,
      users.attrs, items.attrs, ks, tail, utility, block=o.block_users,
      progress=lambda d, n: prog2(d, n, "users", final=d == n))
  train_counts = None
  if train is not None:
    train_counts = np.bincount(train.item[evaluated[train.user]],
                               minlength=len(items.ids)).astype(np.float64)
  util_desc = ("hits@K (test items in the top K)" if utility is None else
               f"sum over top-K slots of w[{utility.attr} group, outcome] x "
               f"outcome, outcomes {list(utility.outcomes)}")
  report = {
      "input": _input_section(o, users, items, test, train, lists, has_list,
                              evaluated, n_test, sums, skipped_users),
      "overall": rep.overall_section(sums, evaluated),
      "user": {a: rep.user_section(sums, at, evaluated, util_desc)
               for a, at in users.attrs.items()},
      "item": {a: rep.item_section(sums, at, evaluated, train_counts,
                                   None if min_exp is None else min_exp[a])
               for a, at in items.attrs.items()},
      "items": rep.items_section(sums, evaluated, top10, tail,
                                 "train" if train is not None else "test"),
      "cells": {a: {j: rep.cell_section(sums, ua, ia, pop_src)
                    for j, ia in items.attrs.items()}
                for a, ua in users.attrs.items()},
  }
  report["input"]["seconds"] = time.perf_counter() - t0
  return rep.to_json(report)


def _input_section(o, users, items, test, train, lists, has_list, evaluated,
                   n_test, sums, skipped_users) -> dict:
  length = lists.length[has_list]
  skipped = {"recs": {k: v for k, v in lists.skipped.items() if v},
             "test": {k: v for k, v in test.skipped_rows.items() if v},
             "users": skipped_users}
  if train is not None:
    skipped["train"] = {k: v for k, v in train.skipped_rows.items() if v}
  for name, t in (("users_file", users), ("items_file", items)):
    if t.missing:
      skipped[name] = {f"no_{a}": n for a, n in t.missing.items()}
  return {
      "files": {"recs": str(o.recs), "test": str(o.test), "users": str(o.users),
                "items": str(o.items), "train": o.train},
      "recs_mode": lists.mode, "recs_rows": lists.rows, "ks": list(sums.ks),
      "on_bad": o.on_bad, "multi_value": o.multi_value,
      "users_in_table": len(users.ids), "items_in_table": len(items.ids),
      "test_pairs": int(test.user.size),
      "users_with_list": int(has_list.sum()),
      "users_evaluated": int(evaluated.sum()),
      "users_evaluated_without_list": int((evaluated & ~has_list).sum()),
      "list_length": {"min": int(length.min()) if length.size else 0,
                      "max": int(length.max()) if length.size else 0,
                      "mean": float(length.mean()) if length.size else 0.0},
      "lists_shorter_than_k": {str(k): int(((sums.filled[k] < k) & evaluated
                                            & has_list).sum())
                               for k in sums.ks},
      "skipped": skipped,
  }


def write_outputs(report: dict, out: str | os.PathLike,
                  figures: bool = True) -> list[pathlib.Path]:
  """Writes report.json, report.md (and figures) into `out`, all or nothing.

  Everything goes to a temporary folder beside `out`, renamed to `out` at
  the end (an existing audit folder is replaced; a folder holding anything
  but a previous audit is refused with a ConfigError naming --out).
  """
  from fairjax.audit import render  # matplotlib only when writing

  out = pathlib.Path(out)
  if out.exists():
    if not out.is_dir():
      raise ConfigError(f"out: {str(out)!r} exists and is not a folder")
    names = {p.name for p in out.iterdir()}
    if names and "report.json" not in names:
      raise ConfigError(f"out: {str(out)!r} holds other files (not a previous "
                        "audit); choose a new folder")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    with open(tmp / "report.json", "w") as f:
      json.dump(report, f, indent=1)
      f.write("\n")
    pngs = render.figures(report, tmp) if figures else []
    (tmp / "report.md").write_text(render.markdown(report, pngs))
    old = None
    if out.exists():
      old = out.parent / f".{out.name}.old.{os.getpid()}"
      os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return [out / "report.json", out / "report.md"] + [out / p.name for p in pngs]
