r"""FADE: dynamic user-side fairness (DESIGN §3).

Launch (the ml1m-ts table, MF):
  python -m launch.fade --config=configs/fade.py:dataset=ml1m-ts,model=mf \
      --workdir=runs/fade_ml1m_mf
Variants (comma-separated `key=value` after the colon):
  dataset=synthetic|ml1m-ts|ml1m-order|ml100k   model=mf|ncf
  protocol=standard|official   smoke (tiny, seconds)
  fade.lam=0.5   fade.tau=3   fade.form=signed|absolute   epochs=10 (per
  period)   pretrain_epochs=100   rec.lam=0.5   adver.gamma=10
  adver.disc_steps=10
  official.fair_pretrain=1 official.chrono_batches=1
  official.global_negatives=1 official.randint_negatives=1
  official.split_floor=1
  official.redraw_eval_negatives=1 (one official switch; =0 forces it off)
  dual.eta=5 dual.eps=0 dual.lam_max=5 dual.level_up=0 (FADE-DUAL)
  num_periods=9
A variant key is the path of the field it sets. The earlier short keys
(lambda, tau, form, rec_lambda, gamma, disc_steps, eta, eps, lam_max,
level_up, periods, and each switch without `official.`) still work with a
warning naming the field.
Any field can also be overridden as a flag, e.g.
  --config.methods=FINETUNE,FADE --config.fade.lam=1.0
"""

import ml_collections

from configs.common import base_config, parse_variant

SWITCHES = ("fair_pretrain", "chrono_batches", "global_negatives",
            "randint_negatives", "split_floor", "redraw_eval_negatives")
# Deprecated short variant keys -> the field paths.
ALIASES = {"lambda": "fade.lam", "tau": "fade.tau", "form": "fade.form",
           "rec_lambda": "rec.lam", "gamma": "adver.gamma",
           "disc_steps": "adver.disc_steps", "eta": "dual.eta",
           "eps": "dual.eps", "lam_max": "dual.lam_max",
           "level_up": "dual.level_up", "periods": "num_periods",
           **{name: f"official.{name}" for name in SWITCHES}}

ALL_METHODS = "PRE-TRAIN,RETRAIN,FINETUNE,FADE,FADE-RETRAIN,REC,ADVER"
# Methods beyond the paper (not in the default list): FADE-DUAL.


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the FADE config; `arg` holds the variant."""
  v = parse_variant(arg, ALIASES)
  c = base_config("fade", v, "synthetic", ALL_METHODS)
  c.positive_threshold = 3.0  # binarization: rating >= 3 is positive.

  # Chronological protocol.
  c.batch_size = 256
  c.pretrain_frac = 0.6
  c.num_blocks = 10
  c.num_periods = 9  # fine-tune on D1..D9; D10 is test only.

  # Protocol: 'standard' (ours) or 'official' (the FADE code's; six
  # switches, fairjax.methods.fade_protocol). Each switch: None = as the
  # protocol says, True/False = forced (e.g. --config.official.split_floor=True).
  c.protocol = v.get("protocol", "standard")
  c.official = ml_collections.ConfigDict()
  for name in SWITCHES:
    value = v.get(f"official.{name}")
    c.official[name] = ml_collections.FieldReference(
        None if value is None else value.lower() in ("1", "true", "on"),
        field_type=bool)

  # Model.
  c.model = v.get("model", "mf")
  c.dim = 64
  c.init_std = 0.01

  # Optimisation (Adam with coupled L2, as torch.optim.Adam(weight_decay)).
  c.lr = 1e-3
  c.l2 = 1e-4
  c.num_negatives = 4
  # True: MF's steps take the gradient of the rows a batch reads and apply
  # the same dense Adam + L2 update to them in one pass (fairjax.ops.
  # sparse_adam; a native kernel where it builds), without a table-shaped
  # gradient. Same semantics, float32 rounding apart (whole ml1m-order
  # runs give the optax step's figures in 0.6x the time: README,
  # Benchmarks); MF only.
  c.fused_update = v.get("fused_update", "0").lower() in ("1", "true", "on")
  # The synthetic default is small: 20 pretraining epochs suffice there.
  default_pre = 20 if c.dataset == "synthetic" else 100
  c.pretrain_epochs = int(v.get("pretrain_epochs", default_pre))
  c.epochs = int(v.get("epochs", 10))  # per period.
  c.retrain_epochs = int(v.get("retrain_epochs", c.pretrain_epochs))

  # FADE / REC fairness term.
  c.fade = ml_collections.ConfigDict()
  default_lam = 0.5 if c.model == "mf" else 0.5
  c.fade.lam = float(v.get("fade.lam", default_lam))
  c.fade.tau = float(v.get("fade.tau", 3.0))
  c.fade.k = 1  # DH@1.
  # 'signed': L_fair = softplus(PD_diff) (DESIGN §3, the official 'log');
  # 'absolute': softplus(|PD_diff|) (the official code's 'absolute' option).
  c.fade.form = v.get("fade.form", "signed")

  # REC: FADE with the mean positive score as the group statistic.
  c.rec = ml_collections.ConfigDict()
  c.rec.lam = float(v.get("rec.lam", c.fade.lam))

  # FADE-DUAL (fairjax.methods.fade_dual): dual ascent on |PD of NDCG@K| <=
  # eps measured on the last holdout_frac of each period.
  c.dual = ml_collections.ConfigDict()
  c.dual.eta = float(v.get("dual.eta", 5.0))
  c.dual.eps = float(v.get("dual.eps", 0.0))
  c.dual.lam_init = 0.0
  c.dual.lam_max = float(v.get("dual.lam_max", 5.0))
  c.dual.holdout_frac = 0.1
  c.dual.update_every = 1
  # True: push only the disadvantaged group's DH up (stop-gradient on the
  # other group's mean); False: FADE's two-sided push.
  c.dual.level_up = v.get("dual.level_up", "0") in ("1", "true", "True")

  # ADVER.
  c.adver = ml_collections.ConfigDict()
  c.adver.gamma = float(v.get("adver.gamma", 10.0))
  c.adver.hidden = 64
  c.adver.disc_steps = int(v.get("adver.disc_steps", 10))
  c.adver.disc_lr = 1e-3

  # Evaluation.
  c.ks = (20,)
  c.num_eval_negatives = 100
  c.eval_full = True
  c.user_attr = "gender"

  # Synthetic data size (dataset=synthetic only).
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_users = 1000
  c.synthetic.num_items = 800

  if "smoke" in v or "runlocal" in v:
    c.synthetic.num_users = 300
    c.synthetic.num_items = 200
    c.pretrain_epochs = int(v.get("pretrain_epochs", 3))
    c.retrain_epochs = int(v.get("retrain_epochs", 3))
    c.epochs = int(v.get("epochs", 2))
    c.num_periods = int(v.get("num_periods", 3))
  elif "num_periods" in v:
    c.num_periods = int(v["num_periods"])
  return c
