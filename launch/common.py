"""Shared launcher plumbing: clear one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys

from absl import flags
from absl import logging

from fairjax.errors import ConfigError, DataError


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
