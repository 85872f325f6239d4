r"""System-level fairness: tune the whole pipeline for welfare and equity.

  python -m launch.system --config=configs/system.py:dataset=ml1m \
      --workdir=runs/system_ml1m [--data_dir=../shared/data] \
      [--config.optimizers=bo,random] [--config.num_seeds=1]

Writes DIR/evaluations (one JSON line per evaluation, as it happens),
DIR/metrics.csv and DIR/summary.json; rerun to resume. Prints the headline
figures (hypervolume per optimiser, der_reduction@2%, the baselines).
"""

import json

from absl import app

from fairjax import jobs, runner
from launch.common import friendly_errors, job_flags

_CONFIG, _WORKDIR, _DATA_DIR = job_flags("configs/system.py", "system")


@friendly_errors
def main(argv):
  del argv
  summary = runner.train_and_evaluate(jobs.get("system"), _CONFIG.value,
                                      _WORKDIR.value, _DATA_DIR.value)
  print(json.dumps({k: summary[k] for k in
                    ("hypervolume", "der_reduction@2%", "baselines")
                    if k in summary}))


if __name__ == "__main__":
  app.run(main)
