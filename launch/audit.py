r"""Audits any recommender's top-K lists: a fairness report (issue 15).

  python -m launch.audit --recs=recs.inter --test=test.inter \
      --users=data.user --items=data.item --user_attr=gender \
      --item_attr=genre --out=runs/audit [--k=10,20] [--train=train.inter] \
      [--min_exposure=0.02 | --min_exposure=Drama:0.1,Horror:0.02] \
      [--weights='{"gender": {"M": {"interact": 1}, "F": {"rating>=4": 1}}}'] \
      [--multi_value=first|each] [--on_bad=error|skip]

Export one of our own ITFR runs' top-K (K = the first --k) as inputs:

  python -m launch.audit --export_from=runs/itfr_ml100k --export_method=BPR \
      --export_seed=0 --k=20 --out=runs/itfr_ml100k/export

Inputs are RecBole atomic files (`user_id:token item_id:token rank:float`
or `score:float`; `.user`, `.item`) or CSV with a header (`user`, `item`,
`rank` or `score`; attribute files `user`/`item` + one column per
attribute). Writes DIR/report.json, DIR/report.md and PNG figures, all or
nothing; prints the overall figures as one JSON line. Bad input prints
`error: FILE:LINE: field 'F': ...` and exits 1 (`--on_bad=skip` counts and
reports skippable rows instead). Definitions: `fairjax/audit/report.py`.
"""

import json

from absl import app
from absl import flags

from launch.common import friendly_errors

_RECS = flags.DEFINE_string("recs", None, "Recommendation file (top-K lists).")
_TEST = flags.DEFINE_string("test", None, "Held-out interactions.")
_USERS = flags.DEFINE_string("users", None, "User attribute table.")
_ITEMS = flags.DEFINE_string("items", None, "Item attribute table.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_TRAIN = flags.DEFINE_string("train", None, "Optional training interactions "
                             "(popularity, RSP, BiasDisparity source).")
_USER_ATTR = flags.DEFINE_multi_string(
    "user_attr", [], "User attribute column (repeat or comma-separate).")
_ITEM_ATTR = flags.DEFINE_multi_string(
    "item_attr", [], "Item attribute column (repeat or comma-separate).")
_K = flags.DEFINE_list("k", ["10", "20"], "Cut-offs K.")
_MIN_EXPOSURE = flags.DEFINE_string(
    "min_exposure", None, "Minimum share of top-K slots per item group: one "
    "number for every group, or LABEL:share,...")
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "End-utility weights, JSON or a JSON file: {ATTR: "
    "{GROUP: {OUTCOME: w}}}, OUTCOME interact or rating>=X.")
_ON_BAD = flags.DEFINE_enum("on_bad", "error", ["error", "skip"],
                            "Bad rows: stop with an error, or count and skip.")
_MULTI = flags.DEFINE_enum(
    "multi_value", "first", ["first", "each"], "Multi-valued item fields: "
    "the first value, or membership in each listed group.")
_MULTI_SEP = flags.DEFINE_string("multi_sep", "|",
                                 "Value separator inside a CSV field.")
_SEP = flags.DEFINE_string("sep", None, "CSV separator (default: ',' or tab "
                           "for .tsv; atomic files are always tab).")
_FIGURES = flags.DEFINE_bool("figures", True, "Draw the PNG figures.")
_BLOCK = flags.DEFINE_integer("block_users", 1 << 14, "Users per block.")
_EXPORT = flags.DEFINE_string(
    "export_from", None, "Export mode: an ITFR job's workdir; writes its "
    "top-K (K = the first --k) as recs.inter, test.inter, users.user and "
    "items.item into --out, then stops.")
_EXPORT_METHOD = flags.DEFINE_string("export_method", "BPR",
                                     "Export mode: the method.")
_EXPORT_SEED = flags.DEFINE_integer("export_seed", 0, "Export mode: the seed.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Export mode: real data "
                                "folder (default: $FAIRJAX_DATA_DIR).")
flags.mark_flag_as_required("out")


def _names(values):
  return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


@friendly_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fairjax import audit  # JAX starts here.
  from fairjax.errors import ConfigError
  try:
    ks = tuple(int(k) for k in _K.value)
  except ValueError:
    raise ConfigError(f"k: integers expected, got {_K.value}") from None
  if _EXPORT.value:
    from fairjax.audit import export
    paths = export.export_itfr(_EXPORT.value, _EXPORT_METHOD.value,
                               _EXPORT_SEED.value, _OUT.value, k=ks[0],
                               data_dir=_DATA_DIR.value)
    print(json.dumps({n: str(p) for n, p in paths.items()}))
    return
  for name in ("recs", "test", "users", "items"):
    if not flags.FLAGS[name].value:
      raise ConfigError(f"{name}: the flag --{name} is required")
  options = audit.Options(
      recs=_RECS.value, test=_TEST.value, users=_USERS.value,
      items=_ITEMS.value, user_attrs=_names(_USER_ATTR.value),
      item_attrs=_names(_ITEM_ATTR.value), ks=ks, train=_TRAIN.value,
      min_exposure=_MIN_EXPOSURE.value, weights=_WEIGHTS.value,
      on_bad=_ON_BAD.value, multi_value=_MULTI.value,
      multi_sep=_MULTI_SEP.value, sep=_SEP.value, block_users=_BLOCK.value)
  report = audit.audit(options)
  audit.write_outputs(report, _OUT.value, figures=_FIGURES.value)
  print(json.dumps({"out": _OUT.value, "overall": report["overall"],
                    "seconds": report["input"]["seconds"]}))


if __name__ == "__main__":
  app.run(main)
