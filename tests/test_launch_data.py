"""`python -m launch.data` end to end: one JSON line on success, one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _run(*args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k != "FAIRJAX_DATA_DIR"}
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "launch.data", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120,
                        check=False)


def _atomic(tmp_path):
  d = tmp_path / "toy"
  d.mkdir()
  (d / "toy.inter").write_text(
      "user_id:token\titem_id:token\trating:float\n"
      "u1\ti1\t5\nu1\ti2\t2\nu2\ti1\t4\nu3\ti3\t3\n")
  (d / "toy.user").write_text(
      "user_id:token\tgender:token\nu1\tF\nu2\tM\nu3\tM\n")
  return d


def test_atomic_stats_json(tmp_path):
  d = _atomic(tmp_path)
  out = _run(f"--dataset={d}")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 1
  stats = json.loads(lines[-1])
  assert stats["dataset"] == str(d)
  assert (stats["interactions"], stats["users"], stats["items"]) == (4, 3, 3)
  assert (stats["positives"], stats["positives_ge4"]) == (3, 2)
  assert stats["user_groups"] == {"gender": {"M": 2, "F": 1}}
  assert stats["interactions_per_user_group"] == {"gender": {"M": 2, "F": 2}}
  assert stats["has_timestamps"] is False


def test_errors_are_one_line(tmp_path):
  d = _atomic(tmp_path)
  (d / "toy.inter").write_text("user_id:token\titem_id:token\nu1\ti1\nu1\n")
  for args, want in [((f"--dataset={d}",), "toy.inter:3:"),
                     (("--dataset=nope",), "valid names"),
                     (("--dataset=ml1m",), "FAIRJAX_DATA_DIR")]:
    out = _run(*args)
    assert out.returncode == 1
    assert out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and want in err[0]


@pytest.mark.real_data
def test_ml100k_stats_json(data_dir):
  out = _run("--dataset=ml100k", f"--data_dir={data_dir}", "--periods")
  assert out.returncode == 0, out.stderr
  stats = json.loads(out.stdout.strip().splitlines()[-1])
  assert stats["dataset"] == "ml100k"
  assert (stats["interactions"], stats["users"], stats["items"]) == (
      100000, 943, 1682)
  assert stats["user_groups"]["gender"] == {"M": 670, "F": 273}
  assert stats["rating_counts"] == {"1": 6110, "2": 11370, "3": 27145,
                                    "4": 34174, "5": 21201}
  assert len(stats["period_sizes"]) == 11
  assert sum(stats["period_sizes"]) == stats["positives"]
