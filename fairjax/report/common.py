"""Shared pieces of the report figures: run files, atomic PNG writes."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fairjax.checkpoint import write_atomic  # noqa: E402


def run_file(workdir, name: str) -> pathlib.Path:
  """workdir/name; FileNotFoundError (naming it) when the job has not run."""
  path = pathlib.Path(workdir) / name
  if not path.exists():
    raise FileNotFoundError(f"{path}: no {name} (run the job first)")
  return path


def save(fig, path, dpi: int = 120, **kw) -> pathlib.Path:
  """Writes `fig` to `path` (PNG) and closes it; returns the path.

  The image goes to a temporary file beside `path`, renamed over it when
  complete: a crash never leaves a half-written image.
  """
  path = pathlib.Path(path)
  fmt = path.suffix.lstrip(".") or "png"
  try:
    write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt, **kw),
                 mode="wb")
  finally:
    plt.close(fig)
  return path


def metrics(workdir) -> pd.DataFrame:
  """The run's metrics.csv (`fairjax.runner.CSV_FIELDS`); group names are
  kept as strings (no NaN parsing)."""
  return pd.read_csv(run_file(workdir, "metrics.csv"), keep_default_na=False)
