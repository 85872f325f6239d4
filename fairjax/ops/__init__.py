"""Differentiable building blocks: relaxed sort, soft ranking metrics, losses.

Public API re-exported here (other `fairjax.ops` modules add their own):
  neuralsort, soft_hits, diff_hit, soft_recall, soft_ndcg   (neuralsort.py)
  bpr_loss, masked_bpr_mean, group_means, group_gap_loss, fade_fairness_loss,
  rec_fairness_statistic, rec_fairness_loss, discriminator_loss,
  l2_penalty                                                (losses.py)
"""

from fairjax.ops.losses import (bpr_loss, discriminator_loss,
                                fade_fairness_loss, group_gap_loss,
                                group_means, l2_penalty, masked_bpr_mean,
                                rec_fairness_loss, rec_fairness_statistic)
from fairjax.ops.neuralsort import (diff_hit, neuralsort, soft_hits,
                                    soft_ndcg, soft_recall)

__all__ = [
    "neuralsort", "soft_hits", "diff_hit", "soft_recall", "soft_ndcg",
    "bpr_loss", "masked_bpr_mean", "group_means", "group_gap_loss",
    "fade_fairness_loss",
    "rec_fairness_statistic", "rec_fairness_loss", "discriminator_loss",
    "l2_penalty",
]
