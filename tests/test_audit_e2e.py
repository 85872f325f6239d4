"""End to end: our own ITFR model's top-K exported as RecBole files and
audited by the launcher reproduces the job's summary.json (issue 15)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, **kw):
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
  return subprocess.run([sys.executable, "-m", "launch.audit", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, **kw)


@pytest.mark.slow
def test_export_then_audit_reproduces_summary(tmp_path):
  import configs.itfr as itfr_config
  from fairjax import jobs, runner
  from fairjax.audit import export

  config = itfr_config.get_config("smoke,epochs=2")
  with config.unlocked():
    config.methods = "BPR"
  workdir = tmp_path / "itfr"
  summary = runner.train_and_evaluate(jobs.get("itfr"), config, workdir)
  paths = export.export_itfr(workdir, "BPR", 0, tmp_path / "export", k=20)
  out = tmp_path / "audit"
  p = _run([f"--recs={paths['recs']}", f"--test={paths['test']}",
            f"--users={paths['users']}", f"--items={paths['items']}",
            "--user_attr=gender", "--item_attr=genre", "--k=20",
            f"--out={out}"])
  assert p.returncode == 0, p.stderr
  line = json.loads(p.stdout.strip().splitlines()[-1])
  report = json.loads((out / "report.json").read_text())
  assert line["overall"] == report["overall"]
  assert (out / "report.md").exists()
  rows = export.agreement(report, summary, "BPR")
  assert len(rows) == 7 + 2 * len(summary["cells"]["BPR"]["item_groups"])
  for name, want, got in rows:
    if want is None:
      assert got is None, name
    else:
      assert got == pytest.approx(want, abs=1e-6), name


@pytest.mark.slow
def test_launcher_bad_input_is_one_line_and_writes_nothing(tmp_path):
  from fairjax.audit import synthetic
  f = synthetic.write_synthetic(tmp_path / "in", 50, 40, 10)
  lines = f["recs"].read_text().splitlines()
  lines[4] = lines[4].rsplit("\t", 1)[0] + "\t0"
  f["recs"].write_text("\n".join(lines) + "\n")
  out = tmp_path / "out"
  p = _run([f"--{n}={v}" for n, v in f.items()] + [
      "--user_attr=gender", "--item_attr=genre", f"--out={out}"])
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1] == (
      f"error: {f['recs']}:5: field 'rank': rank 0 is not an integer >= 1")
  assert not out.exists()
