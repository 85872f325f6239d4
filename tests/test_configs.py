"""Config variants: a variant key is the field's name (its dotted path for a
nested field); the deprecated short keys of the FairSync, FADE and ITFR
configs set the same field and warn once, naming it."""

import pytest

from configs import common
from configs import fade as fade_config
from configs import fairsync as fairsync_config
from configs import itfr as itfr_config
from configs import system as system_config

# (deprecated key=value, canonical key=value, how to read the field)
OLD_NEW = [
    ("b=32", "batch_size=32", lambda c: c.batch_size),
    ("frac=0.5", "exposure_frac=0.5", lambda c: c.exposure_frac),
    ("lam=3", "min_reg_lambda=3", lambda c: c.min_reg_lambda),
    ("target=static", "dual_target=static", lambda c: c.dual_target),
    ("neighbors=2", "num_neighbors=2", lambda c: c.num_neighbors),
    ("exclude_train=0", "exclude_train_items=0",
     lambda c: c.exclude_train_items),
    ("phases=2", "drift_phases=2", lambda c: c.synthetic.drift_phases),
]


@pytest.mark.parametrize("old,new,field", OLD_NEW)
@pytest.mark.parametrize("base", ["dataset=ml1m", "smoke"])
def test_fairsync_short_key_sets_the_field_and_warns(capsys, old, new, field,
                                                     base):
  via_old = fairsync_config.get_config(f"{base},{old}")
  warning = capsys.readouterr().err
  via_new = fairsync_config.get_config(f"{base},{new}")
  assert capsys.readouterr().err == ""
  assert field(via_old) == field(via_new) != field(
      fairsync_config.get_config(base))
  assert via_old.to_dict() == via_new.to_dict()
  key = new.partition("=")[0]
  assert warning.count("\n") == 1 and f"'{key}='" in warning


# FADE: (deprecated key=value, canonical key=value, the field's value).
FADE_OLD_NEW = [
    ("lambda=2", "fade.lam=2", lambda c: (c.fade.lam, c.rec.lam)),
    ("tau=1", "fade.tau=1", lambda c: c.fade.tau),
    ("form=absolute", "fade.form=absolute", lambda c: c.fade.form),
    ("rec_lambda=2", "rec.lam=2", lambda c: c.rec.lam),
    ("gamma=3", "adver.gamma=3", lambda c: c.adver.gamma),
    ("disc_steps=2", "adver.disc_steps=2", lambda c: c.adver.disc_steps),
    ("eta=1", "dual.eta=1", lambda c: c.dual.eta),
    ("eps=0.1", "dual.eps=0.1", lambda c: c.dual.eps),
    ("lam_max=2", "dual.lam_max=2", lambda c: c.dual.lam_max),
    ("level_up=1", "dual.level_up=1", lambda c: c.dual.level_up),
    ("periods=4", "num_periods=4", lambda c: c.num_periods),
    ("split_floor=1", "official.split_floor=1",
     lambda c: c.official.split_floor),
]


@pytest.mark.parametrize("old,new,field", FADE_OLD_NEW)
def test_fade_short_key_sets_the_field_and_warns(capsys, old, new, field):
  via_old = fade_config.get_config(old)
  warning = capsys.readouterr().err
  via_new = fade_config.get_config(new)
  assert capsys.readouterr().err == ""
  assert field(via_old) == field(via_new) != field(fade_config.get_config(""))
  assert via_old.to_dict() == via_new.to_dict()
  assert warning.count("\n") == 1 and f"'{new.partition('=')[0]}='" in warning


def test_itfr_seeds_is_num_seeds(capsys):
  assert itfr_config.get_config("seeds=2").num_seeds == 2
  assert "'num_seeds='" in capsys.readouterr().err
  assert itfr_config.get_config("num_seeds=2").num_seeds == 2


def test_canonical_key_wins_over_its_alias(capsys):
  c = fairsync_config.get_config("b=32,batch_size=16")
  assert c.batch_size == 16
  assert "'batch_size='" in capsys.readouterr().err


def test_parse_variant():
  assert common.parse_variant("a=1, b=x,smoke") == {"a": "1", "b": "x",
                                                    "smoke": "1"}
  assert common.parse_variant("") == {}


@pytest.mark.parametrize("module,job", [(fade_config, "fade"),
                                        (itfr_config, "itfr"),
                                        (fairsync_config, "fairsync"),
                                        (system_config, "system")])
def test_every_config_starts_with_the_shared_fields(module, job):
  c = module.get_config("seed=3,dataset=synthetic")
  assert (c.job, c.dataset, c.data_dir, c.seed) == (job, "synthetic", "", 3)
