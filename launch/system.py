r"""System-level fairness: tune the whole pipeline for welfare and equity.

  python -m launch.system --config=configs/system.py:dataset=ml1m \
      --workdir=runs/system_ml1m [--data_dir=../shared/data] \
      [--config.optimizers=bo,random] [--config.num_seeds=1]

Writes DIR/evaluations (one JSON line per evaluation, as it happens),
DIR/metrics.csv and DIR/summary.json; rerun to resume. Prints the headline
figures (hypervolume per optimiser, der_reduction@2%, the baselines).
"""

import os

# SciPy's OpenBLAS (JAX's Cholesky on CPU) starts threads that spin on busy
# cores: one thread makes a BO step ~10x faster on 2 cores. Set before numpy,
# SciPy or JAX load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import app  # noqa: E402

from launch.common import job_main  # noqa: E402

main = job_main("system", "configs/system.py", "system",
                shown=lambda s: {k: s[k] for k in
                                 ("hypervolume", "der_reduction@2%",
                                  "baselines") if k in s})

if __name__ == "__main__":
  app.run(main)
