"""The system job end to end on tiny synthetic data: outputs, resume from a
killed optimiser, failed evaluations, bad config."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from configs import system as system_config
from fairjax import runner
from fairjax.errors import ConfigError
from fairjax.evaluators import welfare
from fairjax.jobs import system as job


def _config(**overrides):
  c = system_config.get_config("smoke")
  c.synthetic.num_users, c.synthetic.num_items = 150, 100
  c.optimizers, c.budget, c.num_init = "bo,random", 9, 4
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def smoke(run_once):
  def make(folder):
    return folder, runner.train_and_evaluate(job, _config(), folder)
  return run_once("system_smoke", make)


@pytest.mark.slow
def test_summary_contract(smoke):
  workdir, summary = smoke
  assert json.loads((workdir / "summary.json").read_text()) == summary
  assert set(summary["hypervolume"]) == {"bo", "random"}
  assert all(v >= 0 for v in summary["hypervolume"].values())
  assert "der_reduction@2%" in summary
  reach = summary["valid_der_reduction"]
  assert reach["tolerance"] == [0.02, 0.05, 0.1]
  assert len(reach["all_optimizers_per_seed"]) == 1
  for o in ("bo", "random"):
    # The pooled evaluations reach at least as far as either search, and a
    # looser welfare tolerance never reaches less.
    both = np.array([reach["all_optimizers"], reach[o]], float)  # None: NaN
    assert np.isfinite(both[:, -1]).all()
    ok = np.isfinite(both).all(axis=0)
    assert np.all(both[0, ok] >= both[1, ok] - 1e-12)
    assert np.all(np.diff(both[1][np.isfinite(both[1])]) >= -1e-12)
  for name in ("welfare_optimal", "model_level", "single_knob"):
    b = summary["baselines"][name]
    assert {"welfare", "der", "max_min_gap", "group_utility"} <= set(b)
    assert len(b["group_utility"]) == 2
    # DER from the group utilities (p_g = U_g / sum U_h, G = 2).
    u = np.asarray(b["group_utility"])
    p = u / u.sum()
    assert b["der"] == pytest.approx(2 * np.sum((p - 0.5) ** 2), rel=1e-4)
  for o in ("bo", "random"):
    front = np.asarray(summary["pareto"][o], float)
    assert front.ndim == 2 and front.shape[1] == 8
    assert np.allclose(front[:, 2:5].sum(1), 1.0)  # alpha on the simplex
    lines = (workdir / f"methods/{o}/seed0/evaluations.jsonl").read_text()
    assert len(lines.splitlines()) == 9
  df = pd.read_csv(workdir / "metrics.csv", keep_default_na=False)
  assert list(df.columns) == runner.CSV_FIELDS
  assert set(df.split) == {"valid", "test"}


@pytest.mark.slow
def test_killed_optimiser_resumes_to_the_same_front(smoke, tmp_path):
  workdir, summary = smoke
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  unit = copy / "methods/bo/seed0"
  lines = (unit / "evaluations.jsonl").read_text().splitlines(keepends=True)
  # Killed while writing the 6th evaluation: 5 whole lines and half a line.
  (unit / "evaluations.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
  (unit / "result.json").unlink()
  (copy / "summary.json").unlink()
  again = runner.train_and_evaluate(job, _config(), copy)
  assert again == summary
  assert (unit / "evaluations.jsonl").read_text() == "".join(lines)


def test_valid_der_reduction_by_hand():
  def rec(w, d, ok=True):
    return {"valid": {"welfare": w, "der": d, "ok": ok}}
  records = [rec(1.0, 0.10), rec(0.99, 0.08), rec(0.96, 0.05),
             rec(0.5, 0.0), rec(float("nan"), float("nan"), ok=False)]
  b1 = {"welfare": 1.0, "der": 0.10}
  got = welfare.valid_der_reduction(records, b1, (0.0, 0.02, 0.05, 0.6))
  # tol 0: only the first record (DER 0.10); 2%: 0.08; 5%: 0.05; 60%: 0.
  assert got == pytest.approx([0.0, 0.2, 0.5, 1.0])
  # A record worse than B1 gives a negative reduction; none qualifying NaN.
  assert welfare.valid_der_reduction([rec(1.0, 0.2)], b1, (0.0,)) == [
      pytest.approx(-1.0)]
  assert np.isnan(welfare.valid_der_reduction([rec(0.5, 0.0)], b1,
                                              (0.02,))[0])


def test_failed_evaluation_is_recorded_and_skipped():
  class Broken:
    def evaluate_knobs(self, knobs, split):
      raise ConfigError("field 's': infeasible exposure minimums")

  class NaNs:
    def evaluate_knobs(self, knobs, split):
      return {"welfare": float("nan"), "der": 0.1, "max_min_gap": 0.0,
              "group_utility": np.zeros(2)}

  knobs = {"alpha": (1.0, 0.0, 0.0), "K": 50, "s": 0.0, "lam_index": 0}
  broken = welfare.evaluate_knobs(Broken(), knobs, "valid")
  assert not broken["ok"] and "field 's'" in broken["error"]
  nan = welfare.evaluate_knobs(NaNs(), knobs, "valid")
  assert not nan["ok"] and nan["error"] == "NaN objective"
  ok = {"valid": {"ok": True, "welfare": 1.0, "der": 0.2}}
  y = welfare.objectives([ok, {"valid": broken}, {"valid": nan}])
  assert y[0].tolist() == [1.0, -0.2] and np.isnan(y[1:]).all()


@pytest.mark.parametrize("field,value", [("rho", 1.5), ("optimizers", "bo,x"),
                                         ("groups", "height"),
                                         ("budget", 3)])
def test_bad_config_names_the_field(field, value):
  c = _config(**{field: value})
  with pytest.raises(ConfigError, match=f"field '{field}'"):
    job.validate(c)
