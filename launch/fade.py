r"""FADE and its baselines on the chronological protocol.

  python -m launch.fade --config=configs/fade.py:dataset=ml1m-ts,model=mf \
      --workdir=runs/fade_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=FINETUNE,FADE]

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from fairjax.methods import fade_run
from launch.common import friendly_errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/fade.py", "FADE config file[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and resume folder.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Real data folder (default: $FAIRJAX_DATA_DIR).")
flags.mark_flag_as_required("workdir")


@friendly_errors
def main(argv):
  del argv
  summary = fade_run.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        _DATA_DIR.value)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
