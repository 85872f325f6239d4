"""Shared launcher plumbing: the job flags, and clear one-line errors instead
of tracebacks."""

from __future__ import annotations

import functools
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from fairjax.errors import ConfigError, DataError


def job_flags(default_config: str, job: str):
  """Defines a job's flags: --config (file[:variant], overridable fields as
  --config.FIELD=...), --workdir (required) and --data_dir.

  Returns:
    (config, workdir, data_dir) flag holders (read `.value` in main).
  """
  config = config_flags.DEFINE_config_file(
      "config", default_config, f"{job} config file[:variant].",
      lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Output and resume folder.")
  data_dir = flags.DEFINE_string(
      "data_dir", None, "Real data folder (default: $FAIRJAX_DATA_DIR).")
  flags.mark_flag_as_required("workdir")
  return config, workdir, data_dir


def friendly_errors(main):
  """Turns DataError/ConfigError into `error: ...` on stderr and exit 1."""

  @functools.wraps(main)
  def wrapped(argv):
    # Library INFO logs (orbax) drown the progress lines; --verbosity=0 or
    # higher brings them back.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except (DataError, ConfigError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  return wrapped
