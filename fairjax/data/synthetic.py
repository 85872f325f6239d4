"""Synthetic recommendation data: the embedded default dataset and catalogs.

`generate` builds a seeded, pure-NumPy interaction log with the phenomena the
fairness methods target, so every method has a meaningful demo without real
data. The phenomena and the parameters that drive them:

* Unequal user groups. `user_attrs['gender']`: code 0 (label 'M', the
  majority) for a share `1 - minority_frac` of users, code 1 ('F', the
  minority) for the rest. The labels only mirror MovieLens' coding.
* Unequal activity. Each user's interaction count is log-normal
  (`activity_sigma`) with group means in the ratio 1 : `minority_activity`
  (< 1: minority users interact less); counts are rescaled so the total is
  `num_interactions` (default `num_users * interactions_per_user`), clipped
  to [`min_interactions`, `max_item_frac * num_items`].
* Skewed item groups. Genre g (0 = largest) gets a share of items
  proportional to (g + 1)^-`genre_skew` of the items as its first genre; a
  share `multi_genre_frac` of items gets a second, different genre.
* Popularity bias. Item i gets log-popularity -`popularity_exponent` *
  log(rank_i) for a random rank (a power law); items whose first genre is a
  minority-preferred genre lose a further `niche_penalty` (log-space). The
  choice logit adds `popularity_weight` * log-popularity.
* Group-dependent taste. Genre g has a random centroid c_g in R^dim; item
  factors are v_i = mean of its genres' centroids + N(0, item_noise^2 / dim).
  User u's taste is pi_u ~ Dirichlet(taste_concentration * w_a) over genres,
  where w_0 favours the large genres (proportional to genre size) and w_1
  puts weight `minority_taste` on the `minority_genres` smallest genres; the
  user factor is `taste_scale` * (sum_g pi_ug c_g + N(0, user_noise^2 / dim)).
  Minority users therefore want small, less popular genres, and a plain MF
  recommender trained on the log serves the majority better (a positive
  user-group gap PD = metric(a=0) - metric(a=1) on Recall/NDCG).
* Preference drift. Each user also draws a second factor u_1 from the same
  group distribution; at global time t in [0, 1] the factor is
  (1 - drift t) u_0 + drift t u_1. The timeline is cut into `drift_steps`
  phases, each using the factor at its midpoint. Group structure is kept,
  so the gap persists over time while individual tastes move.
* Timestamps. Each user is active in a window [s, e] of the year (s uniform
  in [0, 1 - min_window], e uniform in [s + min_window, 1]); interaction
  times are uniform in the window, in Unix seconds from `start_time` over
  `duration_days`.
* Choices. Within each phase, a user's items are drawn without replacement
  (Gumbel top-k) with logits <u(t), v_i> + popularity term, never repeating
  an item across phases.
* Ratings 1..5. rating = clip(round(rating_mean + rating_scale * z + noise),
  1, 5) with z the affinity <u(t), v_i> standardised over all drawn pairs and
  noise N(0, rating_noise^2); with the defaults ~85-90% are >= 3.

`generate_catalog` and `generate_queries` build large retrieval catalogs
(10^6 items in about a second) with skewed group sizes and group-correlated
embeddings for the FairSync scale experiments.
"""

from __future__ import annotations

import numpy as np

from fairjax.data.types import Dataset
from fairjax.errors import ConfigError

_DEFAULT_START = 1577836800  # 2020-01-01T00:00:00Z


def _check(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"field '{field}': {msg}")


def _skewed_sizes(total: int, num_groups: int, skew: float) -> np.ndarray:
  """Splits `total` into `num_groups` sizes proportional to (g+1)^-skew.

  Largest-remainder rounding; every group gets at least one member.
  """
  w = (np.arange(num_groups) + 1.0) ** -skew
  raw = total * w / w.sum()
  sizes = np.maximum(np.floor(raw).astype(np.int64), 1)
  rest = total - sizes.sum()
  if rest > 0:
    sizes[np.argsort(-(raw - np.floor(raw)), kind="stable")[:rest]] += 1
  while sizes.sum() > total:  # only when the minimum of 1 binds
    sizes[np.argmax(sizes)] -= 1
  return sizes


def _item_genres(rng: np.random.Generator, num_items: int, num_genres: int,
                 genre_skew: float, multi_genre_frac: float):
  sizes = _skewed_sizes(num_items, num_genres, genre_skew)
  first = rng.permutation(np.repeat(np.arange(num_genres), sizes))
  genres = np.zeros((num_items, num_genres), dtype=bool)
  genres[np.arange(num_items), first] = True
  multi = rng.random(num_items) < multi_genre_frac
  # A second genre, different from the first: shift by 1..G-1.
  second = (first + rng.integers(1, num_genres, num_items)) % num_genres
  genres[np.nonzero(multi)[0], second[multi]] = True
  return genres, first.astype(np.int32)


def _user_counts(rng, group, minority_activity, sigma, lo, hi, total):
  rel = np.where(group == 1, minority_activity, 1.0)
  w = rel * rng.lognormal(-0.5 * sigma**2, sigma, group.shape[0])
  raw = total * w / w.sum()
  counts = np.floor(raw).astype(np.int64)
  rest = int(total - counts.sum())
  if rest > 0:
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
  return np.clip(counts, lo, hi)


def generate(seed: int = 0, num_users: int = 1000, num_items: int = 800,
             num_genres: int = 6, *, dim: int = 16,
             num_interactions: int | None = None,
             interactions_per_user: float = 50.0,
             minority_frac: float = 0.3, minority_activity: float = 0.6,
             activity_sigma: float = 0.6, min_interactions: int = 5,
             max_item_frac: float = 0.5, genre_skew: float = 1.0,
             multi_genre_frac: float = 0.15, popularity_exponent: float = 0.8,
             popularity_weight: float = 1.0,
             minority_popularity_weight: float = 0.3,
             niche_penalty: float = 0.5,
             minority_genres: int = 2, minority_taste: float = 0.8,
             taste_concentration: float = 2.0, taste_scale: float = 3.0,
             item_noise: float = 0.5, user_noise: float = 0.5,
             minority_user_noise: float = 1.0,
             minority_sharpness: float = 1.0,
             drift: float = 0.5, drift_steps: int = 4,
             min_window: float = 0.25, start_time: int = _DEFAULT_START,
             duration_days: float = 365.0, rating_mean: float = 3.6,
             rating_scale: float = 0.9, rating_noise: float = 0.5,
             name: str = "synthetic") -> Dataset:
  """Generates the seeded synthetic interaction log (see module docstring).

  Args:
    seed: the only source of randomness; equal seeds give equal datasets.
    num_users, num_items, num_genres: sizes of the id spaces.
    dim: latent factor dimension.
    num_interactions: target total; overrides `interactions_per_user`. The
      total is exact unless the per-user clip bounds bind.
    interactions_per_user: mean count per user when `num_interactions` is
      None (target total = round(num_users * interactions_per_user)).
    Other keyword arguments: see the module docstring.

  Returns:
    A `Dataset` sorted by (user, timestamp) with `user_attrs['gender']`,
    `item_genres` (multi-hot), `item_first_genre` and timestamps.
  """
  _check(num_users >= 2, "num_users", "must be >= 2")
  _check(num_genres >= 2, "num_genres", "must be >= 2")
  _check(num_items >= num_genres, "num_items", "must be >= num_genres")
  _check(0 < minority_frac < 1, "minority_frac", "must be in (0, 1)")
  _check(1 <= minority_genres < num_genres, "minority_genres",
         "must be in [1, num_genres)")
  _check(0 <= drift <= 1, "drift", "must be in [0, 1]")
  _check(drift_steps >= 1, "drift_steps", "must be >= 1")
  _check(0 < max_item_frac <= 1, "max_item_frac", "must be in (0, 1]")
  _check(0 < min_window <= 1, "min_window", "must be in (0, 1]")
  hi = max(int(max_item_frac * num_items), 1)
  _check(min_interactions <= hi, "min_interactions",
         "must be <= max_item_frac * num_items")
  total = (int(num_interactions) if num_interactions is not None
           else int(round(num_users * interactions_per_user)))
  _check(total >= num_users, "num_interactions", "must be >= num_users")

  rng = np.random.default_rng(seed)
  # Users: sensitive attribute, activity.
  num_min = max(1, int(round(minority_frac * num_users)))
  group = np.zeros(num_users, dtype=np.int32)
  group[rng.choice(num_users, num_min, replace=False)] = 1
  counts = _user_counts(rng, group, minority_activity,
                        activity_sigma, min_interactions, hi, total)

  # Items: genres, popularity, factors.
  genres, first = _item_genres(rng, num_items, num_genres, genre_skew,
                               multi_genre_frac)
  niche = np.arange(num_genres) >= num_genres - minority_genres
  rank = rng.permutation(num_items) + 1
  log_pop = -popularity_exponent * np.log(rank) - niche_penalty * niche[first]
  centroids = rng.standard_normal((num_genres, dim)) / np.sqrt(dim) * 2.0
  item_f = genres @ centroids / genres.sum(1, keepdims=True)
  item_f += item_noise * rng.standard_normal((num_items, dim)) / np.sqrt(dim)

  # Group taste profiles over genres.
  size = genres.sum(0).astype(np.float64)
  w_maj = np.where(niche, 0.0, size)
  w_maj = w_maj / w_maj.sum()
  w_min = np.where(niche, minority_taste / minority_genres,
                   (1 - minority_taste) * w_maj)
  w_min = w_min / w_min.sum()
  alpha = taste_concentration * np.where(group[:, None] == 1, w_min, w_maj)
  alpha = np.maximum(alpha, 1e-3)

  def user_factor():
    pi = rng.standard_gamma(alpha)
    pi /= pi.sum(1, keepdims=True)
    sd = np.where(group == 1, minority_user_noise, user_noise)[:, None]
    noise = sd * rng.standard_normal((num_users, dim)) / np.sqrt(dim)
    return taste_scale * (pi @ centroids + noise)

  u0, u1 = user_factor(), user_factor()
  pop_w = np.where(group == 1, minority_popularity_weight, popularity_weight)
  sharp = np.where(group == 1, minority_sharpness, 1.0)

  # Timestamps: per-user activity window, uniform times inside.
  n = int(counts.sum())
  user = np.repeat(np.arange(num_users, dtype=np.int32), counts)
  s = rng.uniform(0.0, 1.0 - min_window, num_users)
  e = rng.uniform(s + min_window, 1.0)
  t = s[user] + (e - s)[user] * rng.random(n)
  order = np.lexsort((t, user))
  user, t = user[order], t[order]
  phase = np.minimum((t * drift_steps).astype(np.int64), drift_steps - 1)

  # Items: per phase, Gumbel top-k without replacement across phases.
  item = np.empty(n, dtype=np.int32)
  affinity = np.empty(n, dtype=np.float64)
  taken = np.zeros((num_users, num_items), dtype=bool)
  for p in range(drift_steps):
    sel = phase == p
    cnt = np.bincount(user[sel], minlength=num_users)
    if not cnt.any():
      continue
    mid = drift * (p + 0.5) / drift_steps
    uf = (1 - mid) * u0 + mid * u1
    aff = uf @ item_f.T
    logits = sharp[:, None] * aff + pop_w[:, None] * log_pop[None, :]
    logits = logits + rng.gumbel(size=logits.shape)
    logits[taken] = -np.inf
    ranked = np.argsort(-logits, axis=1, kind="stable")
    pick = np.arange(num_items)[None, :] < cnt[:, None]
    rows = np.nonzero(pick)[0]
    cols = ranked[pick]
    taken[rows, cols] = True
    # Both (rows, cols) and the phase-p interactions are grouped by user
    # in ascending order with equal per-user counts, so they line up.
    item[sel] = cols
    affinity[sel] = aff[rows, cols]

  # Shuffle item order within each (user, phase) so Gumbel rank does not
  # correlate with time inside a phase.
  key = rng.random(n)
  perm = np.lexsort((key, phase, user))
  item = item[perm]
  affinity = affinity[perm]

  z = (affinity - affinity.mean()) / max(affinity.std(), 1e-12)
  r = rating_mean + rating_scale * z + rating_noise * rng.standard_normal(n)
  rating = np.clip(np.round(r), 1, 5).astype(np.float32)
  seconds = duration_days * 86400.0
  ts = (int(start_time) + np.floor(t * seconds)).astype(np.int64)

  return Dataset(
      name=name, user=user, item=item, rating=rating, timestamp=ts,
      num_users=num_users, num_items=num_items,
      raw_user_ids=np.arange(1, num_users + 1, dtype=np.int64),
      raw_item_ids=np.arange(1, num_items + 1, dtype=np.int64),
      user_attrs={"gender": group},
      user_attr_names={"gender": ("M", "F")},
      item_genres=genres,
      genre_names=tuple(f"genre{g}" for g in range(num_genres)),
      item_first_genre=first)
