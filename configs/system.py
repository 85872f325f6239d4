r"""System-level fairness: the retrieval -> scoring -> ranking pipeline tuned
for welfare and disparity by multi-objective BO (DESIGN §6).

Launch (the synthetic default, then ML-1M by gender):
  python -m launch.system --config=configs/system.py --workdir=runs/system_syn
  python -m launch.system --config=configs/system.py:dataset=ml1m \
      --workdir=runs/system_ml1m [--data_dir=../shared/data]
  python -m launch.report --workdir=runs/system_ml1m
Variants (comma-separated `key=value` after the colon):
  dataset=synthetic|ml1m   groups=gender|age   rho=1.0 (0: homogeneous
  preferences)   budget=60   optimizer=bo|random|sobol|nsga2|motpe (one; the
  default runs all five)   num_seeds=N   grid=4096 (dense-grid reference;
  0 = off)   smoke (tiny, seconds)
Any field can also be overridden as a flag, e.g. --config.num_seeds=2.
"""

import ml_collections

from configs.common import base_config, parse_variant

ALL_OPTIMIZERS = "bo,random,sobol,nsga2,motpe"


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the system config; `arg` holds the variant."""
  v = parse_variant(arg)
  c = base_config("system", v, "synthetic")  # seed s of num_seeds: seed + s.
  synthetic = c.dataset == "synthetic"
  c.num_seeds = int(v.get("num_seeds", 10 if synthetic else 5))
  c.groups = v.get("groups", "gender")  # gender | age (3 buckets)
  c.rho = float(v.get("rho", 1.0))  # preference heterogeneity

  # Search.
  c.optimizers = v.get("optimizer", ALL_OPTIMIZERS).replace(";", ",")
  c.budget = int(v.get("budget", 60))  # evaluations per optimiser and seed
  c.num_init = 12  # quasi-random starts of BO
  c.grid = int(v.get("grid", 4096 if synthetic else 0))  # dense reference
  c.welfare_tolerance = 0.02  # der_reduction@2%: welfare >= 0.98 x B1's

  # Pipeline.
  c.k_serve = 10  # items served per user
  # Retrieval depth K in [50, 1000] (log scale, `methods.system.K_GRID`).
  c.default_k = 200  # K of the baselines' untuned knobs
  c.lambdas = (0.0, 0.1, 0.3, 1.0, 3.0)  # FADE fine-tuning of the head
  c.retrieval_batch = 32  # B requests per FairSync dual step
  c.eta_scale = 0.2  # FairSync step size eta = eta_scale x std(scores)

  # Models (ML-1M): MF retriever = interact head, like and love heads
  # (`methods.system.StageConfig`).
  c.dim = 64
  c.init_std = 0.1
  c.lr = 1e-3
  c.train_batch_size = 1024
  c.num_negatives = 1  # BPR negatives of the heads
  c.fade_negatives = 4  # negatives of the FADE fine-tuning
  c.epochs = int(v.get("epochs", 20))
  c.finetune_epochs = 2  # FADE fine-tuning per lambda
  c.tau = 3.0  # NeuralSort temperature of the FADE loss

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_users = 2000
  c.synthetic.num_items = 1000
  c.synthetic.minority = 0.3

  if "smoke" in v or "runlocal" in v:
    c.synthetic.num_users = 300
    c.synthetic.num_items = 200
    c.num_seeds = int(v.get("num_seeds", 1))
    c.budget = int(v.get("budget", 16))
    c.num_init = 6
    c.grid = int(v.get("grid", 0))
    c.epochs = int(v.get("epochs", 2))
    c.finetune_epochs = 1
  return c
