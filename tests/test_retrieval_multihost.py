"""Two JAX processes on loopback: merged retrieval over the global mesh.

Each process has 4 emulated CPU devices (8 in all, mesh axis `shard`); CPU
cross-process collectives use gloo (JAX's default CPU implementation). Both
write their copy of the result; it must equal the one-process result.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from fairjax.retrieval import dual_topk

pytestmark = pytest.mark.slow  # two processes on loopback

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import multihost_worker  # noqa: E402


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_retrieval_matches_one_process(tmp_path):
  port = _free_port()
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
  outs = [tmp_path / f"p{i}.npz" for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / "tests" / "multihost_worker.py"), str(i),
       str(port), str(outs[i])], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=120)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  u, v, grp, mu = multihost_worker.make_data()
  ref_s, ref_i = dual_topk(v, grp, u, mu, 60)
  for out in outs:
    got = np.load(out)
    np.testing.assert_array_equal(got["devices"], [8, 4])
    np.testing.assert_array_equal(got["ids"], np.asarray(ref_i))
    np.testing.assert_array_equal(got["scores"], np.asarray(ref_s))
