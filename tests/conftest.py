"""Test set-up: 8 emulated CPU devices and the real-data gate.

XLA_FLAGS must be set before JAX initialises its backends, so it is set here
at import time, before any test module imports jax.
"""

import os

# XLA:CPU spends most of a test's time compiling, while the tests' arrays are
# tiny, so the tests ask it for cheaper code generation. LLVM at -O0 (a
# single threefry randint takes ~1 s at the default -O3, ~0.5 s at -O0), the
# classic loop emitters instead of the MLIR fusion emitters, and one codegen
# module instead of parallel splits (the cold suite on 2 cores: 401 s ->
# 220 s; backend compilation 463 -> 157 CPU-s). These change code generation
# only, not the HLO the programs compute; the jobs and `launch.bench` keep
# XLA's default. The last two flags exist in jaxlib 0.8-0.10 (checked); an
# unknown flag aborts XLA, so newer jaxlibs run without them.
def _jaxlib_version() -> tuple[int, int]:
  from importlib import metadata
  try:
    major, minor = metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (metadata.PackageNotFoundError, ValueError):
    return (0, 0)


_FLAGS = ("--xla_force_host_platform_device_count=8 "
          "--xla_backend_optimization_level=0")
if (0, 8) <= _jaxlib_version() <= (0, 10):
  _FLAGS += (" --xla_cpu_use_fusion_emitters=false"
             " --xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("XLA_FLAGS", _FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One OpenBLAS thread (SciPy's LAPACK under JAX's Cholesky): threads that spin
# on the 2 busy cores make the GP fits of the BO tests ~10x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Many tests compile the same programs (each run builds fresh jitted
# closures); a persistent compilation cache shared by the whole session, and
# by the launcher subprocesses it starts, compiles each program once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 ".pytest_cache", "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import fcntl  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402

import pytest  # noqa: E402


def _data_dir() -> pathlib.Path | None:
  d = os.environ.get("FAIRJAX_DATA_DIR")
  return pathlib.Path(d) if d else None


@pytest.fixture
def data_dir(request) -> pathlib.Path:
  """The real-data directory, or a skip (a failure under FAIRJAX_REQUIRE_DATA=1).

  Usage: a test that needs ML-1M takes `data_dir` and reads
  `data_dir / "ml-1m"`.
  """
  d = _data_dir()
  required = os.environ.get("FAIRJAX_REQUIRE_DATA") == "1"
  if d is None or not (d / "ml-1m").is_dir() or not (d / "ml-100k").is_dir():
    reason = ("real MovieLens data not found: set FAIRJAX_DATA_DIR to a folder "
              "holding ml-1m/ and ml-100k/ (got "
              f"{os.environ.get('FAIRJAX_DATA_DIR')!r})")
    if required:
      pytest.fail("FAIRJAX_REQUIRE_DATA=1 but " + reason)
    pytest.skip(reason)
  return d


def pytest_collection_modifyitems(config, items):
  """Runs the slow end-to-end tests first, in their files' order: under
  pytest-xdist the last tests each worker takes are then short ones, so
  the workers finish together."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def run_once(tmp_path_factory):
  """`run_once(name, make)`: `make(folder)` once per test session, across
  pytest-xdist workers too.

  A module-scoped fixture runs once in every worker that takes one of its
  tests; through this, the first worker makes the result in a folder all
  workers share, and the others wait for it (an exclusive lock) and read
  it back. `make` returns a picklable value.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # xdist gives each worker basetemp/popen-gwN

  def run(name: str, make):
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      done = folder / "result.pickle"
      if done.exists():
        return pickle.loads(done.read_bytes())
      folder.mkdir(exist_ok=True)
      value = make(folder)
      done.write_bytes(pickle.dumps(value))
      return value

  return run
