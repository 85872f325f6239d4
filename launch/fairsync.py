r"""FairSync and its baselines: item-sharded retrieval with exposure control.

  python -m launch.fairsync --config=configs/fairsync.py:dataset=ml1m \
      --workdir=runs/fairsync_ml1m [--data_dir=../shared/data] \
      [--config.methods=unconstrained,FairSync] \
      [--config.exclude_train_items=False]

Training items are left out of each ML-1M request's list unless
`exclude_train_items=False` (the earlier protocol).

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume. With
`shards=S` > 1 on CPU, S emulated devices are requested before JAX starts.
"""

import json
import os
import re

from absl import app

from launch.common import friendly_errors, job_flags

_CONFIG, _WORKDIR, _DATA_DIR = job_flags("configs/fairsync.py", "FairSync")


def _emulate_devices(n: int) -> None:
  """Asks XLA for n host devices unless the flag is already set."""
  xla = os.environ.get("XLA_FLAGS", "")
  if n > 1 and not re.search(r"xla_force_host_platform_device_count", xla):
    os.environ["XLA_FLAGS"] = (
        f"{xla} --xla_force_host_platform_device_count={n}").strip()


@friendly_errors
def main(argv):
  del argv
  _emulate_devices(int(_CONFIG.value.shards))
  from fairjax import jobs, runner  # after XLA_FLAGS: JAX starts here.
  summary = runner.train_and_evaluate(jobs.get("fairsync"), _CONFIG.value,
                                      _WORKDIR.value, _DATA_DIR.value)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
