"""The shared experiment runner: units, resume, lock, rerun check, schema."""

import json
import os
import socket
import subprocess
import sys
import types

import pandas as pd
import pytest

from fairjax import runner
from fairjax.errors import ConfigError
from ml_collections import ConfigDict


def _toy_job(calls, fail_at=None):
  """A job with two methods x two seeds whose unit result is a pure
  function of the unit; `fail_at` raises inside that unit."""
  job = types.SimpleNamespace(NAME="toy", FREE_FIELDS=("methods",))
  job.validate = lambda config: None
  job.prepare = lambda config, workdir, data_dir: {"scale": config.scale}
  def units(config, ctx):
    return [runner.Unit(f"{m}/seed{s}", m, s)
            for m in config.methods.split(",") for s in range(2)]
  job.units = units
  def run_unit(config, ctx, unit, udir, results):
    calls.append(unit.key)
    if unit.key == fail_at:
      raise KeyboardInterrupt
    return {"value": ctx["scale"] * (len(unit.method) + unit.seed),
            "seen_before": sorted(results)}
  job.run_unit = run_unit
  job.rows = lambda config, ctx, unit, r: [runner.row(
      unit.method, unit.seed, 0, "test", "all", "value", r["value"])]
  job.summarise = lambda config, ctx, results, workdir: {
      k: r["value"] for k, r in results.items()}
  return job


def _config(methods="a,bb", scale=1.0, job="toy"):
  return ConfigDict({"job": job, "methods": methods, "scale": scale})


def test_units_run_once_and_results_feed_later_units(tmp_path):
  calls = []
  summary = runner.train_and_evaluate(_toy_job(calls), _config(), tmp_path)
  assert summary == {"a/seed0": 1.0, "a/seed1": 2.0, "bb/seed0": 2.0,
                     "bb/seed1": 3.0}
  res = json.loads((tmp_path / "methods/bb/seed0/result.json").read_text())
  assert res["seen_before"] == ["a/seed0", "a/seed1"]
  df = pd.read_csv(tmp_path / "metrics.csv")
  assert list(df.columns) == runner.CSV_FIELDS and len(df) == 4
  assert not (tmp_path / ".lock").exists()
  # A rerun with one more method runs only the new units.
  calls.clear()
  summary = runner.train_and_evaluate(_toy_job(calls), _config("a,bb,ccc"),
                                      tmp_path)
  assert calls == ["ccc/seed0", "ccc/seed1"] and len(summary) == 6


def test_last_line_gives_units_run_wall_time_and_peak_memory(tmp_path,
                                                             capsys):
  runner.train_and_evaluate(_toy_job([]), _config(), tmp_path)
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("[toy] 4 of 4 units run here; wall ")
  rss = float(last.rsplit("peak_rss_gb ", 1)[1])
  assert rss == pytest.approx(runner.peak_rss_gb(), abs=0.01) and rss > 0.01
  runner.train_and_evaluate(_toy_job([]), _config(), tmp_path)
  assert "[toy] 0 of 4 units run here" in capsys.readouterr().err
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert "peak_rss_gb" not in json.dumps(summary)


def test_interrupted_run_resumes_with_the_same_summary(tmp_path):
  full = runner.train_and_evaluate(_toy_job([]), _config(), tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    runner.train_and_evaluate(_toy_job([], fail_at="bb/seed0"), _config(),
                              tmp_path / "b")
  assert not (tmp_path / "b/.lock").exists()
  calls = []
  resumed = runner.train_and_evaluate(_toy_job(calls), _config(),
                                      tmp_path / "b")
  assert calls == ["bb/seed0", "bb/seed1"] and resumed == full


def test_changed_result_field_is_refused_and_job_is_checked(tmp_path):
  runner.train_and_evaluate(_toy_job([]), _config(), tmp_path)
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(ConfigError, match=r"field 'scale': 1.0 -> 2.0"):
    runner.train_and_evaluate(_toy_job([]), _config(scale=2.0), tmp_path)
  assert (tmp_path / "config.json").read_text() == before
  with pytest.raises(ConfigError, match=r"field 'job'.*'itfr'"):
    runner.train_and_evaluate(_toy_job([]), _config(job="itfr"), tmp_path)


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
  lock = runner.WorkdirLock(tmp_path)
  with lock:
    with pytest.raises(ConfigError, match=r"\.lock: workdir in use by "
                       rf"process {os.getpid()}"):
      runner.WorkdirLock(tmp_path).acquire()
    with pytest.raises(ConfigError, match="in use"):
      runner.train_and_evaluate(_toy_job([]), _config(), tmp_path)
  assert not (tmp_path / ".lock").exists()
  # A holder that no longer runs: a finished child process's pid.
  child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)
  (tmp_path / ".lock").write_text(f"{socket.gethostname()} "
                                  f"{child.stdout.strip()}\n")
  summary = runner.train_and_evaluate(_toy_job([]), _config(), tmp_path)
  assert len(summary) == 4 and not (tmp_path / ".lock").exists()
