"""Tests for fairjax.data.download against a local HTTP server on 127.0.0.1.

Fixture archives are built at run time; no real MovieLens data is used.
"""

import functools
import hashlib
import http.server
import io
import json
import pathlib
import stat
import threading
import zipfile

import pytest

from fairjax.data import download
from fairjax.errors import ConfigError, DataError

_FILES = {
    "ml-1m/ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n",
    "ml-1m/users.dat": b"1::F::1::10::48067\n",
    "ml-1m/README": b"tiny fixture\n",
}


def _zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] = ()) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in members.items():
      zf.writestr(zipfile.ZipInfo(name), data)
    for name, link_target in dict(symlinks).items():
      info = zipfile.ZipInfo(name)
      info.external_attr = (stat.S_IFLNK | 0o777) << 16
      zf.writestr(info, link_target)
  return buf.getvalue()


def _entry(data: bytes, folder: str = "ml-1m") -> dict:
  return {"url": f"https://example.invalid/datasets/{folder}.zip",
          "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
          "folder": folder}


class _Server:
  """A ThreadingHTTPServer on 127.0.0.1 serving `root`, counting GETs."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.requests = []
    outer = self

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):  # noqa: N802
        outer.requests.append(self.path)
        super().do_GET()

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    self.httpd.timeout = 5
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   kwargs={"poll_interval": 0.05}, daemon=True)
    self.thread.start()
    self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets"

  def put(self, filename: str, data: bytes) -> None:
    (self.root / "datasets").mkdir(exist_ok=True)
    (self.root / "datasets" / filename).write_bytes(data)

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
  root = tmp_path / "www"
  root.mkdir()
  srv = _Server(root)
  try:
    yield srv
  finally:
    srv.close()


@pytest.fixture
def cache(tmp_path):
  d = tmp_path / "cache"
  d.mkdir()
  return d


def _fetch(server, cache, entry, **kw):
  return download.fetch("ml-1m", cache, base_url=server.base_url,
                        manifest={"ml-1m": entry}, timeout=5,
                        progress=kw.pop("progress", False), **kw)


def test_official_manifest_pins_both_archives():
  m = download.load_manifest()
  assert set(m) >= {"ml-1m", "ml-100k"}
  for name in ("ml-1m", "ml-100k"):
    e = m[name]
    assert e["url"] == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
    assert e["folder"] == name
    assert len(e["sha256"]) == 64 and e["size"] > 1_000_000
  assert m["ml-1m"]["md5"] == "c4d9eecfca2ab87c1945afe126590906"


def test_fetch_extracts_and_caches(server, cache, capsys):
  data = _zip_bytes(_FILES)
  server.put("ml-1m.zip", data)
  entry = _entry(data)
  path = _fetch(server, cache, entry, progress=True)
  assert path == cache / "ml-1m"
  for name, content in _FILES.items():
    assert (cache / name).read_bytes() == content
  marker = json.loads((path / download.MARKER_NAME).read_text())
  assert marker["sha256"] == hashlib.sha256(data).hexdigest()
  # Only the final folder remains: no temp archive, no extraction dir.
  assert sorted(p.name for p in cache.iterdir()) == ["ml-1m"]
  assert server.requests == ["/datasets/ml-1m.zip"]
  err = capsys.readouterr().err
  assert f"{len(data)}/{len(data)} bytes (100.0%)" in err

  # Second call: served from the cache, no request even with the server down.
  server.close()
  assert _fetch(server, cache, entry) == path
  assert server.requests == ["/datasets/ml-1m.zip"]


def test_cache_dir_from_env(server, tmp_path, monkeypatch):
  data = _zip_bytes(_FILES)
  server.put("ml-1m.zip", data)
  monkeypatch.setenv("FAIRJAX_CACHE_DIR", str(tmp_path / "envcache"))
  path = download.fetch("ml-1m", base_url=server.base_url,
                        manifest={"datasets": {"ml-1m": _entry(data)}},
                        timeout=5, progress=False)
  assert path == tmp_path / "envcache" / "ml-1m"
  assert (path / "ratings.dat").is_file()


def test_sha256_mismatch_leaves_nothing(server, cache):
  data = _zip_bytes(_FILES)
  server.put("ml-1m.zip", data)
  entry = _entry(data)
  entry["sha256"] = "0" * 64
  with pytest.raises(DataError) as e:
    _fetch(server, cache, entry)
  msg = str(e.value)
  assert server.base_url + "/ml-1m.zip" in msg
  assert "0" * 64 in msg and hashlib.sha256(data).hexdigest() in msg
  assert list(cache.iterdir()) == []


@pytest.mark.parametrize("delta", [-1, 1])
def test_size_mismatch_leaves_nothing(server, cache, delta):
  data = _zip_bytes(_FILES)
  server.put("ml-1m.zip", data)
  entry = _entry(data)
  entry["size"] += delta
  with pytest.raises(DataError, match="size mismatch"):
    _fetch(server, cache, entry)
  assert list(cache.iterdir()) == []


@pytest.mark.parametrize("bad", ["../evil.txt", "{tmp}/abs-evil.txt",
                                 "ml-1m/../../evil.txt", "C:/evil.txt"])
def test_path_escape_rejected(server, cache, tmp_path, bad):
  bad = bad.format(tmp=tmp_path)  # an absolute path inside this test's dir
  # The bad member comes last so a naive extractor would have written the
  # good ones first.
  data = _zip_bytes({**_FILES, bad: b"pwned\n"})
  server.put("ml-1m.zip", data)
  with pytest.raises(DataError) as e:
    _fetch(server, cache, _entry(data))
  assert repr(bad) in str(e.value)
  assert list(cache.iterdir()) == []
  assert not (tmp_path / "evil.txt").exists()
  assert not (tmp_path / "abs-evil.txt").exists()


def test_symlink_member_rejected(server, cache):
  data = _zip_bytes(_FILES, symlinks={"ml-1m/link": "/etc/passwd"})
  server.put("ml-1m.zip", data)
  with pytest.raises(DataError, match=r"'ml-1m/link': symlink"):
    _fetch(server, cache, _entry(data))
  assert list(cache.iterdir()) == []


def test_archive_without_folder_or_corrupt(server, cache):
  data = _zip_bytes({"other/ratings.dat": b"1::2::3::4\n"})
  server.put("ml-1m.zip", data)
  with pytest.raises(DataError, match="no top-level folder 'ml-1m'"):
    _fetch(server, cache, _entry(data))
  assert list(cache.iterdir()) == []

  junk = b"PK\x03\x04 this is not a zip archive"
  server.put("ml-1m.zip", junk)
  with pytest.raises(DataError, match="corrupt zip"):
    _fetch(server, cache, _entry(junk))
  assert list(cache.iterdir()) == []


def test_http_404_is_clear(server, cache):
  with pytest.raises(DataError, match=r"ml-1m\.zip: HTTP 404"):
    _fetch(server, cache, _entry(b"x" * 10))
  assert list(cache.iterdir()) == []


def test_foreign_folder_and_stale_marker(server, cache):
  data = _zip_bytes(_FILES)
  entry = _entry(data)
  (cache / "ml-1m").mkdir()
  with pytest.raises(DataError, match="not a completed download"):
    _fetch(server, cache, entry)
  (cache / "ml-1m" / download.MARKER_NAME).write_text(
      json.dumps({"sha256": "1" * 64}))
  with pytest.raises(DataError, match="delete the folder"):
    _fetch(server, cache, entry)
  assert server.requests == []


def test_bad_manifest_and_unknown_name(cache):
  with pytest.raises(ConfigError, match="unknown dataset 'ml-10m'"):
    download.fetch("ml-10m", cache, progress=False)
  bad = {"ml-1m": {"url": "u", "size": 3, "sha256": "ABC", "folder": "x"}}
  with pytest.raises(DataError, match=r"field 'ml-1m\.sha256'"):
    download.fetch("ml-1m", cache, manifest=bad, progress=False)
  bad = {"ml-1m": {"url": "u", "size": 3, "sha256": "a" * 64, "folder": "../x"}}
  with pytest.raises(DataError, match=r"field 'ml-1m\.folder'"):
    download.fetch("ml-1m", cache, manifest=bad, progress=False)


def test_cli_prints_cached_path(cache, capsys):
  entry = download.load_manifest()["ml-1m"]
  folder = cache / "ml-1m"
  folder.mkdir()
  (folder / download.MARKER_NAME).write_text(
      json.dumps({"sha256": entry["sha256"]}))
  # Served from the cache: the official URL is never contacted.
  assert download.main(["ml-1m", f"--cache_dir={cache}"]) == 0
  assert capsys.readouterr().out.strip() == str(folder)
  assert download.main(["nope", f"--cache_dir={cache}"]) == 1
  assert "unknown dataset" in capsys.readouterr().err
