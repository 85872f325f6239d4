"""FADE fine-tuning speed on the official code's period shape.

One period: 33,280 interactions over 6,039 users and 3,628 items, MF d=64,
batch 256, 4 negatives, 10 epochs, Adam(lr 1e-3) with coupled L2 1e-4 on all
non-bias weights (dense, as torch's Adam(weight_decay)). Ids are synthetic
(uniform users, Zipf-like items); only the shapes matter for speed. Reported:
`seconds_per_period` (FADE) and `finetune_seconds_per_period` (lambda = 0),
medians over repeats with compilation excluded, plus one pretraining epoch
of 501,760 interactions. Reference figures of the official PyTorch code on
this class of CPU: 9.6 s (FADE) and 8.4 s (FINETUNE) per period, 34 s per
pretraining epoch.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from fairjax import models as models_lib
from fairjax.methods import fade as F

NUM_USERS, NUM_ITEMS, PERIOD, PRETRAIN = 6039, 3628, 33_280, 501_760


def _data(seed: int) -> F.FadeData:
  rng = np.random.default_rng(seed)
  n = PRETRAIN + PERIOD
  pop = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.8
  user = rng.integers(0, NUM_USERS, n).astype(np.int32)
  item = rng.choice(NUM_ITEMS, n, p=pop / pop.sum()).astype(np.int32)
  period = np.r_[np.zeros(PRETRAIN, np.int32), np.ones(PERIOD, np.int32)]
  group = (rng.random(NUM_USERS) < 0.28).astype(np.int32)
  return F.FadeData("bench", NUM_USERS, NUM_ITEMS, user, item, period,
                    (PRETRAIN, PERIOD), group, ("M", "F"))


def run(config, seed: int = 0, repeats: int = 3) -> dict:
  """Times one period; `config` a `configs/fade.py` ConfigDict (its
  optimiser and loss fields are used; the data shape is fixed above)."""
  data = _data(seed)
  model = models_lib.create("mf", NUM_USERS, NUM_ITEMS, dim=64)
  trainer = F.Trainer(model, F.make_optimizer(config), config)
  seen = data.seen(1)
  rows = data.rows([1])
  out = {}
  for name, kind, lam in (("finetune", "bpr", 0.0),
                          ("fade", "fade", config.fade.lam)):
    times = []
    for r in range(repeats):
      state = trainer.init_state(jax.random.key(seed))
      state, info = trainer.run_epochs(state, data, rows, kind, lam, 10,
                                       (seed, r), jax.random.key(r), seen)
      times.append(info["train_seconds"])
      print(f"[bench fade] {name} repeat {r + 1}/{repeats}: "
            f"{info['train_seconds']:.3f} s (compile "
            f"{info['compile_seconds']:.2f} s)", file=sys.stderr, flush=True)
    out[name] = float(np.median(times))
  state = trainer.init_state(jax.random.key(seed))
  _, info = trainer.run_epochs(state, data, data.rows([0]), "bpr", 0.0, 1,
                               (seed, 9), jax.random.key(9), data.seen(0))
  print(f"[bench fade] pretraining epoch: {info['train_seconds']:.2f} s",
        file=sys.stderr, flush=True)
  return {
      "seconds_per_period": out["fade"],
      "finetune_seconds_per_period": out["finetune"],
      "fade_over_finetune": out["fade"] / out["finetune"],
      "pretrain_seconds_per_epoch": info["train_seconds"],
      "official_fade_seconds_per_period_cpu": 9.6,
      "official_finetune_seconds_per_period_cpu": 8.4,
      "speedup_vs_official_fade": 9.6 / out["fade"],
      "interactions_per_period": PERIOD, "users": NUM_USERS,
      "items": NUM_ITEMS, "epochs": 10, "batch_size": 256, "negatives": 4,
  }
