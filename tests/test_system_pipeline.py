"""System-level fairness pipeline (DESIGN §6): data, calibration, knobs and
the jitted end-utility evaluation against NumPy references."""

import math

import numpy as np
import pytest

from fairjax.data import system_data as sd
from fairjax.errors import ConfigError, DataError
from fairjax.methods import system as sy


@pytest.fixture(scope="module")
def small_synth():
  return sd.prepare_system_data("synthetic", seed=3, num_users=300,
                                num_items=200)


# ---------------------------------------------------------------------------
# evaluate() against a brute-force reference.


def _evaluate_ref(cands, probs, alpha, truth, weights, user_group, k):
  u_n = cands.shape[0]
  g_n = weights.shape[0]
  per_user = np.zeros(u_n)
  for u in range(u_n):
    c = [int(i) for i in cands[u] if i >= 0]
    sc = [float(np.dot(alpha, probs[:, u, i])) for i in c]
    # stable sort by score desc: ties keep the candidate order
    order = sorted(range(len(c)), key=lambda j: -sc[j])[:k]
    served = [c[j] for j in order]
    g = user_group[u]
    per_user[u] = sum(float(np.dot(weights[g], truth[:, u, i]))
                      for i in served)
  gu = np.array([per_user[user_group == g].mean() if (user_group == g).any()
                 else np.nan for g in range(g_n)])
  p = gu / gu.sum()
  der = g_n / (g_n - 1) * np.sum((p - 1 / g_n) ** 2)
  return per_user, gu, der, per_user.mean(), gu.max() - gu.min()


@pytest.mark.parametrize("g_n,seed", [(2, 0), (3, 1)])
def test_evaluate_matches_reference(g_n, seed):
  rng = np.random.default_rng(seed)
  u_n, i_n, kmax, k = 23, 40, 12, 4
  cands = np.full((u_n, kmax), -1, np.int32)
  for u in range(u_n):
    n = rng.integers(2, kmax + 1)  # some users have fewer than k candidates
    cands[u, :n] = rng.choice(i_n, n, replace=False)
  probs = rng.random((3, u_n, i_n)).astype(np.float32)
  alpha = rng.dirichlet(np.ones(3)).astype(np.float32)
  truth = rng.random((3, u_n, i_n)) < 0.3
  weights = rng.random((g_n, 3)).astype(np.float32)
  user_group = np.arange(u_n) % g_n
  out = sy.evaluate(cands, probs, alpha, truth, weights, user_group, k=k)
  per_user, gu, der, w, gap = _evaluate_ref(cands, probs, alpha, truth,
                                            weights, user_group, k)
  np.testing.assert_allclose(np.asarray(out["per_user"]), per_user,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["group_utility"]), gu, rtol=1e-5)
  np.testing.assert_allclose(float(out["der"]), der, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(out["welfare"]), w, rtol=1e-5)
  np.testing.assert_allclose(float(out["max_min_gap"]), gap, rtol=1e-5,
                             atol=1e-7)
  served = np.asarray(out["served"])
  assert ((served >= 0).sum(1) == np.minimum((cands >= 0).sum(1), k)).all()


def test_evaluate_nan_and_empty_group():
  rng = np.random.default_rng(0)
  cands = np.tile(np.arange(5, dtype=np.int32), (4, 1))
  probs = rng.random((3, 4, 5)).astype(np.float32)
  truth = np.zeros((3, 4, 5), bool)
  w = np.ones((2, 3), np.float32)
  out = sy.evaluate(cands, probs, np.ones(3, np.float32) / 3, truth, w,
                    np.zeros(4, np.int32), k=2)
  assert np.isnan(float(out["der"]))  # group 1 has no users / zero utility
  probs[0, 1, 2] = np.nan
  truth[0, 0, 0] = True
  out = sy.evaluate(cands, probs, np.ones(3, np.float32) / 3, truth, w,
                    np.array([0, 1, 0, 1], np.int32), k=2)
  assert np.isnan(float(out["welfare"]))
  assert np.isnan(float(out["der"]))


def test_check_truth_names_group():
  truth = np.zeros((3, 4, 5), bool)
  truth[:, 0, 0] = True
  with pytest.raises(DataError, match=r"truth\[valid\].*'F'"):
    sy.check_truth(truth, np.ones((2, 3)), np.array([0, 1, 0, 1]),
                   ("M", "F"), "valid")
  with pytest.raises(DataError, match="user_group.*'F'"):
    sy.check_truth(truth, np.ones((2, 3)), np.array([0, 0, 0, 0]),
                   ("M", "F"), "valid")


def test_mask_candidates():
  cands = np.array([[3, 1, -1], [0, 2, 1]], np.int32)
  blocked = np.zeros((2, 4), bool)
  blocked[0, 1] = blocked[1, 0] = True
  np.testing.assert_array_equal(np.asarray(sy.mask_candidates(cands, blocked)),
                                [[3, -1, -1], [-1, 2, 1]])


# ---------------------------------------------------------------------------
# Preferences and knobs.


def test_preference_weights():
  w0 = sy.preference_weights("gender", 0.0)
  np.testing.assert_allclose(w0, np.full((2, 3), 1 / 3), rtol=1e-6)
  w1 = sy.preference_weights("gender", 1.0)
  np.testing.assert_allclose(w1, [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]],
                             rtol=1e-6)
  wa = sy.preference_weights("age", 1.0)
  np.testing.assert_allclose(wa, [[0.6, 0.3, 0.1], [0.35, 0.3, 0.35],
                                  [0.1, 0.3, 0.6]], rtol=1e-6)
  np.testing.assert_allclose(sy.preference_weights("age", 0.5).sum(1), 1.0,
                             rtol=1e-6)
  for bad in (-0.1, 1.5):
    with pytest.raises(ConfigError, match="'rho'"):
      sy.preference_weights("gender", bad)
  with pytest.raises(ConfigError, match="'groups'"):
    sy.preference_weights("occupation", 1.0)
  with pytest.raises(ConfigError, match="'weights'"):
    sy.check_weights(np.ones((2, 2)), 2)
  with pytest.raises(ConfigError, match="'weights'"):
    sy.check_weights(np.ones((3, 3)), 2)


def test_knobs_from_unit_box_and_simplex_cover():
  rng = np.random.default_rng(0)
  xs = rng.random((4000, 5))
  alphas = []
  for x in xs:
    kn = sy.validate_knobs(sy.knobs_from_unit(x))
    assert sy.K_MIN <= kn.K <= sy.K_MAX and 0 <= kn.s <= 1
    assert 0 <= kn.lam_index < len(sd.LAMBDAS)
    alphas.append(kn.alpha)
  a = np.asarray(alphas)
  np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-12)
  # Uniform on the simplex: each coordinate ~ Beta(1, 2), mean 1/3, and
  # every corner region is visited.
  np.testing.assert_allclose(a.mean(0), 1 / 3, atol=0.02)
  for m in range(3):
    assert (a[:, m] > 0.8).any()
  # Vertices and the ends of the other boxes.
  assert sy.knobs_from_unit([1, 0, 0, 0, 0]).alpha == (1.0, 0.0, 0.0)
  assert sy.knobs_from_unit([0, 1, 0, 0, 0]).alpha == (0.0, 1.0, 0.0)
  assert sy.knobs_from_unit([0, 0, 0, 0, 0]).alpha == (0.0, 0.0, 1.0)
  lo, hi = sy.knobs_from_unit(np.zeros(5)), sy.knobs_from_unit(np.ones(5))
  assert (lo.K, lo.s, lo.lam_index) == (50, 0.0, 0)
  assert (hi.K, hi.s, hi.lam_index) == (1000, 1.0, 4)
  # knobs_to_unit is a right inverse.
  for x in xs[:50]:
    kn = sy.knobs_from_unit(x)
    back = sy.knobs_from_unit(sy.knobs_to_unit(kn))
    np.testing.assert_allclose(back.alpha, kn.alpha, atol=1e-9)
    assert (back.K, back.lam_index) == (kn.K, kn.lam_index)


def test_validate_knobs_names_field():
  good = dict(alpha=(0.2, 0.3, 0.5), K=100, s=0.5, lam_index=2)
  sy.validate_knobs(good)
  for field, value in (("alpha", (0.5, 0.5, 0.5)), ("alpha", (1.2, -0.2, 0)),
                       ("alpha", (0.5, 0.5)), ("K", 20), ("K", 2000),
                       ("s", -0.1), ("s", 1.5), ("lam_index", 5),
                       ("lam_index", 1.5), ("lam_index", -1)):
    with pytest.raises(ConfigError, match=f"'{field}'"):
      sy.validate_knobs(dict(good, **{field: value}))
  with pytest.raises(ConfigError, match="'s'"):
    sy.validate_knobs({k: v for k, v in good.items() if k != "s"})
  with pytest.raises(ConfigError, match="'x'"):
    sy.knobs_from_unit([0.5] * 4)


def test_grid_point_rounding():
  assert len(sy.K_GRID) == 16 and sy.K_GRID[0] == 50 and sy.K_GRID[-1] == 1000
  assert len(sy.S_GRID) == 11
  assert sy.grid_point(50, 0.04) == (50, 0.0)
  assert sy.grid_point(1000, 0.96) == (1000, 1.0)
  k, s = sy.grid_point(100, 0.26)
  assert k in sy.K_GRID and s == 0.3
  i = int(np.argmin(np.abs(np.log(sy.K_GRID) - math.log(100))))
  assert k == sy.K_GRID[i]


# ---------------------------------------------------------------------------
# Calibration and reliability.


def test_platt_recovers_known_parameters():
  rng = np.random.default_rng(0)
  s = rng.normal(size=200_000) * 2.0 + 1.0
  a, b = 0.7, -2.0
  y = rng.random(s.size) < 1 / (1 + np.exp(-(a * s + b)))
  fa, fb = sy.platt_fit(s, y)
  assert abs(fa - a) < 0.02 and abs(fb - b) < 0.03


def test_platt_weighted_case_control_keeps_base_rate():
  # Subsample the negatives at rate r and weight them by 1 / r: same fit.
  rng = np.random.default_rng(1)
  s = rng.normal(size=300_000)
  y = rng.random(s.size) < 1 / (1 + np.exp(-(1.5 * s - 4.0)))
  keep = y | (rng.random(s.size) < 0.1)
  w = np.where(y, 1.0, 10.0)[keep]
  fa, fb = sy.platt_fit(s[keep], y[keep], w)
  assert abs(fa - 1.5) < 0.08 and abs(fb + 4.0) < 0.08
  with pytest.raises(DataError, match="labels"):
    sy.platt_fit(s[:10], np.zeros(10))


def test_reliability_hand_computation():
  p = np.array([0.05, 0.15, 0.12, 0.55, 0.95, 1.0])
  y = np.array([0, 1, 0, 1, 1, 1])
  r = sy.reliability(p, y, bins=10)
  # Bins: [0, .1): {.05}; [.1, .2): {.15, .12}; [.5, .6): {.55};
  # [.9, 1]: {.95, 1.0}.
  np.testing.assert_array_equal(r["num"], [1, 2, 0, 0, 0, 1, 0, 0, 0, 2])
  np.testing.assert_allclose(r["mean_pred"][[0, 1, 5, 9]],
                             [0.05, 0.135, 0.55, 0.975])
  np.testing.assert_allclose(r["frac_pos"][[0, 1, 5, 9]], [0, 0.5, 1, 1])
  assert np.isnan(r["mean_pred"][2])
  ece = (1 * 0.05 + 2 * abs(0.135 - 0.5) + 1 * 0.45 + 2 * 0.025) / 6
  assert abs(r["ece"] - ece) < 1e-12
  # Weights act as repeated rows.
  rw = sy.reliability(p, y, bins=10, weights=np.array([1, 2, 1, 1, 1, 1]))
  rr = sy.reliability(np.append(p, 0.15), np.append(y, 1), bins=10)
  assert abs(rw["ece"] - rr["ece"]) < 1e-12
  rq = sy.reliability(p, y, bins=3, strategy="quantile")
  np.testing.assert_array_equal(rq["num"], [2, 2, 2])


def test_user_auc_against_brute_force():
  rng = np.random.default_rng(0)
  s = np.round(rng.normal(size=(30, 25)), 1).astype(np.float32)  # ties
  pos = rng.random((30, 25)) < 0.2
  ex = rng.random((30, 25)) < 0.2
  got = sd.user_auc(s, pos, ex)
  for u in range(30):
    p, n = pos[u] & ~ex[u], ~(pos[u] | ex[u])
    if not p.any() or not n.any():
      assert np.isnan(got[u])
      continue
    a, b = s[u][p][:, None], s[u][n][None, :]
    assert abs(got[u] - ((b < a) + 0.5 * (b == a)).mean()) < 1e-9


def test_calibration_pairs_weights(small_synth):
  d = small_synth
  c = sy.calibration_pairs(d, 1, "valid", neg_ratio=3.0, seed=0)
  n_pos = int(d.valid.outcomes[:, 1].sum())
  assert c["label"].sum() == n_pos and c["label"].size == n_pos + 3 * n_pos
  train = d.seen("train")
  assert not train[c["user"], c["item"]].any()
  # Weighted size = every non-train pair.
  assert abs(c["weight"].sum() - (train.size - train.sum())) < 1e-6 * train.size


# ---------------------------------------------------------------------------
# Data.


def test_synthetic_deterministic_and_minority(small_synth):
  d = small_synth
  again = sd.prepare_system_data("synthetic", seed=3, num_users=300,
                                 num_items=200)
  for split in sd.SPLITS:
    a, b = d.split(split), again.split(split)
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.outcomes, b.outcomes)
  np.testing.assert_array_equal(d.oracle.scores, again.oracle.scores)
  other = sd.prepare_system_data("synthetic", seed=4, num_users=300,
                                 num_items=200)
  assert not np.array_equal(other.oracle.scores, d.oracle.scores)
  assert (d.user_group == 1).mean() == pytest.approx(0.3)
  assert d.group_names == ("M", "F")
  # Nested outcomes, disjoint splits, base rates near the configured ones.
  for split in sd.SPLITS:
    o = d.split(split).outcomes
    assert o[:, 0].all() and not (o[:, 2] & ~o[:, 1]).any()
  seen = [d.seen(s) for s in sd.SPLITS]
  assert not (seen[0] & seen[1]).any() and not (seen[1] & seen[2]).any()
  total = sum(x.sum() for x in seen) / seen[0].size
  assert 0.03 < total < 0.09
  assert d.truth("valid").shape == (3, 300, 200)
  fam = d.oracle.interact_family
  assert fam.shape == (len(sd.LAMBDAS), 300, 200)
  np.testing.assert_array_equal(fam[0], d.oracle.scores[0])


def test_data_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="'dataset'"):
    sd.prepare_system_data("ml100k")
  with pytest.raises(ConfigError, match="'groups'"):
    sd.prepare_system_data("synthetic", groups="age")
  with pytest.raises(ConfigError, match="'fractions'"):
    sd.prepare_system_data("synthetic", fractions=(0.5, 0.5, 0.5))
  with pytest.raises(ConfigError, match="'minority_frac'"):
    sd.prepare_system_data("synthetic", minority_frac=1.2)
  with pytest.raises(DataError, match="'age'"):
    sd.age_buckets(np.array([1, 18, 99]))
  np.testing.assert_array_equal(
      sd.age_buckets(np.array([1, 18, 25, 35, 45, 50, 56])),
      [0, 0, 1, 1, 2, 2, 2])


# ---------------------------------------------------------------------------
# The pipeline on small synthetic data.


def test_pipeline_synthetic_end_to_end(small_synth):
  d = small_synth
  pipe = sy.Pipeline(d, batch_size=30, verbose=False)
  heads = pipe.prepare()
  for name in ("like", "love") + tuple(f"interact@{j}" for j in range(5)):
    assert heads[name].a > 0
    assert pipe.reliability_report[name]["ece"] < 0.01
  gaps = pipe.own_gaps()
  assert gaps["gap"].shape == (5,) and np.isfinite(gaps["gap"]).all()
  kn = dict(alpha=(0.5, 0.2, 0.3), K=60, s=0.0, lam_index=1)
  r = pipe.evaluate_knobs(kn)
  assert (r["K"], r["s"]) == sy.grid_point(60, 0.0)
  assert not r["retrieval_hit"]
  cands = pipe.candidates(60, 0.0)
  assert cands.shape == (d.num_users, sy.K_MAX)
  assert ((cands >= 0).sum(1) == r["K"]).all()
  assert not d.seen("train")[np.arange(d.num_users)[:, None],
                             np.maximum(cands, 0)][cands >= 0].any()
  # Unconstrained lists are prefixes of the K = 1000 list (capped at I).
  full = pipe.candidates(1000, 0.0)
  np.testing.assert_array_equal(cands[:, :r["K"]], full[:, :r["K"]])
  r2 = pipe.evaluate_knobs(dict(kn, K=61))  # same grid point: cache hit
  assert r2["retrieval_hit"] and r2["welfare"] == r["welfare"]
  direct = sy.evaluate(cands, pipe.probs(1), np.asarray(kn["alpha"],
                                                        np.float32),
                       d.truth("valid"), pipe.weights, d.user_group)
  assert float(direct["welfare"]) == pytest.approx(r["welfare"])
  assert 0 <= r["der"] <= 1 and r["welfare"] > 0
  rt = pipe.evaluate_knobs(kn, split="test")
  assert rt["split"] == "test" and math.isfinite(rt["welfare"])
  assert rt["retrieval_hit"]
  summary = pipe.stage_summary()
  assert set(summary["calibration"]) == {"like", "love"} | {
      f"interact@{j}" for j in range(5)}


def test_pipeline_fairsync_moves_exposure(small_synth):
  pipe = sy.Pipeline(small_synth, batch_size=30, verbose=False)
  m = pipe.min_exposure(100, 1.0)
  assert abs(m.sum() - 100 * small_synth.num_users) < 1e-3 * m.sum()
  np.testing.assert_allclose(pipe.min_exposure(100, 0.5), 0.5 * m, rtol=1e-6)
  e0, e1 = pipe.retrieval(100, 0.0), pipe.retrieval(100, 1.0)
  before = pipe.shortfall(e0.candidates, 100, 1.0)
  assert before > 0.05
  assert e1.shortfall < 0.25 * before


def test_pipeline_errors(small_synth):
  with pytest.raises(ConfigError, match="'weights'"):
    sy.Pipeline(small_synth, weights=np.ones((3, 3)), verbose=False)
  with pytest.raises(ConfigError, match="'rho'"):
    sy.Pipeline(small_synth, rho=2.0, verbose=False)
  pipe = sy.Pipeline(small_synth, verbose=False)
  with pytest.raises(ConfigError, match="'split'"):
    pipe.truth("train")
  with pytest.raises(ConfigError, match="'s'"):
    pipe.min_exposure(60, 1.5)
  with pytest.raises(ConfigError, match="'K'"):
    pipe.evaluate_knobs(dict(alpha=(1, 0, 0), K=10, s=0.0, lam_index=0))


# ---------------------------------------------------------------------------
# ML-1M (cheap checks only: no training).


@pytest.mark.real_data
def test_ml1m_split_and_outcome_rates(data_dir):
  d = sd.prepare_system_data("ml1m", data_dir=data_dir, seed=0)
  assert (d.num_users, d.num_items) == (6040, 3706)
  n = d.train.size + d.valid.size + d.test.size
  assert n == 1_000_209
  assert abs(d.train.size / n - 0.7) < 1e-4
  assert abs(d.valid.size / n - 0.1) < 1e-4
  # ML-1M rating counts: >= 4: 575,281; == 5: 226,310.
  like = sum(int(d.split(s).outcomes[:, 1].sum()) for s in sd.SPLITS)
  love = sum(int(d.split(s).outcomes[:, 2].sum()) for s in sd.SPLITS)
  assert (like, love) == (575_281, 226_310)
  for s in ("valid", "test"):
    rates = d.split(s).base_rates()
    assert rates[0] == 1.0
    assert abs(rates[1] - 0.575) < 0.01 and abs(rates[2] - 0.226) < 0.01
  assert np.bincount(d.user_group).tolist() == [4331, 1709]
  assert d.num_item_groups == 18 and d.item_group.min() >= 0
  age = sd.prepare_system_data("ml1m", data_dir=data_dir, groups="age")
  assert age.group_names == sd.AGE_BUCKET_NAMES
  assert np.bincount(age.user_group).sum() == 6040
  assert sy.preference_weights("age").shape == (3, 3)
