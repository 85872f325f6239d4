"""System pipeline, stages a-c cached per (dataset, seed), and the knobs.

`Pipeline` holds one (dataset, seed)'s stages (see `fairjax.methods.system`
for the pipeline and the equations) and evaluates knobs on them:

  a-b. the calibrated heads (`fairjax.methods.system_heads`), computed once
       (`Pipeline.prepare`), and the interact family's own group gaps;
  c.   the FairSync retrieval of a grid point (K, s), users in a seeded
       random order served in batches of B with minimums
       m_g(s) = s m_g^full(K), computed once per grid point (and, with a
       cache folder, once per folder; `RetrievalEntry`);
  d-f. `Pipeline.evaluate_knobs`: the candidates of the knobs' grid point
       ranked by `fairjax.methods.system.evaluate` on a held-out split.

All caches are the object's fields (no global state).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax.data.requests import training_exclusion
from fairjax.data.system_data import (
  LAMBDAS,
  SystemData,
  check_user_groups,
  group_means,
  user_auc,
)
from fairjax.errors import ConfigError
from fairjax.methods import fairsync
from fairjax.methods.system import (
  K_MAX,
  K_MIN,
  Knobs,
  check_truth,
  check_weights,
  evaluate,
  grid_point,
  mask_candidates,
  preference_weights,
  validate_knobs,
)
from fairjax.methods.system_heads import (
  Head,
  StageConfig,
  calibrate_heads,
  oracle_heads,
  trained_heads,
)
from fairjax.ops import dual as dual_ops

# ----------------------------------------------------------------------------
# c. Retrieval results.


def exposure_shortfall(exposure, min_exposure) -> float:
  """sum_g max(0, m_g - E_g) / sum_g m_g (0 when every m_g = 0)."""
  e = np.asarray(exposure, np.float64)
  m = np.asarray(min_exposure, np.float64)
  tot = m.sum()
  return float(np.maximum(m - e, 0).sum() / tot) if tot > 0 else 0.0


@dataclasses.dataclass
class RetrievalEntry:
  """One cached retrieval: candidates [U, K] (user order) and diagnostics.

  Attributes:
    candidates: int32 [U, K] retrieved ids per user (-1: empty slot).
    esp: share of item groups with exposure E_g >= m_g.
    exposure: float [G_I] E_g, group-g items in all lists.
    min_exposure: float [G_I] the minimums m_g(s).
    seconds: serving time (0 for a prefix of the K = 1000 lists).
  """

  candidates: np.ndarray
  esp: float
  exposure: np.ndarray
  min_exposure: np.ndarray
  seconds: float

  @property
  def shortfall(self) -> float:
    """Missing exposure share, `exposure_shortfall`."""
    return exposure_shortfall(self.exposure, self.min_exposure)


def _log(msg: str) -> None:
  print(f"[system] {msg}", file=sys.stderr, flush=True)


class Pipeline:
  """The cached stages of one (dataset, seed) and the knob evaluation.

  Stages a-b run on first use (`prepare`), retrievals lazily per grid point,
  probability stacks lazily per lambda index; all caches are this object's
  fields (no global state).

  Args:
    data: the `SystemData`.
    rho: preference heterogeneity (ignored when `weights` is given).
    weights: optional [G, 3] outcome weights (default
      `preference_weights(data.groups, rho)`).
    k: items served per user.
    batch_size: B, requests per FairSync dual step.
    eta: FairSync's Adam step size for mu (score units); None = `eta_scale`
      x the standard deviation of the retriever's scores over 20,000 random
      (user, item) pairs (seeded).
    eta_scale: see `eta` (0.2 with B = 32: on the synthetic default the
      s = 1 lists miss under 0.5% of the required exposure, vs 2% at
      0.05; picked by a small sweep).
    stage_config: training / calibration settings (ML-1M).
    checkpoint_dir: folder for head checkpoints (ML-1M; reruns restore).
    cache_dir: folder for retrieval results: one .npz per grid point under
      a subfolder named by the dataset, its seed, grouping and sizes, the
      stream seed, B and a hash of `stage_config`; a file whose eta differs
      from this pipeline's is recomputed.
    seed: the request stream's seed.
    verbose: progress lines on stderr.
  """

  def __init__(self, data: SystemData, *, rho: float = 1.0, weights=None,
               k: int = 10, batch_size: int = 32, eta: float | None = None,
               eta_scale: float = 0.2,
               stage_config: StageConfig | None = None,
               checkpoint_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, seed: int = 0,
               verbose: bool = True):
    self.data = data
    self.weights = check_weights(
        preference_weights(data.groups, rho) if weights is None else weights,
        data.num_groups)
    if not 1 <= k <= K_MIN:
      raise ConfigError(f"field 'k': must be in [1, {K_MIN}], got {k}")
    if not 1 <= batch_size <= data.num_users:
      raise ConfigError(f"field 'batch_size': must be in [1, "
                        f"{data.num_users}], got {batch_size}")
    if eta is not None and not eta > 0:
      raise ConfigError(f"field 'eta': must be > 0, got {eta}")
    check_user_groups(data.user_group, data.group_names)
    if not eta_scale > 0:
      raise ConfigError(f"field 'eta_scale': must be > 0, got {eta_scale}")
    self.k, self.batch_size, self.eta = int(k), int(batch_size), eta
    self.eta_scale = float(eta_scale)
    self.config = stage_config or StageConfig()
    self.checkpoint_dir = (None if checkpoint_dir is None
                           else pathlib.Path(checkpoint_dir))
    self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
    self.seed = int(seed)
    self.verbose = verbose
    self.stream = np.random.default_rng([self.seed, 4242]).permutation(
        data.num_users).astype(np.int32)
    self.heads: dict[str, Head] | None = None
    self.reliability_report: dict[str, dict] = {}
    self.timings: dict[str, float] = {}
    self._retrieval: dict[tuple[int, float], RetrievalEntry] = {}
    self._probs: dict[int, jax.Array] = {}
    self._truth: dict[str, jax.Array] = {}
    self._own: dict[str, np.ndarray] | None = None
    self._exclude: np.ndarray | None = None
    self._avail: np.ndarray | None = None
    self._user_group = jnp.asarray(data.user_group, jnp.int32)
    self._weights = jnp.asarray(self.weights)

  # -- stages a-b -------------------------------------------------------------

  def prepare(self) -> dict[str, Head]:
    """Runs stages a-b once: heads (trained or oracle), calibrated."""
    if self.heads is not None:
      return self.heads
    t0 = time.perf_counter()
    if self.data.oracle is not None:
      heads = oracle_heads(self.data)
    else:
      heads = trained_heads(self.data, self.config, self.checkpoint_dir,
                            self.timings)
    t1 = time.perf_counter()
    self.reliability_report.update(
        calibrate_heads(self.data, heads, self.config))
    self.timings["train_seconds"] = t1 - t0
    self.timings["calibrate_seconds"] = time.perf_counter() - t1
    self.heads = heads
    if self.verbose:
      for name, r in self.reliability_report.items():
        _log(f"calibration {name}: a={heads[name].a:.3f} "
             f"b={heads[name].b:.3f} ECE={r['ece']:.2e} "
             f"(base rate {r['base_rate']:.2e})")
    return heads

  def own_gaps(self) -> dict[str, np.ndarray]:
    """Model-level fairness of the interact family (`fairjax.methods.system`).

    Returns:
      dict auc [L, G] (group mean per-user validation AUC), gap [L] (max_g -
      min_g of auc), lambdas [L].
    """
    if self._own is None:
      heads = self.prepare()
      t0 = time.perf_counter()
      d = self.data
      valid = d.truth("valid")[0]
      train_seen = d.seen("train")
      auc = np.stack([
          group_means(user_auc(np.asarray(heads[f"interact@{j}"].logits()),
                               valid, train_seen), d.user_group,
                      d.num_groups) for j in range(len(LAMBDAS))])
      self._own = {"auc": auc, "gap": np.nanmax(auc, 1) - np.nanmin(auc, 1),
                   "lambdas": np.asarray(LAMBDAS)}
      self.timings["own_gap_seconds"] = time.perf_counter() - t0
    return self._own

  def stage_summary(self) -> dict[str, Any]:
    """JSON-friendly diagnostics of stages a-b: per head (a, b, ECE, base
    rate), the family's own gaps, timings, eta and B."""
    heads = self.prepare()
    own = self.own_gaps()
    return {
        "calibration": {
            n: {"a": heads[n].a, "b": heads[n].b, "ece": r["ece"],
                "base_rate": r["base_rate"],
                "mean_pred": r["mean_pred"].tolist(),
                "frac_pos": r["frac_pos"].tolist()}
            for n, r in self.reliability_report.items()},
        "own_gap": own["gap"].tolist(), "own_auc": own["auc"].tolist(),
        "lambdas": list(LAMBDAS), "timings": dict(self.timings),
        "eta": self._eta(), "batch_size": self.batch_size}

  # -- stage c: retrieval -----------------------------------------------------

  def exposure_target(self, K: int) -> np.ndarray:
    """m_g^full(K) = min((1 - 1e-5) K T |I_g| / |I|, sum_t min(K, A_{t,g})).

    The catalog-share target, capped per group by what the requests can
    take: A_{t,g} = |I_g| minus request t's train items in group g.
    """
    d = self.data
    k = min(int(K), d.num_items)
    gi = d.num_item_groups
    size = np.bincount(d.item_group, minlength=gi).astype(np.float64)
    if self._avail is None:  # A [T, G_I] (users in any order: summed)
      tr_g = np.zeros((d.num_users, gi))
      np.add.at(tr_g, (d.train.user, d.item_group[d.train.item]), 1.0)
      self._avail = size[None, :] - tr_g
    cap = np.minimum(k, self._avail).sum(0)
    # A hair (1e-5) below K T |I_g| / |I| so that float32 sums stay <= K T.
    share = (1.0 - 1e-5) * k * d.num_users * size / d.num_items
    return np.minimum(share, cap)

  def min_exposure(self, K: int, s: float) -> np.ndarray:
    """m_g(s) = s m_g^full(K), checked for feasibility (field 's')."""
    m = float(s) * self.exposure_target(K)
    try:
      return dual_ops.check_feasible(m, min(int(K), self.data.num_items),
                                     self.data.num_users, self.batch_size)
    except ConfigError as e:
      raise ConfigError(f"field 's': s = {s} gives infeasible exposure "
                        f"minimums: {e}") from e

  def _exclusion(self) -> np.ndarray:
    if self._exclude is None:
      self._exclude = training_exclusion(
          self.data.train.user, self.data.train.item, self.stream,
          self.data.num_users)
    return self._exclude

  def _eta(self) -> float:
    if self.eta is None:
      h = self.prepare()["retriever"]
      rng = np.random.default_rng([self.seed, 5])
      u = rng.integers(0, self.data.num_users, 20000)
      i = rng.integers(0, self.data.num_items, 20000)
      self.eta = self.eta_scale * float(np.std(h.pair_scores(u, i)))
    return self.eta

  def _cache_path(self, K: int, s: float) -> pathlib.Path | None:
    if self.cache_dir is None:
      return None
    d = self.data
    cfg = hashlib.sha256(repr(self.config).encode()).hexdigest()[:10]
    tag = (f"{d.name}-seed{d.seed}-{d.groups}-U{d.num_users}-I{d.num_items}"
           f"-stream{self.seed}-B{self.batch_size}-cfg{cfg}")
    return self.cache_dir / tag / f"retrieval_K{K:04d}_s{s:.1f}.npz"

  def _retrieve(self, K: int, s: float) -> RetrievalEntry:
    path = self._cache_path(K, s)
    if path is not None and path.exists():
      z = np.load(path)
      if abs(float(z["eta"]) - self._eta()) <= 1e-9 * max(1.0, self._eta()):
        return RetrievalEntry(z["candidates"], float(z["esp"]),
                              z["exposure"], z["min_exposure"],
                              float(z["seconds"]))
    if s == 0.0 and K != K_MAX:
      cands = self.retrieval(K_MAX, 0.0).candidates[:, :K]
      return RetrievalEntry(cands, 1.0, self.exposure(cands),
                            np.zeros(self.data.num_item_groups, np.float32),
                            0.0)
    d = self.data
    h = self.prepare()["retriever"]
    k_eff = min(int(K), d.num_items)
    m = self.min_exposure(K, s)
    t = time.perf_counter()
    res = fairsync.serve(
        "unconstrained" if s == 0.0 else "FairSync",
        h.user_vec[self.stream], h.item_vec, d.item_group, k_eff, m,
        batch_size=self.batch_size, eta=self._eta(),
        exclude=self._exclusion(), num_groups=d.num_item_groups)
    cands = np.full((d.num_users, K), -1, np.int32)
    cands[self.stream, :k_eff] = res.item_ids
    entry = RetrievalEntry(cands, res.esp, np.asarray(res.exposure),
                           np.asarray(m), time.perf_counter() - t)
    if path is not None:
      ckpt_lib.write_atomic(path, lambda f: np.savez(
          f, candidates=entry.candidates, esp=entry.esp,
          exposure=entry.exposure, min_exposure=entry.min_exposure,
          seconds=entry.seconds, eta=self._eta()), mode="wb")
    return entry

  def retrieval(self, K: float, s: float) -> RetrievalEntry:
    """The cached retrieval of the grid point nearest (K, s)."""
    key = grid_point(K, s)
    if key not in self._retrieval:
      if self.verbose:
        _log(f"retrieval K={key[0]} s={key[1]:.1f} ...")
      self._retrieval[key] = self._retrieve(*key)
    return self._retrieval[key]

  def exposure(self, candidates: np.ndarray) -> np.ndarray:
    """float [G_I]: E_g, group-g items among the given lists."""
    c = np.asarray(candidates)
    g = self.data.item_group[c[c >= 0]]
    return np.bincount(g, minlength=self.data.num_item_groups).astype(
        np.float64)

  def shortfall(self, candidates: np.ndarray, K: float, s: float) -> float:
    """Exposure shortfall of `candidates` against m(K, s) of the grid point."""
    return exposure_shortfall(self.exposure(candidates),
                              self.min_exposure(*grid_point(K, s)))

  def candidates(self, K: float, s: float) -> np.ndarray:
    """int32 [U, K_MAX] candidates of the grid point, -1 padded."""
    c = self.retrieval(K, s).candidates
    return np.pad(c, ((0, 0), (0, K_MAX - c.shape[1])), constant_values=-1)

  # -- stage d-f: evaluation --------------------------------------------------

  def probs(self, lam_index: int) -> jax.Array:
    """float32 [3, U, I]: the calibrated (interact member, like, love)."""
    if lam_index not in self._probs:
      h = self.prepare()
      self._probs[lam_index] = jnp.stack(
          [h[f"interact@{lam_index}"].probs(), h["like"].probs(),
           h["love"].probs()]).astype(jnp.float32)
    return self._probs[lam_index]

  def truth(self, split: str) -> jax.Array:
    """bool [3, U, I] truth of 'valid' or 'test' (checked once)."""
    if split not in ("valid", "test"):
      raise ConfigError(f"field 'split': 'valid' or 'test', got {split!r}")
    if split not in self._truth:
      t = self.data.truth(split)
      check_truth(t, self.weights, self.data.user_group,
                  self.data.group_names, split)
      self._truth[split] = jnp.asarray(t)
      if split == "test":
        self._truth["_valid_seen"] = jnp.asarray(self.data.seen("valid"))
    return self._truth[split]

  def evaluate_knobs(self, knobs: Knobs | Mapping, split: str = "valid"
                     ) -> dict[str, Any]:
    """End utility of the pipeline under `knobs` on a held-out split.

    Returns:
      dict welfare, der, max_min_gap (floats, NaN on failure),
      group_utility [G], per_user [U] (NumPy), the grid point used (K, s),
      lam, lam_index, alpha, esp and shortfall (of the retrieval, see
      `RetrievalEntry`), retrieval_hit,
      seconds (this call), retrieval_seconds (0 on a cache hit).
    """
    kn = validate_knobs(knobs)
    t0 = time.perf_counter()
    truth = self.truth(split)
    key = grid_point(kn.K, kn.s)
    hit = key in self._retrieval
    entry = self.retrieval(*key)
    t1 = time.perf_counter()
    cands = jnp.asarray(self.candidates(*key))
    if split == "test":
      cands = mask_candidates(cands, self._truth["_valid_seen"])
    out = evaluate(cands, self.probs(kn.lam_index),
                   jnp.asarray(kn.alpha, jnp.float32), truth, self._weights,
                   self._user_group, k=self.k)
    out = jax.device_get(out)
    res = {name: float(out[name]) for name in ("welfare", "der",
                                               "max_min_gap")}
    res.update(group_utility=np.asarray(out["group_utility"]),
               per_user=np.asarray(out["per_user"]), K=key[0], s=key[1],
               lam=float(LAMBDAS[kn.lam_index]), lam_index=kn.lam_index,
               alpha=kn.alpha, esp=entry.esp, shortfall=entry.shortfall,
               retrieval_hit=hit,
               retrieval_seconds=0.0 if hit else t1 - t0,
               seconds=time.perf_counter() - t0, split=split)
    return res
