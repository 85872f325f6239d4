"""Full-ranking evaluation with intersectional cells (ITFR, DESIGN §4).

Validation: mean over users with validation items of NDCG/Recall@K, the
training items excluded. Test: the same with training and validation items
excluded, plus the per-cell recall R_{a,j}@K (`metrics.cell_recall`) and
CV/MIN/UCV/ICV@K over the cells (`metrics.cv_metrics`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import metrics as metrics_lib
from fairjax import models as models_lib
from fairjax.data.cells import ItfrData


class CellEvaluator:
  """Full-ranking validation and test of a backbone's parameters."""

  def __init__(self, data: ItfrData, ks=(20,)):
    self.data = data
    self.ks = tuple(int(k) for k in ks)
    self.train = jnp.asarray(data.seen(("train",)))
    self.valid = jnp.asarray(data.seen(("valid",)))
    self.test_rel = jnp.asarray(data.seen(("test",)))
    self.test_excl = jnp.asarray(data.seen(("train", "valid")))
    self.users = jnp.arange(data.num_users)
    self._score_fns = {}

  def scores(self, model, params) -> jax.Array:
    """[U, I] inference scores (plain cosine for cosine models: tau = 1)."""
    fn = self._score_fns.get(id(model))
    if fn is None:
      fn = jax.jit(lambda p: models_lib.all_scores(model, p, self.users))
      self._score_fns[id(model)] = (fn, model)  # keep the model alive
    else:
      fn = fn[0]
    return fn(params)

  def validate(self, model, params) -> dict[str, float]:
    """Mean over users with validation items of NDCG/Recall@K."""
    per_user = metrics_lib.rank_metrics(self.scores(model, params), self.valid,
                                        self.ks, exclude=self.train)
    k = self.ks[0]
    return {m: float(jnp.nanmean(per_user[f"{m}@{k}"]))
            for m in ("ndcg", "recall")}

  def test(self, model, params) -> tuple[dict, np.ndarray, np.ndarray]:
    """Test metrics, per-cell recall [A, J] and per-user NDCG@K."""
    s = self.scores(model, params)
    k = self.ks[0]
    per_user = metrics_lib.rank_metrics(s, self.test_rel, self.ks,
                                        exclude=self.test_excl)
    top = metrics_lib.topk_items(s, k, exclude=self.test_excl)
    d = self.data
    cells = metrics_lib.cell_recall(top, self.test_rel & ~self.test_excl,
                                    jnp.asarray(d.user_group),
                                    jnp.asarray(d.item_group),
                                    d.num_user_groups, d.num_item_groups)
    disp = metrics_lib.cv_metrics(cells)
    out = {f"{m}@{k}": float(jnp.nanmean(per_user[f"{m}@{k}"]))
           for m in ("ndcg", "recall", "precision")}
    out.update({f"{m}@{k}": float(disp[m]) for m in ("cv", "min", "ucv",
                                                      "icv")})
    return out, np.asarray(cells), np.asarray(per_user[f"ndcg@{k}"])
