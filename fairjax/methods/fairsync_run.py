"""`train_and_evaluate(config, workdir)`: FairSync and its baselines, resumable.

Pipeline (DESIGN.md section 5; config `configs/fairsync.py` documents the
data protocols and how m_g is chosen):
  1. data: train interactions, the requests u_1..u_T in arrival order, each
     request's target items, the item groups (first genre on ML-1M);
  2. base retriever: MF trained with BPR (4 uniform negatives among unseen
     items) on `fairjax.train.fit`; the synthetic catalog uses the
     generator's vectors instead;
  3. `unconstrained` serving first: its exposure E0 fixes m_g;
  4. every method of `config.methods` served with `fairjax.methods.fairsync
     .serve` (items sharded over `config.shards` devices);
  5. per method: ESP = (1/G) sum_g 1[E_g >= m_g], and Recall/NDCG/HR@K of
     the served lists against the targets (users averaged).

Training items are excluded (`config.exclude_train_items`, default True):
on ml1m / ml1m-ts each request's list is the exact (biased) top-K over the
catalog minus that user's training items (`exclude` of `fairsync.serve`),
the standard full-ranking protocol, so no slot or exposure goes to an item
that cannot be a hit. False serves over the whole catalog (the earlier
behaviour; recall is then a lower bound of the masked one). The synthetic
requests are fresh query vectors with no interaction history: nothing to
exclude.

Workdir layout:
  retriever/ckpt/             MF state (train.fit resumes / skips it)
  min_exposure.json           f, base_g, m_g, E0
  methods/M/result.json       metrics, exposure and mu over time, seconds
  metrics.csv, summary.json, config.json
A rerun with the same workdir skips the trained retriever and every finished
method.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import checkpoint as ckpt_lib
from fairjax import metrics as metrics_lib
from fairjax import models as models_lib
from fairjax import ops
from fairjax import train
from fairjax.data import protocols, sampling, synthetic
from fairjax.data.registry import load_dataset
from fairjax.errors import ConfigError
from fairjax.methods import fairsync
from fairjax.ops import dual as dual_ops
from fairjax.retrieval import sharded

CSV_FIELDS = ["method", "batch", "requests", "group", "metric", "value"]
ACCURACY = ("recall", "ndcg", "hr")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


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


def method_list(config) -> list[str]:
  return [m.strip() for m in str(config.methods).split(",") if m.strip()]


def validate_config(config) -> None:
  """Raises ConfigError naming the field for a bad setting."""
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"field '{field}': {msg}")
  need(config.dataset in ("ml1m", "ml1m-ts", "synthetic"), "dataset",
       f"expected ml1m, ml1m-ts or synthetic, got {config.dataset!r}")
  bad = [m for m in method_list(config) if m not in fairsync.METHODS]
  need(not bad and method_list(config), "methods",
       f"unknown method(s) {bad}; choose from {list(fairsync.METHODS)}")
  need(str(config.model).lower() == "mf", "model",
       f"the FairSync retriever is mf, got {config.model!r}")
  need(config.k >= 1, "k", f"must be >= 1, got {config.k}")
  need(config.batch_size >= 1, "batch_size",
       f"must be >= 1, got {config.batch_size}")
  need(config.eta > 0, "eta", f"must be > 0, got {config.eta}")
  need(config.headroom >= 0, "headroom",
       f"must be >= 0, got {config.headroom}")
  need(config.exposure_frac >= 0, "exposure_frac",
       f"must be >= 0 (0 = auto), got {config.exposure_frac}")
  need(0 < config.train_frac < 1, "train_frac",
       f"must be in (0, 1), got {config.train_frac}")
  need(config.shards >= 1, "shards", f"must be >= 1, got {config.shards}")
  need(config.epochs >= 0, "epochs", f"must be >= 0, got {config.epochs}")
  need(isinstance(config.exclude_train_items, bool), "exclude_train_items",
       f"must be True or False, got {config.exclude_train_items!r}")


def make_mesh(shards: int):
  """The item-shard mesh over the first `shards` devices (None for 1)."""
  if shards == 1:
    return None
  devs = jax.devices()
  if len(devs) < shards:
    raise ConfigError(
        f"field 'shards': {shards} shards but only {len(devs)} device(s); on "
        f"CPU set XLA_FLAGS=--xla_force_host_platform_device_count={shards}")
  return jax.make_mesh((shards,), (sharded.AXIS,), devices=devs[:shards],
                       axis_types=(jax.sharding.AxisType.Explicit,))


# ----------------------------------------------------------------------------
# Data.


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
  ds = load_dataset(config.dataset, data_dir or config.data_dir or None)
  rng = np.random.default_rng(config.seed)
  if config.dataset == "ml1m-ts":
    key = ds.timestamp.astype(np.float64) + rng.random(ds.num_interactions
                                                       ) * 1e-3
  else:
    key = rng.random(ds.num_interactions)
  is_train = split_per_user(ds.user, key, ds.num_users, config.train_frac)
  tu, ti = ds.user[~is_train], ds.item[~is_train]
  has = np.bincount(tu, minlength=ds.num_users) > 0
  users = np.nonzero(has)[0]
  if config.dataset == "ml1m-ts":
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


def _bpr_loss(model, num_negatives: int) -> train.LossFn:
  def loss_fn(params, batch, rng, aux, context):
    users = batch["user"]
    neg = sampling.sample_negatives(rng, context["seen"], users,
                                    num_negatives)
    cand = jnp.concatenate([batch["item"][:, None], neg], axis=1)
    s = models_lib.pair_scores(model, params, users, cand)
    w = batch["valid"].astype(s.dtype)
    loss = jnp.sum(ops.bpr_loss(s[:, 0], s[:, 1:]) * w) / jnp.maximum(
        jnp.sum(w), 1.0)
    return loss, ({}, aux)
  return loss_fn


def train_retriever(config, data: Interactions, workdir: pathlib.Path
                    ) -> tuple[np.ndarray, np.ndarray]:
  """MF + BPR on the train rows; returns (user vectors [U, d], items [I, d]).

  Adam (lr `config.lr`) with coupled L2 `config.l2`; checkpointed under
  workdir/retriever/ckpt, so a rerun restores instead of retraining.
  """
  model = models_lib.create(config.model, data.num_users, data.num_items,
                            dim=config.dim, init_std=config.init_std)
  tx = optax.chain(optax.add_decayed_weights(config.l2),
                   optax.adam(config.lr))
  rng = jax.random.key(config.seed)
  state = train.create_state(models_lib.init_params(model, rng), tx)
  seen = sampling.interaction_matrix(data.train_user, data.train_item,
                                     data.num_users, data.num_items)
  sampling.check_sampleable(seen)
  n, bs = data.train_user.size, config.train_batch_size

  def batches(epoch):
    perm = np.random.default_rng([config.seed, 7, epoch]).permutation(n)
    steps = -(-n // bs)
    pad = steps * bs - n
    idx = np.concatenate([perm, np.zeros(pad, perm.dtype)])
    valid = np.arange(steps * bs) < n
    return {"user": data.train_user[idx].reshape(steps, bs),
            "item": data.train_item[idx].reshape(steps, bs),
            "valid": valid.reshape(steps, bs)}

  epoch_fn = train.make_epoch(train.make_step(
      _bpr_loss(model, config.num_negatives), tx))
  state, _ = train.fit(state, epoch_fn, batches, config.epochs,
                       jax.random.fold_in(rng, 1), context={"seen": seen},
                       checkpoint_dir=workdir / "retriever" / "ckpt",
                       ckpt_every=5, name="retriever",
                       log_every=max(1, config.epochs // 10))
  users = models_lib.user_embeddings(model, state.params,
                                     jnp.arange(data.num_users))
  items = models_lib.item_embeddings(model, state.params,
                                     jnp.arange(data.num_items))
  return np.asarray(users, np.float32), np.asarray(items, np.float32)


def synthetic_requests(config, mesh) -> Requests:
  """Generated catalog and queries; targets by exact search (config doc)."""
  s = config.synthetic
  emb, group = synthetic.generate_catalog(s.num_items, config.dim,
                                          s.num_groups, seed=config.seed)
  q = synthetic.generate_queries(s.num_requests, config.dim,
                                 seed=config.seed + 1)
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


def prepare_requests(config, workdir, data_dir, mesh) -> Requests:
  if config.dataset == "synthetic":
    return synthetic_requests(config, mesh)
  data = prepare_interactions(config, data_dir)
  _log(f"[fairsync] {data.name}: {data.num_users} users, {data.num_items} "
       f"items, {data.train_user.size} train rows, "
       f"{data.request_users.size} requests, {data.target_items.size} "
       "targets")
  users, items = train_retriever(config, data, workdir)
  exclude = None
  if config.exclude_train_items:
    exclude = training_exclusion(data.train_user, data.train_item,
                                 data.request_users, data.num_users)
    _log(f"[fairsync] excluding each request user's training items (up to "
         f"{exclude.shape[1]} per request)")
  return Requests(data.name, users[data.request_users], items,
                  data.item_group, data.group_names, data.target_ptr,
                  data.target_items, exclude)


# ----------------------------------------------------------------------------
# Minimums and metrics.


def choose_min_exposure(unconstrained_exposure, k: int, horizon: int,
                        group_sizes, frac: float, item_cap: float,
                        target_esp: float = 0.6
                        ) -> tuple[np.ndarray, float, np.ndarray]:
  """m_g = f base_g, base_g = min(K T / G, item_cap T |I_g|).

  f = `frac` when > 0; otherwise the smallest f with unconstrained ESP <=
  `target_esp`: with r_g = E0_g / base_g sorted descending and a =
  floor(target_esp G) the groups allowed to be met, f = r_(a+1) (1 + 1e-6)
  (capped at 1), so only the a groups with the largest r_g can satisfy
  E0_g >= m_g.

  Returns:
    (m [G] float32, f, base [G]).
  """
  e0 = np.asarray(unconstrained_exposure, np.float64)
  sizes = np.asarray(group_sizes, np.float64)
  g = e0.size
  base = np.minimum(k * horizon / g, item_cap * horizon * sizes)
  if frac > 0:
    f = float(frac)
  else:
    r = np.sort(e0 / np.maximum(base, 1e-12))[::-1]
    allowed = int(math.floor(target_esp * g + 1e-9))
    f = float(min(r[min(allowed, g - 1)] * (1 + 1e-6), 1.0))
  return (f * base).astype(np.float32), f, base


def accuracy(ids: np.ndarray, target_ptr: np.ndarray,
             target_items: np.ndarray, num_items: int, k: int,
             max_cells: int = 1 << 26) -> dict[str, float]:
  """Mean over requests of Recall/NDCG/HR@K (`metrics.topk_metrics`).

  The relevant matrix is built for blocks of requests (at most `max_cells`
  booleans at a time), so a 10^6-item catalog fits in memory. Requests
  without a target are left out (NaN, `nanmean`).
  """
  t_total = ids.shape[0]
  rows = max(1, min(t_total, max_cells // max(num_items, 1)))
  sums = {m: 0.0 for m in ACCURACY}
  count = 0
  for lo in range(0, t_total, rows):
    hi = min(t_total, lo + rows)
    rel = np.zeros((hi - lo, num_items), bool)
    seg = target_ptr[lo:hi + 1] - target_ptr[lo]
    r = np.repeat(np.arange(hi - lo), np.diff(seg))
    rel[r, target_items[target_ptr[lo]:target_ptr[hi]]] = True
    out = metrics_lib.topk_metrics(ids[lo:hi], rel, ks=(k,))
    for m in ACCURACY:
      v = np.asarray(out[f"{m}@{k}"], np.float64)
      sums[m] += float(np.nansum(v))
    count += int(np.sum(np.diff(seg) > 0))
  return {f"{m}@{k}": sums[m] / max(count, 1) for m in ACCURACY}


# ----------------------------------------------------------------------------
# Driver.


def serving_target(method: str, m: np.ndarray, headroom: float) -> np.ndarray:
  """The minimums a method serves towards: FairSync aims at (1 + h) m_g.

  The online dual lags (mu starts at 0 and moves one Adam step per batch),
  so aiming exactly at m_g leaves some groups just short at the horizon;
  FairSync's dual gets the target (1 + headroom) m_g and is scored against
  m_g. The baselines get m_g itself.
  """
  if method == "FairSync":
    return (np.asarray(m, np.float64) * (1.0 + headroom)).astype(np.float32)
  return np.asarray(m, np.float32)


def _setting(method, config, m) -> dict:
  """What a stored result depends on; a change recomputes the method."""
  s = dict(dataset=config.dataset, seed=config.seed, k=config.k,
           batch_size=config.batch_size, shards=config.shards,
           min_exposure=[round(float(x), 4) for x in m])
  if config.dataset == "synthetic":
    s.update(synthetic=config.synthetic.to_dict())
  else:
    s.update(epochs=config.epochs, lr=config.lr, dim=config.dim)
    if config.exclude_train_items:  # absent = the whole catalog was served
      s.update(exclude_train_items=True)
  if method == "FairSync":
    s.update(eta=config.eta, headroom=config.headroom)
  elif method == "min-regularizer":
    s.update(lam=config.min_reg_lambda)
  elif method == "k-neighbor":
    s.update(neighbors=config.num_neighbors)
  return s


def _serve(method, req: Requests, config, m, mesh) -> tuple[dict, float]:
  t0 = time.perf_counter()
  res = fairsync.serve(
      method, req.user_emb, req.item_emb, req.item_group, config.k,
      serving_target(method, m, config.headroom),
      config.batch_size, config.eta, mesh, exclude=req.exclude,
      num_groups=len(req.group_names),
      lam=config.min_reg_lambda, num_neighbors=config.num_neighbors,
      block_size=config.block_size or None)
  secs = time.perf_counter() - t0
  acc = accuracy(np.asarray(res.item_ids), req.target_ptr, req.target_items,
                 req.item_emb.shape[0], config.k)
  e = np.asarray(res.exposure, np.float64)
  return dict(method=method, seconds=secs,
              esp=float(metrics_lib.esp(e, np.asarray(m))), **acc,
              exposure_over_time=np.asarray(res.exposure_over_time).tolist(),
              mu_history=np.asarray(res.mu_history).tolist()), secs


def _method_result(method, req, config, m, mesh, workdir) -> dict:
  path = workdir / "methods" / method / "result.json"
  setting = _setting(method, config, m)
  if path.exists():
    old = ckpt_lib.read_json(path)
    if old.get("setting") == setting:
      _log(f"[{method}] done earlier: {path}")
      return old
    _log(f"[{method}] settings changed since {path}: serving again")
  res, secs = _serve(method, req, config, m, mesh)
  res["setting"] = setting
  path.parent.mkdir(parents=True, exist_ok=True)
  ckpt_lib.write_json_atomic(path, res)
  k = config.k
  esp = f"esp {res['esp']:.3f} " if np.any(m > 0) else ""
  _log(f"[{method}] {secs:.1f}s {esp}recall@{k} "
       f"{res[f'recall@{k}']:.4f} ndcg@{k} {res[f'ndcg@{k}']:.4f} "
       f"hr@{k} {res[f'hr@{k}']:.4f}")
  return res


def train_and_evaluate(config, workdir: str, data_dir: str | None = None
                       ) -> dict:
  """Serves every method in `config.methods`; writes metrics.csv/summary.json.

  Args:
    config: a `configs/fairsync.py` ConfigDict.
    workdir: output and resume folder.
    data_dir: real-data folder (default: config.data_dir, then
      $FAIRJAX_DATA_DIR).

  Returns:
    The summary: {METHOD: {esp, recall@K, ndcg@K, hr@K}, k, min_exposure,
    unconstrained_esp, exposure_frac, groups, num_requests, batch_size, eta,
    exclude_train_items (whether training items were excluded), seconds}.

  Raises:
    ConfigError: bad fields, infeasible minimums (sum m_g > K T), K larger
      than the catalog, B > T, too few devices for `shards`.
  """
  validate_config(config)
  workdir = ckpt_lib.open_workdir(workdir, config)
  mesh = make_mesh(config.shards)
  if config.dataset == "synthetic" and config.k > config.synthetic.num_items:
    raise ConfigError(f"field 'k': k={config.k} is larger than the catalog "
                      f"({config.synthetic.num_items} items)")
  req = prepare_requests(config, workdir, data_dir, mesh)
  t_total, n_items = req.user_emb.shape[0], req.item_emb.shape[0]
  if config.k > n_items:
    raise ConfigError(f"field 'k': k={config.k} is larger than the catalog "
                      f"({n_items} items)")
  if config.batch_size > t_total:
    raise ConfigError(f"field 'batch_size': B={config.batch_size} is larger "
                      f"than the number of requests T={t_total}")
  g = len(req.group_names)
  sharded.check_groups(req.item_group, g)
  _log(f"[fairsync] {req.name}: T={t_total} requests, N={n_items} items, "
       f"G={g}, K={config.k}, B={config.batch_size}, shards={config.shards}")

  zeros = np.zeros(g, np.float32)
  unc = _method_result("unconstrained", req, config, zeros, mesh, workdir)
  e0 = np.asarray(unc["exposure_over_time"])[-1]
  sizes = np.bincount(req.item_group, minlength=g)
  m, f, base = choose_min_exposure(e0, config.k, t_total, sizes,
                                   config.exposure_frac, config.item_cap,
                                   config.target_unconstrained_esp)
  dual_ops.check_feasible(m, config.k, t_total, config.batch_size)
  if "FairSync" in method_list(config):
    try:
      dual_ops.check_feasible(serving_target("FairSync", m, config.headroom),
                              config.k, t_total, config.batch_size)
    except ConfigError as e:
      raise ConfigError(f"field 'headroom': FairSync's target (1 + "
                        f"{config.headroom:g}) m_g is infeasible: {e}") from e
  ckpt_lib.write_json_atomic(workdir / "min_exposure.json", dict(
      exposure_frac=f, base=base.tolist(), min_exposure=m.tolist(),
      unconstrained_exposure=e0.tolist(), groups=list(req.group_names)))
  unc_esp = float(metrics_lib.esp(e0, m))
  _log(f"[fairsync] m_g = {f:.4g} x base_g; unconstrained ESP {unc_esp:.3f}")

  results = {}
  for method in method_list(config):
    if method == "unconstrained":
      results[method] = dict(unc, esp=unc_esp)
    else:
      results[method] = _method_result(method, req, config, m, mesh, workdir)

  rows = csv_rows(results, m, req.group_names, config.batch_size, t_total)
  ckpt_lib.write_csv_atomic(workdir / "metrics.csv", rows, CSV_FIELDS)
  k = config.k
  summary = {meth: {"esp": r["esp"], **{f"{a}@{k}": r[f"{a}@{k}"]
                                         for a in ACCURACY}}
             for meth, r in results.items()}
  summary.update(k=k, min_exposure=m.tolist(), unconstrained_esp=unc_esp,
                 exposure_frac=f, groups=list(req.group_names),
                 dataset=req.name, num_requests=t_total, num_items=n_items,
                 batch_size=config.batch_size, eta=config.eta,
                 fairsync_headroom=config.headroom,
                 shards=config.shards,
                 exclude_train_items=req.exclude is not None,
                 seconds={meth: r["seconds"] for meth, r in results.items()})
  ckpt_lib.write_json_atomic(workdir / "summary.json", summary)
  _log(f"[fairsync] wrote {workdir / 'metrics.csv'} and "
       f"{workdir / 'summary.json'}")
  return summary


def csv_rows(results: dict, m: np.ndarray, group_names, batch_size: int,
             horizon: int) -> list[dict]:
  """Tidy rows: exposure and mu per (method, batch, group), final metrics.

  `requests` = requests served when the row was taken (min((b+1) B, T));
  final metrics use group 'all'; m_g rows use metric 'min_exposure'.
  """
  rows = []
  for method, r in results.items():
    expo = np.asarray(r["exposure_over_time"])
    mus = np.asarray(r["mu_history"])
    for b in range(expo.shape[0]):
      served = min((b + 1) * batch_size, horizon)
      for j, name in enumerate(group_names):
        rows.append(dict(method=method, batch=b, requests=served, group=name,
                         metric="exposure", value=float(expo[b, j])))
        rows.append(dict(method=method, batch=b, requests=served, group=name,
                         metric="mu", value=float(mus[b, j])))
    last = expo.shape[0] - 1
    for key, value in r.items():
      if key == "esp" or "@" in key:
        rows.append(dict(method=method, batch=last, requests=horizon,
                         group="all", metric=key, value=float(value)))
    for j, name in enumerate(group_names):
      rows.append(dict(method=method, batch=last, requests=horizon,
                       group=name, metric="min_exposure", value=float(m[j])))
  return rows
