"""Fetch the official MovieLens archives: pinned checksums, safe extraction, cache.

`fetch(name)` downloads the GroupLens archive listed for `name` in
`third_party/movielens/MANIFEST.json`, checks its size and sha256, extracts it
into the cache and returns the extracted folder (e.g. `~/.cache/fairjax/ml-1m`,
which holds the official single-file `ratings.dat` layout).

Guarantees:
  * A cached folder carries a completion marker; when it is present, `fetch`
    returns at once without touching the network.
  * The archive is streamed to a temp file in the cache dir while its sha256 is
    computed; a size or digest mismatch raises `DataError` (URL, expected and
    actual values) and the temp file is deleted.
  * Every zip member is checked before anything is written: an absolute path,
    a `..` component, a symlink or any non-regular entry, or a path that
    resolves outside the target raises `DataError` naming the member.
  * Extraction goes to a temp dir in the cache, then `os.replace` moves the
    finished folder into place, so a failure at any step leaves no partial
    files behind.

CLI: `python -m fairjax.data.download ml-1m [--cache_dir=DIR]` prints the path.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import pathlib
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

from fairjax.errors import ConfigError, DataError

MANIFEST_PATH = (pathlib.Path(__file__).resolve().parents[2] / "third_party" /
                 "movielens" / "MANIFEST.json")
MARKER_NAME = ".fairjax-complete"
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("url", "size", "sha256", "folder")


def default_cache_dir() -> pathlib.Path:
  """`$FAIRJAX_CACHE_DIR` if set, else `~/.cache/fairjax`."""
  env = os.environ.get("FAIRJAX_CACHE_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "fairjax"


def load_manifest(
    manifest: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
  """Returns the validated manifest as `{name: entry}`.

  Args:
    manifest: `None` to read `MANIFEST_PATH`; otherwise a dict either of the
      file's form (`{"datasets": {name: entry}}`) or directly `{name: entry}`.
      Each entry has `url` (str), `size` (int bytes), `sha256` (64 lowercase
      hex digits), `folder` (the top-level folder inside the archive) and an
      optional `md5`.

  Returns:
    A dict from dataset name to entry.

  Raises:
    DataError: the file is missing or malformed; the message names the file
      (or `<manifest>` for a dict) and the bad field.
  """
  source = "<manifest>"
  if manifest is None:
    source = str(MANIFEST_PATH)
    try:
      manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
      raise DataError("manifest not found (running outside a source "
                      "checkout? pass manifest= explicitly)",
                      path=source) from None
    except json.JSONDecodeError as e:
      raise DataError(f"invalid JSON: {e}", path=source, line=e.lineno) from None
  entries = manifest.get("datasets", manifest)
  if not isinstance(entries, Mapping):
    raise DataError("expected a mapping of dataset entries", path=source,
                    field="datasets")
  out = {}
  for name, entry in entries.items():
    if not isinstance(entry, Mapping):
      raise DataError("entry is not a mapping", path=source, field=name)
    for key in _REQUIRED:
      if key not in entry:
        raise DataError(f"missing key '{key}'", path=source, field=name)
    if not isinstance(entry["url"], str) or not entry["url"]:
      raise DataError(f"url must be a string, got {entry['url']!r}",
                      path=source, field=f"{name}.url")
    if not isinstance(entry["size"], int) or entry["size"] <= 0:
      raise DataError(f"size must be a positive int, got {entry['size']!r}",
                      path=source, field=f"{name}.size")
    if not _SHA256_RE.match(str(entry["sha256"])):
      raise DataError("sha256 must be 64 lowercase hex digits, got "
                      f"{entry['sha256']!r}", path=source,
                      field=f"{name}.sha256")
    folder = str(entry["folder"])
    if not folder or folder in (".", "..") or "/" in folder or "\\" in folder:
      raise DataError(f"folder must be a plain name, got {folder!r}",
                      path=source, field=f"{name}.folder")
    out[name] = dict(entry)
  return out


def _resolve_url(url: str, base_url: str | None) -> str:
  if base_url is None:
    return url
  filename = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name
  return base_url.rstrip("/") + "/" + filename


def _download(url: str, dest: pathlib.Path, size: int, timeout: float,
              progress: bool) -> str:
  """Streams `url` into `dest`; returns the sha256 hex digest of the bytes.

  Reads at most `size + 1` bytes so an oversized body cannot fill the disk;
  raises `DataError` on an HTTP/network error or a size mismatch.
  """
  digest = hashlib.sha256()
  done = 0
  next_report = 0.0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as resp, \
        open(dest, "wb") as f:
      length = resp.headers.get("Content-Length")
      if length is not None and length.isdigit() and int(length) != size:
        raise DataError(f"size mismatch: expected {size} bytes, server "
                        f"announces {length}", path=url)
      while done <= size:
        chunk = resp.read(min(_CHUNK, size + 1 - done))
        if not chunk:
          break
        f.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        pct = 100.0 * done / size
        if progress and (pct >= next_report or done >= size):
          print(f"{url}: {done}/{size} bytes ({min(pct, 100.0):.1f}%)",
                file=sys.stderr, flush=True)
          next_report = pct + 10.0
  except urllib.error.HTTPError as e:
    raise DataError(f"HTTP {e.code} {e.reason}", path=url) from None
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    reason = getattr(e, "reason", e)
    raise DataError(f"download failed: {reason}", path=url) from None
  if done != size:
    got = f"more than {size}" if done > size else str(done)
    raise DataError(f"size mismatch: expected {size} bytes, got {got}",
                    path=url)
  return digest.hexdigest()


def _check_member(info: zipfile.ZipInfo, root: pathlib.Path) -> pathlib.Path:
  """Returns the member's destination under `root`; raises ValueError if unsafe."""
  name = info.filename
  kind = stat.S_IFMT(info.external_attr >> 16)
  if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
    raise ValueError("symlink" if kind == stat.S_IFLNK
                     else f"special file type {oct(kind)}")
  norm = name.replace("\\", "/")
  if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
    raise ValueError("absolute path")
  parts = [p for p in norm.split("/") if p not in ("", ".")]
  if ".." in parts:
    raise ValueError("'..' component")
  if not parts:
    raise ValueError("empty path")
  dest = root.joinpath(*parts).resolve()
  if not dest.is_relative_to(root):
    raise ValueError("resolves outside the target dir")
  return dest


def _safe_extract(archive: pathlib.Path, root: pathlib.Path, label: str) -> None:
  """Extracts `archive` into the existing, empty dir `root`.

  All members are validated before the first byte is written; errors name
  `label` (the URL) and the offending member.
  """
  root = root.resolve()
  try:
    with zipfile.ZipFile(archive) as zf:
      plan = []
      for info in zf.infolist():
        try:
          plan.append((info, _check_member(info, root)))
        except ValueError as e:
          raise DataError(f"unsafe zip member {info.filename!r}: {e}",
                          path=label) from None
      for info, dest in plan:
        if info.is_dir():
          dest.mkdir(parents=True, exist_ok=True)
          continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "xb") as out:
          shutil.copyfileobj(src, out, _CHUNK)
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    raise DataError(f"corrupt zip archive: {e}", path=label) from None
  except OSError as e:
    raise DataError(f"cannot extract: {e}", path=label) from None


def _check_marker(target: pathlib.Path, entry: Mapping[str, Any]) -> bool:
  marker = target / MARKER_NAME
  if not marker.is_file():
    return False
  try:
    recorded = json.loads(marker.read_text(encoding="utf-8")).get("sha256")
  except (json.JSONDecodeError, AttributeError):
    recorded = None
  if recorded != entry["sha256"]:
    raise DataError(f"cached folder was extracted from an archive with sha256 "
                    f"{recorded}, but the manifest pins {entry['sha256']}; "
                    "delete the folder to fetch again", path=target)
  return True


def fetch(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    manifest: Mapping[str, Any] | None = None,
    timeout: float = 60,
    progress: bool = True,
) -> pathlib.Path:
  """Downloads, verifies and extracts the archive `name`; returns its folder.

  Args:
    name: a dataset in the manifest, e.g. `"ml-1m"` or `"ml-100k"`.
    cache_dir: where archives are extracted; default `default_cache_dir()`.
    base_url: if given, replaces everything before the archive's file name in
      the manifest URL (a mirror, or a local server in tests).
    manifest: a manifest dict (see `load_manifest`); default: the repo's
      `third_party/movielens/MANIFEST.json`.
    timeout: socket timeout in seconds for connecting and for each read.
    progress: print `bytes/total (pct%)` lines to stderr while downloading.

  Returns:
    `cache_dir / entry["folder"]`, holding the archive's top-level folder
    contents plus a completion marker `MARKER_NAME`.

  Raises:
    ConfigError: `name` is not in the manifest.
    DataError: network/HTTP failure, size or sha256 mismatch, an unsafe or
      corrupt archive, an archive without the expected top-level folder, or a
      folder at the target that `fetch` did not complete. Nothing is left in
      the cache on failure.
  """
  entries = load_manifest(manifest)
  if name not in entries:
    raise ConfigError(f"field 'name': unknown dataset {name!r}; known: "
                      f"{sorted(entries)}")
  entry = entries[name]
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None \
      else default_cache_dir()
  target = cache / entry["folder"]
  if _check_marker(target, entry):
    return target
  if target.exists():
    raise DataError("exists but is not a completed download (no "
                    f"{MARKER_NAME}); move it away or delete it", path=target)
  cache.mkdir(parents=True, exist_ok=True)
  url = _resolve_url(entry["url"], base_url)

  fd, part = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
  os.close(fd)
  part = pathlib.Path(part)
  work = None
  try:
    actual = _download(url, part, entry["size"], timeout, progress)
    if actual != entry["sha256"]:
      raise DataError(f"sha256 mismatch: expected {entry['sha256']}, "
                      f"got {actual}", path=url)
    work = pathlib.Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}.extract."))
    _safe_extract(part, work, url)
    extracted = work / entry["folder"]
    if not extracted.is_dir():
      raise DataError(f"archive has no top-level folder '{entry['folder']}'",
                      path=url)
    (extracted / MARKER_NAME).write_text(
        json.dumps({"name": name, "url": url, "sha256": actual}) + "\n",
        encoding="utf-8")
    try:
      os.replace(extracted, target)
    except OSError:
      # A concurrent fetch may have finished first; accept its result.
      if not _check_marker(target, entry):
        raise
  finally:
    part.unlink(missing_ok=True)
    if work is not None:
      shutil.rmtree(work, ignore_errors=True)
  return target


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m fairjax.data.download",
      description="Fetch an official MovieLens archive; print its folder.")
  parser.add_argument("name", help="dataset name, e.g. ml-1m or ml-100k")
  parser.add_argument("--cache_dir", default=None,
                      help="default: $FAIRJAX_CACHE_DIR or ~/.cache/fairjax")
  parser.add_argument("--base_url", default=None, help="mirror to fetch from")
  args = parser.parse_args(argv)
  try:
    path = fetch(args.name, args.cache_dir, base_url=args.base_url)
  except (DataError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
