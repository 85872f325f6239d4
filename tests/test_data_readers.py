"""Readers: MovieLens 1M/100K, RecBole atomic, CSV; the registry and stats.

Fixture files are tiny and written under tmp_path; expected values come from
a plain-Python parse of the same text. Real-data tests use the `data_dir`
fixture (skipped without FAIRJAX_DATA_DIR).
"""

import json
import pathlib

import numpy as np
import pytest

from fairjax.data import registry
from fairjax.data.atomic import read_atomic, read_csv
from fairjax.data.movielens import ML1M_GENRES, read_ml100k, read_ml1m
from fairjax.errors import ConfigError, DataError

USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117",
         "10::F::35::1::95370", "7::M::18::4::10001"]  # 7 never rates
MOVIES = ["1::Toy Story (1995)::Animation|Children's|Comedy",
          "2::Jumanji (1995)::Adventure|Children's|Fantasy",
          "5::Star Wars: Episode IV (1977)::Sci-Fi|Action",
          "11::Heat (1995)::Crime|Thriller",
          "20::Nothing (2000)::Drama"]  # 20 never rated
TS = ["1::5::5::978300760", "1::1::3::978302109", "2::11::4::978301968",
      "3::1::1::978300275", "2::5::2::978824291"]
NO_TS_EXTRA = ["10::2::5", "10::5::4"]


def _write(path: pathlib.Path, lines, end="\n", encoding="latin-1"):
  path.write_bytes((end.join(lines) + end).encode(encoding))
  return path


def _ml1m(tmp_path, layout="a", users=USERS, movies=MOVIES, ts=TS,
          extra=NO_TS_EXTRA, end="\n"):
  root = tmp_path / "ml-1m"
  root.mkdir(exist_ok=True)
  _write(root / "users.dat", users, end)
  _write(root / "movies.dat", movies, end)
  if layout == "a":
    _write(root / "ratings_users_0001-2999.dat", ts, end)
    no_ts = [line.rsplit("::", 1)[0] for line in ts] + extra
    _write(root / "ratings_all_no_timestamp.dat", no_ts, end)
  else:
    _write(root / "ratings.dat", ts + [f"{x}::979000000" for x in extra], end)
  return root


def _reference(rating_lines, users=USERS, movies=MOVIES):
  """Plain-Python parse: dense ids by sorted raw id, attributes per dense id."""
  rows = [tuple(int(f) for f in line.split("::")) for line in rating_lines]
  uids = sorted({r[0] for r in rows})
  iids = sorted({r[1] for r in rows})
  user_row = {int(line.split("::")[0]): line.split("::") for line in users}
  movie_row = {int(line.split("::")[0]): line.split("::") for line in movies}
  return dict(
      user=[uids.index(r[0]) for r in rows],
      item=[iids.index(r[1]) for r in rows],
      rating=[r[2] for r in rows], uids=uids, iids=iids,
      gender=[("M", "F").index(user_row[u][1]) for u in uids],
      age=[int(user_row[u][2]) for u in uids],
      occupation=[int(user_row[u][3]) for u in uids],
      genres=[[g in movie_row[i][-1].split("|") for g in ML1M_GENRES]
              for i in iids],
      first=[ML1M_GENRES.index(movie_row[i][-1].split("|")[0]) for i in iids])


def _check(ds, ref, timestamps=None):
  np.testing.assert_array_equal(ds.user, ref["user"])
  np.testing.assert_array_equal(ds.item, ref["item"])
  np.testing.assert_array_equal(ds.rating, ref["rating"])
  np.testing.assert_array_equal(ds.raw_user_ids, ref["uids"])
  np.testing.assert_array_equal(ds.raw_item_ids, ref["iids"])
  assert (ds.num_users, ds.num_items) == (len(ref["uids"]), len(ref["iids"]))
  for attr in ("gender", "age", "occupation"):
    np.testing.assert_array_equal(ds.user_attrs[attr], ref[attr])
  np.testing.assert_array_equal(ds.item_genres, ref["genres"])
  np.testing.assert_array_equal(ds.item_first_genre, ref["first"])
  assert ds.user.dtype == np.int32 and ds.rating.dtype == np.float32
  if timestamps is None:
    assert ds.timestamp is None
  else:
    np.testing.assert_array_equal(ds.timestamp, timestamps)


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_ml1m_layout_a(tmp_path, end):
  root = _ml1m(tmp_path, end=end)
  ds = read_ml1m(root)
  all_lines = [line.rsplit("::", 1)[0] for line in TS] + NO_TS_EXTRA
  assert ds.name == "ml1m"
  _check(ds, _reference(all_lines))
  assert ds.user_attr_names["gender"] == ("M", "F")
  assert ds.genre_names == ML1M_GENRES
  ts = read_ml1m(root, with_timestamps_only=True)
  assert ts.name == "ml1m-ts"
  _check(ts, _reference(TS), [int(line.split("::")[3]) for line in TS])


def test_ml1m_layout_b_prefers_ratings_dat(tmp_path):
  root = _ml1m(tmp_path, layout="b")
  lines = TS + [f"{x}::979000000" for x in NO_TS_EXTRA]
  ref = _reference([line.rsplit("::", 1)[0] for line in lines])
  stamps = [int(line.split("::")[3]) for line in lines]
  _check(read_ml1m(root), ref, stamps)
  _check(read_ml1m(root, with_timestamps_only=True), ref, stamps)


def _bad(tmp_path, **kw):
  root = _ml1m(tmp_path, **kw)
  with pytest.raises(DataError) as e:
    read_ml1m(root, with_timestamps_only=True)
  return str(e.value)


def test_ml1m_duplicate_pair_names_both_lines(tmp_path):
  # Blank lines are skipped but still counted in the reported line numbers.
  msg = _bad(tmp_path, ts=TS[:2] + [""] + TS[2:] + ["1::5::2::978300761"])
  assert "ratings_users_0001-2999.dat:7:" in msg
  assert "(1, 5)" in msg and "first on line 1" in msg


@pytest.mark.parametrize("line,where,field", [
    ("2::11::4", ":3:", None),                      # wrong field count
    ("2::11::4::978301968::9", ":3:", None),
    ("2::x1::4::978301968", ":3:", "MovieID"),      # non-integer id
    ("2:11::4::978301968", ":3:", None),            # stray single colon
    ("2::11::4.5::978301968", ":3:", "Rating"),
    ("2::11::6::978301968", ":3:", "Rating"),       # out of range
    ("2::11::0::978301968", ":3:", "Rating"),
    ("99::11::4::978301968", ":3:", "UserID"),      # not in users.dat
    ("2::12::4::978301968", ":3:", "MovieID"),      # not in movies.dat
    ("2::11::4::yesterday", ":3:", "Timestamp"),
])
def test_ml1m_bad_rating_line(tmp_path, line, where, field):
  msg = _bad(tmp_path, ts=TS[:2] + [line] + TS[3:])
  assert "ratings_users_0001-2999.dat" + where in msg
  if field:
    assert f"field '{field}'" in msg


@pytest.mark.parametrize("users,line,field", [
    (USERS[:2] + ["3::::25::15::55117"] + USERS[3:], 3, "Gender"),
    (USERS[:2] + ["3::X::25::15::55117"] + USERS[3:], 3, "Gender"),
    (USERS[:2] + ["3::M::25::15"] + USERS[3:], 3, None),
    (USERS + ["2::F::1::1::0"], 6, "UserID"),  # duplicated user
    (USERS[:1] + ["2::M::56::99::70072"] + USERS[2:], 2, "Occupation"),
])
def test_ml1m_bad_users(tmp_path, users, line, field):
  msg = _bad(tmp_path, users=users)
  assert f"users.dat:{line}:" in msg
  if field:
    assert f"field '{field}'" in msg


def test_ml1m_bad_movies(tmp_path):
  movies = MOVIES[:1] + ["2::Jumanji (1995)::Adventure|Kids"] + MOVIES[2:]
  msg = _bad(tmp_path, movies=movies)
  assert "movies.dat:2:" in msg and "field 'Genres'" in msg and "Kids" in msg


@pytest.mark.parametrize("name", ["users.dat", "movies.dat",
                                  "ratings_users_0001-2999.dat"])
def test_ml1m_missing_file(tmp_path, name):
  root = _ml1m(tmp_path)
  (root / name).unlink()
  with pytest.raises(DataError, match=rf"{name}: file not found"):
    read_ml1m(root, with_timestamps_only=True)


def test_ml1m_missing_folder(tmp_path):
  with pytest.raises(DataError, match="ml-1m: folder not found"):
    read_ml1m(tmp_path / "ml-1m")


def _ml100k(tmp_path, data=None, users=None):
  root = tmp_path / "ml-100k"
  root.mkdir()
  flags = lambda on: "|".join("1" if j in on else "0" for j in range(19))
  items = [f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags({3, 4, 5})}",
           f"2|GoldenEye (1995)|01-Jan-1995||http://y|{flags({1, 2, 16})}",
           f"3|Mystery Film|01-Jan-1995||http://z|{flags({0})}"]
  _write(root / "u.item", items)
  _write(root / "u.user", users or ["1|24|M|technician|85711",
                                    "2|53|F|other|94043",
                                    "3|23|M|writer|32067"])
  _write(root / "u.occupation", ["other", "technician", "writer"])
  _write(root / "u.data", data or ["3\t1\t3\t881250949", "1\t2\t5\t881250950",
                                   "1\t3\t1\t881250951"])
  return root


def test_ml100k(tmp_path):
  ds = read_ml100k(_ml100k(tmp_path))
  assert ds.name == "ml100k"
  np.testing.assert_array_equal(ds.user, [1, 0, 0])  # raw ids 1, 3 -> 0, 1
  np.testing.assert_array_equal(ds.raw_user_ids, [1, 3])
  np.testing.assert_array_equal(ds.item, [0, 1, 2])
  np.testing.assert_array_equal(ds.timestamp, [881250949, 881250950, 881250951])
  np.testing.assert_array_equal(ds.user_attrs["gender"], [0, 0])
  np.testing.assert_array_equal(ds.user_attrs["age"], [24, 23])
  np.testing.assert_array_equal(ds.user_attrs["occupation"], [1, 2])
  assert ds.user_attr_names["occupation"] == ("other", "technician", "writer")
  assert ds.item_genres.shape == (3, 19) and ds.genre_names[0] == "unknown"
  np.testing.assert_array_equal(ds.item_first_genre, [3, 1, 0])
  np.testing.assert_array_equal(np.flatnonzero(ds.item_genres[1]), [1, 2, 16])


@pytest.mark.parametrize("data,users,want", [
    (["3\t1\t3\t881250949", "1\t2\t5"], None, ("u.data:2:", None)),
    (["3\t1\t3\t881250949", "1\t9\t5\t1"], None, ("u.data:2:", "item id")),
    (["3\t1\t3\t881250949", "3\t1\t4\t1"], None, ("u.data:2:", None)),
    (None, ["1|24|M|pilot|85711"], ("u.user:1:", "occupation")),
    (None, ["1|24||technician|85711"], ("u.user:1:", "gender")),
])
def test_ml100k_bad(tmp_path, data, users, want):
  with pytest.raises(DataError) as e:
    read_ml100k(_ml100k(tmp_path, data, users))
  assert want[0] in str(e.value)
  if want[1]:
    assert f"field '{want[1]}'" in str(e.value)


INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
         "u10\ti1\t4\t100", "u2\ti1\t2.5\t200", "u2\ti7\t5\t150"]
ATOM_USERS = ["user_id:token\tgender:token\tage:token\tscore:float",
              "u2\tF\t18\t0.5", "u10\tM\t25\t1.5", "u99\tF\t1\t0"]
ATOM_ITEMS = ["item_id:token\ttitle:token_seq\tgenre:token_seq",
              "i7\tA B\tDrama Comedy", "i1\tC\tComedy", "i3\tD\t"]


def _atomic(tmp_path, inter=INTER, users=ATOM_USERS, items=ATOM_ITEMS):
  d = tmp_path / "toy"
  d.mkdir()
  _write(d / "toy.inter", inter, encoding="utf-8")
  if users:
    _write(d / "toy.user", users, encoding="utf-8")
  if items:
    _write(d / "toy.item", items, encoding="utf-8")
  return d


def test_atomic(tmp_path):
  d = _atomic(tmp_path)
  for arg in (d, d / "toy.inter", d / "toy"):
    ds = read_atomic(arg)
    assert ds.name == "toy"
    np.testing.assert_array_equal(ds.raw_user_ids, ["u10", "u2"])  # str sort
    np.testing.assert_array_equal(ds.user, [0, 1, 1])
    np.testing.assert_array_equal(ds.raw_item_ids, ["i1", "i7"])
    np.testing.assert_array_equal(ds.item, [0, 0, 1])
    np.testing.assert_allclose(ds.rating, [4, 2.5, 5])
    np.testing.assert_array_equal(ds.timestamp, [100, 200, 150])
    assert ds.user_attr_names["gender"] == ("M", "F")
    np.testing.assert_array_equal(ds.user_attrs["gender"], [0, 1])
    assert ds.user_attr_names["age"] == ("1", "18", "25")  # numeric order
    np.testing.assert_array_equal(ds.user_attrs["age"], [2, 1])
    np.testing.assert_allclose(ds.user_attrs["score"], [1.5, 0.5])
    assert ds.genre_names == ("Comedy", "Drama")
    np.testing.assert_array_equal(ds.item_genres, [[1, 0], [1, 1]])
    np.testing.assert_array_equal(ds.item_first_genre, [0, 1])


def test_atomic_integer_ids_sort_numerically(tmp_path):
  inter = ["user_id:token\titem_id:token", "10\t3", "9\t30", "100\t3"]
  ds = read_atomic(_atomic(tmp_path, inter, users=None, items=None))
  np.testing.assert_array_equal(ds.raw_user_ids, [9, 10, 100])
  np.testing.assert_array_equal(ds.user, [1, 0, 2])
  np.testing.assert_array_equal(ds.rating, [1, 1, 1])
  assert ds.timestamp is None and ds.item_genres is None


@pytest.mark.parametrize("inter,users,want", [
    (["user_id:token\titem_id:tok", "u1\ti1"], None, ("toy.inter:1:", "item_id")),
    (["user_id:token\trating:float", "u1\t3"], None, ("toy.inter", "item_id")),
    (["user_id\titem_id:token", "u1\ti1"], None, ("toy.inter:1:", "user_id")),
    (INTER + ["u3\ti1"], None, ("toy.inter:5:", None)),
    (INTER + ["u3\ti1\tbad\t1"], None, ("toy.inter:5:", "rating")),
    (INTER + ["u2\ti7\t1\t1"], None, ("toy.inter:5:", None)),
    (INTER + ["u5\ti7\t1\t1"], ATOM_USERS, ("toy.inter:5:", "user_id")),
    (INTER, ATOM_USERS[:2] + ["u10\t\t25\t1"], ("toy.user:3:", "gender")),
])
def test_atomic_bad(tmp_path, inter, users, want):
  with pytest.raises(DataError) as e:
    read_atomic(_atomic(tmp_path, inter, users=users, items=None))
  assert want[0] in str(e.value)
  if want[1]:
    assert f"field '{want[1]}'" in str(e.value)


def _csv(tmp_path):
  inter = _write(tmp_path / "log.csv", [
      "user,item,stars,when", "b,x,4,1000", "a,y,3,2000", "a,x,1,1500"])
  users = _write(tmp_path / "users.csv", [
      "user,group,height", "a,blue,1.5", "b,red,2", "c,blue,3"])
  items = _write(tmp_path / "items.csv", [
      "item,genres", 'x,"Drama|Action"', "y,"])
  return inter, users, items


def test_csv(tmp_path):
  inter, users, items = _csv(tmp_path)
  ds = read_csv(inter, rating_col="stars", time_col="when", users_path=users,
                items_path=items)
  assert ds.name == "log"
  np.testing.assert_array_equal(ds.raw_user_ids, ["a", "b"])
  np.testing.assert_array_equal(ds.user, [1, 0, 0])
  np.testing.assert_array_equal(ds.item, [0, 1, 0])
  np.testing.assert_array_equal(ds.rating, [4, 3, 1])
  np.testing.assert_array_equal(ds.timestamp, [1000, 2000, 1500])
  assert ds.user_attr_names == {"group": ("blue", "red")}
  np.testing.assert_array_equal(ds.user_attrs["group"], [0, 1])
  np.testing.assert_allclose(ds.user_attrs["height"], [1.5, 2])
  assert ds.genre_names == ("Action", "Drama")
  np.testing.assert_array_equal(ds.item_first_genre, [1, -1])
  plain = read_csv(inter)
  assert plain.timestamp is None and np.all(plain.rating == 1)


def test_csv_iso_times(tmp_path):
  path = _write(tmp_path / "t.csv", ["user,item,t", "1,2,1970-01-02T00:00:00Z"])
  np.testing.assert_array_equal(read_csv(path, time_col="t").timestamp, [86400])


def test_csv_bad(tmp_path):
  inter, users, _ = _csv(tmp_path)
  with pytest.raises(DataError, match=r"log.csv: field 'rating'"):
    read_csv(inter, rating_col="rating")
  bad = _write(tmp_path / "bad.csv", ["user,item,r", "a,x,1", "b,y,oops"])
  with pytest.raises(DataError, match=r"bad.csv:3: field 'r'"):
    read_csv(bad, rating_col="r")
  short = _write(tmp_path / "short.csv", ["user,item,r", "a,x,1", "b,y"])
  with pytest.raises(DataError, match=r"short.csv:3: expected 3 fields"):
    read_csv(short)
  unknown = _write(tmp_path / "u.csv", ["user,item", "a,x", "zz,y"])
  with pytest.raises(DataError,
                     match=r"u.csv:3: field 'user': user 'zz' is not in users"):
    read_csv(unknown, users_path=users)


def test_registry_paths_and_errors(tmp_path, monkeypatch):
  inter, _, _ = _csv(tmp_path)
  ds = registry.load_dataset(str(inter))
  assert ds.name == str(inter) and ds.num_interactions == 3
  d = _atomic(tmp_path)
  assert registry.load_dataset(str(d)).num_interactions == 3
  with pytest.raises(ConfigError, match="ml1m-ts.*ml100k"):
    registry.load_dataset("ml10m")
  with pytest.raises(ConfigError, match="only to 'synthetic'"):
    registry.load_dataset(str(inter), seed=1)
  monkeypatch.delenv("FAIRJAX_DATA_DIR", raising=False)
  with pytest.raises(ConfigError) as e:
    registry.load_dataset("ml1m")
  for word in ("--data_dir", "FAIRJAX_DATA_DIR", "fairjax.data.download"):
    assert word in str(e.value)
  root = _ml1m(tmp_path)
  monkeypatch.setenv("FAIRJAX_DATA_DIR", str(tmp_path / "nowhere"))
  assert registry.resolve_data_dir(str(tmp_path)) == tmp_path  # flag first
  with pytest.raises(ConfigError, match="nowhere"):
    registry.resolve_data_dir(None)
  monkeypatch.setenv("FAIRJAX_DATA_DIR", str(root.parent))
  assert registry.load_dataset("ml1m-ts").name == "ml1m-ts"


def test_stats_on_fixture(tmp_path):
  ds = read_ml1m(_ml1m(tmp_path))
  stats = registry.dataset_stats(ds)
  json.dumps(stats)
  ratings = [int(x.split("::")[2]) for x in TS] + [5, 4]
  assert stats["interactions"] == len(ratings)
  assert stats["positives"] == sum(r >= 3 for r in ratings)
  assert stats["positives_ge4"] == sum(r >= 4 for r in ratings)
  # Rated users 1 (F), 2 (M), 3 (M), 10 (F); user 7 never rates.
  assert stats["user_groups"]["gender"] == {"M": 2, "F": 2}
  assert stats["user_groups"]["age"] == {"1": 1, "25": 1, "35": 1, "56": 1}
  assert stats["interactions_per_user_group"]["gender"] == {"M": 3, "F": 4}
  first = stats["items_per_first_genre"]
  assert first["Animation"] == 1 and first["Sci-Fi"] == 1 and first["Drama"] == 0
  assert sum(first.values()) == ds.num_items
  assert not stats["has_timestamps"] and "period_sizes" not in stats


def test_synthetic_via_registry():
  ds = registry.load_dataset("synthetic", seed=3, num_users=60, num_items=40,
                              interactions_per_user=10)
  assert ds.num_users <= 60
  stats = registry.dataset_stats(ds)
  assert stats["interactions"] == ds.num_interactions
  assert sum(stats["user_groups"]["gender"].values()) == ds.num_users


# ---- real data ---------------------------------------------------------------


@pytest.mark.real_data
def test_real_ml1m(data_dir):
  ds = read_ml1m(data_dir / "ml-1m")
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (1000209, 6040, 3706)
  assert ds.timestamp is None
  stats = registry.dataset_stats(ds)
  assert stats["user_groups"]["gender"] == {"M": 4331, "F": 1709}
  assert stats["interactions_per_user_group"]["gender"] == {
      "M": 753769, "F": 246440}
  assert stats["rating_counts"] == {"1": 56174, "2": 107557, "3": 261197,
                                    "4": 348971, "5": 226310}
  toy = int(np.searchsorted(ds.raw_item_ids, 1))
  assert ds.genre_names[ds.item_first_genre[toy]] == "Animation"
  ts = read_ml1m(data_dir / "ml-1m", with_timestamps_only=True)
  assert (ts.num_interactions, ts.num_users, ts.num_items) == (487650, 2999, 3615)
  assert (ts.raw_user_ids[ts.user[0]], ts.raw_item_ids[ts.item[0]],
          ts.rating[0], ts.timestamp[0]) == (1, 1193, 5, 978300760)
  assert (ts.timestamp.min(), ts.timestamp.max()) == (970620734, 1046388675)
  assert np.bincount(ts.user_attrs["gender"]).tolist() == [2178, 821]
  # The README: the ts file's triples equal the users-1..2999 part of ml1m.
  key = lambda d: np.sort(d.raw_user_ids[d.user] * 10**5 * 10
                          + d.raw_item_ids[d.item] * 10 + d.rating.astype(int))
  np.testing.assert_array_equal(key(ts), key(ds.subset(
      ds.raw_user_ids[ds.user] <= 2999)))


@pytest.mark.real_data
def test_real_ml1m_ts_periods(data_dir):
  ds = registry.load_dataset("ml1m-ts", data_dir)
  stats = registry.dataset_stats(ds, with_periods=True)
  assert len(stats["period_sizes"]) == 11
  assert sum(stats["period_sizes"]) == stats["positives"]


@pytest.mark.real_data
def test_real_ml100k(data_dir):
  ds = registry.load_dataset("ml100k", data_dir)
  assert (ds.num_interactions, ds.num_users, ds.num_items) == (100000, 943, 1682)
  rows = np.loadtxt(data_dir / "ml-100k" / "u.data", dtype=np.int64)
  np.testing.assert_array_equal(ds.raw_user_ids[ds.user], rows[:, 0])
  np.testing.assert_array_equal(ds.raw_item_ids[ds.item], rows[:, 1])
  np.testing.assert_array_equal(ds.rating, rows[:, 2])
  np.testing.assert_array_equal(ds.timestamp, rows[:, 3])
  stats = registry.dataset_stats(ds)
  assert stats["user_groups"]["gender"] == {"M": 670, "F": 273}
  assert sum(stats["user_groups"]["occupation"].values()) == 943
  assert ds.item_genres.shape == (1682, 19)
