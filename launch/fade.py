r"""FADE and its baselines on the chronological protocol.

  python -m launch.fade --config=configs/fade.py:dataset=ml1m-ts,model=mf \
      --workdir=runs/fade_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=FINETUNE,FADE]

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume.
"""

import json

from absl import app

from fairjax import jobs, runner
from launch.common import friendly_errors, job_flags

_CONFIG, _WORKDIR, _DATA_DIR = job_flags("configs/fade.py", "FADE")


@friendly_errors
def main(argv):
  del argv
  summary = runner.train_and_evaluate(jobs.get("fade"), _CONFIG.value,
                                      _WORKDIR.value, _DATA_DIR.value)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
