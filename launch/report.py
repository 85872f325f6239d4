r"""Draws a run's figures as PNG next to its metrics.

  python -m launch.report --workdir=DIR [--sweep=DIR1,DIR2,...]
      [--seeds=DIR1,DIR2,...]

The job is read from DIR/config.json (field `job`). FADE:
pd_over_time.png, tradeoff.png, and with --sweep (workdirs of the same job
at several lambdas) lambda_sweep.png, with --seeds (workdirs of the same
run at other seeds) seed_table.md, mean +- std over DIR and them.
FairSync: exposure_over_time.png, exposure_ratio.png (exposure per group
over time against m_g), fairsync_dual.png (the controller: pace and mu per
group over time). ITFR: the per-cell recall heat maps and CV@K against
accuracy. System: the Pareto fronts against the baselines, hypervolume
against evaluations, per-group utility.
"""

from absl import app
from absl import flags

from fairjax import report
from launch.common import friendly_errors

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's folder.")
_SWEEP = flags.DEFINE_list("sweep", [], "Workdirs for a lambda sweep.")
_SEEDS = flags.DEFINE_list("seeds", [], "FADE: workdirs of the same run at "
                           "other seeds (seed_table.md).")
flags.mark_flag_as_required("workdir")


@friendly_errors
def main(argv):
  del argv
  for p in report.figures(_WORKDIR.value, _SWEEP.value, _SEEDS.value):
    print(p)


if __name__ == "__main__":
  app.run(main)
