#!/usr/bin/env bash
# fairjax developer entry point.
#   ./dev.sh run  [launch flags]   set up .venv, run FADE on the embedded synthetic data
#   ./dev.sh test [pytest args]    set up .venv, run the test suite
# PYTHON picks the interpreter (3.11+); VENV the environment folder (.venv).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[dev] creating $VENV with $($PYTHON --version)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.fairjax-installed"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[dev] installing fairjax and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q -e '.[test]' >&2
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  run)
    setup
    # The quick start: FADE, its baselines and FADE-DUAL on the embedded
    # synthetic data, under the official FADE protocol with lambda = 3
    # (README, Quick start, says why).
    exec "$VENV/bin/python" -m launch.fade \
      --config=configs/fade.py:dataset=synthetic,protocol=official,fade.lam=3 \
      --config.methods=PRE-TRAIN,RETRAIN,FINETUNE,FADE,FADE-RETRAIN,REC,ADVER,FADE-DUAL \
      --workdir="${WORKDIR:-runs/quickstart}" "$@"
    ;;
  test)
    setup
    set +e
    # One worker per core (pytest-xdist; TEST_WORKERS=0 runs in this
    # process); the 15 slowest tests are listed at the end.
    "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-auto}" \
      --durations=15 "$@"
    rc=$?
    # pytest exits 5 when no test was collected: that is a failure here.
    exit $rc
    ;;
  *)
    echo "usage: ./dev.sh run [flags] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
