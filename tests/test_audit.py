"""launch.audit's library (fairjax.audit): figures against a brute-force
reference written from the textbook formulas on the raw files, the
row-order property, formats, and every bad input (issue 15)."""

import csv
import json
import math
import pathlib

import numpy as np
import pytest

from fairjax.audit import core, export, report as rep, synthetic
from fairjax.errors import ConfigError, DataError

BLOCK = 128  # users per block: several blocks, one compiled shape


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("syn")
  return synthetic.write_synthetic(d, num_users=300, num_items=60, k=20,
                                   seed=3)


def _options(f, **kw):
  base = dict(recs=str(f["recs"]), test=str(f["test"]), users=str(f["users"]),
              items=str(f["items"]), user_attrs=("gender",),
              item_attrs=("genre",), ks=(10, 20), block_users=BLOCK,
              block_bytes=4096, quiet=True)
  base.update(kw)
  return core.Options(**base)


def _rows(path):
  with open(path) as fh:
    r = list(csv.reader(fh, delimiter="\t"))
  return [c.split(":")[0] for c in r[0]], r[1:]


def _reference(f, ks=(10, 20)):
  """Textbook figures from the raw files (plain Python, no fairjax code)."""
  _, recs = _rows(f["recs"])
  _, test = _rows(f["test"])
  _, users = _rows(f["users"])
  _, items = _rows(f["items"])
  lists, tests = {}, {}
  for u, i, r in recs:
    lists.setdefault(u, {})[int(float(r))] = i
  for u, i in test:
    tests.setdefault(u, set()).add(i)
  gender = {u: g for u, g, _ in users}
  genre = {i: g.split()[0] for i, g in items}
  out = {"per_user": {}, "exposure": {}, "cells": {}}
  for k in ks:
    per = {}
    slots = {}
    cell_sum, cell_n = {}, {}
    for u, t in tests.items():
      ranked = [lists.get(u, {}).get(r) for r in range(1, k + 1)]
      hits = [i in t for i in ranked]
      h = sum(hits)
      dcg = sum(1 / math.log2(r + 2) for r, x in enumerate(hits) if x)
      idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
      rec, prec = h / len(t), h / k
      per[u] = dict(recall=rec, precision=prec, ndcg=dcg / idcg,
                    hr=float(h > 0),
                    f1=2 * prec * rec / (prec + rec) if h else 0.0)
      for i in ranked:
        if i is not None:
          slots[genre[i]] = slots.get(genre[i], 0) + 1
      for j in {genre[i] for i in t}:
        tj = {i for i in t if genre[i] == j}
        c = (gender[u], j)
        cell_sum[c] = cell_sum.get(c, 0) + len(set(ranked) & tj) / len(tj)
        cell_n[c] = cell_n.get(c, 0) + 1
    out["per_user"][k] = per
    total = sum(slots.values())
    out["exposure"][k] = {g: n / total for g, n in slots.items()}
    out["cells"][k] = {c: cell_sum[c] / cell_n[c] for c in cell_sum}
  out["gender"] = gender
  return out


@pytest.fixture(scope="module")
def base_report(files):
  return core.audit(_options(files))


def test_report_matches_textbook_reference(files, base_report):
  ref = _reference(files)
  r = base_report
  assert r["input"]["users_evaluated"] == len(ref["per_user"][10])
  for k in (10, 20):
    per = ref["per_user"][k]
    for m in ("recall", "precision", "ndcg", "hr", "f1"):
      want = np.mean([v[m] for v in per.values()])
      assert r["overall"][f"{m}@{k}"] == pytest.approx(want, abs=1e-6)
      by = {}
      for u, v in per.items():
        by.setdefault(ref["gender"][u], []).append(v[m])
      groups = r["user"]["gender"]["groups"]
      for g, vals in by.items():
        assert groups[g][f"{m}@{k}"] == pytest.approx(np.mean(vals), abs=1e-6)
        assert groups[g]["n_users"] == len(vals)
      means = [np.mean(v) for v in by.values()]
      assert r["user"]["gender"]["gap"][f"{m}@{k}"] == pytest.approx(
          max(means) - min(means), abs=1e-6)
    for g, share in ref["exposure"][k].items():
      assert r["item"]["genre"][f"exposure@{k}"][g] == pytest.approx(share)
    cells = r["cells"]["gender"]["genre"]
    for (ug, ig), want in ref["cells"][k].items():
      a, j = cells["user_groups"].index(ug), cells["item_groups"].index(ig)
      assert cells[f"recall@{k}"][a][j] == pytest.approx(want, abs=1e-6)
  # the contract keys of the issue
  g = r["user"]["gender"]
  assert set(g["groups"]) == {"M", "F"}
  assert g["gap"]["ndcg@20"] > 0  # the synthetic F group gets fewer hits
  assert r["item"]["genre"]["exposure"] == r["item"]["genre"]["exposure@20"]
  assert sum(v for v in r["item"]["genre"]["exposure"].values()) == (
      pytest.approx(1.0))


def _strip(r):
  r = json.loads(json.dumps(r))
  r["input"].pop("seconds")
  r["input"].pop("files")
  return r


def _shuffled_copy(path, dst, rng):
  lines = pathlib.Path(path).read_text().splitlines(keepends=True)
  body = lines[1:]
  rng.shuffle(body)
  dst.write_text(lines[0] + "".join(body))
  return dst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_order_does_not_change_the_report(files, base_report, tmp_path,
                                              seed):
  rng = np.random.default_rng(seed)
  shuffled = {n: _shuffled_copy(p, tmp_path / p.name, rng)
              for n, p in files.items()}
  assert _strip(core.audit(_options(shuffled))) == _strip(base_report)


def _to_csv(path, dst, rename):
  names, rows = _rows(path)
  names = [rename.get(n, n) for n in names]
  with open(dst, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(names)
    for r in rows:
      w.writerow([c.replace(" ", "|") for c in r])
  return dst


def test_csv_and_score_files_give_the_same_report(files, base_report,
                                                  tmp_path):
  ren = {"user_id": "user", "item_id": "item"}
  f = {n: _to_csv(p, tmp_path / (p.stem + ".csv"), ren)
       for n, p in files.items()}
  names, rows = _rows(files["recs"])
  rng = np.random.default_rng(0)
  with open(tmp_path / "scores.csv", "w") as fh:  # score = 1 / rank, shuffled
    fh.write("user,item,score\n")
    for i in rng.permutation(len(rows)):
      u, it, r = rows[i]
      fh.write(f"{u},{it},{1.0 / float(r)!r}\n")
  assert _strip(core.audit(_options(f))) == _strip(base_report)
  f["recs"] = tmp_path / "scores.csv"
  got = _strip(core.audit(_options(f)))
  assert got["input"].pop("recs_mode") == "score"
  want = _strip(base_report)
  want["input"].pop("recs_mode")
  assert got == want


def test_multi_valued_items_each_group(files):
  r = core.audit(_options(files, multi_value="each", ks=(20,)))
  _, items = _rows(files["items"])
  _, recs = _rows(files["recs"])
  genres = {i: set(g.split()) for i, g in items}
  total = len(recs)  # every list has 20 items
  for g, share in r["item"]["genre"]["exposure"].items():
    want = sum(g in genres[i] for _, i, _ in recs) / total
    assert share == pytest.approx(want)
  assert sum(r["item"]["genre"]["exposure"].values()) > 1.0


def test_min_exposure_weights_and_elliot_metrics(files):
  w = json.dumps({"gender": {"M": {"interact": 1.0},
                             "F": {"interact": 2.0}}})
  r = core.audit(_options(files, ks=(20,), min_exposure="g1:0.3",
                          weights=w))
  sec = r["item"]["genre"]
  share = sec["exposure"]["g1"]
  assert sec["esp@20"] == pytest.approx(np.mean(
      [sec["exposure"][g] >= (0.3 if g == "g1" else 0.0) for g in
       sec["exposure"]]))
  assert sec["satisfied@20"]["g1"] == (share >= 0.3)
  groups = r["user"]["gender"]["groups"]
  hits_m = groups["M"]["precision@20"] * 20  # mean hits@20
  assert groups["M"]["utility@20"] == pytest.approx(hits_m, abs=1e-5)
  assert groups["F"]["utility@20"] == pytest.approx(
      2 * groups["F"]["precision@20"] * 20, abs=1e-5)
  u = [groups["M"]["utility@20"], groups["F"]["utility@20"]]
  p = np.array(u) / sum(u)
  assert r["user"]["gender"]["der"]["der@20"] == pytest.approx(
      2 * np.sum((p - 0.5) ** 2), abs=1e-6)
  m = [groups[g]["ndcg@20"] for g in ("M", "F")]
  assert r["user"]["gender"]["mad"]["ndcg@20"] == pytest.approx(
      abs(m[0] - m[1]))
  # REO from its definition on the raw files (first genre)
  _, recs = _rows(files["recs"])
  _, test = _rows(files["test"])
  _, items = _rows(files["items"])
  genre = {i: g.split()[0] for i, g in items}
  rec = {(u, i) for u, i, _ in recs}
  num, den = {}, {}
  for u, i in test:
    den[genre[i]] = den.get(genre[i], 0) + 1
    num[genre[i]] = num.get(genre[i], 0) + ((u, i) in rec)
  pr = np.array([num[g] / den[g] for g in den])
  assert sec["reo@20"] == pytest.approx(pr.std() / pr.mean(), abs=1e-9)
  assert 0 <= r["items"]["gini@20"] <= 1
  assert 0 <= r["items"]["aplt@20"] <= 1


def test_welch_matches_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  a, b = rng.normal(0.3, 0.2, 40), rng.normal(0.25, 0.05, 90)
  got = rep.welch_test(a.mean(), a.var(ddof=1), a.size, b.mean(),
                       b.var(ddof=1), b.size)
  want = stats.ttest_ind(a, b, equal_var=False)
  assert got["t"] == pytest.approx(want.statistic, rel=1e-9)
  assert got["p_value"] == pytest.approx(want.pvalue, rel=1e-6)


# ---- bad input: file, line and field named; nothing written -------------


def _edit(files, tmp_path, name, fn):
  """A copy of the inputs with file `name`'s lines passed through fn."""
  out = dict(files)
  lines = pathlib.Path(files[name]).read_text().splitlines()
  dst = tmp_path / pathlib.Path(files[name]).name
  dst.write_text("\n".join(fn(lines)) + "\n")
  out[name] = dst
  return out


def _line_of(lines, pred):
  return next(n + 1 for n, l in enumerate(lines) if pred(l.split("\t")))


def _with_item(line, item):
  u, _, r = line.split("\t")
  return f"{u}\t{item}\t{r}"


CASES = {
    # name: (file, edit, field, expected line: a predicate on the edited file)
    "unknown_item": ("recs", lambda ls: ls[:5] + [_with_item(ls[5], "777777")]
                     + ls[6:], "item_id", lambda c: c[1:2] == ["777777"]),
    "unknown_user": ("recs", lambda ls: ls + ["5555555\t100001\t1"],
                     "user_id", lambda c: c[0] == "5555555"),
    "duplicate_rank": ("recs", lambda ls: ls + [ls[1]], "rank", None),
    "rank_gap": ("recs", lambda ls: [l for l in ls if not (
        l.startswith("1000007\t") and l.endswith("\t3"))], "rank",
                 lambda c: c[0] == "1000007" and c[2] == "20"),
    "rank_not_integer": ("recs", lambda ls: ls[:3] + [
        ls[3].rsplit("\t", 1)[0] + "\t1.5"] + ls[4:], "rank",
                         lambda c: c[-1:] == ["1.5"]),
    "no_test_items": ("test", lambda ls: [l for l in ls if not
                                          l.startswith("1000009\t")],
                      "user_id", None),
    "mixed_separators": ("recs", lambda ls: ls[:7] + [
        ls[7].replace("\t", ",")] + ls[8:], None, lambda c: len(c) == 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_line_field(files, tmp_path, case):
  name, fn, field, pred = CASES[case]
  f = _edit(files, tmp_path, name, fn)
  with pytest.raises(DataError) as e:
    core.audit(_options(f))
  err = e.value
  assert err.line is not None, str(err)
  if field is not None:
    assert err.field == field, str(err)
  lines = pathlib.Path(f[name] if case != "no_test_items" else
                       f["recs"]).read_text().splitlines()
  if pred is not None:
    assert err.line == _line_of(lines, pred), str(err)
  if case == "duplicate_rank":
    assert err.line == len(lines) and "twice" in str(err)
    assert "first on line 2" in str(err)
  if case == "no_test_items":
    assert err.line == _line_of(lines, lambda c: c[0] == "1000009")
    assert err.path == str(f["recs"])
  else:
    assert err.path == str(f[name])


def test_attribute_and_empty_file_errors(files, tmp_path):
  with pytest.raises(DataError) as e:
    core.audit(_options(files, user_attrs=("income",)))
  assert e.value.field == "income" and e.value.line == 1
  assert e.value.path == str(files["users"])
  empty = tmp_path / "empty.inter"
  empty.write_text("")
  with pytest.raises(DataError, match="empty file"):
    core.audit(_options({**files, "recs": empty}))
  only_header = tmp_path / "head.inter"
  only_header.write_text("user_id:token\titem_id:token\trank:float\n")
  with pytest.raises(DataError, match="no data rows"):
    core.audit(_options({**files, "recs": only_header}))
  comma = tmp_path / "comma.inter"
  comma.write_text(pathlib.Path(files["test"]).read_text().replace("\t", ","))
  with pytest.raises(DataError, match="tab-separated"):
    core.audit(_options({**files, "test": comma}))
  with pytest.raises(ConfigError, match="min_exposure"):
    core.audit(_options(files, min_exposure="nosuchgenre:0.1"))


def test_skip_counts_and_reports(files, tmp_path):
  def fn(ls):
    ls = ls + ["5555555\t100001\t1"]  # unknown user: row dropped
    ls = [l for l in ls if not (l.startswith("1000007\t") and
                                l.endswith("\t3"))]  # gap: list dropped
    return ls + [ls[1]]  # repeated rank: list dropped
  f = _edit(files, tmp_path, "recs", fn)
  f = _edit(f, tmp_path, "test", lambda ls: [
      l for l in ls if not l.startswith("1000009\t")])
  r = core.audit(_options(f, on_bad="skip"))
  sk = r["input"]["skipped"]
  assert sk["recs"] == {"unknown_user": 1, "rank_gap": 2}
  assert sk["users"] == {"users_without_test": 1}
  assert r["overall"]["n_users"] == 300 - 1 - 2


def test_outputs_all_or_nothing(files, base_report, tmp_path, monkeypatch):
  from fairjax.audit import render
  out = tmp_path / "out"
  paths = core.write_outputs(base_report, out, figures=True)
  assert (out / "report.json").exists() and (out / "report.md").exists()
  assert any(p.suffix == ".png" for p in paths)
  assert json.loads((out / "report.json").read_text()) == base_report
  before = sorted(p.name for p in out.iterdir())

  def boom(*a, **k):
    raise RuntimeError("disk full")
  monkeypatch.setattr(render, "markdown", boom)
  with pytest.raises(RuntimeError):
    core.write_outputs(base_report, out)
  assert sorted(p.name for p in out.iterdir()) == before  # old audit intact
  with pytest.raises(RuntimeError):
    core.write_outputs(base_report, tmp_path / "new")
  assert not (tmp_path / "new").exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
  other = tmp_path / "other"
  other.mkdir()
  (other / "keep.txt").write_text("x")
  with pytest.raises(ConfigError, match="out"):
    core.write_outputs(base_report, other)


def test_agreement_table_shape():
  rep_ = {"overall": {"ndcg@20": 0.5, "recall@20": 0.4, "precision@20": 0.1},
          "cells": {"gender": {"genre": {
              "user_groups": ["M", "F"], "item_groups": ["a"],
              "recall@20": [[0.3], [0.2]], "cv@20": 0.1, "min@20": 0.2,
              "ucv@20": 0.3, "icv@20": 0.0}}}}
  summ = {"test": {"BPR": {"ndcg@20": 0.5, "recall@20": 0.4,
                           "precision@20": 0.1, "cv@20": 0.1, "min@20": 0.2,
                           "ucv@20": 0.3, "icv@20": 0.0}},
          "cells": {"BPR": {"user_groups": ["F", "M"], "item_groups": ["a"],
                            "recall@20": [[0.2], [0.3]]}}}
  rows = export.agreement(rep_, summ, "BPR")
  assert all(a == b for _, a, b in rows) and len(rows) == 9


def test_other_code_paths_agree(files, base_report, monkeypatch):
  """Binary-search matching (users with > T_CAP test items) and the
  deferred metrics call (users with > P_MAIN unmatched test items) give the
  same report as the main paths."""
  from fairjax.audit import compute
  monkeypatch.setattr(compute, "T_CAP", 3)
  monkeypatch.setattr(compute, "P_MAIN", 2)
  got = core.audit(_options(files, block_bytes=1 << 20))
  assert _strip(got) == _strip(base_report)
