"""Exports one of our own trained ITFR-job models as RecBole audit inputs.

`export_itfr(workdir, method, seed, out)` rebuilds the job's data from
`workdir/config.json` (`fairjax.data.cells.prepare_data`, the same split),
restores the unit's selected parameters (best validation NDCG, as the job
tests them) from its last checkpoint, ranks every item for each user with
the job's evaluator (train and validation items excluded, `metrics.topk_items`)
and writes

  recs.inter   user_id:token item_id:token rank:float   top-K of each user
               with at least one test item (the users the job evaluates)
  test.inter   user_id:token item_id:token              the test split
  users.user   user_id:token <user_attr>:token          the user groups
  items.item   item_id:token genre:token                the ITFR item groups

so `launch.audit` on them reproduces the job's `summary.json` test figures
(NDCG/Recall/Precision@K, per-cell recall, CV/MIN/UCV/ICV). Ids are the
job's dense ids. Files are written atomically.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from fairjax import checkpoint as ckpt_lib
from fairjax import metrics as metrics_lib
from fairjax import runner
from fairjax.data import cells as cells_data
from fairjax.errors import ConfigError
from fairjax.evaluators.cells import CellEvaluator
from fairjax.methods import itfr as M


def _write_lines(path: pathlib.Path, header: str, columns: list) -> None:
  rows = zip(*[np.asarray(c).astype(str).tolist() for c in columns])
  text = header + "\n" + "".join("\t".join(r) + "\n" for r in rows)
  ckpt_lib.write_atomic(path, lambda f: f.write(text))


def restore_best_params(workdir, config, data, method: str, seed: int):
  """(model, best parameters) of unit `method/seed<seed>` of an ITFR job."""
  if method not in M.METHODS:
    raise ConfigError(f"method: {method!r} is not an ITFR method "
                      f"({', '.join(M.METHODS)})")
  spec = M.METHODS[method]
  model = M.create_model(config, data, spec.cosine)
  tx = M.make_optimizer(config)
  state = M.init_state(model, tx, spec, data, jax.random.key(0))
  template = {"state": state,
              "best_params": jax.tree.map(np.asarray, state.params),
              "best": np.array([-np.inf, -1.0]),
              "hist": np.full((int(config.epochs), 5), np.nan)}
  udir = runner.unit_dir(workdir, f"{method}/seed{seed}")
  if not (udir / "ckpt").is_dir():
    raise ConfigError(f"method/seed: no checkpoint under {udir} (run the job "
                      "first)")
  ck = ckpt_lib.Checkpointer(udir / "ckpt")
  restored = ck.restore_latest(template)
  ck.close()
  if restored is None:
    raise ConfigError(f"method/seed: no checkpoint under {udir}")
  return model, jax.tree.map(jax.numpy.asarray, restored[1]["best_params"])


def export_itfr(workdir, method: str, seed: int, out, k: int = 20,
                data_dir: str | None = None) -> dict[str, pathlib.Path]:
  """Writes the four audit inputs of one ITFR unit (module docstring)."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  config = ml_collections.ConfigDict(ckpt_lib.read_json(workdir /
                                                        "config.json"))
  if config.get("job") != "itfr":
    raise ConfigError(f"workdir: {workdir} is not an ITFR run (job "
                      f"{config.get('job')!r})")
  data = cells_data.prepare_data(config, data_dir or config.data_dir or None)
  model, params = restore_best_params(workdir, config, data, method, seed)
  ev = CellEvaluator(data, (k,))
  top = np.asarray(metrics_lib.topk_items(ev.scores(model, params), k,
                                          exclude=ev.test_excl))
  has_test = np.asarray((ev.test_rel & ~ev.test_excl).any(1))
  users = np.flatnonzero(has_test)
  rows, slots = np.nonzero(top[users] >= 0)
  paths = {n: out / f for n, f in (("recs", "recs.inter"),
                                   ("test", "test.inter"),
                                   ("users", "users.user"),
                                   ("items", "items.item"))}
  _write_lines(paths["recs"], "user_id:token\titem_id:token\trank:float",
               [users[rows], top[users][rows, slots], slots + 1])
  order = np.lexsort((data.test_item, data.test_user))
  _write_lines(paths["test"], "user_id:token\titem_id:token",
               [data.test_user[order], data.test_item[order]])
  attr = str(config.user_attr)
  _write_lines(paths["users"], f"user_id:token\t{attr}:token",
               [np.arange(data.num_users),
                np.asarray(data.user_group_names)[data.user_group]])
  _write_lines(paths["items"], "item_id:token\tgenre:token",
               [np.arange(data.num_items),
                np.asarray(data.item_group_names)[data.item_group]])
  return paths


def agreement(report: dict, summary: dict, method: str, k: int = 20,
              user_attr: str = "gender", item_attr: str = "genre"
              ) -> list[tuple[str, float, float]]:
  """(figure, summary.json value, audit value) for the ITFR job's test
  figures of `method` (one seed): NDCG/Recall/Precision@K, CV/MIN/UCV/ICV@K
  and every cell's recall@K."""
  test = summary["test"][method]
  cells = report["cells"][user_attr][item_attr]
  out = [(f"{m}@{k}", test[f"{m}@{k}"], report["overall"][f"{m}@{k}"])
         for m in ("ndcg", "recall", "precision")]
  out += [(f"{m}@{k}", test[f"{m}@{k}"], cells[f"{m}@{k}"])
          for m in ("cv", "min", "ucv", "icv")]
  sc = summary["cells"][method]
  pos_u = {g: a for a, g in enumerate(cells["user_groups"])}
  pos_i = {g: j for j, g in enumerate(cells["item_groups"])}
  for a, ug in enumerate(sc["user_groups"]):
    for j, ig in enumerate(sc["item_groups"]):
      ours = cells[f"recall@{k}"][pos_u[ug]][pos_i[ig]] if (
          ug in pos_u and ig in pos_i) else None
      out.append((f"cell {ug}|{ig} recall@{k}", sc[f"recall@{k}"][a][j],
                  ours))
  return out
