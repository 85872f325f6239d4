"""The one experiment driver: `train_and_evaluate(job, config, workdir)`.

Every experiment (FADE, ITFR, FairSync, system) is a *job* (one module in
`fairjax/jobs/`) that supplies only what differs between experiments; this
module owns the rest:

  1. `job.validate(config)`: ConfigError naming the field on bad input;
  2. the workdir: created, locked against a second process (`WorkdirLock`),
     `config.json` written, and on a rerun every field outside
     `job.FREE_FIELDS` compared with the stored config (ConfigError naming
     each changed field, config.json left as it was);
  3. `ctx = job.prepare(config, workdir, data_dir)`: data and anything shared
     by the units (models, compiled functions, evaluators);
  4. for each unit of `job.units(config, ctx)` (method x seed x ...): a
     finished unit (`<workdir>/methods/<key>/result.json`, accepted by
     `job.is_current`) is read back; otherwise `job.run_unit(...)` runs it
     (resuming from its own checkpoints under the unit folder) and its result
     is written atomically. A unit sees the results of the units before it;
  5. `metrics.csv`: the rows of every unit (`job.rows`) in one tidy schema
     shared by all jobs, `CSV_FIELDS`:
       method, seed, step, split, group, metric, value
     where `step` is the job's time axis (FADE: the snapshot, ITFR: the
     epoch, FairSync: the batch, system: the evaluation), `split` what the
     value was measured on (FADE: `task_r/sampled` ..., ITFR: train, valid,
     test, FairSync: serve, system: valid or test), `group` `all`, a group
     or cell name, or `pd`;
  6. `summary.json` from `job.summarise(config, ctx, results, workdir)`.

A config names its job in the field `job` (checked against `job.NAME`;
free on reruns, so workdirs made before the field existed still resume).
A job module defines `NAME`, `FREE_FIELDS` (None: no rerun check), optionally
`ADDED_FIELDS` (fields added later -> the value a stored config without
them stands for; `checkpoint.open_workdir`), and the functions `validate`,
`prepare`, `units`, `run_unit`, `rows`, `summarise` (optionally
`is_current(config, ctx, unit, result, results) -> bool`, default True,
with `results` those of the units before it). Units are
`Unit(key, method, seed, info)`; `key` is a relative path (`FADE`,
`ITFR/seed0`) naming the unit folder.

Progress: one line per unit (`[job] unit i/n KEY: done earlier | running |
finished in Ns, ETA ...`) on stderr; jobs print their own per-epoch lines.
The last line gives the call's wall time and the process's peak resident
memory (`peak_rss_gb`), which are not part of `summary.json` (they depend on
the machine and on what a rerun finds done).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import resource
import socket
import sys
import time
from types import ModuleType
from typing import Any

from fairjax import checkpoint as ckpt_lib
from fairjax.errors import ConfigError

CSV_FIELDS = ["method", "seed", "step", "split", "group", "metric", "value"]
RESULT = "result.json"


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One resumable piece of work of a job.

  Attributes:
    key: relative path of the unit's folder under `<workdir>/methods/`.
    method: method name (as in `config.methods`).
    seed: seed index (0 for jobs without seeds).
    info: job-specific extras (JSON-able).
  """
  key: str
  method: str
  seed: int = 0
  info: dict = dataclasses.field(default_factory=dict)


def row(method: str, seed: int, step: int, split: str, group: str,
        metric: str, value: float) -> dict:
  """One metrics.csv row (`CSV_FIELDS`)."""
  return dict(method=method, seed=seed, step=step, split=split, group=group,
              metric=metric, value=value)


class WorkdirLock:
  """An exclusive lock on a workdir: `<workdir>/.lock` holding host and pid.

  Created with O_EXCL, so two processes cannot both hold it. A lock left by
  a process that no longer runs on this host (killed, crashed) is stale and
  is taken over with a log line; a live holder makes `acquire` raise
  ConfigError naming the lock file and the holder.
  """

  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / ".lock"
    self._held = False

  def _holder(self) -> tuple[str, int] | None:
    try:
      host, pid = self.path.read_text().split()
      return host, int(pid)
    except (FileNotFoundError, ValueError):
      return None

  @staticmethod
  def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
      return True  # cannot tell: assume another machine still runs.
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
    return True

  def acquire(self) -> None:
    me = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is not None and self._alive(*holder):
          raise ConfigError(
              f"{self.path}: workdir in use by process {holder[1]} on "
              f"{holder[0]}; wait for it to finish or use another --workdir "
              "(delete the file only if that process is gone)") from None
        log(f"[runner] taking over stale lock {self.path} "
            f"(holder {holder} is not running)")
        try:
          self.path.unlink()
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w") as f:
        f.write(me)
      self._held = True
      return
    raise ConfigError(f"{self.path}: could not take the workdir lock")

  def release(self) -> None:
    if self._held:
      holder = self._holder()
      if holder == (socket.gethostname(), os.getpid()):
        self.path.unlink()
      self._held = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


class StepLog:
  """Rows and extras of a unit's finished steps (e.g. FADE's periods) in
  `<unit dir>/rows.json`, rewritten atomically after each step, so a unit
  killed mid-way knows which steps it need not run again. (The steps sit
  under the key `periods`, the layout of FADE workdirs made earlier.)"""

  def __init__(self, directory: pathlib.Path):
    self.path = pathlib.Path(directory) / "rows.json"
    self.state = (ckpt_lib.read_json(self.path) if self.path.exists() else
                  {"periods": {}})

  def done(self, t: int) -> bool:
    return str(t) in self.state["periods"]

  def add(self, t: int, rows, seconds: float, extra: dict) -> None:
    self.state["periods"][str(t)] = dict(rows=rows, seconds=seconds, **extra)
    ckpt_lib.write_json_atomic(self.path, self.state)

  def truncate(self, last: int) -> None:
    """Forgets the steps after `last` (they are run again)."""
    self.state["periods"] = {k: v for k, v in self.state["periods"].items()
                             if int(k) <= last}


def unit_dir(workdir: str | os.PathLike, unit: Unit | str) -> pathlib.Path:
  key = unit.key if isinstance(unit, Unit) else unit
  return pathlib.Path(workdir) / "methods" / key


def train_and_evaluate(job: ModuleType, config: Any, workdir: str,
                       data_dir: str | None = None) -> dict:
  """Runs `job` under `config` in `workdir` (module docstring); returns the
  summary also written to `<workdir>/summary.json`."""
  stated = config.get("job", job.NAME)
  if stated != job.NAME:
    raise ConfigError(f"field 'job': this config is for job {stated!r}, "
                      f"not {job.NAME!r}")
  t_call = time.perf_counter()
  job.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with WorkdirLock(workdir):
    free = None if job.FREE_FIELDS is None else (*job.FREE_FIELDS, "job")
    ckpt_lib.open_workdir(workdir, config, free,
                          getattr(job, "ADDED_FIELDS", None))
    ctx = job.prepare(config, workdir, data_dir)
    units = list(job.units(config, ctx))
    is_current = getattr(job, "is_current", None)
    results: dict[str, dict] = {}
    t_start, ran = time.perf_counter(), 0
    for i, unit in enumerate(units):
      udir = unit_dir(workdir, unit)
      path = udir / RESULT
      tag = f"[{job.NAME}] unit {i + 1}/{len(units)} {unit.key}"
      if path.exists():
        old = ckpt_lib.read_json(path)
        if is_current is None or is_current(config, ctx, unit, old, results):
          log(f"{tag}: done earlier")
          results[unit.key] = old
          continue
        log(f"{tag}: settings changed since {path}: running again")
      udir.mkdir(parents=True, exist_ok=True)
      t0 = time.perf_counter()
      result = job.run_unit(config, ctx, unit, udir, results)
      ckpt_lib.write_json_atomic(path, result)
      results[unit.key] = result
      ran += 1
      took = time.perf_counter() - t0
      left = sum(1 for u in units[i + 1:]
                 if not (unit_dir(workdir, u) / RESULT).exists())
      eta = (time.perf_counter() - t_start) / ran * left
      log(f"{tag}: finished in {took:.1f}s ({left} left, ETA {eta:.0f}s)")
    rows = [r for unit in units
            for r in job.rows(config, ctx, unit, results[unit.key])]
    ckpt_lib.write_csv_atomic(workdir / "metrics.csv", rows, CSV_FIELDS)
    summary = job.summarise(config, ctx, results, workdir)
    ckpt_lib.write_json_atomic(workdir / "summary.json", summary)
    log(f"[{job.NAME}] wrote {workdir / 'metrics.csv'} and "
        f"{workdir / 'summary.json'}")
    log(f"[{job.NAME}] {ran} of {len(units)} units run here; wall "
        f"{time.perf_counter() - t_call:.1f}s, peak_rss_gb "
        f"{peak_rss_gb():.2f}")
  return summary


def peak_rss_gb() -> float:
  """This process's peak resident memory so far, in GB (Linux reports
  ru_maxrss in KiB, macOS in bytes)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1e9 if sys.platform == "darwin" else 1e9 / 1024)
