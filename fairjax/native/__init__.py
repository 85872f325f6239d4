"""Native CPU kernels, built on first use and loaded as XLA FFI targets.

Kernels (`SOURCES`): `sparse_adam.cc`, the dense Adam + coupled L2 update
of a table whose gradient is a few rows (`fairjax.ops.sparse_adam`);
`cell_dots.cc`, ITFR's inner products of per-cell gradient segments with
the previous epoch's [K, G, D] buffer (`fairjax.ops.cell_dots`); and
`segment_rows.cc`, row sums by segment (`fairjax.ops.segment_rows`);
`triplet_bpr.cc`, the per-example BPR of gathered (u, i, j) rows and its
gradient in one pass (`fairjax.ops.triplet_bpr`); and
`dual_proposals.cc`, the bfloat16 proposals of the exact dual top-K on AMX
tiles (`fairjax.ops.bf16_proposals`); and `gram_coupling.cc` (targets
gram_blocks and gram_apply), ITFR's per-cell products with LightGCN's Gram
matrix (`fairjax.ops.gram_coupling`). Each
source is compiled with the machine's C++ compiler (`CXX`, else c++ / g++ /
clang++) against the XLA FFI headers that ship with jaxlib, into a cache
directory (`FAIRJAX_CACHE_DIR`, default ~/.cache/fairjax) under a name that
hashes the source and the headers beside it (`flush_denormals.h`,
`run_tasks.h`, `lanes.h`: the denormal flush, the thread-pool task runner
and the 16-float vector the kernels share), the jaxlib version, the flags and this CPU's feature flags, so a change of any
of them rebuilds. The kernels round as XLA's CPU code does, so they agree
with the jnp paths near zero: built with -ffp-contract=fast, a product and
the add after it become one multiply-add as in XLA's LLVM backend, and
denormal floats are flushed to zero while they run. The library is written
to a temporary file and renamed into place: concurrent builders (test
workers) never load a half-written file. `FAIRJAX_NATIVE=0` turns native
kernels off.

`target(name)` returns the registered FFI target name, or raises
`NativeUnavailable` with the reason (no compiler, a failed build, turned
off); `resolve(name, impl)` turns an op's `impl` argument ('auto', 'native'
or 'jax') into the implementation to run, so callers fall back to their
pure-JAX path. `library(name)` gives a kernel's loaded library for its
plain C entry points, `has_cpu_flags(...)` this CPU's feature flags.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

SOURCES = {"sparse_adam": ("sparse_adam.cc", "FairjaxSparseAdam"),
           "cell_dots": ("cell_dots.cc", "FairjaxCellDots"),
           "segment_rows": ("segment_rows.cc", "FairjaxSegmentRows"),
           "triplet_bpr": ("triplet_bpr.cc", "FairjaxTripletBpr"),
           "dual_proposals": ("dual_proposals.cc", "FairjaxDualProposals"),
           "gram_blocks": ("gram_coupling.cc", "FairjaxGramBlocks"),
           "gram_apply": ("gram_coupling.cc", "FairjaxGramApply")}
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=fast",
         "-std=c++17", "-shared", "-fPIC")


class NativeUnavailable(RuntimeError):
  """A native kernel could not be built or loaded (the message says why)."""


def has_cpu_flags(*names: str) -> bool:
  """True when this CPU's /proc/cpuinfo flags include every one of names."""
  return set(names) <= set(_cpu_flags().split())


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _compiler() -> str:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  raise NativeUnavailable("no C++ compiler found (set CXX, or install g++)")


def cache_dir() -> pathlib.Path:
  root = os.environ.get("FAIRJAX_CACHE_DIR") or pathlib.Path.home() / ".cache" / "fairjax"
  return pathlib.Path(root) / "native"


def build(name: str) -> pathlib.Path:
  """Compiles kernel `name` if its cached library is missing; returns the
  library's path."""
  return _build_source(SOURCES[name][0])


def _build_source(file_name: str) -> pathlib.Path:
  """`build` of one source file (its kernels share the library)."""
  if os.environ.get("FAIRJAX_NATIVE", "1") == "0":
    raise NativeUnavailable("turned off by FAIRJAX_NATIVE=0")
  source = pathlib.Path(__file__).with_name(file_name)
  # The source and every header beside it (the kernels include them).
  headers = sorted(source.parent.glob("*.h"))
  text = b"\0".join([source.read_bytes()] + [h.read_bytes() for h in headers])
  key = hashlib.sha256(b"\0".join([
      text, jaxlib.__version__.encode(), " ".join(FLAGS).encode(),
      _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:16]
  out = cache_dir() / f"{source.stem}-{key}.so"  # one per source file
  if out.exists():
    return out
  cxx = _compiler()
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so.tmp",
                                   delete=False) as tmp:
    tmp_path = pathlib.Path(tmp.name)
  cmd = [cxx, *FLAGS, f"-I{source.parent}", f"-I{jax.ffi.include_dir()}",
         str(source), "-o", str(tmp_path)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          check=False)
    if proc.returncode != 0:
      raise NativeUnavailable(
          f"building {source.name} failed ({' '.join(cmd)}):\n"
          f"{proc.stderr[-2000:]}")
    os.replace(tmp_path, out)
  finally:
    tmp_path.unlink(missing_ok=True)
  return out


def _library(name: str) -> tuple[ctypes.CDLL | None, str]:
  """(the loaded library, '') of kernel `name`, else (None, the reason)."""
  return _source_library(SOURCES[name][0])


@functools.cache
def _source_library(file_name: str) -> tuple[ctypes.CDLL | None, str]:
  """`_library` per source file: built, hashed and loaded once a process
  however many kernels it holds."""
  try:
    return ctypes.cdll.LoadLibrary(str(_build_source(file_name))), ""
  except (NativeUnavailable, OSError) as e:
    return None, str(e)


def library(name: str) -> ctypes.CDLL:
  """Kernel `name`'s loaded library (built once per process), for its
  plain C entry points; raises NativeUnavailable with the reason."""
  lib, reason = _library(name)
  if lib is None:
    raise NativeUnavailable(reason)
  return lib


@functools.cache
def _load(name: str) -> tuple[str | None, str]:
  """(FFI target name, '') once kernel `name` is built, loaded and
  registered for the CPU in this process, else (None, the reason)."""
  lib, reason = _library(name)
  if lib is None:
    return None, reason
  target_name = f"fairjax_{name}"
  jax.ffi.register_ffi_target(
      target_name, jax.ffi.pycapsule(getattr(lib, SOURCES[name][1])),
      platform="cpu")
  return target_name, ""


def target(name: str) -> str:
  """The registered FFI target of kernel `name` (built and loaded once per
  process); raises NativeUnavailable with the reason when it cannot be."""
  found, reason = _load(name)
  if found is None:
    raise NativeUnavailable(reason)
  return found


def available(name: str) -> tuple[bool, str]:
  """(True, '') when kernel `name` loads here, else (False, the reason)."""
  found, reason = _load(name)
  return found is not None, reason


def resolve(name: str, impl: str) -> str:
  """'native' or 'jax' for an op's `impl` in {'auto', 'native', 'jax'}:
  'auto' takes kernel `name` when it loads here and the backend is the CPU;
  'native' raises `NativeUnavailable` with the reason when it cannot."""
  if impl not in ("auto", "native", "jax"):
    raise ValueError(f"impl must be auto, native or jax, got {impl!r}")
  if impl == "jax":
    return "jax"
  if jax.default_backend() != "cpu":
    if impl == "native":
      raise NativeUnavailable(
          f"the native kernel {name!r} runs on the CPU; the backend is "
          f"{jax.default_backend()}")
    return "jax"
  if impl == "native":
    target(name)
    return "native"
  return "native" if available(name)[0] else "jax"
