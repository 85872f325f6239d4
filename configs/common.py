"""Helpers shared by the config files."""

import sys
from collections.abc import Mapping

import ml_collections


def parse_variant(arg: str, aliases: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
  """`'a=1,b=x,smoke'` -> {'a': '1', 'b': 'x', 'smoke': '1'}.

  A variant key is the name of the config field it sets. `aliases` maps a
  deprecated short key to that name: its value is stored under the
  canonical key (which wins when both are given) and a one-line warning on
  stderr names the canonical key.
  """
  out = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip() if value else "1"
  for old, new in (aliases or {}).items():
    if old in out:
      print(f"warning: variant key '{old}=' is deprecated; use '{new}='",
            file=sys.stderr, flush=True)
      value = out.pop(old)
      out.setdefault(new, value)
  return out


def base_config(job: str, v: Mapping[str, str], dataset: str,
                methods: str | None = None) -> ml_collections.ConfigDict:
  """The fields every job's config starts with.

  Args:
    job: the job's name (field `job`, checked by the runner).
    v: the parsed variant (`parse_variant`).
    dataset: the default of field `dataset` (variant `dataset=`).
    methods: the default of field `methods` (variant `methods=`, `;` or `,`
      separated); None: the config has no `methods` field here.

  Returns:
    A ConfigDict with job, dataset, data_dir (empty: the --data_dir flag or
    $FAIRJAX_DATA_DIR), seed (variant `seed=`, default 0) and methods.
  """
  c = ml_collections.ConfigDict()
  c.job = job
  c.dataset = v.get("dataset", dataset)
  c.data_dir = ""  # empty: --data_dir flag or $FAIRJAX_DATA_DIR.
  c.seed = int(v.get("seed", 0))
  if methods is not None:
    c.methods = v.get("methods", methods).replace(";", ",")
  return c
