r"""ITFR: intersectional two-sided fairness (DESIGN §4, issue 4).

Launch (the ML-1M table, MF):
  python -m launch.itfr --config=configs/itfr.py:dataset=ml1m,model=mf \
      --workdir=runs/itfr_ml1m_mf [--data_dir=../shared/data]
Variants (comma-separated `key=value` after the colon):
  dataset=synthetic|ml1m|ml100k|PATH   model=mf|lightgcn   epochs=200
  num_seeds=5   methods=BPR;ITFR (';' between names here)   smoke (tiny, seconds)
Any field can also be overridden as a flag, e.g.
  --config.methods=BPR,ITFR --config.num_seeds=1 --config.itfr.rho=0.05

Methods: BPR, BPR-Norm, GroupDRO, ITFR, ITFR-noSAM, ITFR-noCLB, ITFR-noNorm
(see `fairjax.methods.itfr`).
"""

import ml_collections

from configs.common import base_config, parse_variant

ALL_METHODS = "BPR,GroupDRO,ITFR,ITFR-noSAM,ITFR-noCLB,ITFR-noNorm"
ML1M_GENRES = ("Sci-Fi", "Adventure", "Children's", "Crime", "Horror",
               "Romance")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the ITFR config; `arg` holds the variant."""
  v = parse_variant(arg, {"seeds": "num_seeds"})  # `seeds=`: deprecated.
  c = base_config("itfr", v, "synthetic")  # seed s of num_seeds: seed + s.
  c.num_seeds = int(v.get("num_seeds", 5))
  c.methods = v.get("methods", ALL_METHODS).replace(";", ",")

  # Protocol: groups, k-core, random split.
  c.min_rating = 0.0  # ITFR keeps every rating.
  c.user_attr = "gender"
  c.missing_user_group = "error"  # or "drop" (drop those users).
  real = c.dataset != "synthetic"
  c.item_grouping = v.get("item_grouping", "one_of" if real else
                          "first_genre")
  c.genres = ML1M_GENRES  # for item_grouping=one_of.
  c.k_core = 5
  c.fractions = (0.7, 0.1, 0.2)
  c.split_seed = 0

  # Model.
  c.model = v.get("model", "mf")
  c.dim = 64
  c.init_std = 0.01  # MF.
  c.lightgcn_layers = 3
  c.lightgcn_init_std = 0.1
  # Layout of the normalised adjacency: auto (dense blocks up to 2^25 user x
  # item entries, else COO), dense or sparse; the same model either way.
  c.lightgcn_layout = "auto"

  # Optimisation.
  c.batch_size = 1024
  c.lr = 1e-3
  c.l2 = 0.0
  c.epochs = int(v.get("epochs", 200))
  c.eval_every = 1
  c.ckpt_every = 10
  c.log_every = int(v.get("log_every", 10))
  c.ks = (20,)

  # ITFR (ML-1M defaults of the paper).
  c.itfr = ml_collections.ConfigDict()
  c.itfr.eta = 0.05
  c.itfr.gamma = 0.5
  c.itfr.rho = 0.02
  c.itfr.tau = 0.2
  c.itfr.q_floor = 1e-5
  c.group_dro_eta = 0.05

  # Synthetic data size (dataset=synthetic only).
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_users = 1000
  c.synthetic.num_items = 800

  if "smoke" in v or "runlocal" in v:
    c.synthetic.num_users = 150
    c.synthetic.num_items = 120
    c.epochs = int(v.get("epochs", 3))
    c.num_seeds = int(v.get("num_seeds", 1))
    c.batch_size = 256
    c.ckpt_every = 2
    c.log_every = 1
  return c
