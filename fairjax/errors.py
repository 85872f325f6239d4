"""Errors raised on bad input. Each names the file and line or the field."""

from __future__ import annotations


class DataError(ValueError):
  """Malformed or inconsistent input data.

  The message always starts with the location: `path:line: ...` for a bad
  line in a file, `path: field 'name': ...` for a bad column or attribute.
  """

  def __init__(self, message: str, path: str | None = None,
               line: int | None = None, field: str | None = None):
    loc = ""
    if path is not None:
      loc = str(path)
      if line is not None:
        loc += f":{line}"
      loc += ": "
    if field is not None:
      loc += f"field '{field}': "
    super().__init__(loc + message)
    self.path = path
    self.line = line
    self.field = field


class ConfigError(ValueError):
  """An invalid configuration value; the message names the field."""
