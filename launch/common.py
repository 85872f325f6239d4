"""Shared launcher plumbing: the job flags, and clear one-line errors instead
of tracebacks."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

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


def job_main(job: str, default_config: str, label: str,
             shown: Callable[[dict], dict] | None = None,
             before: Callable[[object], None] | None = None,
             text: Callable[[dict, str], str] | None = None):
  """The `main` of a job launcher: defines its flags (`job_flags`), runs
  `fairjax.runner.train_and_evaluate(fairjax.jobs.<job>, ...)` and prints
  `shown(summary)` (default: the whole summary) as one JSON line, or with
  `text` the string `text(summary, workdir)` (a table for people; the
  summary stays in WORKDIR/summary.json).

  `before(config)` runs first, before JAX is imported (e.g. to ask XLA for
  emulated devices).
  """
  config, workdir, data_dir = job_flags(default_config, label)

  @friendly_errors
  def main(argv):
    del argv
    if before is not None:
      before(config.value)
    from fairjax import jobs, runner  # JAX starts here.
    summary = runner.train_and_evaluate(jobs.get(job), config.value,
                                        workdir.value, data_dir.value)
    if text is not None:
      print(text(summary, workdir.value))
    else:
      print(json.dumps(summary if shown is None else shown(summary)))

  return main


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
