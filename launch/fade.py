r"""FADE and its baselines on the chronological protocol.

  python -m launch.fade --config=configs/fade.py:dataset=ml1m-ts,model=mf \
      --workdir=runs/fade_ml1m_mf [--data_dir=../shared/data] \
      [--config.methods=FINETUNE,FADE]

Writes DIR/metrics.csv, DIR/summary.json and the figures
(pd_over_time.png, tradeoff.png), and ends with a table of every method's
NDCG@20, |PD| and seconds per period under both measures; rerun to resume.
"""

from absl import app

from launch.common import job_main


def _table(summary, workdir):
  from fairjax.report import fade  # pylint: disable=g-import-not-at-top
  return fade.summary_table(summary, workdir, fade.fade_figures(workdir))


main = job_main("fade", "configs/fade.py", "FADE", text=_table)

if __name__ == "__main__":
  app.run(main)
