r"""ITFR, GroupDRO, BPR and the ablations on the random-split protocol.

  python -m launch.itfr --config=configs/itfr.py:dataset=ml1m,model=mf \
      --workdir=runs/itfr_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=BPR,ITFR] [--config.num_seeds=1]

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume.
"""

import json

from absl import app

from fairjax import jobs, runner
from launch.common import friendly_errors, job_flags

_CONFIG, _WORKDIR, _DATA_DIR = job_flags("configs/itfr.py", "ITFR")


@friendly_errors
def main(argv):
  del argv
  summary = runner.train_and_evaluate(jobs.get("itfr"), _CONFIG.value,
                                      _WORKDIR.value, _DATA_DIR.value)
  print(json.dumps({"test": summary["test"],
                    "seconds_per_epoch": summary["seconds_per_epoch"]}))


if __name__ == "__main__":
  app.run(main)
