"""One process of the 2-process retrieval test (launched by the test).

Usage: python tests/multihost_worker.py PROCESS_ID PORT OUT.npz
Joins a 2-process JAX runtime on 127.0.0.1:PORT (4 CPU devices each via
XLA_FLAGS from the parent), runs `dual_topk` over the global 8-device mesh on
data both processes build from the same seed, and saves its local copy of the
replicated result.
"""

import sys

import jax
import numpy as np


def make_data(n=1003, d=16, b=29, g=6, seed=7):
  rng = np.random.default_rng(seed)
  v = rng.integers(-3, 4, size=(n, d)).astype(np.float32)  # exact ties
  v[::5] += rng.normal(size=v[::5].shape).astype(np.float32)
  u = rng.normal(size=(b, d)).astype(np.float32)
  grp = rng.integers(0, g, size=n).astype(np.int32)
  mu = rng.normal(size=g).astype(np.float32)
  return u, v, grp, mu


def main(argv):
  pid, port, out = int(argv[1]), int(argv[2]), argv[3]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=pid,
                             initialization_timeout=90)
  from fairjax.retrieval import dual_topk  # noqa: PLC0415
  assert jax.process_count() == 2 and jax.device_count() == 8, (
      jax.process_count(), jax.device_count())
  mesh = jax.make_mesh((8,), ("shard",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  u, v, grp, mu = make_data()
  scores, ids = dual_topk(v, grp, u, mu, 60, mesh=mesh)
  np.savez(out + ".tmp.npz", scores=np.asarray(scores.addressable_data(0)),
           ids=np.asarray(ids.addressable_data(0)),
           devices=np.array([jax.device_count(), jax.local_device_count()]))
  import os  # noqa: PLC0415
  os.replace(out + ".tmp.npz", out)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
