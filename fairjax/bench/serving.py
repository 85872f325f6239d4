"""FairSync serving cost: a drifting synthetic stream served side by side.

The synthetic catalog of `launch.fairsync` (`configs/fairsync.py:dataset=
synthetic`, default 10^6 items, 18 groups, 2,000 requests whose preferred
groups drift, K = 50, B = 64, items over 2 emulated shards) is served by:
  * unconstrained (mu = 0): the serving floor;
  * FairSync with the pace repair (the default), whose second retrieval
    scans only the short groups' blocks of a group-sorted copy;
  * the same with the second retrieval over the catalog in id order (no
    block skipped: `serve(repair_by_group=False)`), the repair's earlier
    cost;
  * FairSync without a safety net (safety 0: the dual-space query and the
    dual update alone), which splits the overhead into the dual's part and
    the repair's.
Each is served twice; the second call is timed (compilation excluded).
Figures: the seconds of each, `repair_overhead` (FairSync over
unconstrained, minus 1), `repair_overhead_id_order` (the same without the
group layout), `dual_overhead` (FairSync without a net over unconstrained,
minus 1), `repaired_batches` / `batches`, and each FairSync run's ESP (the
repair layout must not change it; without the net it may miss).

Run: `python -m launch.bench --bench=serving` (2 emulated devices).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fairjax import metrics as metrics_lib
from fairjax.data import requests as requests_data
from fairjax.jobs import fairsync as fairsync_job
from fairjax.methods import fairsync
from fairjax.retrieval import sharded


def _log(msg: str) -> None:
  print(f"[bench.serving] {msg}", file=sys.stderr, flush=True)


def _serve_twice(name, kwargs):
  fairsync.serve(**kwargs)  # compiles
  t0 = time.perf_counter()
  res = fairsync.serve(**kwargs)
  secs = time.perf_counter() - t0
  _log(f"{name}: {secs:.2f}s")
  return res, secs


def run(get_config, seed: int = 0, num_items: int = 1_000_000,
        shards: int = 2) -> dict:
  """Serving seconds of unconstrained and FairSync (see module doc).
  `get_config` is `configs/fairsync.py`'s (the launcher passes it)."""
  config = get_config(f"dataset=synthetic,num_items={num_items},drift=0.5,"
                      f"shards={shards},seed={seed}")
  mesh = sharded.make_mesh(config.shards)
  req = requests_data.synthetic_requests(config, mesh)
  g = len(req.group_names)
  t_total = req.user_emb.shape[0]
  _log(f"T={t_total} requests, N={req.item_emb.shape[0]} items, G={g}, "
       f"K={config.k}, B={config.batch_size}, shards={config.shards}")
  common = dict(user_emb=req.user_emb, item_emb=req.item_emb,
                item_group=req.item_group, k=config.k,
                batch_size=config.batch_size, eta=config.eta, mesh=mesh,
                num_groups=g)
  base, t_unc = _serve_twice("unconstrained", dict(
      common, method="unconstrained",
      min_exposure=np.zeros(g, np.float32)))
  m, _, _ = fairsync_job.minimum_exposure(
      config, req, np.asarray(base.exposure_over_time)[-1])
  dual = dict(common, method="FairSync", min_exposure=m,
              headroom=config.headroom, target=config.dual_target,
              safety=config.safety, safety_rule=config.safety_rule)
  ours, t_rep = _serve_twice("FairSync (repair, by group)", dual)
  ids, t_ids = _serve_twice("FairSync (repair, id order)",
                            dict(dual, repair_by_group=False))
  no_net, t_dual = _serve_twice("FairSync (no safety net)",
                                dict(dual, safety=0.0))
  final = lambda r: np.asarray(r.exposure_over_time)[-1]  # noqa: E731
  repaired = np.asarray(ours.forced_history).any(axis=1)
  return {
      "num_items": int(req.item_emb.shape[0]), "requests": int(t_total),
      "shards": int(config.shards), "k": int(config.k),
      "batch_size": int(config.batch_size),
      "unconstrained_seconds": t_unc, "fairsync_seconds": t_rep,
      "fairsync_id_order_seconds": t_ids,
      "repair_overhead": t_rep / t_unc - 1.0,
      "repair_overhead_id_order": t_ids / t_unc - 1.0,
      "fairsync_no_net_seconds": t_dual, "dual_overhead": t_dual / t_unc - 1.0,
      "esp_no_net": float(metrics_lib.esp(final(no_net), m)),
      "repaired_batches": int(repaired.sum()), "batches": int(repaired.size),
      "esp": float(metrics_lib.esp(final(ours), m)),
      "esp_id_order": float(metrics_lib.esp(final(ids), m)),
      "same_lists": bool(np.array_equal(np.asarray(ours.item_ids),
                                        np.asarray(ids.item_ids))),
  }
