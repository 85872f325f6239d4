r"""FADE and its baselines on the chronological protocol.

  python -m launch.fade --config=configs/fade.py:dataset=ml1m-ts,model=mf \
      --workdir=runs/fade_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=FINETUNE,FADE]

Writes DIR/metrics.csv and DIR/summary.json; rerun to resume.
"""

from absl import app

from launch.common import job_main

main = job_main("fade", "configs/fade.py", "FADE")

if __name__ == "__main__":
  app.run(main)
