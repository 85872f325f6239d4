"""Ranking, fairness and significance metrics.

`ranking`: full and sampled Recall/Precision/NDCG/HR/F1@K as per-user vectors.
`fairness`: PD, ITFR cell recall with CV/MIN/UCV/ICV, exposure and ESP, DER,
max-min gap, Gini. `significance`: paired t-test and Wilcoxon over users.
`reference`: NumPy brute-force references (tests and benchmarks).
"""

from fairjax.metrics.fairness import cell_recall
from fairjax.metrics.fairness import cv_metrics
from fairjax.metrics.fairness import der
from fairjax.metrics.fairness import esp
from fairjax.metrics.fairness import gini
from fairjax.metrics.fairness import group_exposure
from fairjax.metrics.fairness import group_gap
from fairjax.metrics.fairness import group_means
from fairjax.metrics.fairness import max_min_gap
from fairjax.metrics.ranking import METRIC_NAMES
from fairjax.metrics.ranking import rank_keys
from fairjax.metrics.ranking import rank_metrics
from fairjax.metrics.ranking import sampled_rank_metrics
from fairjax.metrics.ranking import sampled_scores
from fairjax.metrics.ranking import topk_items
from fairjax.metrics.ranking import topk_metrics
from fairjax.metrics.significance import paired_test
from fairjax.metrics.significance import student_t_two_sided_p

__all__ = [
    "METRIC_NAMES", "cell_recall", "cv_metrics", "der", "esp", "gini",
    "group_exposure", "group_gap", "group_means", "max_min_gap", "paired_test",
    "rank_keys", "rank_metrics", "sampled_rank_metrics", "sampled_scores",
    "student_t_two_sided_p", "topk_items", "topk_metrics",
]
