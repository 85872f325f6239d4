"""FADE's official protocol switches, the official measure, FADE-DUAL and the
ml1m-order dataset."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fade as fade_config
from fairjax import runner
from fairjax import train
from fairjax.data import batching
from fairjax.data import protocols
from fairjax.data import registry
from fairjax.data import sampling
from fairjax.data.movielens import read_ml1m_order
from fairjax.errors import ConfigError, DataError
from fairjax.evaluators import periodic as E
from fairjax.jobs import fade as fade_job
from fairjax.methods import fade as F
from fairjax.methods import fade_dual
from fairjax.methods import fade_protocol
from fairjax.metrics import ranking


def _official_ndcg(rec_list, test_pos):
  """The official code's `measure_ndcg(method=1)`, transcribed."""
  r = np.isin(rec_list, test_pos).astype(float)
  max_r = np.array(sorted(r, reverse=True))
  disc = 1 / np.log2(np.arange(2, r.size + 2))
  idcg = np.sum(max_r * disc)
  return 0.0 if not idcg else float(np.sum(r * disc) / idcg)


def test_ndcg_found_matches_the_official_formula():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(50, 40)).astype(np.float32)
  relevant = rng.random((50, 40)) < 0.15
  relevant[0] = False
  relevant[0, 3] = True  # one hit at most
  out = ranking.rank_metrics(scores, relevant, ks=(5, 10), found=True)
  for k in (5, 10):
    got = np.asarray(out[f"ndcg_found@{k}"])
    for u in range(50):
      top = np.argsort(-scores[u], kind="stable")[:k]
      want = _official_ndcg(top, np.nonzero(relevant[u])[0])
      if relevant[u].any():
        assert got[u] == pytest.approx(want, abs=1e-6)
      else:
        assert np.isnan(got[u])
  # A list whose hits come first scores 1 even with few hits.
  s = np.array([[3.0, 2.0, 1.0, 0.0]], np.float32)
  rel = np.array([[True, False, False, True]])
  o = ranking.rank_metrics(s, rel, ks=(2,), found=True)
  assert float(o["ndcg_found@2"][0]) == pytest.approx(1.0)
  assert float(o["ndcg@2"][0]) < 1.0
  assert "ndcg_found@2" not in ranking.rank_metrics(s, rel, ks=(2,))


def test_official_metrics_keep_warm_users_only():
  per_user = {"ndcg_found@20": np.array([1.0, 0.5, 0.2]),
              "recall@20": np.array([0.1, 0.2, 0.3]),
              "f1@20": np.array([0.4, 0.5, np.nan])}
  out = E.official_metrics(per_user, np.array([True, False, True]), (20,))
  np.testing.assert_array_equal(out["ndcg@20"], [1.0, np.nan, 0.2])
  np.testing.assert_array_equal(out["f1@20"], [0.4, np.nan, np.nan])


def test_switches_follow_the_protocol_and_can_be_forced():
  c = fade_config.get_config("")
  assert not any(fade_protocol.switches(c).values())
  c = fade_config.get_config("protocol=official")
  assert all(fade_protocol.switches(c).values())
  c.official.global_negatives = False
  s = fade_protocol.switches(c)
  assert not s["global_negatives"] and s["fair_pretrain"]
  c = fade_config.get_config("split_floor=1")
  assert fade_protocol.switches(c) == {
      k: k == "split_floor" for k in fade_protocol.SWITCHES}
  assert len(fade_protocol.SWITCHES) == 6
  assert fade_config.SWITCHES == fade_protocol.SWITCHES


def test_randint_negatives_switch_gives_the_official_sampler():
  """Under `protocol=official` (or `official.randint_negatives=1`) FADE's
  training candidates never hold the first item in time order (the
  official code's item 0; here item 5) as a negative and a row's negatives
  are distinct; the standard sampler takes that item too."""
  rng = np.random.default_rng(0)
  seen = jnp.asarray(rng.random((30, 8)) < 0.3).at[:, 5].set(False)
  batch = {"user": jnp.asarray(rng.integers(0, 30, 512), jnp.int32),
           "item": jnp.zeros(512, jnp.int32)}
  for variant, official in (("", False), ("protocol=official", True),
                            ("official.randint_negatives=1", True)):
    c = fade_config.get_config(variant)
    sampler = fade_protocol.negative_sampler(c, np.int32(5))
    assert sampler == {"skip": 5 if official else -1, "distinct": official}
    cand = F.make_candidates(4, **sampler)
    _, items = cand(batch, jax.random.key(1), {"seen": seen})
    neg = np.asarray(items)[:, 1:]
    assert (neg == 5).any() != official
    distinct = all(len(set(r)) == 4 for r in neg)
    assert distinct or not official


def test_bad_protocol_and_eps_are_config_errors():
  c = fade_config.get_config("protocol=paper")
  with pytest.raises(ConfigError, match="protocol"):
    F.validate_config(c)
  c = fade_config.get_config("eps=-0.01")
  c.methods = "FINETUNE,FADE-DUAL"
  with pytest.raises(ConfigError, match="dual.eps"):
    F.validate_config(c)


def test_dataset_without_order_is_refused(tmp_path):
  path = tmp_path / "log.csv"
  path.write_text("user,item,gender\n" + "".join(
      f"{u},{i},{u % 2}\n" for u in range(20) for i in range(5)))
  c = fade_config.get_config("protocol=official")
  c.dataset = str(path)
  with pytest.raises(ConfigError, match="no time order.*official"):
    F.prepare_data(c)


def test_split_floor_rounds_down():
  ds = registry.load_dataset("synthetic", seed=0, num_users=60,
                             num_items=200)
  n = ds.num_interactions
  nb = -(-n // 16)
  half = protocols.chronological_periods(ds, 16, 0.55, 4)
  floor = protocols.chronological_periods(ds, 16, 0.55, 4, rounding="floor")
  assert floor.period_batches[0] == int(0.55 * nb)
  assert half.period_batches[0] == int(np.floor(0.55 * nb + 0.5))
  with pytest.raises(ConfigError, match="rounding"):
    protocols.chronological_periods(ds, 16, 0.55, 4, rounding="ceil")


def test_chrono_batches_keep_rows_and_time_order():
  user, item = np.arange(10) * 10, np.arange(10)
  rows = np.array([2, 3, 4, 5, 6, 7, 8])
  b = fade_protocol.chrono_batches(user, item, rows, 3)
  np.testing.assert_array_equal(b["item"], [[2, 3, 4], [5, 6, 7], [8, 0, 0]])
  np.testing.assert_array_equal(b["valid"][-1], [True, False, False])
  shuffled = fade_protocol.chrono_batches(user, item, rows, 3, (0, 1))
  got = sorted(map(tuple, shuffled["item"].tolist()))
  assert got == sorted(map(tuple, b["item"].tolist()))  # whole batches move
  padded = batching.pad_steps(b, 5)
  assert padded["item"].shape == (5, 3) and not padded["valid"][3:].any()


def _tiny_trainer():
  c = fade_config.get_config("smoke")
  data = F.prepare_data(c)
  from fairjax import models as models_lib
  model = models_lib.create("mf", data.num_users, data.num_items, dim=8)
  return c, data, F.Trainer(model, F.make_optimizer(c), c)


def test_padded_epochs_equal_unpadded_and_fixed_negatives_repeat():
  c, data, trainer = _tiny_trainer()
  rows = data.rows([0])
  seen = data.seen(0)
  rng = jax.random.key(3)
  s0 = trainer.init_state(jax.random.key(1))
  copy = lambda s: jax.tree.map(jnp.copy, s)
  a, _ = trainer.run_epochs(copy(s0), data, rows, "fade", 0.5, 2, (0,), rng,
                            seen)
  steps = -(-rows.size // c.batch_size)
  b, _ = trainer.run_epochs(copy(s0), data, rows, "fade", 0.5, 2, (0,), rng,
                            seen, pad_to=steps + 3)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  assert int(a.step) == int(b.step)
  # Fixed negatives: the prepared draws of two epochs with one key agree.
  batches = F.epoch_batches(rows, data, c.batch_size, (0,), "time")
  prep = lambda st: sampling.presample_negatives(
      st, batches, rng, None, num_items=data.num_items, num_negatives=4,
      fixed=True)[1]["neg_draws"]
  later = s0.replace(step=s0.step + 100)
  np.testing.assert_array_equal(prep(s0), prep(later))


def test_dual_step_moves_the_side_that_is_violated():
  lam = np.zeros(2)
  lam = fade_dual.dual_step(lam, 0.05, eta=10, eps=0.01, lam_max=3)
  np.testing.assert_allclose(lam, [0.4, 0.0])
  lam = fade_dual.dual_step(lam, -0.03, eta=10, eps=0.01, lam_max=3)
  np.testing.assert_allclose(lam, [0.0, 0.2])
  lam = fade_dual.dual_step(np.array([2.9, 0]), 1.0, 10, 0.0, 3)
  np.testing.assert_allclose(lam, [3.0, 0.0])
  np.testing.assert_allclose(fade_dual.dual_step(lam, np.nan, 10, 0, 3), lam)
  # eps = 0: after saturation the sum stays at lam_max while the gap's sign
  # moves weight between the sides (module doc).
  lam = np.array([3.0, 0.0])
  for gap in (-0.1, 0.05, -0.2, -0.03):
    lam = fade_dual.dual_step(lam, gap, 10, 0.0, 3)
    assert lam.sum() == pytest.approx(3.0)
  np.testing.assert_allclose(lam, [0.2, 2.8])
  # eps > 0: unclipped steps shrink the sum by 2 eta eps.
  lam = fade_dual.dual_step(np.array([1.0, 1.0]), 0.02, 10, 0.01, 3)
  assert lam.sum() == pytest.approx(2.0 - 2 * 10 * 0.01)
  train_rows, hold = fade_dual.split_holdout(np.arange(20, 0, -1), 0.1, (0,))
  assert hold.size == 2 and train_rows.size == 18
  np.testing.assert_array_equal(np.sort(np.r_[train_rows, hold]),
                                np.arange(1, 21))
  again, _ = fade_dual.split_holdout(np.arange(1, 21), 0.1, (0,))
  np.testing.assert_array_equal(again, train_rows)  # a function of the seed
  other = [tuple(fade_dual.split_holdout(np.arange(1, 21), 0.1, (s,))[1])
           for s in range(5)]
  assert len(set(other)) > 1


def test_dual_loss_is_fade_loss_on_each_side():
  c, data, trainer = _tiny_trainer()
  params = trainer.init_state(jax.random.key(0)).params
  batch = {"user": jnp.arange(16) % data.num_users,
           "item": jnp.arange(16) % data.num_items,
           "valid": jnp.ones(16, bool)}
  ctx = {"seen": jnp.asarray(data.seen(0)),
         "user_group": jnp.asarray(data.user_group)}
  rng = jax.random.key(5)
  def value(kind, lam, ctx_extra=None):
    fn = F.make_loss(trainer.model, kind, lam, 3.0, 1, 4)
    return float(fn(params, batch, rng, {}, dict(ctx, **(ctx_extra or {})))[0])
  fade = value("fade", 0.7)
  dual = value("dual", 0.0, {"lam": jnp.array([0.7, 0.0])})
  assert dual == pytest.approx(fade, rel=1e-6)
  both = value("dual", 0.0, {"lam": jnp.array([0.7, 0.7])})
  assert both != pytest.approx(fade, rel=1e-4)


def _order_folder(tmp_path, lines):
  root = tmp_path / "ml-1m"
  root.mkdir()
  (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
  (root / "movies.dat").write_text("1::Toy Story (1995)::Animation\n"
                                   "2::Jumanji (1995)::Adventure\n")
  (root / fade_protocol_order_file()).write_text("".join(lines))
  return root


def fade_protocol_order_file():
  from fairjax.data.movielens import ML1M_ORDER_FILE
  return ML1M_ORDER_FILE


def test_ml1m_order_reader_and_its_errors(tmp_path):
  root = _order_folder(tmp_path, ["2::1::4::0\n", "1::2::3::1\n",
                                  "1::1::5::2\n"])
  ds = read_ml1m_order(root)
  assert ds.name == "ml1m-order" and ds.num_interactions == 3
  np.testing.assert_array_equal(ds.timestamp, [0, 1, 2])
  np.testing.assert_array_equal(ds.raw_user_ids[ds.user], [2, 1, 1])
  (root / fade_protocol_order_file()).write_text("2::1::4::0\n1::2::3::5\n")
  with pytest.raises(DataError, match="Order") as e:
    read_ml1m_order(root)
  assert "line 2" in str(e.value) or ":2" in str(e.value)
  (root / fade_protocol_order_file()).unlink()
  with pytest.raises(DataError, match="README") as e:
    read_ml1m_order(root)
  assert "ratings_ge3_fade_order.dat" in str(e.value)


def test_ml1m_order_counts(data_dir):
  ds = registry.load_dataset("ml1m-order", data_dir)
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (836478, 6039,
                                                               3628)
  c = fade_config.get_config("dataset=ml1m-order,protocol=official")
  data = F.prepare_data(c, str(data_dir))
  # The official code's item 0 (ids by first appearance in time) is the
  # first row's movie, 858; `randint_negatives` never draws it.
  assert ds.raw_item_ids[data.item[0]] == 858
  assert fade_protocol.negative_sampler(c, data.item[0])["skip"] == (
      data.item[0])
  # int(0.6 * 3268) = 1960 pretraining batches, 130 per period.
  assert data.period_sizes[0] == 1960 * 256
  assert data.period_sizes[1] == 130 * 256
