r"""Draws a run's figures as PNG next to its metrics.

  python -m launch.report --workdir=DIR [--sweep=DIR1,DIR2,...]

The job is read from DIR/config.json (and summary.json). FADE:
pd_over_time.png, tradeoff.png, and with --sweep (workdirs of the same job
at several lambdas) lambda_sweep.png. FairSync: exposure_over_time.png,
exposure_ratio.png (exposure per group over time against m_g). ITFR: the
per-cell recall heat maps and CV@K against accuracy.
"""

import json
import pathlib

from absl import app
from absl import flags

from fairjax import plots
from launch.common import friendly_errors

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's folder.")
_SWEEP = flags.DEFINE_list("sweep", [], "Workdirs for a lambda sweep.")
flags.mark_flag_as_required("workdir")


def _job(workdir: pathlib.Path) -> str:
  cfg_path = workdir / "config.json"
  if not cfg_path.exists():
    raise FileNotFoundError(f"{cfg_path}: not a fairjax run folder")
  cfg = json.loads(cfg_path.read_text())
  if "fade" in cfg:
    return "fade"
  summary = workdir / "summary.json"
  if summary.exists() and "unconstrained_esp" in json.loads(
      summary.read_text()):
    return "fairsync"
  return cfg.get("job", "unknown")


@friendly_errors
def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  job = _job(workdir)
  if job == "fade":
    paths = plots.fade_figures(workdir)
    if _SWEEP.value:
      paths.append(plots.fade_lambda_sweep(_SWEEP.value,
                                           workdir / "lambda_sweep.png"))
  elif job == "fairsync":
    from fairjax import plots_fairsync
    paths = plots_fairsync.fairsync_figures(workdir)
  elif job == "itfr":
    from fairjax import plots_itfr
    paths = plots_itfr.itfr_figures(workdir)
  else:
    raise FileNotFoundError(f"{workdir}: no report for job {job!r} yet")
  for p in paths:
    print(p)


if __name__ == "__main__":
  app.run(main)
