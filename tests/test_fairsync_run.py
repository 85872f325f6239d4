"""FairSync job: launcher smoke run, resume, sharded equality, bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import fairsync as fairsync_config
from fairjax.errors import ConfigError
from fairjax import runner
from fairjax.data import requests as requests_data
from fairjax.evaluators import exposure
from fairjax.jobs import fairsync as fairsync_job
from fairjax.methods import fairsync as fairsync_method

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("unconstrained", "FairSync", "k-neighbor", "min-regularizer",
           "centralised")


def run(config, workdir):
  return runner.train_and_evaluate(fairsync_job, config, workdir)


def _launch(workdir, variant="smoke", *extra):
  cmd = [sys.executable, "-m", "launch.fairsync",
         f"--config=configs/fairsync.py:{variant}", f"--workdir={workdir}",
         *extra]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def smoke_run(run_once):
  def make(folder):
    proc = _launch(folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder, proc
  return run_once("fairsync_smoke", make)


@pytest.mark.slow
def test_launcher_writes_summary_and_metrics(smoke_run):
  workdir, proc = smoke_run
  summary = json.loads((workdir / "summary.json").read_text())
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary
  k = summary["k"]
  assert k == 10
  for method in METHODS:
    assert set(summary[method]) == {"esp", f"recall@{k}", f"ndcg@{k}",
                                    f"hr@{k}"}
  assert len(summary["min_exposure"]) == 6
  # m_g chosen so the unconstrained retriever misses (ESP <= 0.6) ...
  assert summary["unconstrained_esp"] <= 0.6
  assert summary["unconstrained"]["esp"] == summary["unconstrained_esp"]
  # ... and FairSync and the centralised re-rank meet every minimum.
  assert summary["FairSync"]["esp"] == 1.0
  assert summary["centralised"]["esp"] == 1.0
  # The centralised re-rank is the accuracy bound among ESP = 1 methods.
  rc = summary["centralised"][f"recall@{k}"]
  for method in ("FairSync", "k-neighbor", "min-regularizer"):
    if summary[method]["esp"] == 1.0:
      assert summary[method][f"recall@{k}"] <= rc + 0.05
  import pandas as pd
  df = pd.read_csv(workdir / "metrics.csv", keep_default_na=False)
  assert set(df.method) == set(METHODS)
  final = df[(df.metric == "exposure")].sort_values("step").groupby(
      ["method", "group"]).value.last()
  # Final exposure sums to K T for every method (every list has K items).
  for method in METHODS:
    assert final[method].sum() == k * summary["num_requests"]
  mins = df[df.metric == "min_exposure"].drop_duplicates("group")
  esp = np.mean(final["FairSync"][list(mins.group)].values >=
                mins.value.values)
  assert esp == summary["FairSync"]["esp"]


@pytest.mark.slow
def test_rerun_resumes(smoke_run):
  workdir, _ = smoke_run
  before = (workdir / "summary.json").read_text()
  proc = _launch(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for method in METHODS:
    assert f"{method}: done earlier" in proc.stderr
  assert (workdir / "summary.json").read_text() == before


@pytest.mark.slow
def test_sharded_library_run_equals_single_device(smoke_run, tmp_path):
  workdir, _ = smoke_run
  config = fairsync_config.get_config("smoke")
  config.methods = "unconstrained,FairSync"
  config.shards = 2
  summary = run(config, str(tmp_path))
  single = json.loads((workdir / "summary.json").read_text())
  for method in ("unconstrained", "FairSync"):
    assert summary[method] == single[method]
  assert summary["min_exposure"] == single["min_exposure"]


@pytest.mark.slow
def test_changed_setting_reserves_only_that_method(smoke_run, tmp_path,
                                                   capsys):
  workdir, _ = smoke_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  config = fairsync_config.get_config("smoke")
  config.eta = 0.07
  summary = run(config, str(copy))
  err = capsys.readouterr().err
  assert "FairSync: settings changed" in err
  for method in ("unconstrained", "k-neighbor", "min-regularizer",
                 "centralised"):
    assert f"{method}: done earlier" in err
  assert summary["eta"] == 0.07


def test_split_per_user_matches_brute_force():
  rng = np.random.default_rng(0)
  user = rng.integers(0, 7, 60).astype(np.int32)
  key = rng.random(60)
  got = requests_data.split_per_user(user, key, 7, 0.8)
  for u in range(7):
    rows = np.nonzero(user == u)[0]
    if not rows.size:
      continue
    rows = rows[np.argsort(key[rows])]
    n_train = int(np.clip(round(0.8 * rows.size), 1, max(rows.size - 1, 1)))
    want = np.zeros(60, bool)
    want[rows[:n_train]] = True
    np.testing.assert_array_equal(got[rows], want[rows])


def test_auto_min_exposure_leaves_unconstrained_esp_at_most_target():
  rng = np.random.default_rng(1)
  sizes = rng.integers(1, 50, 18)
  e0 = rng.multinomial(50 * 300, sizes / sizes.sum()).astype(float)
  m, f, base = fairsync_method.choose_min_exposure(e0, 50, 300, sizes, 0.0, 0.25, 0.6)
  np.testing.assert_allclose(base, np.minimum(50 * 300 / 18,
                                              0.25 * 300 * sizes))
  np.testing.assert_allclose(m, f * base, rtol=1e-6)
  esp = np.mean(e0 >= m)
  assert esp <= 0.6
  # f is the smallest such fraction: slightly smaller lets one more group in.
  assert np.mean(e0 >= 0.999 * m) > 0.6 or f == 1.0
  assert m.sum() <= 50 * 300


def test_accuracy_matches_python_loop():
  rng = np.random.default_rng(2)
  t, n, k = 13, 40, 5
  ids = np.stack([rng.permutation(n)[:k] for _ in range(t)]).astype(np.int32)
  ids[0, -2:] = ids[3, -1:] = -1  # empty slots (exclusion): never hits
  targets = [rng.choice(n, rng.integers(0, 8), replace=False)
             for _ in range(t)]
  targets[0] = np.union1d(targets[0], [n - 1])  # what id -1 would wrap to
  ptr = np.concatenate([[0], np.cumsum([len(x) for x in targets])])
  items = np.concatenate(targets).astype(np.int32)
  got = exposure.accuracy(ids, ptr, items, n, k, max_cells=3 * n)  # 3-row blocks
  rec, ndcg, hr = [], [], []
  for row, tgt in zip(ids, targets):
    if not len(tgt):
      continue
    hit = np.isin(row, tgt)
    rec.append(hit.sum() / len(tgt))
    dcg = sum(1 / np.log2(r + 2) for r in range(k) if hit[r])
    idcg = sum(1 / np.log2(r + 2) for r in range(min(k, len(tgt))))
    ndcg.append(dcg / idcg)
    hr.append(float(hit.any()))
  np.testing.assert_allclose(got[f"recall@{k}"], np.mean(rec), rtol=1e-5)
  np.testing.assert_allclose(got[f"ndcg@{k}"], np.mean(ndcg), rtol=1e-5)
  np.testing.assert_allclose(got[f"hr@{k}"], np.mean(hr), rtol=1e-5)


@pytest.mark.slow
def test_infeasible_minimums_one_line_error_from_launcher(tmp_path):
  proc = _launch(tmp_path / "w", "smoke,exposure_frac=100")
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("error: "), proc.stderr
  assert "infeasible exposure minimums" in lines[-1]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "summary.json").exists()


@pytest.mark.parametrize("variant,needle", [
    ("smoke,k=1000", "field 'k': k=1000 is larger than the catalog"),
    ("smoke,batch_size=500", "field 'batch_size': B=500 is larger than the number"),
    ("smoke,exposure_frac=100", "infeasible exposure minimums"),
])
def test_bad_input_raises_config_error(tmp_path, variant, needle):
  config = fairsync_config.get_config(variant)
  with pytest.raises(ConfigError) as err:
    run(config, str(tmp_path))
  assert needle in str(err.value) and "\n" not in str(err.value)
  assert not (tmp_path / "summary.json").exists()


def test_bad_fields_raise_config_error(tmp_path):
  config = fairsync_config.get_config("smoke")
  config.methods = "unconstrained,FairSink"
  with pytest.raises(ConfigError, match="FairSink"):
    run(config, str(tmp_path))
  config = fairsync_config.get_config("smoke")
  config.shards = 64
  with pytest.raises(ConfigError, match="shards"):
    run(config, str(tmp_path))
  config = fairsync_config.get_config("smoke")
  config.model = "lightgcn"
  with pytest.raises(ConfigError, match="field 'model'"):
    run(config, str(tmp_path))


def test_ml1m_ts_protocol_later_interactions_are_targets(data_dir):
  from fairjax.data.registry import load_dataset
  config = fairsync_config.get_config("dataset=ml1m-ts")
  data = requests_data.prepare_interactions(config, str(data_dir))
  ds = load_dataset("ml1m-ts", data_dir)
  assert data.request_users.size == ds.num_users == 2999
  assert data.train_user.size + data.target_items.size == ds.num_interactions
  first_target = []
  for t in range(0, data.request_users.size, 97):  # a sample of requests
    u = data.request_users[t]
    tgt = data.target_items[data.target_ptr[t]:data.target_ptr[t + 1]]
    ts = dict(zip(ds.item[ds.user == u], ds.timestamp[ds.user == u]))
    train = data.train_item[data.train_user == u]
    assert len(tgt) == len(ts) - round(0.8 * len(ts))
    assert min(ts[i] for i in tgt) >= max(ts[i] for i in train)
    first_target.append(min(ts[i] for i in tgt))
  assert first_target == sorted(first_target)  # requests in time order
  # The exclusion rows are exactly each request user's training items.
  ex = requests_data.training_exclusion(data.train_user, data.train_item,
                            data.request_users, data.num_users)
  for t in range(0, data.request_users.size, 211):
    train = data.train_item[data.train_user == data.request_users[t]]
    row = ex[t][ex[t] >= 0]
    assert sorted(row) == sorted(train) and (ex[t, row.size:] == -1).all()


def test_training_exclusion_matches_python_loop():
  rng = np.random.default_rng(4)
  user = rng.integers(0, 9, 70).astype(np.int32)
  item = rng.integers(0, 30, 70).astype(np.int32)
  req = np.array([3, 0, 8, 5, 7], np.int32)
  user[user == 7] = 6  # request user 7 has no training item
  got = requests_data.training_exclusion(user, item, req, 9)
  want = [list(item[user == u]) for u in req]
  assert got.shape == (5, max(len(w) for w in want)) and got.dtype == np.int32
  for row, w in zip(got, want):
    assert list(row[:len(w)]) == w and (row[len(w):] == -1).all()


def _tiny_interactions(num_users=48, num_items=60, seed=0):
  """A small ML-1M-like cut (3 item groups, random 80/20 split per user)."""
  rng = np.random.default_rng(seed)
  users, items = [], []
  for u in range(num_users):
    cnt = int(rng.integers(6, 20))
    users += [u] * cnt
    items += list(rng.choice(num_items, cnt, replace=False))
  user, item = np.array(users, np.int32), np.array(items, np.int32)
  is_train = requests_data.split_per_user(user, rng.random(user.size), num_users, 0.8)
  tu, ti = user[~is_train], item[~is_train]
  order = rng.permutation(num_users).astype(np.int32)
  pos = np.empty(num_users, np.int64)
  pos[order] = np.arange(num_users)
  ptr, tgt = requests_data._csr(pos[tu], ti, num_users)
  group = (np.arange(num_items) % 3).astype(np.int32)
  return requests_data.Interactions("ml1m", num_users, num_items, user[is_train],
                        item[is_train], order, ptr, tgt, group,
                        ("a", "b", "c"))


@pytest.mark.slow
def test_run_excludes_training_items_for_every_method(tmp_path, monkeypatch):
  data = _tiny_interactions()
  monkeypatch.setattr(requests_data, "prepare_interactions", lambda *a: data)
  served = {}
  real_serve = fairsync_method.serve

  def spy(method, *args, **kw):
    res = real_serve(method, *args, **kw)
    served[method] = (res, kw.get("exclude"))
    return res

  monkeypatch.setattr(fairsync_method, "serve", spy)
  config = fairsync_config.get_config(
      "dataset=ml1m,k=5,batch_size=8,epochs=2,exposure_frac=0.5")
  assert config.exclude_train_items  # the default
  summary = run(config, str(tmp_path))
  assert summary["exclude_train_items"] is True
  assert set(served) == set(METHODS)
  train_sets = [set(data.train_item[data.train_user == u])
                for u in data.request_users]
  for method, (res, ex) in served.items():
    assert ex is not None and ex.shape[0] == data.request_users.size
    for row, train in zip(res.item_ids, train_sets):
      assert not train & set(row.tolist()), method
  with_excl = {m: served[m][0].item_ids for m in METHODS}
  unc_recall = summary["unconstrained"]["recall@5"]

  # exclude_train_items=False: the whole catalog (training items served),
  # same retriever (restored), every method served again.
  served.clear()
  config.exclude_train_items = False
  summary_all = run(config, str(tmp_path))
  assert summary_all["exclude_train_items"] is False
  assert set(served) == set(METHODS)
  assert all(ex is None for _, ex in served.values())
  ids = served["unconstrained"][0].item_ids
  assert any(train & set(row.tolist())
             for row, train in zip(ids, train_sets))
  assert not np.array_equal(ids, with_excl["unconstrained"])
  # Training items are never targets here, so excluding them can only move
  # targets up: unconstrained recall is at least the unmasked one.
  assert unc_recall >= summary_all["unconstrained"]["recall@5"]
