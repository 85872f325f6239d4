"""ITFR end to end: the jitted step against a cell-by-cell reference of the
official procedure, the launcher on tiny synthetic data, resume, bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import itfr as itfr_config
from fairjax import checkpoint as ckpt_lib
from fairjax import models as models_lib
from fairjax.data import registry
from fairjax.data import sampling
from fairjax.errors import ConfigError, DataError
from fairjax.methods import itfr as M
from fairjax import runner
from fairjax.data import cells as cells_data
from fairjax.jobs import itfr as itfr_job
from fairjax.ops import gram_coupling
from fairjax.ops import group_sam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_data():
  rng = np.random.default_rng(0)
  u_n, i_n = 8, 7
  ug = np.array([0, 1] * 4, np.int32)
  ig = np.array([0, 1, 0, 1, 0, 1, 1], np.int32)
  pairs = rng.permutation(u_n * i_n)[:34]
  users, items = (pairs // i_n).astype(np.int32), (pairs % i_n).astype(np.int32)
  tr, te = slice(0, 26), slice(26, 34)
  cells = ug[users[tr]] * 2 + ig[items[tr]]
  return M.ItfrData(
      name="tiny", num_users=u_n, num_items=i_n, user_group=ug, item_group=ig,
      user_group_names=("a0", "a1"), item_group_names=("j0", "j1"),
      train_user=users[tr], train_item=items[tr], train_cell=cells,
      valid_user=users[te][:4], valid_item=items[te][:4],
      test_user=users[te][4:], test_item=items[te][4:],
      cell_counts=np.bincount(cells, minlength=4), stats={})


def _config(**kw):
  c = itfr_config.get_config("smoke")
  c.batch_size = 10  # 3 steps per epoch, the last one padded
  c.itfr.eta = 0.5
  c.itfr.rho = 0.3
  c.itfr.tau = 0.5
  c.lr = 0.05
  c.lightgcn_init_std = 0.1
  c.init_std = 0.1
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _reference(model, params, data, config, epochs, spec):
  """ITFR as the official code runs it: cell after cell, theta restored."""
  tau = config.itfr.tau if spec.cosine else 1.0
  rho = config.itfr.rho if spec.sam else 0.0
  eta, gamma, b = config.itfr.eta, config.itfr.gamma, config.batch_size
  g_n = data.num_cells
  tx = optax.adam(config.lr)
  opt = tx.init(params)
  q = np.full(g_n, 1.0 / g_n)
  zeros = jax.tree.map(jnp.zeros_like, params)
  c_cur, c_prev = [zeros] * g_n, None
  loss_sum, count_sum, lbar = np.zeros(g_n), np.zeros(g_n), None
  seen = jnp.asarray(data.seen())
  step = 0

  def flat(t):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])

  def cell_loss(p, g, users, cand, valid, cell):
    s = models_lib.pair_scores(model, p, users, cand, tau=tau)
    rows = jax.nn.softplus(s[:, 1] - s[:, 0])
    m = valid & (cell == g)
    return jnp.sum(jnp.where(m, rows, 0.0)) / jnp.maximum(jnp.sum(m), 1)

  vg_jit = jax.jit(jax.value_and_grad(cell_loss))

  for e in range(epochs):
    batches = M.epoch_batches(data, b, (0, e))
    rng_e = jax.random.fold_in(jax.random.key(1), e)
    for t in range(batches["user"].shape[0]):
      bt = {k: jnp.asarray(v[t]) for k, v in batches.items()}
      neg = sampling.sample_negatives(jax.random.fold_in(rng_e, step), seen,
                                      bt["user"], 1)[:, 0]
      cand = jnp.stack([bt["item"], neg], 1)

      def vg(p, g):
        return vg_jit(p, g, bt["user"], cand, bt["valid"], bt["cell"])

      lsa, hs = np.zeros(g_n), [None] * g_n
      counts = np.array([int(np.sum(np.asarray(bt["valid"]) &
                                    (np.asarray(bt["cell"]) == g)))
                         for g in range(g_n)])
      for g in range(g_n):
        if counts[g] == 0:
          continue
        _, grad = vg(params, g)
        c_cur[g] = jax.tree.map(lambda c, x: c + counts[g] * x, c_cur[g], grad)
        norm = np.linalg.norm(flat(grad))
        pert = jax.tree.map(lambda p, x: p + rho * x / (norm + 1e-12), params,
                            grad)
        l, hs[g] = vg(pert, g)
        lsa[g] = float(l)
        loss_sum[g] += counts[g] * lsa[g]
        count_sum[g] += counts[g]
      if spec.weighting == "clb" and np.all(counts > 0):
        r = np.eye(g_n)
        if e > 0:
          for i in range(g_n):
            for j in range(g_n):
              if i != j:
                hv, cv = flat(hs[i]), flat(c_prev[j])
                r[i, j] = hv @ cv / max(np.linalg.norm(hv) *
                                        np.linalg.norm(cv), 1e-12)
        gl = np.sqrt(lsa)[:, None]
        if e == 0:
          m = gl @ gl.T * r
        else:
          m = gl @ np.sqrt(lbar)[None, :]
          m[np.diag_indices(g_n)] = lsa
          m = m * r
        w = lsa ** gamma / np.sum(lsa ** gamma)
        a = eta * m @ w
        q = q * np.exp(a - a.max())
        q = np.maximum(q / q.sum(), 1e-5)
      present = [g for g in range(g_n) if hs[g] is not None]
      total = jax.tree.map(lambda *xs: sum(q[g] * x for g, x in zip(present, xs)),
                           *[hs[g] for g in present])
      upd, opt = tx.update(total, opt, params)
      params = optax.apply_updates(params, upd)
      step += 1
    lbar = loss_sum / np.maximum(count_sum, 1)
    c_prev, c_cur = c_cur, [zeros] * g_n
    loss_sum, count_sum = np.zeros(g_n), np.zeros(g_n)
  return params, q


@pytest.mark.parametrize("model_name,method", [("mf", "ITFR"),
                                               ("lightgcn", "ITFR"),
                                               ("lightgcn-coo", "ITFR"),
                                               ("lightgcn-blocked", "ITFR"),
                                               ("lightgcn-blocked-jax", "ITFR"),
                                               ("lightgcn-dense", "ITFR")])
def test_step_matches_cell_by_cell_reference(model_name, method, monkeypatch):
  """MF: row path; LightGCN: row path with the Gram matrix (dense bipartite
  or COO adjacency; the Gram products native where they load); lightgcn-
  blocked: the Gram product by cell blocks, with capacities that some
  batches fit and some overflow (natively: blocks beyond the kept-block
  budget read again), -jax: XLA's static blocks; lightgcn-dense: the vmap
  over cells (graphs above GRAM_MAX_NODES)."""
  layout = "auto"
  caps = None
  if model_name == "lightgcn-blocked-jax":
    monkeypatch.setattr(M, "gram_coupling", lambda gram, g, c, impl:
                        gram_coupling.gram_coupling(gram, g, c, "jax"))
    model_name = "lightgcn-blocked"
  if model_name == "lightgcn-blocked":
    caps = (9, 9, 9, 9)  # 3 examples per cell and batch
    monkeypatch.setattr(group_sam, "cell_capacities", lambda *a: caps)
    over = []
    for e in range(2):
      b = M.epoch_batches(_tiny_data(), 10, (0, e))
      for cell, valid in zip(b["cell"], b["valid"]):
        over.append(np.any(3 * np.bincount(cell[valid], minlength=4) > 9))
    assert any(over) and not all(over)
    model_name = "lightgcn"
  if model_name == "lightgcn-dense":
    from fairjax.models import lightgcn
    monkeypatch.setattr(lightgcn, "GRAM_MAX_NODES", 0)
    model_name = "lightgcn"
  if model_name == "lightgcn-coo":
    model_name, layout = "lightgcn", "sparse"
  data = _tiny_data()
  config = _config(model=model_name)
  config.lightgcn_layout = layout
  spec = M.METHODS[method]
  model = M.create_model(config, data, spec.cosine)
  tx = M.make_optimizer(config)
  state = M.init_state(model, tx, spec, data, jax.random.key(0))
  start = jax.tree.map(lambda x: np.array(x, copy=True), state.params)
  epoch_fn = M.make_epoch_fn(model, tx, spec, config, data)
  ctx = M.make_context(data, model, spec)
  assert ("gram" in ctx) == (M._backend_class(model) is M._Graph)
  if M._backend_class(model) is M._Graph:  # tiny batches: dense product
    assert M._Graph(model, spec, config, data).capacities == caps
  for e in range(2):
    state, metrics = epoch_fn(state, M.epoch_batches(data, 10, (0, e)),
                              jax.random.fold_in(jax.random.key(1), e), ctx)
  assert float(jnp.sum(metrics["weights_moved"])) > 0
  want_p, want_q = _reference(model, jax.tree.map(jnp.asarray, start), data,
                              config, 2, spec)
  np.testing.assert_allclose(np.asarray(state.aux["q"]), want_q, rtol=2e-4,
                             atol=1e-7)
  assert np.max(np.abs(want_q - 0.25)) > 1e-3  # the weights moved
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_p)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_default_path_tracks_the_reference_path():
  """The native cosines and the closed-form gradient (default) against the
  jnp cosines and autodiff (`make_epoch_fn(reference=True)`, the rounding
  of earlier versions): two epochs on tiny data agree to float32 rounding."""
  data = _tiny_data()
  config = _config()
  spec = M.METHODS["ITFR"]
  model = M.create_model(config, data, spec.cosine)
  tx = M.make_optimizer(config)
  ctx = M.make_context(data, model, spec)
  out = []
  for reference in (False, True):
    state = M.init_state(model, tx, spec, data, jax.random.key(0))
    epoch_fn = M.make_epoch_fn(model, tx, spec, config, data,
                               reference=reference)
    for e in range(2):
      state, _ = epoch_fn(state, M.epoch_batches(data, 10, (0, e)),
                          jax.random.fold_in(jax.random.key(1), e), ctx)
    out.append(state)
  a, b = out
  np.testing.assert_allclose(a.aux["q"], b.aux["q"], rtol=1e-5, atol=1e-7)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_bench_interleaves_the_epochs_and_reports_the_ratios(monkeypatch):
  from fairjax.bench import itfr as bench

  def small(get_config, data_dir, model="mf"):
    c = get_config(f"dataset=synthetic,model={model}")
    c.synthetic.num_users, c.synthetic.num_items = 300, 120
    c.batch_size = 64
    return c

  monkeypatch.setattr(bench, "_config", small)
  order, took = [], {}
  run = bench._Epochs.run

  def timed(self, e):
    order.append((e, self.label))
    took[e, self.label] = run(self, e)
    return took[e, self.label]

  monkeypatch.setattr(bench._Epochs, "run", timed)
  out = bench.run(itfr_config.get_config, repeats=2)
  # Epoch e of every run before epoch e + 1 of any.
  assert order == [(e, name) for e in range(3) for name in
                   ("BPR", "ITFR", "ITFR (reference path)")]
  assert out["itfr_over_bpr"] == pytest.approx(
      out["itfr_seconds_per_epoch"] / out["bpr_seconds_per_epoch"])
  assert out["reference_over_bpr"] == pytest.approx(
      out["reference_seconds_per_epoch"] / out["bpr_seconds_per_epoch"])
  assert out["epochs_compared"] == 3
  assert 0 <= out["reference_norm_rel_param_diff"] < 1e-4
  assert out["itfr_over_bpr_by_epoch"] == pytest.approx(
      [took[e, "ITFR"] / took[e, "BPR"] for e in (1, 2)])


def _drop_cell_f0(ds):
  """Removes every (F, first genre 0) interaction: an empty cell."""
  first = np.asarray(ds.item_first_genre)
  g = np.asarray(ds.user_attrs["gender"])
  return ds.subset(~((g[ds.user] == 1) & (first[ds.item] == 0)))


@pytest.mark.slow
def test_smoke_run_summary_rerun_and_empty_cell(tmp_path, monkeypatch):
  """Three methods end to end on synthetic data with one empty cell: it is
  reported, gets q_g = 0, and training stays defined."""
  _patched_synthetic(monkeypatch, _drop_cell_f0)
  config = itfr_config.get_config("smoke,epochs=2")
  config.methods = "BPR,GroupDRO,ITFR"
  full = runner.train_and_evaluate(itfr_job, config, tmp_path)
  assert set(full["test"]) == {"BPR", "GroupDRO", "ITFR"}
  for m in full["test"].values():
    assert set(m) == {"ndcg@20", "recall@20", "precision@20", "cv@20",
                      "min@20", "ucv@20", "icv@20"}
    assert 0 < m["ndcg@20"] <= 1 and m["cv@20"] >= 0
  assert all(v > 0 for v in full["seconds_per_epoch"].values())
  assert np.asarray(full["cells"]["ITFR"]["recall@20"]).shape == (2, 6)
  assert "ndcg@20_per_user" in full["paired_test"]["ITFR_vs_BPR"]
  rows = (tmp_path / "metrics.csv").read_text().splitlines()
  assert rows[0] == ",".join(runner.CSV_FIELDS)
  assert any(",test,M|" in r for r in rows)
  names = full["data"]["empty_cells"]
  assert len(names) == 1 and names[0].startswith("F|")
  cell = list(full["data"]["train_per_cell"]).index(names[0])
  for method in ("ITFR", "GroupDRO"):
    res = ckpt_lib.read_json(tmp_path / f"methods/{method}/seed0/result.json")
    assert res["final_q"][cell] == 0.0
    assert np.isclose(sum(res["final_q"]), 1.0, atol=1e-4)
    assert max(res["final_q"]) > min(q for q in res["final_q"] if q > 0)
  # A rerun finds every result and trains nothing.
  again = runner.train_and_evaluate(itfr_job, config, tmp_path)
  assert again["test"] == full["test"]


def test_rerun_with_changed_fields_is_refused(tmp_path):
  config = itfr_config.get_config("smoke")
  ckpt_lib.open_workdir(tmp_path, config, itfr_job.FREE_FIELDS)
  stored = (tmp_path / "config.json").read_text()
  free = itfr_config.get_config("smoke")
  free.methods, free.num_seeds, free.lightgcn_layout = "BPR", 7, "sparse"
  ckpt_lib.open_workdir(tmp_path, free, itfr_job.FREE_FIELDS)
  assert json.loads((tmp_path / "config.json").read_text())["num_seeds"] == 7
  changed = itfr_config.get_config("smoke")
  changed.itfr.rho, changed.epochs = 0.5, 9
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(ConfigError, match=r"field 'epochs': 3 -> 9; field "
                     r"'itfr.rho': 0.02 -> 0.5"):
    runner.train_and_evaluate(itfr_job, changed, tmp_path)
  assert (tmp_path / "config.json").read_text() == before
  assert not (tmp_path / "data_stats.json").exists()
  assert stored != before


@pytest.mark.slow
def test_killed_run_resumes_identically(tmp_path, monkeypatch):
  # Checkpoints after epochs 2 and 4; the run dies at the second save, so the
  # resumed run replays epochs 3 and 4 (training and best-model tracking).
  config = itfr_config.get_config("smoke,epochs=4")
  config.ckpt_every = 2
  ctx = itfr_job.prepare(config, tmp_path, None)
  unit = runner.Unit("ITFR/seed0", "ITFR", 0)
  def run_one(workdir):
    return itfr_job.run_unit(config, ctx, unit,
                             runner.unit_dir(workdir, unit), {})
  full = run_one(tmp_path / "a")

  class Killed(Exception):
    pass

  save = ckpt_lib.Checkpointer.save
  def dying_save(self, step, tree):
    if step == 4:
      raise Killed()
    save(self, step, tree)
  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", dying_save)
  with pytest.raises(Killed):
    run_one(tmp_path / "b")
  assert not (tmp_path / "b/methods/ITFR/seed0/result.json").exists()
  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
  resumed = run_one(tmp_path / "b")
  for key in ("test", "cells", "final_q", "best_epoch", "best_valid_ndcg"):
    assert resumed[key] == full[key], key
  hist_a, hist_b = np.array(full["history"], float), np.array(
      resumed["history"], float)
  np.testing.assert_array_equal(hist_a[:, :3], hist_b[:, :3])


@pytest.mark.slow
def test_launcher_cli_and_config_errors(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base = [sys.executable, "-m", "launch.itfr",
          "--config=configs/itfr.py:smoke,epochs=1"]
  ok = subprocess.run(base + [f"--workdir={tmp_path / 'w'}",
                              "--config.methods=BPR", "--config.num_seeds=2"],
                      cwd=ROOT, env=env, capture_output=True, text=True,
                      timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert set(summary["test"]) == {"BPR"}
  assert summary["num_seeds"] == {"BPR": 2}
  assert set(summary["std"]["BPR"]) == set(summary["test"]["BPR"])
  rep = subprocess.run([sys.executable, "-m", "launch.report",
                        f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert rep.returncode == 0, rep.stderr[-2000:]
  for name in ("cell_recall.png", "cv_vs_accuracy.png"):
    assert (tmp_path / "w" / name).stat().st_size > 1000
  bad = subprocess.run(base + [f"--workdir={tmp_path / 'b'}",
                               "--config.itfr.rho=-0.1"],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 1
  assert "field 'itfr.rho'" in bad.stderr
  assert not (tmp_path / "b" / "summary.json").exists()


@pytest.mark.parametrize("field,value", [("methods", "BPR,NOPE"),
                                         ("model", "ncf"),
                                         ("num_seeds", 0),
                                         ("ks", ()),
                                         ("ks", (20, 0)),
                                         ("lightgcn_layout", "csr")])
def test_bad_config_fields(field, value):
  config = itfr_config.get_config("smoke")
  setattr(config, field, value)
  with pytest.raises(ConfigError, match=f"field '{field}'"):
    M.validate_config(config)


def _patched_synthetic(monkeypatch, edit):
  load = registry.load_dataset
  def fake(name, data_dir=None, **kw):
    return edit(load(name, data_dir, **kw))
  monkeypatch.setattr(cells_data.registry, "load_dataset", fake)


@pytest.mark.parametrize("dtype,missing", [(np.int64, -1),
                                           (np.float64, np.nan)])
def test_missing_user_attribute(monkeypatch, dtype, missing):
  def edit(ds):
    g = np.asarray(ds.user_attrs["gender"]).astype(dtype)
    g[[3, 10, 11]] = missing
    return dataclasses.replace(ds, user_attrs={**ds.user_attrs, "gender": g})
  _patched_synthetic(monkeypatch, edit)
  config = itfr_config.get_config("smoke")
  with pytest.raises(DataError, match="gender"):
    cells_data.prepare_data(config)
  config.missing_user_group = "drop"
  data = cells_data.prepare_data(config)
  assert data.stats["users_dropped_missing_attr"] == 3
  assert data.num_users <= 150 - 3
