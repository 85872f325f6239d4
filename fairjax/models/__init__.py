"""Recommender backbones (Flax Linen) behind one functional interface.

House choice: Linen `init/apply`; the variables dict `{'params': {...}}`
returned by `init_params` is a plain pytree of arrays and is what every
function below takes as `params`.

Interface every backbone implements (methods call only these functions, so a
new backbone, e.g. a two-tower model, joins by `register`):

  create(name, num_users, num_items, **kw) -> model
      'mf' -> MF(num_users, num_items, dim=64, cosine=False)
      'ncf' -> NCF(num_users, num_items, gmf_dim=64, mlp_dims=(64,)*4)
      'lightgcn' -> LightGCN(num_users, num_items, dim=64, num_layers=3,
                             graph=adjacency(...))
  init_params(model, rng) -> params
  pair_scores(model, params, users [B], items [B, ...], **kw) -> [B, ...]
      score of users[b] with each of items[b, ...] (pairs [B] or candidate
      lists [B, n]); kw: `tau` (MF cosine), `user_transform` (ADVER filter).
  all_scores(model, params, users [B], **kw) -> [B, I]
      every item (kw: `chunk_size` for NCF, `tau`, `user_transform`).
  user_embeddings / item_embeddings(model, params, ids) -> [..., d]

A backbone module provides `__call__(users, items, **kw)`,
`score_all(users, **kw)`, `user_embed(users)` and `item_embed(items)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairjax.errors import ConfigError
from fairjax.models.adver import (Discriminator, Filter, adversary_init,
                                  apply_filter, discriminate)
from fairjax.models.lightgcn import LightGCN
from fairjax.models.mf import MF
from fairjax.models.ncf import NCF

Array = jax.Array

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mf": MF, "ncf": NCF, "lightgcn": LightGCN}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds a backbone: `constructor(num_users, num_items, **kw) -> Module`."""
  _REGISTRY[name.lower()] = constructor


def available() -> tuple[str, ...]:
  """Names accepted by `create`."""
  return tuple(sorted(_REGISTRY))


def create(name: str, num_users: int, num_items: int, **kw: Any) -> nn.Module:
  """Builds backbone `name` for the given id spaces.

  Args:
    name: one of `available()` (case-insensitive).
    num_users, num_items: sizes of the dense id spaces.
    **kw: module attributes (e.g. `dim=64`, `cosine=True`, `mlp_dims=...`).

  Returns:
    the (stateless) Linen module.

  Raises:
    ConfigError: unknown name, non-positive sizes, or unknown attributes.
  """
  key = str(name).lower()
  if key not in _REGISTRY:
    raise ConfigError(f"field 'model': unknown backbone {name!r}; "
                      f"choose one of {available()}")
  if int(num_users) <= 0 or int(num_items) <= 0:
    raise ConfigError(f"field 'model': num_users={num_users} and "
                      f"num_items={num_items} must be positive")
  try:
    return _REGISTRY[key](num_users=int(num_users), num_items=int(num_items),
                          **kw)
  except TypeError as e:
    raise ConfigError(f"field 'model': bad options for {key!r}: {e}") from e


def init_params(model: nn.Module, rng: Array) -> dict:
  """Initial variables `{'params': ...}` of `model` (deterministic in rng)."""
  ids = jnp.zeros((1,), jnp.int32)
  return model.init(rng, ids, ids)


def pair_scores(model: nn.Module, params: dict, users: Array, items: Array,
                **kw: Any) -> Array:
  """Scores s(users[b], items[b, ...]), shape of `items` ([B] or [B, n])."""
  return model.apply(params, users, items, **kw)


def all_scores(model: nn.Module, params: dict, users: Array, **kw: Any
               ) -> Array:
  """Scores of each user in `users` [B] against every item, [B, I]."""
  return model.apply(params, users, method="score_all", **kw)


def user_embeddings(model: nn.Module, params: dict, users: Array) -> Array:
  """The backbone's user representation, [..., d] (NCF: [gmf ; mlp])."""
  return model.apply(params, users, method="user_embed")


def item_embeddings(model: nn.Module, params: dict, items: Array) -> Array:
  """The backbone's item representation, [..., d] (NCF: [gmf ; mlp])."""
  return model.apply(params, items, method="item_embed")


def embedding_tables(params: dict) -> tuple[Array, Array]:
  """(E_U [U, d], E_I [I, d]): the layer-0 tables of a model whose
  parameters hold `user` and `item` embeddings (MF, LightGCN). The rows a
  batch touches are rows of these tables; gradients reach them by the
  gather's transpose."""
  p = params["params"]
  return p["user"]["embedding"], p["item"]["embedding"]


def gradient_layout(model: nn.Module) -> str:
  """How a per-example gradient maps onto the parameters (ITFR's per-cell
  backends):

    'rows'   the scores read rows of `embedding_tables` only (MF);
    'graph'  rows of the final embeddings, linear in the tables through a
             propagation whose Gram matrix fits in memory (LightGCN with a
             graph of at most GRAM_MAX_NODES nodes);
    'dense'  anything else: whole-parameter gradients.

  A model states its layout with a `gradient_layout()` method.
  """
  layout = getattr(model, "gradient_layout", None)
  return layout() if callable(layout) else "dense"


__all__ = [
    "MF", "NCF", "LightGCN", "Filter", "Discriminator", "adversary_init", "apply_filter",
    "discriminate", "register", "available", "create", "init_params",
    "pair_scores", "all_scores", "user_embeddings", "item_embeddings",
    "embedding_tables", "gradient_layout",
]
