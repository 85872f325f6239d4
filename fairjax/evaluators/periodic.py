"""Per-snapshot evaluation of the dynamic protocol (FADE, DESIGN §3).

After snapshot k (k = 0 pretrained, k = 1..9 after fine-tuning on D_k) the
train history is D_0..D_k and the two test tasks are

  Task-R: the interactions of D_{k+1}..D_{10};   Task-N: those of D_{k+1}.

Each task is scored with two protocols:
  sampled: a user's candidates are all their test positives plus 100 fixed
    negatives (drawn once per workdir, `fixed_negatives`);
  full: all items, the user's history items excluded.
Users with no test positive get NaN and drop out of every mean. For each
metric the report holds the mean over users (`all`), the mean per user group,
and PD = mean(group 0) - mean(group 1).

The official FADE measure (`official_metrics`) reads the sampled protocol's
ranked lists differently: only warm users (at least one history interaction
in D_0..D_k) count, and NDCG is normalised by the hits found
(`ndcg_found@K`, `fairjax.metrics.ranking`); recall and F1 are the standard
ones over those users. The FADE job summarises it as the mean over snapshots
1..6 of the warm-user mean and of |PD|.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import metrics as metrics_lib
from fairjax import models as models_lib
from fairjax.data import sampling

METRICS = ("recall", "precision", "f1", "ndcg", "hr")


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """The positives of one (task, snapshot), in padded and dense form."""

  pos_items: np.ndarray  # int32 [U, P] padded with 0
  pos_mask: np.ndarray  # bool [U, P]
  relevant: np.ndarray  # bool [U, I]
  history: np.ndarray  # bool [U, I] train items (excluded in full ranking)


def make_eval_set(users, items, history_users, history_items, num_users,
                  num_items) -> EvalSet:
  """Builds the padded positives of the test interactions (users, items)."""
  relevant = np.zeros((num_users, num_items), bool)
  relevant[users, items] = True
  history = np.zeros((num_users, num_items), bool)
  history[history_users, history_items] = True
  relevant &= ~history  # an item already in the history is not a new target.
  counts = relevant.sum(1)
  width = int(2 ** np.ceil(np.log2(max(int(counts.max()), 1))))
  pos_items = np.zeros((num_users, width), np.int32)
  pos_mask = np.arange(width)[None, :] < counts[:, None]
  u_idx, i_idx = np.nonzero(relevant)  # row-major: grouped by user.
  pos_items[pos_mask] = i_idx.astype(np.int32)
  return EvalSet(pos_items, pos_mask, relevant, history)


class Evaluator:
  """Scores a parameter snapshot on an EvalSet; jitted functions are cached."""

  def __init__(self, model, eval_negatives: np.ndarray, ks=(20,),
               chunk_size: int = 1024, pair_fn=None, all_fn=None,
               full_ranking: bool = True, sampled_chunk_size: int = 256,
               sampled_from_all: bool | None = None):
    """`pair_fn(params, users, items)` / `all_fn(params, users)` override the
    backbone's scoring (ADVER scores through its filter).

    `sampled_from_all`: the sampled protocol's candidate scores are read
    from each user's scores against every item (`all_fn`, one [users, d] x
    [d, I] product for MF) instead of scoring the candidates pair by pair
    (a [users, candidates, d] gather: a Task-R row holds up to ~1,000
    future positives). None: on for the backbones whose scores are rows'
    inner products (`gradient_layout` 'rows': MF) when no `pair_fn` is
    given. The two differ in the float32 summation order of the scores."""
    self.model = model
    self.pair_fn = pair_fn or (
        lambda p, u, i: models_lib.pair_scores(model, p, u, i))
    self.all_fn = all_fn or (lambda p, u: models_lib.all_scores(model, p, u))
    if sampled_from_all is None:
      sampled_from_all = (pair_fn is None and all_fn is None and
                          models_lib.gradient_layout(model) == "rows")
    self.sampled_from_all = bool(sampled_from_all)
    self.full_ranking = full_ranking
    self.negatives = np.asarray(eval_negatives)  # used host-side only
    self.ks = tuple(int(k) for k in ks)
    self.chunk_size = chunk_size
    self.sampled_chunk_size = sampled_chunk_size
    self._sampled_scores = jax.jit(self._sampled_scores_impl)
    self._sampled_metrics = jax.jit(
        functools.partial(metrics_lib.sampled_rank_metrics, ks=self.ks),
        static_argnames=("found",))
    self._full_scores = jax.jit(self._full_scores_impl)

  def _sampled_scores_impl(self, params, users, pos_items, neg_items):
    if self.sampled_from_all:
      scores = self.all_fn(params, users)  # [users, I]
      return (jnp.take_along_axis(scores, pos_items, axis=1),
              jnp.take_along_axis(scores, neg_items, axis=1))
    return (self.pair_fn(params, users, pos_items),
            self.pair_fn(params, users, neg_items))

  def _full_scores_impl(self, params, users):
    return self.all_fn(params, users)

  def sampled(self, params, es: EvalSet, negatives=None, found: bool = False
              ) -> dict[str, np.ndarray]:
    """Per-user sampled-protocol metrics; `negatives` [U, n] (-1 = none)
    replace the fixed ones; `found` adds `ndcg_found@K`."""
    if es.pos_items.shape[0] == 0:
      raise ValueError("sampled evaluation of an empty user set")
    all_negs = (self.negatives if negatives is None
                else np.asarray(negatives))
    pos, neg = self._scores_of_users_with_positives(
        params, es, np.maximum(all_negs, 0))
    out = self._sampled_metrics(pos, neg, jnp.asarray(es.pos_mask),
                                neg_mask=jnp.asarray(all_negs >= 0),
                                found=found)
    return {k: np.asarray(v) for k, v in out.items()}

  def _scores_of_users_with_positives(self, params, es: EvalSet,
                                      negatives: np.ndarray):
    """(pos [U, P], neg [U, n]) candidate scores (host arrays); rows of
    users without a test positive are left 0 (their metrics are NaN
    whatever the scores).

    The users with a positive (often a small share: a Task-N period holds
    7-14% of ML-1M's users) are scored in blocks of one padded size, which
    bounds the [users, candidates, d] gathers (the padded positives of a
    test period can be ~1,000 wide); every block has the shape of the
    earlier all-user blocks and a user's scores do not depend on its block
    or position in it, so the metrics are those of scoring everyone. The
    blocks are cut and the scores put back in NumPy: their sizes change
    with every snapshot, and device ops on them would compile anew each
    time.
    """
    num_users, width = es.pos_items.shape
    pos = np.zeros((num_users, width), np.float32)
    neg = np.zeros(negatives.shape, np.float32)
    active = np.flatnonzero(np.asarray(es.pos_mask).any(axis=1))
    if active.size == 0:
      return pos, neg
    c = min(self.sampled_chunk_size, num_users)
    users = np.resize(active, -(-active.size // c) * c)  # repeats pad
    pos_items = np.asarray(es.pos_items)[users]
    neg_items = negatives[users]
    for start in range(0, users.size, c):
      block = slice(start, start + c)
      p, n = self._sampled_scores(params, users[block], pos_items[block],
                                  neg_items[block])
      rows = active[start:start + c]  # the block less its padding
      pos[rows] = np.asarray(p)[:rows.size]
      neg[rows] = np.asarray(n)[:rows.size]
    return pos, neg

  def full(self, params, es: EvalSet) -> dict[str, np.ndarray]:
    num_users = es.relevant.shape[0]
    scores = self._full_scores(params, jnp.arange(num_users))
    out = metrics_lib.rank_metrics(scores, jnp.asarray(es.relevant),
                                   ks=self.ks, exclude=jnp.asarray(es.history))
    return {k: np.asarray(v) for k, v in out.items()}


def official_metrics(per_user: dict[str, np.ndarray], warm: np.ndarray,
                     ks) -> dict[str, np.ndarray]:
  """The official FADE measure from `Evaluator.sampled(..., found=True)`:
  {ndcg@K (= ndcg_found@K), recall@K, f1@K}, NaN for users not `warm`."""
  out = {}
  for k in ks:
    for name, src in ((f"ndcg@{k}", f"ndcg_found@{k}"),
                      (f"recall@{k}", f"recall@{k}"), (f"f1@{k}", f"f1@{k}")):
      out[name] = np.where(warm, np.asarray(per_user[src], np.float64), np.nan)
  return out


def summarise(per_user: dict[str, np.ndarray], user_group: np.ndarray,
              group_names: tuple[str, ...]) -> dict[str, dict[str, float]]:
  """Per-user metric vectors -> {'all'|group name: {metric: mean}} and PD.

  PD (key 'pd') = mean over group-0 users minus mean over group-1 users.
  """
  out: dict[str, dict[str, float]] = {"all": {}, "pd": {}}
  for name in group_names:
    out[name] = {}
  for key, vals in per_user.items():
    vals = np.asarray(vals, np.float64)
    out["all"][key] = _nanmean(vals)
    means = []
    for g, name in enumerate(group_names):
      m = _nanmean(vals[user_group == g])
      out[name][key] = m
      means.append(m)
    out["pd"][key] = means[0] - means[1] if len(means) >= 2 else float("nan")
  return out


def _nanmean(x: np.ndarray) -> float:
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else float("nan")


def snapshot_metrics(evaluator: Evaluator, params, data, snapshot: int, *,
                     redraw_seed=None, num_negatives: int = 100
                     ) -> dict[str, dict[str, dict[str, float]]]:
  """Every task, protocol and group of one snapshot of `data` (a FadeData).

  Returns {f'{task}/{protocol}': `summarise` output} for task in task_r,
  task_n and protocol in sampled, official (`official_metrics`: warm users,
  found-normalised NDCG, from the same ranked lists), full (when the
  evaluator ranks fully). With `redraw_seed` (a tuple of ints) the sampled
  candidates' negatives are drawn for this (task, snapshot) among the
  history's items minus the user's history and test items, seeded by
  (*redraw_seed, snapshot, task index), instead of the evaluator's fixed set.
  """
  out = {}
  hist = data.period <= snapshot
  warm = np.bincount(data.user[hist], minlength=data.num_users) > 0
  tasks = (("task_r", range(snapshot + 1, int(data.period.max()) + 1)),
           ("task_n", [snapshot + 1]))
  for task_id, (task, periods) in enumerate(tasks):
    test = np.isin(data.period, list(periods))
    es = make_eval_set(data.user[test], data.item[test], data.user[hist],
                       data.item[hist], data.num_users, data.num_items)
    negatives = None
    if redraw_seed is not None:
      negatives = sampling.eval_negatives(
          (*redraw_seed, snapshot, task_id), es.history, es.relevant,
          np.unique(data.item[hist]), data.num_users, n=num_negatives)
    sampled = evaluator.sampled(params, es, negatives, found=True)
    per_protocol = {
        "sampled": {k: v for k, v in sampled.items()
                    if not k.startswith("ndcg_found")},
        "official": official_metrics(sampled, warm, evaluator.ks)}
    if evaluator.full_ranking:
      per_protocol["full"] = evaluator.full(params, es)
    for protocol, per_user in per_protocol.items():
      out[f"{task}/{protocol}"] = summarise(per_user, data.user_group,
                                            data.group_names)
  return out


def fixed_negatives(data, path, seed: int, n: int) -> np.ndarray:
  """The sampled protocol's fixed negatives [U, n] (`data` a FadeData):
  items of D_0 the user never interacts with, in any period.

  One set per workdir (saved at `path`, reloaded on reruns) serves every
  method, snapshot and task, so all methods face the same candidates; it
  never collides with a train or test positive.
  """
  def make():
    all_seen = data.seen(int(data.period.max()))
    pool = np.unique(data.item[data.period == 0])
    return sampling.eval_negatives(seed, all_seen, all_seen, pool,
                                   data.num_users, n=n)
  return sampling.load_or_create_eval_negatives(path, make)


def over_periods(rows: list[dict], methods, protocol: str, names,
                 last: int | None = None) -> dict:
  """{task: {method: {name: mean, pd_name: mean |PD|}}} over snapshots.

  `rows` are metrics.csv rows (`runner.row`) of `snapshot_metrics` outputs;
  for task in task_r, task_n the value of `name` is the mean over snapshots
  (up to `last` when given) of the all-user value, `pd_name` the mean of
  |PD_t|. NaN snapshots drop out; a metric absent from the rows is left out.
  """
  acc: dict = {}
  for r in rows:
    if r["group"] in ("all", "pd") and (last is None or r["step"] <= last):
      key = (r["split"], r["method"], r["group"], r["metric"])
      acc.setdefault(key, []).append(r["value"])
  out = {}
  for task in ("task_r", "task_n"):
    out[task] = {}
    for method in methods:
      vals = {}
      for name in names:
        a = acc.get((f"{task}/{protocol}", method, "all", name))
        p = acc.get((f"{task}/{protocol}", method, "pd", name))
        if a is not None:
          vals[name] = float(np.nanmean(a))
          vals[f"pd_{name}"] = float(np.nanmean(np.abs(p)))
      out[task][method] = vals
  return out
