"""Shared launcher plumbing: clear one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys

from fairjax.errors import ConfigError, DataError


def friendly_errors(main):
  """Turns DataError/ConfigError into `error: ...` on stderr and exit 1."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (DataError, ConfigError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  return wrapped
