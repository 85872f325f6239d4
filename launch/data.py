"""Prints a dataset's summary statistics as one JSON line on stdout.

  python -m launch.data --dataset=ml1m-ts --data_dir=/path/to/data

`--dataset` is synthetic, ml1m, ml1m-ts, ml100k, or a path to a RecBole atomic
folder / `.inter` file or a `.csv` file. Bad data or configuration prints a
one-line `error: ...` to stderr and exits with status 1.
"""

import json
import sys

from absl import app
from absl import flags

from fairjax.data import registry
from fairjax.errors import ConfigError, DataError

_DATASET = flags.DEFINE_string(
    "dataset", None, "synthetic, ml1m, ml1m-ts, ml1m-order, ml100k, or a path to a RecBole "
    "atomic folder / .inter file or a .csv file.", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder holding ml-1m/ and ml-100k/ (default: "
    "$FAIRJAX_DATA_DIR).")
_PERIODS = flags.DEFINE_bool(
    "periods", True, "Add the FADE chronological period sizes when the "
    "dataset has timestamps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  kwargs = {"seed": _SEED.value} if _DATASET.value == "synthetic" else {}
  try:
    ds = registry.load_dataset(_DATASET.value, _DATA_DIR.value, **kwargs)
    stats = registry.dataset_stats(ds, with_periods=_PERIODS.value)
  except (DataError, ConfigError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    sys.exit(1)
  print(json.dumps(stats))


if __name__ == "__main__":
  app.run(main)
