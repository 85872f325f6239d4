r"""Benchmarks: `python -m launch.bench --bench=NAME`.

Each benchmark measures ours against a baseline in the same run, prints its
progress to stderr and, as the last line of stdout, one JSON object of the
measured figures. Names: ranking, fade, fade_run (a whole FADE run on ML-1M,
real data), itfr, retrieval, serving, bo.

The retrieval and serving benchmarks shard items over emulated CPU devices;
their number (`--devices`, default 2 for them) must be fixed before JAX
starts, so it is read from argv here, before anything imports jax.
"""

import os
import sys


def _early_devices(argv):
  bench = next((a.split("=", 1)[1] for a in argv if a.startswith("--bench=")),
               None)
  devices = next((a.split("=", 1)[1] for a in argv
                  if a.startswith("--devices=")), None)
  if devices is None and bench in ("retrieval", "serving"):
    devices = "2"
  if devices and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count="
                               f"{devices}").strip()


_early_devices(sys.argv)
# One OpenBLAS thread for the BO bench (see fairjax/bench/bo.py); the other
# benches keep the machine's BLAS setting (SGEMM references).
if any(a in ("--bench=bo",) for a in sys.argv):
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

BENCHES = {
    "ranking": "fairjax.bench.ranking",
    "fade": "fairjax.bench.fade",
    "fade_run": "fairjax.bench.fade_run",
    "itfr": "fairjax.bench.itfr",
    "retrieval": "fairjax.bench.retrieval",
    "serving": "fairjax.bench.serving",
    "bo": "fairjax.bench.bo",
}

_BENCH = flags.DEFINE_enum("bench", None, sorted(BENCHES), "Benchmark to run.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Real data folder (default: $FAIRJAX_DATA_DIR).")
_DEVICES = flags.DEFINE_integer(
    "devices", None, "Emulated CPU devices (read before JAX starts).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_MODEL = flags.DEFINE_enum("model", None, ["mf", "lightgcn"],
                           "Backbone, for benchmarks that take one (itfr).")
_VARIANT = flags.DEFINE_string(
    "variant", None, "Extra `configs/fade.py` variant for --bench=fade_run, "
    "e.g. 'fused_update=1' (the row-gradient update).")
flags.mark_flag_as_required("bench")


def main(argv):
  del argv
  module = importlib.import_module(BENCHES[_BENCH.value])
  kwargs = {"seed": _SEED.value}
  # The library never imports configs/: the launcher hands configs over.
  if _BENCH.value == "fade":
    from configs import fade as fade_config
    kwargs["config"] = fade_config.get_config("dataset=synthetic")
  elif _BENCH.value == "fade_run":
    from configs import fade as fade_config
    variant = "dataset=ml1m-order,model=mf"
    if _VARIANT.value:
      variant += "," + _VARIANT.value
    kwargs["config"] = fade_config.get_config(variant)
    kwargs["config"].methods = "FADE"
  elif _BENCH.value == "itfr":
    from configs import itfr as itfr_config
    kwargs["get_config"] = itfr_config.get_config
  elif _BENCH.value == "serving":
    from configs import fairsync as fairsync_config
    kwargs["get_config"] = fairsync_config.get_config
  if _VARIANT.value and _BENCH.value != "fade_run":
    raise app.UsageError(f"--variant does not apply to --bench={_BENCH.value}")
  params = inspect.signature(module.run).parameters
  if "data_dir" in params:
    kwargs["data_dir"] = _DATA_DIR.value or os.environ.get("FAIRJAX_DATA_DIR")
  if _MODEL.value is not None:
    if "model" not in params:
      raise app.UsageError(f"--model does not apply to --bench={_BENCH.value}")
    kwargs["model"] = _MODEL.value
  result = module.run(**kwargs)
  print(json.dumps({"bench": _BENCH.value, **result}), flush=True)


if __name__ == "__main__":
  app.run(main)
