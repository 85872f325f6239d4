"""The base retriever: MF trained with BPR on train rows (DESIGN §5, §6).

Per training row (u, i): `num_negatives` items drawn uniformly among those u
has not interacted with; L = mean BPR over them (masked mean over the valid
rows of a padded batch); Adam (lr `config.lr`) with coupled L2 `config.l2`
on `fairjax.train.fit`, checkpointed so a rerun restores instead of
retraining. Used by FairSync and by the system pipeline's retrieval stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import models as models_lib
from fairjax import ops
from fairjax import train
from fairjax.data import batching
from fairjax.data import sampling


def _bpr_loss(model, num_negatives: int) -> train.LossFn:
  def loss_fn(params, batch, rng, aux, context):
    users = batch["user"]
    neg = sampling.sample_negatives(rng, context["seen"], users,
                                    num_negatives)
    cand = jnp.concatenate([batch["item"][:, None], neg], axis=1)
    s = models_lib.pair_scores(model, params, users, cand)
    return ops.masked_bpr_mean(s, batch["valid"]), ({}, aux)
  return loss_fn


def train_retriever(config, data, workdir, name: str = "retriever"
                    ) -> tuple[np.ndarray, np.ndarray]:
  """MF + BPR on the train rows; returns (user vectors [U, d], items [I, d]).

  Adam (lr `config.lr`) with coupled L2 `config.l2`; checkpointed under
  workdir/<name>/ckpt, so a rerun restores instead of retraining.
  """
  model = models_lib.create(config.model, data.num_users, data.num_items,
                            dim=config.dim, init_std=config.init_std)
  tx = optax.chain(optax.add_decayed_weights(config.l2),
                   optax.adam(config.lr))
  rng = jax.random.key(config.seed)
  state = train.create_state(models_lib.init_params(model, rng), tx)
  seen = sampling.interaction_matrix(data.train_user, data.train_item,
                                     data.num_users, data.num_items)
  sampling.check_sampleable(seen)
  bs = config.train_batch_size

  def batches(epoch):
    return batching.shuffled_batches(
        {"user": data.train_user, "item": data.train_item}, bs,
        (config.seed, 7, epoch))

  epoch_fn = train.make_epoch(train.make_step(
      _bpr_loss(model, config.num_negatives), tx))
  state, _ = train.fit(state, epoch_fn, batches, config.epochs,
                       jax.random.fold_in(rng, 1), context={"seen": seen},
                       checkpoint_dir=workdir / name / "ckpt",
                       ckpt_every=5, name=name,
                       log_every=max(1, config.epochs // 10))
  users = models_lib.user_embeddings(model, state.params,
                                     jnp.arange(data.num_users))
  items = models_lib.item_embeddings(model, state.params,
                                     jnp.arange(data.num_items))
  return np.asarray(users, np.float32), np.asarray(items, np.float32)
