"""Request streams for retrieval experiments (FairSync, DESIGN §5).

ML-1M (`prepare_interactions`): each user's ratings are split into train
rows and target rows (`split_per_user`: the first round(train_frac n_u) by
time on ml1m-ts, by a seeded random key on ml1m); the users with targets
are the requests, in order of their first target's time (ml1m-ts) or in a
seeded random order (ml1m). Item group = first genre. `ml1m-tune` is the
held-apart tuning stream: the users 3000-6040 (disjoint from ml1m-ts's
1-2999), their ratings >= 3 in the chronological order of
`ratings_ge3_fade_order.dat` (registry name `ml1m-order`), split and ordered
as ml1m-ts. Synthetic (`synthetic_requests`): a generated catalog and
queries, optionally drifting (`drifting_queries`: the preferred item groups
change over the horizon); a request's targets are the exact
top-`num_targets` items of a noisy copy of its query. `request_stream`
picks one of the two and, on ML-1M, attaches the vectors of a retriever
trained on the train rows and each request's excluded training items.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fairjax.data import protocols, synthetic
from fairjax.data.registry import load_dataset
from fairjax.errors import ConfigError
from fairjax.retrieval import sharded


# ml1m-tune: raw ML-1M user ids from here on (ml1m-ts has 1..2999).
TUNE_FIRST_USER = 3000


class Requests(NamedTuple):
  """What serving and evaluation need.

  Attributes:
    name: dataset name.
    user_emb: float32 [T, d] request vectors in arrival order.
    item_emb: float32 [N, d] item vectors.
    item_group: int32 [N] item groups in [0, G).
    group_names: the G group labels.
    target_ptr: int64 [T + 1], target_items int32: request t's targets are
      target_items[target_ptr[t]:target_ptr[t + 1]] (CSR).
    exclude: int32 [T, E] items never served to request t (its user's
      training items, padded with -1), or None.
  """
  name: str
  user_emb: np.ndarray
  item_emb: np.ndarray
  item_group: np.ndarray
  group_names: tuple[str, ...]
  target_ptr: np.ndarray
  target_items: np.ndarray
  exclude: np.ndarray | None = None


def split_per_user(user: np.ndarray, order_key: np.ndarray, num_users: int,
                   train_frac: float) -> np.ndarray:
  """bool [N]: True for each user's first round(train_frac n_u) rows.

  Rows are ranked within each user by `order_key` (time, or a random key);
  every user with n_u >= 2 keeps >= 1 train and >= 1 target row.
  """
  n = user.shape[0]
  order = np.lexsort((order_key, user))
  cnt = np.bincount(user, minlength=num_users)
  start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n) - start[user[order]]
  n_train = np.clip(np.round(train_frac * cnt), 1, np.maximum(cnt - 1, 1))
  return rank < n_train[user]


def _csr(rows: np.ndarray, items: np.ndarray, num_rows: int):
  order = np.argsort(rows, kind="stable")
  ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_rows))])
  return ptr.astype(np.int64), items[order].astype(np.int32)


class Interactions(NamedTuple):
  """A real dataset cut for retrieval: train rows and ordered requests."""
  name: str
  num_users: int
  num_items: int
  train_user: np.ndarray
  train_item: np.ndarray
  request_users: np.ndarray  # int32 [T], arrival order
  target_ptr: np.ndarray
  target_items: np.ndarray
  item_group: np.ndarray
  group_names: tuple[str, ...]


def prepare_interactions(config, data_dir=None) -> Interactions:
  """ML-1M protocols (see configs/fairsync.py): train rows and requests."""
  chrono = config.dataset in ("ml1m-ts", "ml1m-tune")
  if config.dataset == "ml1m-tune":
    ds = load_dataset("ml1m-order", data_dir or config.data_dir or None)
    ds = ds.subset(ds.raw_user_ids[ds.user] >= TUNE_FIRST_USER, "ml1m-tune")
  else:
    ds = load_dataset(config.dataset, data_dir or config.data_dir or None)
  rng = np.random.default_rng(config.seed)
  if chrono:
    key = ds.timestamp.astype(np.float64) + rng.random(ds.num_interactions
                                                       ) * 1e-3
  else:
    key = rng.random(ds.num_interactions)
  is_train = split_per_user(ds.user, key, ds.num_users, config.train_frac)
  tu, ti = ds.user[~is_train], ds.item[~is_train]
  has = np.bincount(tu, minlength=ds.num_users) > 0
  users = np.nonzero(has)[0]
  if chrono:
    first = np.full(ds.num_users, np.inf)
    np.minimum.at(first, tu, key[~is_train])
    users = users[np.argsort(first[users], kind="stable")]
  else:
    users = np.random.default_rng([config.seed, 1]).permutation(users)
  pos = np.full(ds.num_users, -1, np.int64)
  pos[users] = np.arange(users.size)
  ptr, items = _csr(pos[tu], ti, users.size)
  group = protocols.item_groups_first_genre(ds)
  return Interactions(config.dataset, ds.num_users, ds.num_items,
                      ds.user[is_train], ds.item[is_train],
                      users.astype(np.int32), ptr, items, group,
                      tuple(ds.genre_names))


def training_exclusion(train_user: np.ndarray, train_item: np.ndarray,
                       request_users: np.ndarray,
                       num_users: int) -> np.ndarray:
  """int32 [T, E]: row t = the training items of request t's user, -1 padded.

  E = the largest training count among the requests (at least 1); the items
  of a row keep the order of the train rows. Vectorised (CSR gather).
  """
  order = np.argsort(train_user, kind="stable")
  items = train_item[order].astype(np.int32)
  cnt = np.bincount(train_user, minlength=num_users)
  start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
  c = cnt[request_users]
  out = np.full((request_users.size, max(int(c.max(initial=0)), 1)), -1,
                np.int32)
  row = np.repeat(np.arange(request_users.size), c)
  first = np.concatenate([[0], np.cumsum(c)[:-1]])
  col = np.arange(row.size) - first[row]
  out[row, col] = items[start[request_users][row] + col]
  return out


def _log(msg: str) -> None:
  print(f"[fairsync] {msg}", file=sys.stderr, flush=True)


def request_stream(config, data_dir, mesh,
                   embed: Callable[[Interactions],
                                   tuple[np.ndarray, np.ndarray]]
                   ) -> Requests:
  """The requests of `config.dataset` with their vectors, ready to serve.

  Synthetic: `synthetic_requests` (the generator's vectors; no history, so
  nothing is excluded). ML-1M protocols: `prepare_interactions`, then
  `embed(data) -> (user vectors [U, d], item vectors [I, d])` (FairSync: MF
  + BPR on the train rows, `fairjax.methods.retriever.train_retriever`);
  request t's vector is its user's, and with `config.exclude_train_items`
  its list leaves out that user's training items (`training_exclusion`).

  Args:
    config: the FairSync config (dataset, seed, k, batch_size, synthetic...).
    data_dir: dataset folder (None: `config.data_dir` or the default).
    mesh: the item-sharding mesh (synthetic targets by exact search).
    embed: the retriever, trained (or restored) on `data`'s train rows.

  Returns:
    `Requests` in arrival order.

  Raises:
    ConfigError: naming `k` when K exceeds the catalog (checked before a
      synthetic catalog is generated), `batch_size` when B exceeds T.
  """
  if config.dataset == "synthetic":
    _check_catalog(config.k, config.synthetic.num_items)
    req = synthetic_requests(config, mesh)
  else:
    req = _interaction_requests(config, data_dir, embed)
  t_total = req.user_emb.shape[0]
  _check_catalog(config.k, req.item_emb.shape[0])
  if config.batch_size > t_total:
    raise ConfigError(f"field 'batch_size': B={config.batch_size} is larger "
                      f"than the number of requests T={t_total}")
  sharded.check_groups(req.item_group, len(req.group_names))
  return req


def _check_catalog(k: int, num_items: int) -> None:
  if k > num_items:
    raise ConfigError(f"field 'k': k={k} is larger than the catalog "
                      f"({num_items} items)")


def _interaction_requests(config, data_dir, embed) -> Requests:
  data = prepare_interactions(config, data_dir)
  _log(f"{data.name}: {data.num_users} users, {data.num_items} items, "
       f"{data.train_user.size} train rows, {data.request_users.size} "
       f"requests, {data.target_items.size} targets")
  users, items = embed(data)
  exclude = None
  if config.exclude_train_items:
    exclude = training_exclusion(data.train_user, data.train_item,
                                 data.request_users, data.num_users)
    _log(f"excluding each request user's training items (up to "
         f"{exclude.shape[1]} per request)")
  return Requests(data.name, users[data.request_users], items,
                  data.item_group, data.group_names, data.target_ptr,
                  data.target_items, exclude)


def synthetic_requests(config, mesh) -> Requests:
  """Generated catalog and queries; targets by exact search (config doc)."""
  s = config.synthetic
  emb, group = synthetic.generate_catalog(s.num_items, config.dim,
                                          s.num_groups, seed=config.seed)
  q = synthetic.generate_queries(s.num_requests, config.dim,
                                 seed=config.seed + 1)
  if s.get("drift", 0.0):
    q = drifting_queries(q, emb, group, s.num_groups, s.drift,
                         s.drift_phases, s.drift_groups, seed=config.seed)
  if s.num_targets > s.num_items:
    raise ConfigError(f"field 'synthetic.num_targets': {s.num_targets} > "
                      f"num_items {s.num_items}")
  noise = np.random.default_rng([config.seed, 2]).standard_normal(
      q.shape, dtype=np.float32) * np.float32(s.target_noise /
                                              math.sqrt(config.dim))
  _, tgt = sharded.dual_topk(emb, group, q + noise,
                             np.zeros(s.num_groups, np.float32),
                             s.num_targets, mesh=mesh)
  tgt = np.asarray(tgt, np.int32)
  ptr = np.arange(s.num_requests + 1, dtype=np.int64) * s.num_targets
  return Requests("synthetic", q, emb, group,
                  tuple(f"group{g}" for g in range(s.num_groups)), ptr,
                  tgt.reshape(-1))


def group_directions(item_emb: np.ndarray, item_group: np.ndarray,
                     num_groups: int) -> np.ndarray:
  """float32 [G, d]: unit direction of each group's mean item, axis e_0 (the
  shared popularity axis of `synthetic.generate_catalog`) removed."""
  d = item_emb.shape[1]
  sums = np.zeros((num_groups, d), np.float64)
  np.add.at(sums, item_group, item_emb)  # exact sums; one pass
  sums[:, 0] = 0.0
  norm = np.linalg.norm(sums, axis=1, keepdims=True)
  return (sums / np.maximum(norm, 1e-12)).astype(np.float32)


def drifting_queries(q: np.ndarray, item_emb: np.ndarray,
                     item_group: np.ndarray, num_groups: int, drift: float,
                     phases: int, groups_per_phase: int,
                     seed: int = 0) -> np.ndarray:
  """Requests whose preferred item groups change over the horizon.

  The T requests are cut into `phases` equal consecutive phases; phase p
  prefers a seeded random set S_p of `groups_per_phase` groups (drawn
  afresh each phase), and request t of phase p becomes

    q_t + drift * sum_{g in S_p} c_g / |sum_{g in S_p} c_g|,

  with c_g the unit direction of group g (`group_directions`). So which
  groups are over- and under-exposed by a plain top-K changes abruptly at
  the phase boundaries: a controller that has converged on phase p's
  exposure is wrong for phase p + 1.

  Returns:
    float32 [T, d].
  """
  if phases < 1:
    raise ConfigError(f"field 'synthetic.drift_phases': must be >= 1, got "
                      f"{phases}")
  if not 1 <= groups_per_phase <= num_groups:
    raise ConfigError(f"field 'synthetic.drift_groups': must be in [1, "
                      f"{num_groups}], got {groups_per_phase}")
  c = group_directions(item_emb, item_group, num_groups)
  rng = np.random.default_rng([seed, 3])
  t_total = q.shape[0]
  phase = np.minimum(np.arange(t_total) * phases // t_total, phases - 1)
  pull = np.zeros((phases, q.shape[1]), np.float32)
  for p in range(phases):
    v = c[rng.choice(num_groups, groups_per_phase, replace=False)].sum(0)
    pull[p] = v / max(float(np.linalg.norm(v)), 1e-12)
  return (q + np.float32(drift) * pull[phase]).astype(np.float32)
