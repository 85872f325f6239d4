"""Synthetic recommendation data: the embedded default dataset and catalogs.

`generate` builds a seeded, pure-NumPy interaction log (about 0.3 s for the
defaults: 1000 users, 800 items, 6 genres, 50k interactions) with the
phenomena the fairness methods target, so every method has a meaningful
demo without real data. Phenomena and the parameters that drive them:

* Unequal user groups. `user_attrs['gender']`: code 0 (label 'M', the
  majority) for `1 - minority_frac` of the users, code 1 ('F', minority)
  for the rest. The labels only mirror MovieLens' coding.
* Unequal activity. A user's interaction count is log-normal
  (`activity_sigma`) with group means in the ratio 1 : `minority_activity`
  (< 1: minority users interact less); counts are scaled so that, clipped
  to [`min_interactions`, `max_item_frac * num_items`], they sum exactly to
  `num_interactions` (default round(num_users * interactions_per_user)).
* Skewed item groups. Genre g (0 = largest) is the first genre of a share
  of items proportional to (g + 1)^-`genre_skew`; a share
  `multi_genre_frac` of items gets a second, different genre.
* Popularity bias. Item i has log-popularity -`popularity_exponent` *
  log(rank_i) for a random rank (a power law); items whose first genre is a
  niche genre (the `minority_genres` smallest) lose `niche_penalty` more.
  The choice logit adds `popularity_weight` * log-popularity for majority
  users and `minority_popularity_weight` for minority users (default 0:
  minority users do not follow the mainstream).
* Group-dependent taste. Genre centroids c_g are orthonormal directions
  times `genre_separation`; item factors are the mean centroid of the
  item's genres + N(0, item_noise^2 / dim). User u's genre mix is
  pi_u ~ Dirichlet(taste_concentration * w_a): w_0 is proportional to genre
  size over the non-niche genres, w_1 puts `minority_taste` on the niche
  genres and the rest like w_0. The user factor is `taste_scale` *
  (sum_g pi_ug c_g + N(0, s_a^2 / dim)) with s_0 = `user_noise`, s_1 =
  `minority_user_noise`. Minority logits are also multiplied by
  `minority_sharpness` (< 1: broader, less predictable choices). So the
  minority wants small, unpopular genres with idiosyncratic tastes, and a
  plain MF recommender serves the majority better: PD = metric(a=0) -
  metric(a=1) > 0 on Recall/NDCG (seed 0, MF-BPR d=32, random 80/20 split:
  Recall@20 about 0.38 vs 0.21), in every chronological period as well.
  Niche genres are under-exposed item groups, and gender x genre cells
  have unequal recall (intersectional unfairness).
* Preference drift. Each user draws a second factor u_1 from the same group
  distribution; at global time t in [0, 1] the factor is (1 - drift t) u_0
  + drift t u_1, evaluated at the midpoint of each of `drift_steps` equal
  phases of the timeline. Group structure is kept, so the gap persists
  while individual tastes move.
* Timestamps. User u is active in [s, e] (s ~ U(0, 1 - min_window), e ~
  U(s + min_window, 1)); interaction times are uniform in that window,
  mapped to Unix seconds from `start_time` over `duration_days` (default
  the year 2020).
* Choices. Within each phase a user's items are drawn without replacement
  by Gumbel top-k on the logits, never repeating an item across phases.
* Ratings 1..5: clip(round(rating_mean + rating_scale * z + N(0,
  rating_noise^2)), 1, 5) with z the affinity <u(t), v_i> standardised over
  all drawn pairs; with the defaults ~85% are >= 3.

`generate_catalog` and `generate_queries` build large retrieval catalogs
(10^6 x 64 in about a second) with skewed group sizes and group-correlated
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


def _orthonormal_rows(rng: np.random.Generator, n: int, dim: int):
  """n unit rows, orthonormal when n <= dim (random directions otherwise)."""
  g = rng.standard_normal((max(n, dim), dim))
  if n <= dim:
    q, _ = np.linalg.qr(g.T)  # [dim, n] orthonormal columns
    return q[:, :n].T
  return g[:n] / np.linalg.norm(g[:n], axis=1, keepdims=True)


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
  """Per-user counts: log-normal weights w_u (group-scaled), then the scale
  c with sum_u clip(c w_u, lo, hi) = total (bisection), floored, and the
  remainder added one each to the largest fractional parts (exact total)."""
  rel = np.where(group == 1, minority_activity, 1.0)
  w = rel * rng.lognormal(-0.5 * sigma**2, sigma, group.shape[0])
  a, b = 0.0, hi / w.min()
  for _ in range(100):
    c = 0.5 * (a + b)
    if np.clip(c * w, lo, hi).sum() < total:
      a = c
    else:
      b = c
  raw = np.clip(b * w, lo, hi)
  counts = np.floor(raw).astype(np.int64)
  rest = int(total - counts.sum())
  if rest > 0:
    frac = np.where(counts < hi, raw - counts, -1.0)
    counts[np.argsort(-frac, kind="stable")[:rest]] += 1
  elif rest < 0:
    frac = np.where(counts > lo, raw - counts, 2.0)
    counts[np.argsort(frac, kind="stable")[:-rest]] -= 1
  return counts


def generate(seed: int = 0, num_users: int = 1000, num_items: int = 800,
             num_genres: int = 6, *, dim: int = 16,
             num_interactions: int | None = None,
             interactions_per_user: float = 50.0,
             minority_frac: float = 0.3, minority_activity: float = 0.6,
             activity_sigma: float = 0.6, min_interactions: int = 5,
             max_item_frac: float = 0.5, genre_skew: float = 1.0,
             multi_genre_frac: float = 0.15, popularity_exponent: float = 1.0,
             popularity_weight: float = 1.0,
             minority_popularity_weight: float = 0.0,
             niche_penalty: float = 0.5,
             minority_genres: int = 2, minority_taste: float = 0.5,
             taste_concentration: float = 2.0, taste_scale: float = 3.0,
             item_noise: float = 0.5, user_noise: float = 0.5,
             minority_user_noise: float = 1.0,
             minority_sharpness: float = 0.8,
             genre_separation: float = 2.0,
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
    num_interactions: exact total; overrides `interactions_per_user`.
    interactions_per_user: mean count per user when `num_interactions` is
      None (target total = round(num_users * interactions_per_user)).
    Other keyword arguments: see the module docstring.

  Returns:
    A `Dataset` (name `name`) sorted by (user, timestamp), with raw ids
    1..U and 1..I, `user_attrs['gender']` (int32, 0 = majority 'M', 1 =
    minority 'F'), `item_genres` (bool multi-hot), `genre_names`
    ('genre0'.. by decreasing size; the last `minority_genres` are niche),
    `item_first_genre` and Unix-second timestamps.

  Raises:
    ConfigError: a parameter out of range (the message names it).
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
  _check(num_users * min_interactions <= total <= num_users * hi,
         "num_interactions", f"{total} not in [num_users * min_interactions,"
         f" num_users * max_item_frac * num_items] = "
         f"[{num_users * min_interactions}, {num_users * hi}]")

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
  centroids = _orthonormal_rows(rng, num_genres, dim) * genre_separation
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
    kmax = int(cnt.max())
    if kmax < num_items:  # only the top kmax columns need ordering
      top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
    else:
      top = np.broadcast_to(np.arange(num_items), logits.shape)
    ranked = np.take_along_axis(
        top, np.argsort(-np.take_along_axis(logits, top, 1), axis=1,
                        kind="stable"), 1)
    pick = np.arange(kmax)[None, :] < cnt[:, None]
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


def generate_catalog(num_items: int, dim: int, num_groups: int, seed: int = 0,
                     *, group_skew: float = 1.0, separation: float = 1.0,
                     spread: float = 1.0, popularity_shift: float = 1.0,
                     chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
  """A large item catalog with skewed groups and group-correlated embeddings.

  Group g (0 = largest) holds a share of items proportional to
  (g + 1)^-`group_skew` (largest-remainder rounding, each group >= 1 item);
  items are in random order. Embedding of item i in group g:

    v_i = separation * c_g + shift_g e_0 + spread * N(0, I_dim / dim),
    shift_g = popularity_shift * (1 - g / max(num_groups - 1, 1)),

  with c_g random unit directions orthogonal to e_0 (orthonormal when
  num_groups < dim) and e_0 the first coordinate axis, which
  `generate_queries` also leans towards: an unconstrained top-K
  over-exposes the large groups and under-exposes the small ones.

  Args:
    num_items, dim, num_groups: catalog shape.
    seed: randomness; equal seeds give equal catalogs.
    group_skew, separation, spread, popularity_shift: see the formula.
    chunk: rows per step when adding centroids (bounds temporary memory).

  Returns:
    (item_emb float32 [num_items, dim], item_group int32 [num_items]).
  """
  _check(num_items >= num_groups >= 1, "num_items",
         "must be >= num_groups >= 1")
  _check(dim >= 1, "dim", "must be >= 1")
  rng = np.random.default_rng(seed)
  sizes = _skewed_sizes(num_items, num_groups, group_skew)
  group = rng.permutation(
      np.repeat(np.arange(num_groups, dtype=np.int32), sizes))
  cent = np.zeros((num_groups, dim))
  if dim > 1:  # directions orthogonal to the popularity axis e_0
    cent[:, 1:] = separation * _orthonormal_rows(rng, num_groups, dim - 1)
  cent[:, 0] = popularity_shift * (
      1.0 - np.arange(num_groups) / max(num_groups - 1, 1))
  cent = cent.astype(np.float32)
  emb = np.empty((num_items, dim), dtype=np.float32)
  rng.standard_normal(dtype=np.float32, out=emb)
  emb *= np.float32(spread / np.sqrt(dim))
  for start in range(0, num_items, chunk):
    emb[start:start + chunk] += cent[group[start:start + chunk]]
  return emb, group


def generate_queries(num: int, dim: int, seed: int = 0, *,
                     query_bias: float = 0.5) -> np.ndarray:
  """Query (user) vectors for a `generate_catalog` catalog.

  q = N(0, I_dim / dim) + query_bias * e_0, so queries favour the items with
  a large first coordinate (the large groups of the catalog).

  Args:
    num, dim: output shape.
    seed: randomness; equal seeds give equal queries.
    query_bias: weight of the shared popularity axis e_0.

  Returns:
    float32 [num, dim].
  """
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((num, dim), dtype=np.float32)
  q *= np.float32(1.0 / np.sqrt(dim))
  q[:, 0] += np.float32(query_bias)
  return q
