"""A whole FADE run on ML-1M against its optimiser floor, same process.

`run` trains and evaluates one method (FADE by default) on `ml1m-order`
with MF, exactly as `launch.fade` does (pretraining on D_0, fine-tuning on
D_1..D_9, the sampled, full-ranking and official evaluations of every
snapshot), in a temporary workdir, and reports:

  * `run_seconds`: wall time of `runner.train_and_evaluate` (data loading,
    compilation, checkpoints and evaluation included; the interpreter's
    start and imports are not);
  * `peak_rss_gb`: the process's peak resident memory after the run (the
    run comes first, so it is the run's peak);
  * `pretrain_seconds` and `finetune_seconds`: training time alone as the
    job counts it (`train.fit`'s `train_seconds`: the epochs with their
    host-side batching; compilation excluded; pretraining's checkpoint every
    10 epochs included), from `Trainer.pretrain_seconds` and the summary's
    `seconds_per_period`; `other_seconds`, the rest (evaluation, data
    loading, compilation, fine-tuning checkpoints);
  * `optimizer_floor_seconds_per_step`: one jitted dense Adam + L2 update
    of the same parameter shapes (`fade.optimizer_floor`, 1,300 steps),
    measured after the run in the same process, and `run_floor_seconds`:
    that times the run's training steps (`steps`); `run_over_floor` =
    run_seconds / run_floor_seconds is the figure that transfers between
    machines.
`launch.bench --bench=fade_run` runs FADE on `ml1m-order` (real data:
`--data_dir` or $FAIRJAX_DATA_DIR); `run` takes any config of a method in
`FINE_TUNED`.
"""

from __future__ import annotations

import sys
import tempfile
import time
import types

import jax

from fairjax import runner
from fairjax.bench import fade as fade_bench
from fairjax.errors import ConfigError
from fairjax.jobs import fade as fade_job
from fairjax.methods import fade as F


# Methods that pretrain once and then fine-tune `epochs` per period.
FINE_TUNED = frozenset({"FINETUNE", "FADE", "REC"})


def _log(msg: str) -> None:
  print(f"[bench fade_run] {msg}", file=sys.stderr, flush=True)


def run(config, data_dir: str | None = None, seed: int = 0,
        floor_steps: int = 1300) -> dict:
  """Runs the whole job once under `config` (a `configs/fade.py`
  ConfigDict; its `seed` is replaced by `seed`); returns the figures of the
  module doc; `floor_steps` updates are timed for the floor."""
  config = config.copy_and_resolve_references()
  config.seed = seed
  methods = F.method_list(config)
  if not set(methods) <= FINE_TUNED:
    raise ConfigError(f"field 'methods': the fade_run bench counts the steps "
                      f"of {', '.join(sorted(FINE_TUNED))} only, got "
                      f"{','.join(methods)}")
  _log(f"{config.dataset} {config.model}, methods {','.join(methods)}: one "
       "whole run ...")
  # The job as is, but keeping its context (data, trainer and the trainer's
  # pretraining time) for the figures below.
  job = types.SimpleNamespace(**{k: getattr(fade_job, k) for k in
                                 dir(fade_job) if not k.startswith("__")})
  contexts = []

  def prepare(*args):
    contexts.append(fade_job.prepare(*args))
    return contexts[-1]

  job.prepare = prepare
  with tempfile.TemporaryDirectory(prefix="fairjax_fade_run_") as workdir:
    t0 = time.perf_counter()
    summary = runner.train_and_evaluate(job, config, workdir, data_dir)
    run_seconds = time.perf_counter() - t0
  rss = runner.peak_rss_gb()
  ctx = contexts[0]  # the run's data, model and trainer
  steps_of = lambda n: -(-n // config.batch_size)  # noqa: E731
  sizes = list(ctx.data.period_sizes)
  pretrain_steps = config.pretrain_epochs * steps_of(sizes[0])
  finetune_steps = config.epochs * sum(
      steps_of(n) for n in sizes[1:config.num_periods + 1])
  finetune_seconds = config.num_periods * float(sum(
      summary["seconds_per_period"][m] for m in methods))
  pretrains = ctx.trainer.pretrain_seconds  # one per pretraining
  pretrain_seconds = float(sum(pretrains.values()))
  pretrain_steps *= len(pretrains)
  _log(f"run {run_seconds:.1f} s, peak memory {rss:.2f} GB")
  params = ctx.trainer.init_state(jax.random.key(seed)).params
  floor = fade_bench.optimizer_floor(params, ctx.trainer.tx,
                                     floor_steps) / floor_steps
  steps = pretrain_steps + len(methods) * finetune_steps
  _log(f"optimizer floor {floor * 1e3:.3f} ms per step; {steps} steps")
  return {
      "dataset": config.dataset, "model": config.model, "methods": methods,
      "fused_update": bool(config.get("fused_update")),
      "run_seconds": run_seconds, "peak_rss_gb": rss,
      "pretrain_seconds": pretrain_seconds,
      "finetune_seconds": finetune_seconds,
      "other_seconds": run_seconds - pretrain_seconds - finetune_seconds,
      "steps": steps, "pretrain_steps": pretrain_steps,
      "optimizer_floor_seconds_per_step": floor,
      "run_floor_seconds": floor * steps,
      "run_over_floor": run_seconds / (floor * steps)}
