"""fairjax: fairness-aware recommendation in JAX.

Subpackages: `data` (readers, synthetic generator, protocols), `models`,
`ops` (relaxed sort, losses, group gradients), `metrics`, `retrieval`,
`methods` (FADE, ITFR, FairSync, system) and `train` (pure step + loop).
"""

__version__ = "0.1.0"
