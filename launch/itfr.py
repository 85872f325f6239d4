r"""ITFR, GroupDRO, BPR and the ablations on the random-split protocol.

  python -m launch.itfr --config=configs/itfr.py:dataset=ml1m,model=mf \
      --workdir=runs/itfr_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=BPR,ITFR] [--config.num_seeds=1]

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from fairjax.methods import itfr_run
from launch.common import friendly_errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/itfr.py", "ITFR config file[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and resume folder.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Real data folder (default: $FAIRJAX_DATA_DIR).")
flags.mark_flag_as_required("workdir")


@friendly_errors
def main(argv):
  del argv
  summary = itfr_run.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        _DATA_DIR.value)
  print(json.dumps({"test": summary["test"],
                    "seconds_per_epoch": summary["seconds_per_epoch"]}))


if __name__ == "__main__":
  app.run(main)
