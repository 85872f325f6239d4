"""Data of the system-level fairness pipeline (DESIGN.md section 6).

Hsu, DiCiccio, Pillai, Namkoong (2025): the pipeline needs, per held-out
pair (u, i), the truth of three nested outcomes m in `OUTCOMES`:

  interact = 1 for any rating,  like = rating >= 4,  love = rating == 5,

stored sparsely per split (`SplitOutcomes`: user, item, outcome bits), with
`SystemData.truth(split)` giving the dense bool [3, U, I] matrices.

ML-1M (`dataset='ml1m'`): every rating; random split per interaction
70/10/20 (`fairjax.data.protocols.random_split`, seeded; every user with >= 3
ratings keeps one in each part); item groups = first genre (18). User groups
(`groups=`): 'gender' (0 = M, 1 = F) or 'age', three buckets of the ML-1M
age codes (`AGE_BUCKETS`):

  0 '<25'   codes 1 (under 18) and 18 (18-24)
  1 '25-44' codes 25 (25-34) and 35 (35-44)
  2 '45+'   codes 45 (45-49), 50 (50-55) and 56 (56+)

Synthetic (`dataset='synthetic'`, the job's default; about a second for the
default 2,000 users x 1,000 items): two user groups, 0 = majority, 1 =
minority (`minority_frac`, default 30%), labelled 'M' / 'F' so that the
gender preference profiles apply. Generative model, seeded:

  item groups   `num_item_groups` genres with sizes proportional to
                (g + 1)^-0.8; genre centroids c_g orthonormal in R^d;
                item factor y_i = c_{g_i} + 0.5 N(0, I_d / d).
  user tastes   pi_u ~ Dirichlet(5 w_a): w_0 proportional to genre size
                (the majority likes the big genres), w_1 to the reversed
                sizes (the minority likes the niche genres); x_u = 2
                (pi_u C + 0.3 N(0, I_d / d)).
  outcomes      affinity a_ui = <x_u, y_i>, popularity pop_i ~ N(0, 0.7^2),
                quality q_i ~ N(0, 0.7^2), per-group love factors l_{a,i} ~
                N(0, 1) independent for a = 0, 1:
                  P(interact) = sigmoid(b_1 + 3 a_ui + w_a pop_i),
                      w_0 = 1, w_1 = 0.3 (the minority ignores popularity);
                  P(like | interact) = sigmoid(b_2 + 1.5 a_ui + q_i);
                  P(love | like) = sigmoid(b_3 + 2 l_{a(u),i} + 0.5 a_ui),
                so the minority's 'love' items differ from the majority's.
                The intercepts b are set (bisection on a fixed 200k-pair
                subsample) so that the mean P(interact) = `density`, the
                mean P(like | interact) = 0.58 and the mean P(love | like)
                = 0.4 (ML-1M's shares).
                p*_m(u, i) = P(y_m = 1) over the whole horizon (`p_star`).
  truth         y_interact ~ Bernoulli(p*_interact), y_like = y_interact &
                Bernoulli(P(like | interact)), y_love likewise; each
                interacted pair goes to train / valid / test with
                probabilities `fractions` (as a random split of ML-1M
                would), so P(y_m = 1 in split s) = f_s p*_m.
  oracle        scores s_m(u, i) = logit p*_m(u, i) + sigma eps_m(u, i),
                eps iid N(0, 1), sigma = `oracle_noise` for both groups
                (equally noisy); the pipeline calibrates them on the
                validation split like trained heads.
  retriever     a rank-r (`retriever_rank`) fit of the MAJORITY's
                preferences: with L = logit p*_interact and L[majority] ~=
                A S V^T (truncated SVD by randomised subspace iteration), item vectors V S^(1/2) and user
                vectors L_u V S^(-1/2), so <user_u, item_i> = (L_u V V^T)_i,
                the projection of u's preferences onto the majority's top-r
                item subspace: exact-ish for the majority, lossy for the
                minority.
  lambda family for the interact head, a documented analytic proxy for
                FADE fine-tuning at lambda in `LAMBDAS`: member l scores
                logit p*_interact + sigma_a(lambda_l) eps_interact (the
                same eps as the base oracle), with sigma_a(lambda) = sigma
                (1 + lambda) for the group a whose mean validation AUC of
                the base oracle is higher ("levelling down", as FADE's
                loss does) and sigma for the others: lambda trades the
                head's own AUC gap, through zero to the other side.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from fairjax.data import protocols, registry
from fairjax.errors import ConfigError, DataError

OUTCOMES = ("interact", "like", "love")
SPLITS = ("train", "valid", "test")
GROUPINGS = ("gender", "age")
LAMBDAS = (0.0, 0.1, 0.3, 1.0, 3.0)
# ML-1M age code -> bucket (see the module docstring).
AGE_BUCKETS = {1: 0, 18: 0, 25: 1, 35: 1, 45: 2, 50: 2, 56: 2}
AGE_BUCKET_NAMES = ("<25", "25-44", "45+")


@dataclasses.dataclass(frozen=True)
class SplitOutcomes:
  """Held-out (or train) pairs of one split with their outcome bits.

  Attributes:
    user: int32 [n] user ids.
    item: int32 [n] item ids; (user, item) pairs are distinct.
    outcomes: bool [n, 3] y_m for m in `OUTCOMES` (interact, like, love).
  """

  user: np.ndarray
  item: np.ndarray
  outcomes: np.ndarray

  @property
  def size(self) -> int:
    return int(self.user.shape[0])

  def dense(self, num_users: int, num_items: int) -> np.ndarray:
    """bool [3, U, I]: truth[m, u, i] = y_m(u, i) (False off the split)."""
    out = np.zeros((len(OUTCOMES), num_users, num_items), bool)
    for m in range(len(OUTCOMES)):
      on = self.outcomes[:, m]
      out[m, self.user[on], self.item[on]] = True
    return out

  def seen(self, num_users: int, num_items: int) -> np.ndarray:
    """bool [U, I]: the pairs of this split (any outcome)."""
    out = np.zeros((num_users, num_items), bool)
    out[self.user, self.item] = True
    return out

  def base_rates(self) -> np.ndarray:
    """float [3]: share of the split's pairs with y_m = 1."""
    if self.size == 0:
      return np.full(len(OUTCOMES), np.nan)
    return self.outcomes.mean(0)


@dataclasses.dataclass(frozen=True)
class SyntheticOracle:
  """The synthetic ground truth and the stand-ins for trained stages.

  Attributes:
    p_star: float32 [3, U, I] true outcome probabilities over the horizon.
    scores: float32 [3, U, I] oracle scores logit p*_m + sigma eps_m.
    interact_family: float32 [len(LAMBDAS), U, I] the interact head's
      lambda family (analytic proxy, see the module docstring).
    family_noise: float32 [len(LAMBDAS), G] sigma_a(lambda) per member.
    retriever_user: float32 [U, r] retriever user vectors.
    retriever_item: float32 [I, r] retriever item vectors.
    noise: sigma.
  """

  p_star: np.ndarray
  scores: np.ndarray
  interact_family: np.ndarray
  family_noise: np.ndarray
  retriever_user: np.ndarray
  retriever_item: np.ndarray
  noise: float


@dataclasses.dataclass(frozen=True)
class SystemData:
  """Everything the system pipeline reads about users, items and truth.

  Attributes:
    name: 'ml1m' or 'synthetic'.
    seed: the seed of the split (ML-1M) or of the generator (synthetic).
    groups: the user grouping, 'gender' or 'age'.
    num_users, num_items: U, I.
    user_group: int32 [U] user group in [0, G).
    group_names: the G user group labels.
    item_group: int32 [I] item group (first genre) in [0, G_I).
    item_group_names: the G_I item group labels.
    train, valid, test: the splits' pairs with outcome bits.
    oracle: the synthetic truth and stand-in stages (None for ML-1M).
  """

  name: str
  seed: int
  groups: str
  num_users: int
  num_items: int
  user_group: np.ndarray
  group_names: tuple[str, ...]
  item_group: np.ndarray
  item_group_names: tuple[str, ...]
  train: SplitOutcomes
  valid: SplitOutcomes
  test: SplitOutcomes
  oracle: SyntheticOracle | None = None

  @property
  def num_groups(self) -> int:
    return len(self.group_names)

  @property
  def num_item_groups(self) -> int:
    return len(self.item_group_names)

  def split(self, name: str) -> SplitOutcomes:
    """The `SplitOutcomes` of 'train', 'valid' or 'test'."""
    if name not in SPLITS:
      raise ConfigError(f"field 'split': expected one of {SPLITS}, got "
                        f"{name!r}")
    return getattr(self, name)

  def truth(self, split: str) -> np.ndarray:
    """bool [3, U, I] outcome truth of a split (see `SplitOutcomes.dense`)."""
    return self.split(split).dense(self.num_users, self.num_items)

  def seen(self, split: str = "train") -> np.ndarray:
    """bool [U, I]: the pairs of a split."""
    return self.split(split).seen(self.num_users, self.num_items)


def outcome_bits(rating: np.ndarray) -> np.ndarray:
  """bool [n, 3]: (interact, like, love) = (1, rating >= 4, rating == 5)."""
  r = np.asarray(rating, np.float64)
  return np.stack([np.ones(r.shape, bool), r >= 4, r == 5], axis=1)


def age_buckets(age_codes: np.ndarray) -> np.ndarray:
  """int32 [U]: the `AGE_BUCKETS` bucket of each ML-1M age code.

  Raises:
    DataError (field 'age'): a code that is not an ML-1M age code.
  """
  codes = np.asarray(age_codes)
  out = np.full(codes.shape, -1, np.int32)
  for code, bucket in AGE_BUCKETS.items():
    out[codes == code] = bucket
  if (out < 0).any():
    bad = sorted(set(np.asarray(codes)[out < 0].tolist()))
    raise DataError(f"unknown ML-1M age code(s) {bad[:5]}; expected "
                    f"{sorted(AGE_BUCKETS)}", field="age")
  return out


def check_user_groups(user_group: np.ndarray, group_names) -> None:
  """Raises DataError (field 'user_group') naming an empty user group."""
  g = np.asarray(user_group)
  counts = np.bincount(g[g >= 0], minlength=len(group_names))
  if (g < 0).any() or (g >= len(group_names)).any():
    raise DataError(f"user groups must lie in [0, {len(group_names)})",
                    field="user_group")
  empty = [group_names[j] for j in np.nonzero(counts == 0)[0]]
  if empty:
    raise DataError(f"user group(s) {empty} have no users",
                    field="user_group")


def _split_from_mask(ds, mask) -> SplitOutcomes:
  return SplitOutcomes(user=ds.user[mask].astype(np.int32),
                       item=ds.item[mask].astype(np.int32),
                       outcomes=outcome_bits(ds.rating[mask]))


def _check_common(seed, groups, fractions) -> tuple[float, float, float]:
  if groups not in GROUPINGS:
    raise ConfigError(f"field 'groups': expected one of {GROUPINGS}, got "
                      f"{groups!r}")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"field 'seed': must be an integer >= 0, got {seed!r}")
  f = tuple(float(x) for x in fractions)
  if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1.0) > 1e-6:
    raise ConfigError(f"field 'fractions': need 3 positive shares summing "
                      f"to 1, got {tuple(fractions)}")
  return f


def prepare_system_data(dataset: str = "synthetic", *,
                        data_dir: str | os.PathLike | None = None,
                        seed: int = 0, groups: str = "gender",
                        fractions=(0.7, 0.1, 0.2), num_users: int = 2000,
                        num_items: int = 1000, minority_frac: float = 0.3,
                        num_item_groups: int = 8, latent_dim: int = 16,
                        density: float = 0.06, oracle_noise: float = 1.0,
                        retriever_rank: int = 4) -> SystemData:
  """Builds the `SystemData` of `dataset` (see the module docstring).

  Args:
    dataset: 'synthetic' (default) or 'ml1m'.
    data_dir: real-data folder holding ml-1m/ (ML-1M only; default
      $FAIRJAX_DATA_DIR).
    seed: split seed (ML-1M) / generator seed (synthetic).
    groups: user grouping, 'gender' or 'age' (ML-1M only; synthetic data has
      the two groups majority 'M' and minority 'F').
    fractions: (train, valid, test) shares.
    num_users, num_items, minority_frac, num_item_groups, latent_dim,
    density, oracle_noise, retriever_rank: synthetic generator settings.

  Returns:
    SystemData.

  Raises:
    ConfigError naming the field for a bad setting; DataError for bad data
    (e.g. an empty user group).
  """
  f = _check_common(seed, groups, fractions)
  if dataset == "ml1m":
    return _prepare_ml1m(data_dir, int(seed), groups, f)
  if dataset != "synthetic":
    raise ConfigError(f"field 'dataset': expected 'synthetic' or 'ml1m', got "
                      f"{dataset!r}")
  if groups != "gender":
    raise ConfigError("field 'groups': synthetic data has the two groups of "
                      "'gender' only (majority 'M', minority 'F')")
  return generate_synthetic(
      seed=int(seed), fractions=f, num_users=num_users, num_items=num_items,
      minority_frac=minority_frac, num_item_groups=num_item_groups,
      latent_dim=latent_dim, density=density, oracle_noise=oracle_noise,
      retriever_rank=retriever_rank)


def _prepare_ml1m(data_dir, seed: int, groups: str, fractions) -> SystemData:
  ds = registry.load_dataset("ml1m", data_dir)
  if groups == "gender":
    user_group = protocols.user_groups(ds, "gender")
    names = tuple(ds.user_attr_names.get("gender", ("M", "F")))
  else:
    if "age" not in ds.user_attrs:
      raise DataError("dataset has no user attribute 'age'", field="age")
    user_group = age_buckets(ds.user_attrs["age"])
    names = AGE_BUCKET_NAMES
  check_user_groups(user_group, names)
  item_group = protocols.item_groups_first_genre(ds)
  if (item_group < 0).any():
    raise DataError(f"{int((item_group < 0).sum())} items have no genre",
                    field="item_first_genre")
  tr, va, te = protocols.random_split(ds, fractions, seed)
  return SystemData(
      name="ml1m", seed=seed, groups=groups, num_users=ds.num_users,
      num_items=ds.num_items, user_group=np.asarray(user_group, np.int32),
      group_names=names, item_group=item_group.astype(np.int32),
      item_group_names=tuple(ds.genre_names),
      train=_split_from_mask(ds, tr), valid=_split_from_mask(ds, va),
      test=_split_from_mask(ds, te))


# ----------------------------------------------------------------------------
# Synthetic data.


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _intercept(logits: np.ndarray, target: float,
               weight: np.ndarray | None = None) -> float:
  """b with (weighted) mean sigmoid(logits + b) = target (bisection)."""
  lo, hi = -30.0, 30.0
  for _ in range(40):
    mid = 0.5 * (lo + hi)
    p = _sigmoid(logits + mid)
    mean = p.mean() if weight is None else (p * weight).sum() / weight.sum()
    lo, hi = (mid, hi) if mean < target else (lo, mid)
  return 0.5 * (lo + hi)


def _top_right_singular(a: np.ndarray, r: int, rng) -> tuple[np.ndarray,
                                                            np.ndarray]:
  """Top-r singular values and right vectors of `a` (randomised subspace
  iteration, Halko et al. 2011: 4 power steps, 10 extra columns).

  Returns:
    (s [r], V [n, r]).
  """
  q = a @ rng.normal(size=(a.shape[1], r + 10))
  for _ in range(4):
    q = np.linalg.qr(a @ (a.T @ np.linalg.qr(q)[0]))[0]
  _, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
  return s[:r], vt[:r].T


def _logit(p: np.ndarray) -> np.ndarray:
  p = np.clip(p, 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p)


def user_auc(scores, positive, exclude) -> np.ndarray:
  """Per-user AUC of held-out positives against the other candidates.

      AUC_u = (1 / (|P_u| |N_u|)) sum_{i in P_u} sum_{j in N_u}
              (1[s_uj < s_ui] + 1/2 1[s_uj = s_ui]),

  P_u = positive items of u (not excluded), N_u = items neither positive nor
  excluded (Mann-Whitney). NaN for a user with no positive or no negative.

  One sort for all users (host NumPy): key_ui = u + (s_ui - min s) / (2 (max
  s - min s)) in float64 orders the pairs by user, then score; each
  positive's wins are counted by binary search among the sorted negative
  keys. Equal scores give equal keys (ties count 1/2); distinct scores
  closer than ~1e-12 of the score range would count as ties.

  Args:
    scores: float [U, I] scores (any monotone transform gives the same AUC).
    positive: bool [U, I] held-out positives.
    exclude: bool [U, I] items that are no candidates (e.g. train items).

  Returns:
    float64 [U].
  """
  z = np.asarray(scores, np.float64)
  exclude = np.asarray(exclude, bool)
  positive = np.asarray(positive, bool) & ~exclude
  negative = ~(positive | exclude)
  if not np.all(np.isfinite(z)):
    raise DataError("non-finite scores", field="scores")
  u_n = z.shape[0]
  lo, hi = float(z.min()), float(z.max())
  key = (z - lo) * (0.5 / max(hi - lo, 1e-30)) + np.arange(u_n)[:, None]
  neg = np.sort(key[negative])
  pu, pi = np.nonzero(positive)
  pk = key[pu, pi]
  lt = np.searchsorted(neg, pk, side="left")
  le = np.searchsorted(neg, pk, side="right")
  below_user = np.searchsorted(neg, pu.astype(np.float64), side="left")
  wins = (lt - below_user) + 0.5 * (le - lt)
  num = np.bincount(pu, weights=wins, minlength=u_n)
  n_pos = np.bincount(pu, minlength=u_n).astype(np.float64)
  n_neg = negative.sum(1).astype(np.float64)
  ok = (n_pos > 0) & (n_neg > 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(ok, num / np.maximum(n_pos * n_neg, 1.0), np.nan)


def group_means(values: np.ndarray, user_group: np.ndarray,
                num_groups: int) -> np.ndarray:
  """float [G]: NaN-ignoring mean of per-user values within each group."""
  v = np.asarray(values, np.float64)
  g = np.asarray(user_group)
  ok = np.isfinite(v)
  s = np.bincount(g[ok], weights=v[ok], minlength=num_groups)
  c = np.bincount(g[ok], minlength=num_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def generate_synthetic(*, seed: int = 0, fractions=(0.7, 0.1, 0.2),
                       num_users: int = 2000, num_items: int = 1000,
                       minority_frac: float = 0.3, num_item_groups: int = 8,
                       latent_dim: int = 16, density: float = 0.06,
                       oracle_noise: float = 1.0,
                       retriever_rank: int = 4) -> SystemData:
  """The synthetic `SystemData` (model in the module docstring)."""
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"field '{field}': {msg}")
  need(num_users >= 10, "num_users", f"must be >= 10, got {num_users}")
  need(num_items >= 10, "num_items", f"must be >= 10, got {num_items}")
  need(0 < minority_frac < 1, "minority_frac",
       f"must be in (0, 1), got {minority_frac}")
  need(2 <= num_item_groups <= min(num_items, latent_dim), "num_item_groups",
       f"must be in [2, min(num_items, latent_dim)], got {num_item_groups}")
  need(0 < density < 0.5, "density", f"must be in (0, 0.5), got {density}")
  need(oracle_noise >= 0, "oracle_noise",
       f"must be >= 0, got {oracle_noise}")
  need(1 <= retriever_rank <= min(num_items, latent_dim + 1),
       "retriever_rank", f"must be in [1, {min(num_items, latent_dim + 1)}], "
       f"got {retriever_rank}")
  rng = np.random.default_rng([seed, 20250601])
  u_n, i_n, d, gi = num_users, num_items, latent_dim, num_item_groups
  # User groups: exactly round(minority_frac U) minority users, shuffled.
  n_min = int(round(minority_frac * u_n))
  need(0 < n_min < u_n, "minority_frac", f"gives {n_min} minority users")
  user_group = np.zeros(u_n, np.int32)
  user_group[rng.permutation(u_n)[:n_min]] = 1
  # Item groups with skewed sizes (largest remainder, >= 1 each).
  w = (np.arange(gi) + 1.0) ** -0.8
  raw = w / w.sum() * (i_n - gi)
  sizes = np.floor(raw).astype(np.int64) + 1
  sizes[np.argsort(-(raw - np.floor(raw)))[:i_n - sizes.sum()]] += 1
  item_group = rng.permutation(np.repeat(np.arange(gi), sizes)).astype(
      np.int32)
  cent = np.linalg.qr(rng.normal(size=(d, d)))[0][:gi]  # [G_I, d]
  y = cent[item_group] + 0.5 * rng.normal(size=(i_n, d)) / np.sqrt(d)
  prefs = np.stack([sizes / sizes.sum(), sizes[::-1] / sizes.sum()])
  gam = rng.gamma(5.0 * prefs[user_group] + 1e-3)  # Dirichlet via Gammas
  pi = gam / gam.sum(1, keepdims=True)
  x = 2.0 * (pi @ cent + 0.3 * rng.normal(size=(u_n, d)) / np.sqrt(d))
  aff = x @ y.T  # [U, I]
  pop = 0.7 * rng.normal(size=i_n)
  qual = 0.7 * rng.normal(size=i_n)
  love_f = rng.normal(size=(2, i_n))
  pop_w = np.where(user_group == 0, 1.0, 0.3)[:, None]
  # Intercepts from a fixed subsample of pairs (fast, deterministic).
  sub = rng.choice(u_n * i_n, size=min(u_n * i_n, 200_000), replace=False)
  l_int = 3.0 * aff + pop_w * pop[None, :]
  l_int += _intercept(l_int.reshape(-1)[sub], density)
  p_int = _sigmoid(l_int)
  l_like = 1.5 * aff + qual[None, :]
  l_like += _intercept(l_like.reshape(-1)[sub], 0.58,
                       p_int.reshape(-1)[sub])
  p_like_c = _sigmoid(l_like)
  l_love = 2.0 * love_f[user_group] + 0.5 * aff
  l_love += _intercept(l_love.reshape(-1)[sub], 0.4,
                       (p_int * p_like_c).reshape(-1)[sub])
  p_love_c = _sigmoid(l_love)
  p_star = np.stack([p_int, p_int * p_like_c,
                     p_int * p_like_c * p_love_c]).astype(np.float32)
  # Truth: nested Bernoulli draws, each interacted pair in one split.
  y_int = rng.random((u_n, i_n)) < p_int
  y_like = y_int & (rng.random((u_n, i_n)) < p_like_c)
  y_love = y_like & (rng.random((u_n, i_n)) < p_love_c)
  part = rng.choice(3, size=(u_n, i_n), p=np.asarray(fractions))
  splits = []
  for s in range(3):
    uu, ii = np.nonzero(y_int & (part == s))
    splits.append(SplitOutcomes(
        user=uu.astype(np.int32), item=ii.astype(np.int32),
        outcomes=np.stack([y_int[uu, ii], y_like[uu, ii], y_love[uu, ii]],
                          axis=1)))
  # Oracle scores, equally noisy for both groups.
  eps = rng.normal(size=(3, u_n, i_n))
  logit_star = _logit(p_star.astype(np.float64))
  scores = (logit_star + oracle_noise * eps).astype(np.float32)
  # Retriever: rank-r fit of the majority's interact logits.
  s_r, v_r = _top_right_singular(logit_star[0][user_group == 0],
                                 retriever_rank, rng)
  item_vec = (v_r * np.sqrt(s_r)).astype(np.float32)
  user_vec = (logit_star[0] @ v_r / np.sqrt(s_r)).astype(np.float32)
  # Lambda family (analytic proxy): level down the group ahead in AUC.
  train_seen = splits[0].seen(u_n, i_n)
  valid_int = splits[1].seen(u_n, i_n)
  auc = group_means(user_auc(scores[0], valid_int, train_seen), user_group, 2)
  ahead = int(np.nanargmax(auc))
  lam = np.asarray(LAMBDAS)
  noise = np.full((lam.size, 2), oracle_noise)
  noise[:, ahead] = oracle_noise * (1.0 + lam)
  fam = (logit_star[0][None] + noise[:, user_group][:, :, None] *
         eps[0][None]).astype(np.float32)
  oracle = SyntheticOracle(
      p_star=p_star, scores=scores, interact_family=fam,
      family_noise=noise.astype(np.float32), retriever_user=user_vec,
      retriever_item=item_vec, noise=float(oracle_noise))
  return SystemData(
      name="synthetic", seed=int(seed), groups="gender", num_users=u_n,
      num_items=i_n, user_group=user_group, group_names=("M", "F"),
      item_group=item_group,
      item_group_names=tuple(f"genre{g}" for g in range(gi)),
      train=splits[0], valid=splits[1], test=splits[2], oracle=oracle)
