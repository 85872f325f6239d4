"""Helpers shared by the config files."""


def parse_variant(arg: str) -> dict[str, str]:
  """`'a=1,b=x,smoke'` -> {'a': '1', 'b': 'x', 'smoke': '1'}."""
  out = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip() if value else "1"
  return out
