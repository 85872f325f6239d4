"""ADVER: adversarial user-attribute filtering during fine-tuning (FADE §5).

After Bose & Hamilton (ICML 2019), as FADE's baseline. The user
representation e_u of the backbone passes through a filter before scoring;
a discriminator D tries to predict the sensitive attribute a from it:

  e~_u = e_u + F(e_u)      (F an MLP whose last layer starts at zero, so
                            fine-tuning starts from the pretrained model;
                            documented deviation: a plain F(e_u) from a
                            random init would discard the pretraining)
  per batch:  10 x  D <- Adam step on L_D = BCE(D(stop_grad(e~_u)), a)
              then  (theta, F) <- Adam step on L_rec(e~) - gamma L_D
The backbone's optimiser state is carried from pretraining (and across
periods); the filter and discriminator have their own Adam states.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from fairjax import models as models_lib
from fairjax import ops
from fairjax import train
from fairjax.data import sampling
from fairjax.methods import fade as F
from fairjax.methods import fade_protocol


@flax.struct.dataclass
class AdverState:
  step: jax.Array
  params: dict  # backbone
  opt_state: dict
  filt: dict
  filt_opt: dict
  disc: dict
  disc_opt: dict


def _filter_mlp(filt, e):
  """F(e) computed from the filter's parameters directly.

  Same function as `fairjax.models.Filter` (Dense -> LeakyReLU(0.2) ->
  Dense); written without a Module so it can run inside the backbone's
  `apply` (Linen forbids building a module there).
  """
  p = filt["params"]
  h = jax.nn.leaky_relu(e @ p["dense_0"]["kernel"] + p["dense_0"]["bias"], 0.2)
  return h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]


def _filtered(filt):
  def transform(e):
    return e + _filter_mlp(filt, e)
  return transform


class AdverRunner:
  """Builds, trains and scores ADVER states for one backbone."""

  def __init__(self, model, config, data: F.FadeData):
    self.model, self.config, self.data = model, config, data
    self.tx = F.make_optimizer(config)
    self.adv_tx = optax.adam(config.adver.disc_lr)
    self._epoch = jax.jit(self._epoch_impl, donate_argnums=(0,))

  def init_from(self, pretrained) -> AdverState:
    c = self.config
    dim = models_lib.user_embeddings(
        self.model, pretrained.params, jnp.zeros((1,), jnp.int32)).shape[-1]
    adv = models_lib.adversary_init(jax.random.key(c.seed + 7), dim,
                                    c.adver.hidden)
    filt = adv["filter"]
    last = filt["params"]["dense_1"]
    filt = {"params": dict(filt["params"], dense_1=jax.tree.map(
        jnp.zeros_like, last))}
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    return AdverState(step=jnp.zeros((), jnp.int32),
                      params=copy(pretrained.params),
                      opt_state=copy(pretrained.opt_state), filt=filt,
                      filt_opt=self.adv_tx.init(filt), disc=adv["discriminator"],
                      disc_opt=self.adv_tx.init(adv["discriminator"]))

  def pair_scores(self, state_or_params, users, items):
    p = state_or_params
    return models_lib.pair_scores(self.model, p["model"], users, items,
                                  user_transform=_filtered(p["filter"]))

  def all_scores(self, p, users):
    return models_lib.all_scores(self.model, p["model"], users,
                                 user_transform=_filtered(p["filter"]))

  @staticmethod
  def rec_params(state: AdverState) -> dict:
    return {"model": state.params, "filter": state.filt}

  def _step(self, state: AdverState, batch, rng, context):
    c = self.config
    users, valid = batch["user"], batch["valid"]
    group = context["user_group"][users]
    rng_t = jax.random.fold_in(rng, state.step)
    e = models_lib.user_embeddings(self.model, state.params, users)
    e_f = jax.lax.stop_gradient(_filtered(state.filt)(e))

    def disc_loss(disc):
      z = models_lib.discriminate(disc, e_f)
      return ops.discriminator_loss(z, group, valid)

    def disc_step(carry, _):
      disc, opt = carry
      g = jax.grad(disc_loss)(disc)
      upd, opt = self.adv_tx.update(g, opt, disc)
      return (optax.apply_updates(disc, upd), opt), None

    (disc, disc_opt), _ = jax.lax.scan(
        disc_step, (state.disc, state.disc_opt), None,
        length=c.adver.disc_steps)

    neg = sampling.sample_negatives(rng_t, context["seen"], users,
                                    c.num_negatives,
                                    **fade_protocol.negative_sampler(
                                        c, self.data.item[0]))
    cand = jnp.concatenate([batch["item"][:, None], neg], axis=1)
    w = valid.astype(jnp.float32)

    def rec_loss(params, filt):
      p = {"model": params, "filter": filt}
      s = self.pair_scores(p, users, cand)
      l_rec = ops.masked_bpr_mean(s, w)
      e_u = _filtered(filt)(models_lib.user_embeddings(self.model, params,
                                                       users))
      l_d = ops.discriminator_loss(models_lib.discriminate(disc, e_u), group,
                                   valid)
      return l_rec - c.adver.gamma * l_d, (l_rec, l_d)

    (loss, (l_rec, l_d)), (g_p, g_f) = jax.value_and_grad(
        rec_loss, argnums=(0, 1), has_aux=True)(state.params, state.filt)
    upd, opt_state = self.tx.update(g_p, state.opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    upd_f, filt_opt = self.adv_tx.update(g_f, state.filt_opt, state.filt)
    filt = optax.apply_updates(state.filt, upd_f)
    new = AdverState(step=state.step + 1, params=params, opt_state=opt_state,
                     filt=filt, filt_opt=filt_opt, disc=disc,
                     disc_opt=disc_opt)
    return new, {"loss": loss, "rec": l_rec, "disc": l_d}

  def _epoch_impl(self, state, batches, rng, context):
    return jax.lax.scan(lambda s, b: self._step(s, b, rng, context), state,
                        batches)

  def run_period(self, state: AdverState, rows, seen, t: int, rng):
    """Fine-tunes on `rows` for config.epochs epochs; (state, info)."""
    c, data = self.config, self.data
    context = {"seen": jnp.asarray(seen),
               "user_group": jnp.asarray(data.user_group)}
    state, fit = train.fit(
        state, self._epoch,
        lambda e: F.epoch_batches(rows, data, c.batch_size, (c.seed, 77, t, e)),
        c.epochs, rng, context=context, show_progress=False)
    m = fit.last_metrics
    return state, {"train_seconds": fit.train_seconds,
                   "compile_seconds": fit.compile_seconds,
                   "loss": float(jnp.mean(m["loss"])),
                   "disc_loss": float(jnp.mean(m["disc"]))}
