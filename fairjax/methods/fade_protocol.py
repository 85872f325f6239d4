"""FADE's two protocols: `standard` (ours) and `official` (the paper's code).

The official FADE code (Yoo et al., `hsyoo32/fade` v1.0, `src/helpers/`)
differs from our standard protocol in six training and evaluation details.
`protocol=official` switches all six on; each is also its own config field
under `official.` (None = follow `protocol`, True/False = force), so their
effects can be measured one at a time:

  fair_pretrain          FADE pretrains its 100 epochs on D_0 with
                         L_rec + lambda L_fair (`Runner.py` ~116, 174, 284);
                         the other methods share one plain-BPR pretraining.
                         (FADE-RETRAIN already trains with FADE's loss.)
  chrono_batches         fixed chronological mini-batches of `batch_size`
                         rows; pretraining and retraining shuffle the batch
                         order only; fine-tuning runs the period's batches in
                         time order with negatives drawn once per period and
                         reused for all its epochs (`Reader.py` ~209-211,
                         `Runner.py` ~167, 212-225). Standard: rows reshuffled
                         every epoch, negatives redrawn every step.
  global_negatives       training negatives exclude every item the user
                         interacts with in the whole dataset, future test
                         items included (`Reader.py` ~200, `Model.py`
                         ~254-272). This leaks the test set into training:
                         it is the official behaviour, reproduced to match
                         its figure, not endorsed. Standard: negatives
                         exclude only the history D_0..D_t.
  randint_negatives      training negatives drawn as the official sampler
                         (`Model._sample_neg_items`, `_randint_w_exclude`):
                         Python `randint(1, n_items - 1)` over its item ids,
                         which number items by first appearance in time
                         (its mini-batch files), so the item of the first
                         interaction (its id 0; ML-1M movie 858) is never a
                         negative; and the negatives of a row are distinct
                         (`sampling.sample_negatives(skip=, distinct=True)`).
                         Standard: uniform over all unseen items, drawn
                         independently per slot.
  split_floor            D_0 = the first int(pretrain_frac * nb) batches
                         (floor); standard rounds half up.
  redraw_eval_negatives  the 100 evaluation negatives are drawn again for
                         every (task, snapshot) among the items of the
                         history D_0..D_t, minus the user's history and test
                         items (`Runner.generate_recommendation_list_for_a_
                         user`). Standard: one fixed set per workdir, drawn
                         among D_0's items minus everything the user ever
                         interacts with.

Both evaluation measures are always computed, whatever the protocol (see
`fairjax.evaluators.periodic` and the FADE job): the standard one and the
official one (warm users only, `ndcg_found` normalisation, mean |PD| over
snapshots 1..`OFFICIAL_LAST_SNAPSHOT`).
"""

from __future__ import annotations

import numpy as np

from fairjax.data import batching
from fairjax.errors import ConfigError

PROTOCOLS = ("standard", "official")
SWITCHES = ("fair_pretrain", "chrono_batches", "global_negatives",
            "randint_negatives", "split_floor", "redraw_eval_negatives")
# The official summary averages snapshots 1..6 (`Runner.py` ~360-376).
OFFICIAL_LAST_SNAPSHOT = 6


def switches(config) -> dict[str, bool]:
  """The six switches of `config`: `official.<name>` when set (not None),
  else on exactly when `config.protocol == 'official'`."""
  validate(config)
  on = config.protocol == "official"
  out = {}
  for name in SWITCHES:
    value = config.official.get(name)
    out[name] = on if value is None else bool(value)
  return out


def validate(config) -> None:
  """Raises ConfigError naming the field for a bad protocol or switch."""
  if config.protocol not in PROTOCOLS:
    raise ConfigError(f"field 'protocol': {config.protocol!r} is not one of "
                      f"{', '.join(PROTOCOLS)}")
  unknown = sorted(set(config.official.keys()) - set(SWITCHES))
  if unknown:
    raise ConfigError(f"field 'official': unknown switch(es) {unknown}; "
                      f"valid: {', '.join(SWITCHES)}")
  for name in SWITCHES:
    value = config.official.get(name)
    if value is not None and not isinstance(value, (bool, np.bool_)):
      raise ConfigError(f"field 'official.{name}': True, False or None, got "
                        f"{value!r}")


def negative_sampler(config, first_item: int) -> dict[str, int | bool]:
  """The training-negative keywords of `sampling.sample_negatives` for
  `config`: with `randint_negatives` {'skip': first_item, 'distinct':
  True}, `first_item` the item of the first interaction in time order (the
  official code's item 0); else the standard sampler's {'skip': -1,
  'distinct': False}."""
  on = switches(config)["randint_negatives"]
  return {"skip": int(first_item) if on else -1, "distinct": on}


def describe(config) -> str:
  """One line: the protocol and the switches that are on."""
  on = [k for k, v in switches(config).items() if v]
  return f"protocol {config.protocol} (switches on: {', '.join(on) or 'none'})"


def chrono_batches(user: np.ndarray, item: np.ndarray, rows: np.ndarray,
                   batch_size: int, seed_parts=None) -> dict[str, np.ndarray]:
  """The rows (chronological indices) cut into consecutive fixed batches.

  Returns {user, item, valid} [steps, batch_size]; the last batch is padded
  (invalid). With `seed_parts` the order of the batches (not the rows inside
  them) is permuted by `numpy.random.default_rng(list(seed_parts))`, as the
  official pretraining's DataLoader(batch_size=1, shuffle=True) over saved
  batches does; without, they stay in time order.
  """
  rows = np.sort(np.asarray(rows))
  steps = -(-rows.size // batch_size)
  order = (np.arange(steps) if seed_parts is None else
           np.random.default_rng(list(seed_parts)).permutation(steps))
  return batching.stack_batches({"user": user, "item": item}, rows,
                                batch_size, order)
