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

import os
import re

from absl import app

from launch.common import job_main


def _emulate_devices(config) -> None:
  """Asks XLA for `config.shards` host devices unless the flag is set."""
  n, xla = int(config.shards), os.environ.get("XLA_FLAGS", "")
  if n > 1 and not re.search(r"xla_force_host_platform_device_count", xla):
    os.environ["XLA_FLAGS"] = (
        f"{xla} --xla_force_host_platform_device_count={n}").strip()


main = job_main("fairsync", "configs/fairsync.py", "FairSync",
                before=_emulate_devices)

if __name__ == "__main__":
  app.run(main)
