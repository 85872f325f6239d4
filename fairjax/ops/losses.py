"""Recommendation losses: BPR, group-gap fairness (FADE, REC), ADVER's
discriminator loss, and an L2 penalty that skips biases.

References:
  - BPR: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit
    Feedback", UAI 2009.
  - FADE fairness loss: Yoo et al., "Ensuring User-side Fairness in Dynamic
    Recommender Systems", WWW 2024 (L_fair = -log sigmoid(-PD_diff)).
  - REC: the same loss with the mean positive score as group statistic.
  - ADVER: adversarial filtering of user embeddings (Bose & Hamilton,
    "Compositional Fairness Constraints for Graph Embeddings", ICML 2019;
    the FADE paper's ADVER baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def bpr_loss(pos_scores: Array, neg_scores: Array) -> Array:
  """Per-row BPR loss averaged over the sampled negatives.

      L_u = (1/n) sum_j -log sigmoid(s_ui - s_uj) = (1/n) sum_j
            softplus(s_uj - s_ui).

  Args:
    pos_scores: [B] scores of the positive items.
    neg_scores: [B, n] (or [B]) scores of the negatives of each row.

  Returns:
    [B] loss per row (take the mean for the batch loss).
  """
  pos = jnp.asarray(pos_scores)
  neg = jnp.asarray(neg_scores)
  if neg.ndim == pos.ndim:
    neg = neg[..., None]
  return jnp.mean(jax.nn.softplus(neg - pos[..., None]), axis=-1)


def masked_bpr_mean(scores: Array, valid: Array) -> Array:
  """Mean BPR over the valid rows of a padded batch.

      L = sum_b v_b L_b / max(sum_b v_b, 1),  L_b = `bpr_loss`(s_b0, s_b1:)

  Args:
    scores: [B, 1 + n] scores of the positive (column 0) and n negatives.
    valid: [B] 1/0 (or bool): padding rows get 0.

  Returns:
    Scalar loss (0 for a batch with no valid row).
  """
  w = valid.astype(scores.dtype)
  return jnp.sum(bpr_loss(scores[:, 0], scores[:, 1:]) * w) / jnp.maximum(
      jnp.sum(w), 1.0)


def group_means(stat: Array, group: Array, valid: Array | None = None
                ) -> tuple[Array, Array, Array]:
  """Mean of `stat` over valid rows of group 0 and of group 1.

  Args:
    stat: [B] per-row statistic.
    group: [B] int group label (0 or 1; other values belong to neither).
    valid: [B] bool mask (padding rows False), or None (all valid).

  Returns:
    (mean_0, mean_1, has_both): the two means (0 for an empty group, with a
    finite gradient) and whether both groups have at least one valid row.
  """
  stat = jnp.asarray(stat)
  group = jnp.asarray(group)
  v = jnp.ones(stat.shape, bool) if valid is None else jnp.asarray(valid, bool)
  w0 = (v & (group == 0)).astype(stat.dtype)
  w1 = (v & (group == 1)).astype(stat.dtype)
  n0, n1 = jnp.sum(w0), jnp.sum(w1)
  # max(n, 1) keeps both branches finite: no 0/0 in value or gradient.
  m0 = jnp.sum(stat * w0) / jnp.maximum(n0, 1.0)
  m1 = jnp.sum(stat * w1) / jnp.maximum(n1, 1.0)
  return m0, m1, (n0 > 0) & (n1 > 0)


def group_gap_loss(stat: Array, group: Array, valid: Array | None = None,
                   absolute: bool = False) -> tuple[Array, Array]:
  """Group-gap fairness loss shared by FADE and REC.

      PD_diff = mean_{a=0} stat - mean_{a=1} stat   (over valid batch rows),
      L_fair  = -log sigmoid(-PD_diff) = softplus(PD_diff)      (default),
      L_fair  = softplus(|PD_diff|)                   (absolute=True).

  The default ('log' in the official FADE code, DESIGN §3) pushes the
  advantaged group-0 statistic down / group-1 up, also past a zero gap; the
  absolute form (the official code's 'absolute' option) pulls the gap
  towards 0 from either side. A batch without both groups gives loss 0 (and
  a zero, not NaN, gradient).

  Args:
    stat: [B] per-row statistic (DH for FADE, positive score for REC).
    group: [B] int sensitive attribute in {0, 1}.
    valid: [B] bool mask, or None.
    absolute: use |PD_diff|.

  Returns:
    (loss scalar, has_both bool scalar).
  """
  m0, m1, has_both = group_means(stat, group, valid)
  diff = jnp.abs(m0 - m1) if absolute else m0 - m1
  loss = jnp.where(has_both, jax.nn.softplus(diff), 0.0)
  return loss, has_both


def fade_fairness_loss(dh: Array, group: Array, valid: Array | None = None,
                       absolute: bool = False) -> tuple[Array, Array]:
  """FADE's fairness loss: `group_gap_loss` on the Differentiable Hit.

      L_fair = softplus(mean_{a=0} DH - mean_{a=1} DH)   (Yoo et al. 2024).

  Args:
    dh: [B] DH@k of each training row (`fairjax.ops.diff_hit`).
    group: [B] int sensitive attribute in {0, 1}.
    valid: [B] bool mask, or None.
    absolute: softplus(|PD_diff|) instead (see `group_gap_loss`).

  Returns:
    (loss scalar, has_both bool scalar); loss is 0 when a group is missing.
  """
  return group_gap_loss(dh, group, valid, absolute)


def rec_fairness_statistic(pos_scores: Array) -> Array:
  """REC's per-row group statistic: the positive item's score s_ui itself.

  Args:
    pos_scores: [B] scores of the positive items.

  Returns:
    [B] the statistic fed to `group_gap_loss` (identity, kept as a named hook
    so REC and FADE share the loss and differ only in this statistic).
  """
  return jnp.asarray(pos_scores)


def rec_fairness_loss(pos_scores: Array, group: Array,
                      valid: Array | None = None) -> tuple[Array, Array]:
  """REC baseline: softplus(mean_{a=0} s_ui - mean_{a=1} s_ui).

  Args:
    pos_scores: [B] positive scores.
    group: [B] int sensitive attribute in {0, 1}.
    valid: [B] bool mask, or None.

  Returns:
    (loss scalar, has_both bool scalar).
  """
  return group_gap_loss(rec_fairness_statistic(pos_scores), group, valid)


def discriminator_loss(logits: Array, group: Array,
                       valid: Array | None = None) -> Array:
  """Binary cross-entropy of the attribute discriminator (ADVER).

      L_D = mean_b [softplus(z_b) - a_b z_b]
          = mean_b -[a_b log sigmoid(z_b) + (1 - a_b) log sigmoid(-z_b)].

  Args:
    logits: [B] discriminator logits z (predicting a = 1).
    group: [B] attribute a in {0, 1}.
    valid: [B] bool mask, or None (mean over valid rows; 0 if none).

  Returns:
    scalar mean BCE.
  """
  z = jnp.asarray(logits)
  a = jnp.asarray(group).astype(z.dtype)
  per_row = jax.nn.softplus(z) - a * z
  if valid is None:
    return jnp.mean(per_row)
  w = jnp.asarray(valid).astype(z.dtype)
  return jnp.sum(per_row * w) / jnp.maximum(jnp.sum(w), 1.0)


def _path_name(path) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(
      p, "idx", p)))) for p in path)


def l2_penalty(params: Any, weight: float | Array,
               exclude: Sequence[str] = ("bias",)) -> Array:
  """Weighted sum of squares of all leaves except excluded ones.

      R(theta) = weight * sum_{leaves w, path not matching exclude} sum w^2.

  A leaf is excluded when any string in `exclude` occurs in its path name
  (e.g. `params/user_bias/embedding`, `params/Dense_0/bias`).

  Args:
    params: pytree of arrays (e.g. a Linen variables dict).
    weight: coefficient (e.g. 1e-4).
    exclude: substrings of path names to skip.

  Returns:
    scalar penalty.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  total = jnp.zeros((), jnp.float32)
  for path, leaf in leaves:
    name = _path_name(path)
    if any(e in name for e in exclude):
      continue
    total = total + jnp.sum(jnp.square(leaf))
  return weight * total
