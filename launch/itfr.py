r"""ITFR, GroupDRO, BPR and the ablations on the random-split protocol.

  python -m launch.itfr --config=configs/itfr.py:dataset=ml1m,model=mf \
      --workdir=runs/itfr_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=BPR,ITFR] [--config.num_seeds=1]

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume.
"""

from absl import app

from launch.common import job_main

main = job_main("itfr", "configs/itfr.py", "ITFR",
                shown=lambda s: {"test": s["test"],
                                 "seconds_per_epoch": s["seconds_per_epoch"]})

if __name__ == "__main__":
  app.run(main)
