"""FADE end to end on tiny synthetic data: outputs, resume, bad input."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import fade as fade_config
from fairjax import checkpoint as ckpt_lib
from fairjax.errors import ConfigError, DataError
from fairjax.methods import fade as F
from fairjax import runner
from fairjax.jobs import fade as fade_job

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(config, workdir):
  return runner.train_and_evaluate(fade_job, config, workdir)


def _config(methods, periods=3, **overrides):
  c = fade_config.get_config(f"dataset=synthetic,smoke,num_periods={periods}")
  c.methods = methods
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.mark.slow
def test_all_methods_smoke(tmp_path):
  c = _config(",".join(F.METHODS), periods=2)
  summary = run(c, str(tmp_path))
  for task in ("task_r", "task_n"):
    assert set(summary[task]) == set(F.METHODS)
    for m in F.METHODS:
      for key in ("ndcg@20", "pd_ndcg@20", "recall@20", "pd_recall@20",
                  "f1@20", "pd_f1@20"):
        assert np.isfinite(summary[task][m][key]), (task, m, key)
  assert set(summary["full"]["task_r"]) == set(F.METHODS)
  assert set(summary["seconds_per_period"]) == set(F.METHODS)
  df = pd.read_csv(tmp_path / "metrics.csv")
  assert list(df.columns) == runner.CSV_FIELDS
  # 8 methods x 2 periods x 2 tasks x 4 groups x (2 standard protocols x 5
  # metrics + the official measure's 3).
  assert len(df) == 8 * 2 * 2 * 4 * (2 * 5 + 3)
  for task in ("task_r", "task_n"):
    assert set(summary["official"][task]) == set(F.METHODS)
    assert set(summary["official"][task]["FADE"]) == {
        "ndcg@20", "pd_ndcg@20", "recall@20", "pd_recall@20", "f1@20",
        "pd_f1@20"}
  assert json.loads((tmp_path / "summary.json").read_text()) == summary
  # Metrics are averaged within group; PD = group 0 - group 1.
  sel = df[(df.method == "FADE") & (df.step == 1) &
           (df.split == "task_r/sampled") & (df.metric == "ndcg@20")]
  v = dict(zip(sel.group, sel.value))
  assert v["pd"] == pytest.approx(v["M"] - v["F"])


@pytest.mark.slow
def test_resume_after_kill_in_period_5_is_identical(tmp_path, monkeypatch):
  # FADE-DUAL: the state and the dual multipliers must both resume.
  methods = "FINETUNE,FADE-DUAL"
  full = run(_config(methods, periods=6),
                                     str(tmp_path / "a"))

  real_eval = fade_job.eval_rows

  class Killed(Exception):
    pass

  def killing_eval(evaluator, params, data, snapshot, method, ks):
    if method == "FADE-DUAL" and snapshot == 5:
      raise Killed()
    return real_eval(evaluator, params, data, snapshot, method, ks)

  monkeypatch.setattr(fade_job, "eval_rows", killing_eval)
  with pytest.raises(Killed):
    run(_config(methods, periods=6),
                                str(tmp_path / "b"))
  monkeypatch.setattr(fade_job, "eval_rows", real_eval)
  rows_b = json.loads((tmp_path / "b/methods/FADE-DUAL/rows.json").read_text())
  assert sorted(rows_b["periods"]) == ["1", "2", "3", "4"]
  resumed = run(_config(methods, periods=6),
                                        str(tmp_path / "b"))
  a = pd.read_csv(tmp_path / "a/metrics.csv")
  b = pd.read_csv(tmp_path / "b/metrics.csv")
  pd.testing.assert_frame_equal(a, b)
  for task in ("task_r", "task_n"):
    assert resumed[task] == full[task]


def test_rerun_with_changed_field_is_refused(tmp_path):
  ckpt_lib.open_workdir(tmp_path, _config("FADE"), fade_job.FREE_FIELDS)
  ckpt_lib.open_workdir(tmp_path, _config("FADE,REC"), fade_job.FREE_FIELDS)
  before = (tmp_path / "config.json").read_text()
  changed = _config("FADE,REC")
  changed.lr *= 2
  with pytest.raises(ConfigError, match=r"field 'lr'"):
    run(changed, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == before
  assert json.loads(before)["methods"] == "FADE,REC"


def test_workdir_from_before_fused_update_resumes_and_refuses_it_on(tmp_path):
  """A config.json written before the field existed stands for
  fused_update=False (fade_job.ADDED_FIELDS)."""
  ckpt_lib.open_workdir(tmp_path, _config("FADE"), fade_job.FREE_FIELDS)
  path = tmp_path / "config.json"
  old = json.loads(path.read_text())
  del old["fused_update"]
  path.write_text(json.dumps(old))
  ckpt_lib.open_workdir(tmp_path, _config("FADE"), fade_job.FREE_FIELDS,
                        fade_job.ADDED_FIELDS)
  path.write_text(json.dumps(old))
  with pytest.raises(ConfigError, match=r"field 'fused_update': False -> True"):
    ckpt_lib.open_workdir(tmp_path, _config("FADE", fused_update=True),
                          fade_job.FREE_FIELDS, fade_job.ADDED_FIELDS)


def test_bad_config_values():
  with pytest.raises(ConfigError, match="fade.lam"):
    F.validate_config(_bad("lam", -0.1))
  with pytest.raises(ConfigError, match="fade.tau"):
    F.validate_config(_bad("tau", 0.0))
  c = _config("FINETUNE,NOPE")
  with pytest.raises(ConfigError, match="methods"):
    F.validate_config(c)
  c = _config("FINETUNE")
  c.model = "lightgcn"
  with pytest.raises(ConfigError, match="field 'model'"):
    F.validate_config(c)


def _bad(field, value):
  c = _config("FADE")
  setattr(c.fade, field, value)
  return c


def test_missing_sensitive_attribute_is_a_data_error(tmp_path):
  c = _config("FINETUNE", user_attr="religion")
  with pytest.raises(DataError, match="religion"):
    run(c, str(tmp_path))


def test_one_group_batch_has_no_fairness_term():
  c = _config("FADE")
  data = F.prepare_data(c)
  from fairjax import models as models_lib
  model = models_lib.create("mf", data.num_users, data.num_items, dim=8)
  params = models_lib.init_params(model, jax.random.key(0))
  loss = F.make_loss(model, "fade", 0.5, 3.0, 1, 4)
  majority = np.nonzero(data.user_group == 0)[0][:8]
  minority = np.nonzero(data.user_group == 1)[0][:8]
  seen = jnp.asarray(data.seen(0))
  ctx = {"seen": seen, "user_group": jnp.asarray(data.user_group)}
  item = jnp.zeros(8, jnp.int32)
  one = {"user": jnp.asarray(majority), "item": item,
         "valid": jnp.ones(8, bool)}
  _, (m1, _) = loss(params, one, jax.random.key(1), {}, ctx)
  assert float(m1["fair"]) == 0.0 and float(m1["one_group"]) == 1.0
  both = dict(one, user=jnp.asarray(np.r_[majority[:4], minority[:4]]))
  _, (m2, _) = loss(params, both, jax.random.key(1), {}, ctx)
  assert float(m2["fair"]) > 0.0 and float(m2["one_group"]) == 0.0


def test_loss_reads_parameters_through_candidate_scores_only():
  """make_loss = make_score_loss o scores o make_candidates: its gradient
  is the rows' gradient scattered into the tables (what the speed bench's
  `loss_only` times)."""
  c = _config("FADE")
  data = F.prepare_data(c)
  from fairjax import models as models_lib
  from fairjax.models import mf as mf_lib
  model = models_lib.create("mf", data.num_users, data.num_items, dim=8)
  params = models_lib.init_params(model, jax.random.key(0))
  ctx = {"seen": jnp.asarray(data.seen(0)),
         "user_group": jnp.asarray(data.user_group)}
  rows = data.rows([0])[:16]
  batch = {"user": jnp.asarray(data.user[rows]),
           "item": jnp.asarray(data.item[rows]), "valid": jnp.ones(16, bool)}
  key = jax.random.key(3)
  full = jax.grad(lambda p: F.make_loss(model, "fade", 0.5, 3.0, 1, 4)(
      p, batch, key, {}, ctx)[0])(params)
  users, cand = F.make_candidates(4)(batch, key, ctx)
  score_loss = F.make_score_loss("fade", 0.5, 3.0, 1)
  u_tab, i_tab = models_lib.embedding_tables(params)
  g_u, g_i = jax.grad(
      lambda e_u, e_i: score_loss(mf_lib.pair_scores(e_u, e_i, 1.0, False),
                                  batch, {}, ctx)[0],
      argnums=(0, 1))(u_tab[users], i_tab[cand])
  want_u, want_i = models_lib.embedding_tables(full)
  np.testing.assert_allclose(jnp.zeros_like(u_tab).at[users].add(g_u),
                             want_u, atol=1e-7)
  np.testing.assert_allclose(jnp.zeros_like(i_tab).at[cand].add(g_i),
                             want_i, atol=1e-7)
  assert float(jnp.abs(want_i).sum()) > 0


@pytest.mark.parametrize("impl", ["auto", "jax"])
def test_fused_update_matches_the_optax_step(impl):
  """`fused_update`: the same dense Adam + L2 semantics as the optax step
  (float32 rounding apart), the same state layout, every row moving."""
  from fairjax import models as models_lib
  from fairjax import train as train_lib
  from fairjax.data import sampling
  c = _config("FADE")
  data = F.prepare_data(c)
  model = models_lib.create("mf", data.num_users, data.num_items, dim=8)
  tx = F.make_optimizer(c)
  state0 = train_lib.create_state(
      models_lib.init_params(model, jax.random.key(0)), tx)
  ctx = {"seen": jnp.asarray(data.seen(1)),
         "user_group": jnp.asarray(data.user_group)}
  batches = F.epoch_batches(data.rows([1]), data, 32, (0, 1))
  prepare = lambda s, b, r, x: sampling.presample_negatives(  # noqa: E731
      s, b, r, x, num_items=data.num_items, num_negatives=c.num_negatives)
  ends = {}
  for name, step in (
      ("optax", train_lib.make_step(
          F.make_loss(model, "fade", 0.5, c.fade.tau, c.fade.k, 4), tx,
          keys_in_batch=True)),
      ("fused", F.make_fused_step("fade", 0.5, c, impl=impl))):
    epoch = train_lib.make_epoch(step, prepare=prepare)
    state = jax.tree.map(jnp.copy, state0)
    for e in range(3):
      state, metrics = epoch(state, batches, jax.random.key(e), ctx)
    ends[name] = (state, metrics)
  (a, ma), (b, mb) = ends["optax"], ends["fused"]
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert int(optax_count(a)) == int(optax_count(b)) == 3 * len(batches["user"])
  for x, y, x0 in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params),
                      jax.tree.leaves(state0.params)):
    scale = float(jnp.max(jnp.abs(x)))
    np.testing.assert_allclose(y, x, atol=1e-5 * scale)
    assert bool(jnp.all(x != x0)) and bool(jnp.all(y != x0))
  np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-4)


def optax_count(state):
  import optax
  return optax.tree_utils.tree_get(state.opt_state, "count")


def test_row_scores_gradient_matches_autodiff():
  """The fused step's scores (`fade._row_scores`, written-out VJP) against
  JAX's derivative of `mf.pair_scores`, in float64."""
  from fairjax.models import mf as mf_lib
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    e_u = jnp.asarray(rng.normal(size=(7, 6)))
    e_i = jnp.asarray(rng.normal(size=(7, 5, 6)))
    g = jnp.asarray(rng.normal(size=(7, 5)))
    got, got_vjp = jax.vjp(F._row_scores, e_u, e_i)
    want, want_vjp = jax.vjp(
        lambda a, b: mf_lib.pair_scores(a, b, 1.0, False), e_u, e_i)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for a, b in zip(got_vjp(g), want_vjp(g)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_fused_update_needs_mf():
  c = _config("FADE")
  c.fused_update = True
  F.validate_config(c)
  c.model = "ncf"
  with pytest.raises(ConfigError, match="fused_update"):
    F.validate_config(c)


@pytest.mark.slow
def test_launcher_and_report(tmp_path):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.fade",
         "--config=configs/fade.py:dataset=synthetic,smoke,num_periods=2",
         f"--workdir={wd}", "--config.methods=FINETUNE,FADE"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((wd / "summary.json").read_text())
  assert set(summary["task_r"]) == {"FINETUNE", "FADE"}
  table = out.stdout
  assert "method" in table and "s/period" in table and "pd_over_time.png" in table
  row = next(l for l in table.splitlines() if l.startswith("FADE "))
  assert float(row.split()[1]) == pytest.approx(
      summary["task_r"]["FADE"]["ndcg@20"], abs=1e-4)
  assert "[FADE] period 2/2" in out.stderr
  rep = subprocess.run([sys.executable, "-m", "launch.report",
                        f"--workdir={wd}", f"--sweep={wd}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert rep.returncode == 0, rep.stderr[-3000:]
  for name in ("pd_over_time.png", "tradeoff.png", "lambda_sweep.png"):
    assert (wd / name).stat().st_size > 1000
  bad = subprocess.run(cmd[:3] + [f"--workdir={tmp_path / 'x'}",
                                  "--config.fade.tau=-1"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1
  assert "fade.tau" in bad.stderr and "Traceback" not in bad.stderr


def test_ml1m_ts_periods(data_dir):
  c = fade_config.get_config("dataset=ml1m-ts")
  data = F.prepare_data(c, str(data_dir))
  assert data.num_users == 2999
  assert sum(data.period_sizes) == len(data.user)
  assert len(data.period_sizes) == 11
  # 60% of the 256-row batches go to pretraining.
  assert abs(data.period_sizes[0] / sum(data.period_sizes) - 0.6) < 0.01


def test_absolute_form_is_symmetric_and_signed_is_not():
  from fairjax import ops
  stat = jnp.array([0.9, 0.8, 0.2, 0.1])
  group = jnp.array([0, 0, 1, 1])
  flipped = 1 - group
  la, _ = ops.group_gap_loss(stat, group, absolute=True)
  lb, _ = ops.group_gap_loss(stat, flipped, absolute=True)
  assert float(la) == pytest.approx(float(lb))
  assert float(la) == pytest.approx(float(jax.nn.softplus(0.7)))
  ls, _ = ops.group_gap_loss(stat, group)
  lf, _ = ops.group_gap_loss(stat, flipped)
  assert float(ls) == pytest.approx(float(jax.nn.softplus(0.7)))
  assert float(lf) == pytest.approx(float(jax.nn.softplus(-0.7)))
  with pytest.raises(ConfigError, match="fade.form"):
    c = _config("FADE")
    c.fade.form = "squared"
    F.validate_config(c)


@pytest.mark.slow
def test_ncf_backbone_runs(tmp_path):
  c = fade_config.get_config("dataset=synthetic,smoke,num_periods=1,model=ncf")
  c.methods = "FADE"
  c.dim = 8
  summary = run(c, str(tmp_path))
  # The summary against the metrics rows: x@K = mean over periods of the
  # all-user value, pd_x@K = mean over periods of |mean(M) - mean(F)|.
  df = pd.read_csv(tmp_path / "metrics.csv")
  sel = df[(df.split == "task_r/sampled") & (df.metric == "ndcg@20")]
  by = {g: sel[sel.group == g].sort_values("step").value.to_numpy()
        for g in ("all", "M", "F")}
  got = summary["task_r"]["FADE"]
  assert got["ndcg@20"] == pytest.approx(by["all"].mean())
  assert got["pd_ndcg@20"] == pytest.approx(np.abs(by["M"] - by["F"]).mean(),
                                            abs=1e-6)
  assert 0 < got["ndcg@20"] <= 1


def test_seed_table_mean_std_and_mismatch(tmp_path):
  from fairjax.errors import ConfigError
  from fairjax.report import fade as fade_report

  def run(name, seed, ndcg, model="mf", extra_method=False, eta=5.0,
          dual_method=False):
    wd = tmp_path / name
    wd.mkdir()
    fig = {"ndcg@20": ndcg, "pd_ndcg@20": ndcg / 10}
    methods = {"FINETUNE": fig, **({"REC": fig} if extra_method else {}),
               **({"FADE-DUAL": fig} if dual_method else {})}
    summary = {"task_r": methods, "full": {"task_r": methods},
               "official": {"task_r": methods}}
    (wd / "summary.json").write_text(json.dumps(summary))
    (wd / "config.json").write_text(json.dumps(
        {"job": "fade", "dataset": "ml1m-order", "model": model,
         "protocol": "standard", "seed": seed, "methods": "FINETUNE",
         "dual": {"eta": eta}}))
    return wd

  dirs = [run("s0", 0, 0.5, extra_method=True), run("s1", 1, 0.6),
          run("s2", 2, 0.7)]
  out = fade_report.fade_seed_table(dirs, tmp_path / "t.md")
  text = out.read_text()
  row = next(l for l in text.splitlines() if l.startswith("| FINETUNE"))
  # mean 0.6, std (ddof 1) 0.1; |PD| 0.06 +- 0.01; under all three measures.
  assert row.count("0.6000 +- 0.1000") == 3
  assert row.count("0.0600 +- 0.0100") == 3
  assert "| REC" not in text  # a method missing from a seed is left out
  assert "seeds 0, 1, 2" in text
  with pytest.raises(ConfigError, match="'model'"):
    fade_report.fade_seed_table([dirs[0], run("ncf", 3, 0.5, model="ncf")],
                                tmp_path / "u.md")
  assert not (tmp_path / "u.md").exists()
  # FADE-DUAL's own block may differ while the table leaves FADE-DUAL out,
  # not once every run reports it.
  fade_report.fade_seed_table([dirs[0], run("eta", 4, 0.5, eta=20.0)],
                              tmp_path / "v.md")
  with pytest.raises(ConfigError, match="'dual'"):
    fade_report.fade_seed_table(
        [run("d0", 5, 0.5, dual_method=True),
         run("d1", 6, 0.5, eta=20.0, dual_method=True)], tmp_path / "w.md")
  assert not (tmp_path / "w.md").exists()


@pytest.mark.parametrize("from_all", [None, True, False])
def test_sampled_evaluation_scores_only_users_with_positives_exactly(
    from_all):
  """`Evaluator.sampled` scores the users with a test positive in blocks
  (here 3 users, so blocks repeat users as padding) and leaves the others'
  rows out; its metrics equal those of scoring every user at once, whether
  the candidates' scores are read from all-item scores (`sampled_from_all`,
  MF's default) or scored pair by pair."""
  from fairjax import metrics as metrics_lib
  from fairjax import models as models_lib
  from fairjax.evaluators import periodic as E
  rng = np.random.default_rng(0)
  nu, ni = 11, 30
  hu, hi = rng.integers(0, nu, 60), rng.integers(0, ni, 60)
  tu = rng.choice([0, 2, 3, 7, 8], 25)  # six users have no test positive
  ti = rng.integers(0, ni, 25)
  es = E.make_eval_set(tu, ti, hu, hi, nu, ni)
  model = models_lib.create("mf", nu, ni, dim=8)
  params = models_lib.init_params(model, jax.random.key(1))
  negs = rng.integers(0, ni, (nu, 6)).astype(np.int32)
  negs[1, 4:] = -1
  ev = E.Evaluator(model, negs, ks=(3, 5), sampled_chunk_size=3,
                   sampled_from_all=from_all)
  assert ev.sampled_from_all == (from_all is not False)
  got = ev.sampled(params, es, found=True)
  users = jnp.arange(nu)
  ref = metrics_lib.sampled_rank_metrics(
      models_lib.pair_scores(model, params, users, jnp.asarray(es.pos_items)),
      models_lib.pair_scores(model, params, users, jnp.maximum(negs, 0)),
      es.pos_mask, (3, 5), neg_mask=negs >= 0, found=True)
  assert set(got) == set(ref)
  no_pos = ~es.pos_mask.any(axis=1)
  assert no_pos.sum() == 6
  for k in ref:
    np.testing.assert_array_equal(got[k], np.asarray(ref[k]))
    assert np.isnan(got[k][no_pos]).all() and not np.isnan(
        got[k][~no_pos]).any()


# The event JAX records each time it traces a program (jax._src.dispatch).
JAXPR_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def test_sampled_evaluation_traces_nothing_new_for_other_user_counts():
  """A snapshot with another number of users holding a test positive (same
  padded width) reuses every compiled program: the blocks are cut and the
  scores put back on the host, so no device op meets a new shape."""
  from fairjax import models as models_lib
  from fairjax.evaluators import periodic as E
  rng = np.random.default_rng(0)
  nu, ni = 40, 30
  hu, hi = rng.integers(0, nu, 120), rng.integers(0, ni, 120)
  model = models_lib.create("mf", nu, ni, dim=8)
  params = models_lib.init_params(model, jax.random.key(1))
  negs = rng.integers(0, ni, (nu, 6)).astype(np.int32)
  ev = E.Evaluator(model, negs, ks=(5,), sampled_chunk_size=4)

  def eval_set(users):
    # Two positives per user: the same padded width for every set.
    tu = np.repeat(users, 2)
    ti = (np.arange(tu.size) * 7 + 3) % ni
    es = E.make_eval_set(tu, ti, hu, hi, nu, ni)
    assert es.pos_items.shape[1] == 2
    return es

  first = eval_set(np.array([1, 5, 9, 13, 20]))
  second = eval_set(np.array([2, 4, 6, 8, 10, 12, 30, 33, 39]))
  traced = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == JAXPR_TRACE_EVENT:
      traced.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    ev.sampled(params, first, found=True)
    assert traced  # the listener sees the first snapshot's tracing
    traced.clear()
    out = ev.sampled(params, second, found=True)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert not traced, f"{len(traced)} programs traced for the second snapshot"
  assert (~np.isnan(out["ndcg@5"])).sum() == 9


@pytest.mark.slow
def test_fade_run_bench_counts_the_runs_steps_and_splits_its_time():
  from fairjax.bench import fade_run
  c = _config("FINETUNE,FADE", periods=2)
  c.official.fair_pretrain = True  # FADE pretrains apart: two pretrainings
  out = fade_run.run(c, None, seed=0, floor_steps=20)
  data = F.prepare_data(c)
  steps = lambda n: -(-n // c.batch_size)  # noqa: E731
  sizes = data.period_sizes
  assert out["pretrain_steps"] == 2 * c.pretrain_epochs * steps(sizes[0])
  assert out["steps"] == out["pretrain_steps"] + 2 * c.epochs * (
      steps(sizes[1]) + steps(sizes[2]))
  assert 0 < out["pretrain_seconds"] and 0 < out["finetune_seconds"]
  assert out["other_seconds"] > 0 and out["peak_rss_gb"] > 0.1
  assert out["run_over_floor"] == pytest.approx(
      out["run_seconds"] / out["run_floor_seconds"])
  with pytest.raises(ConfigError, match="field 'methods'"):
    fade_run.run(_config("RETRAIN"), None)
