"""ITFR: intersectional two-sided fairness, its baselines and ablations.

Wang et al., "Intersectional Two-sided Fairness in Recommendation", WWW 2024
(DESIGN §4). Every training interaction (u, i) belongs to the cell g =
(user group of u) x (item group of i), g = a J + j. Per batch of (u, i, j)
triples (j one negative, uniform among the items u has no training
interaction with), with l_b the BPR loss of row b:

  BPR         mean_b l_b, dot-product scores.
  BPR-Norm    BPR with the normalised score cos(e_u, e_i) / tau.
  GroupDRO    L_g = mean BPR of cell g; q <- GroupDRO update with L
              (`fairjax.ops.group_weights.group_dro_update`), then the
              gradient of sum_g q_g L_g. Dot-product scores.
  ITFR        cosine / tau scores; per-cell sharpness-aware losses L^SA and
              gradients h_g (`fairjax.ops.group_sam`), q <- collaborative
              loss balance (`group_weights.collaborative_update`, using the
              previous epoch's per-cell summed gradients C and mean L^SA),
              update with sum_g q_g h_g.
  ITFR-noSAM  ITFR with rho = 0 (L^SA = L, h_g = grad_g): no sharpness.
  ITFR-noCLB  ITFR with the collaborative balance replaced by GroupDRO's
              update on the sharpness-aware losses (R = I, no cross-cell
              terms; step size `group_dro_eta`, not `itfr.eta`): the
              weights still follow L^SA, without collaboration.
  ITFR-noNorm ITFR with dot-product scores (no predicted-score
              normalisation).
Scores at inference are the plain cosine (tau = 1; the ranking does not
depend on tau) or the dot product.

State. The pure train state (`fairjax.train.TrainState`) carries in `aux`:
q [G]; for the collaborative balance also the cumulative per-cell gradients
of the current and the previous epoch (c_cur, c_prev), ||C_j^prev||, the
per-cell sums of n_g L_g^SA and n_g of the current epoch and Lbar^prev. The
epoch index is state.step // steps_per_epoch. The epoch boundary is a pure
function of the state (`roll_epoch`: current -> previous, current <- 0 when
state.step is a positive multiple of steps_per_epoch), applied by the jitted
epoch function before its scan, so a checkpoint taken between epochs resumes
exactly. (Rolling inside the scanned step is equivalent, but XLA then copies
the [K, G, d] buffers on every step.)

C_j (as the official code) sums, over the epoch's batches, n_g grad_g at
theta: the gradient of the summed (not averaged) BPR loss of cell j.

Three implementations of the per-cell gradients (`fairjax.ops.group_sam`):
MF uses the row-sparse path (gradients w.r.t. the gathered embedding rows,
C stored as [K, G, d] over the K = U + I table rows); LightGCN the same path
on its final embeddings with the propagation's Gram matrix (`_Graph`, up to
`GRAM_MAX_NODES` nodes; `make_context` computes the matrix); any other
backbone the dense vmap over cells.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import models as models_lib
from fairjax import ops
from fairjax import train
from fairjax.data import batching
from fairjax.data import sampling
from fairjax.data.cells import ItfrData
from fairjax.errors import ConfigError
from fairjax.models.mf import normalize_rows
from fairjax.models.lightgcn import (adjacency, propagate_split,
                                     propagation_gram)
from fairjax.ops import group_sam
from fairjax.ops.cell_dots import cell_dots
from fairjax.ops.gram_coupling import gram_coupling
from fairjax.ops.triplet_bpr import triplet_bpr_vjp
from fairjax.ops import group_weights as gw


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """How one method trains.

  Attributes:
    name: method name.
    weighting: 'none' (BPR), 'dro' (GroupDRO update) or 'clb'
      (collaborative loss balance).
    sam: sharpness-aware per-cell losses and gradients.
    cosine: normalised scores cos / tau in training.
  """

  name: str
  weighting: str
  sam: bool
  cosine: bool

  @property
  def per_cell(self) -> bool:
    """Needs per-cell gradients (the custom ITFR step)."""
    return self.sam or self.weighting == "clb"


METHODS = {
    "BPR": MethodSpec("BPR", "none", False, False),
    "BPR-Norm": MethodSpec("BPR-Norm", "none", False, True),
    "GroupDRO": MethodSpec("GroupDRO", "dro", False, False),
    "ITFR": MethodSpec("ITFR", "clb", True, True),
    "ITFR-noSAM": MethodSpec("ITFR-noSAM", "clb", False, True),
    "ITFR-noCLB": MethodSpec("ITFR-noCLB", "dro", True, True),
    "ITFR-noNorm": MethodSpec("ITFR-noNorm", "clb", True, False),
}


def method_list(config) -> list[str]:
  return [m.strip() for m in str(config.methods).replace(";", ",").split(",")
          if m.strip()]


def validate_config(config) -> None:
  """Raises ConfigError naming the field of an out-of-range value."""
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"field '{field}': {msg}")
  methods = method_list(config)
  need(methods, "methods", "no method given")
  unknown = [m for m in methods if m not in METHODS]
  need(not unknown, "methods",
       f"unknown {unknown}; valid: {','.join(METHODS)}")
  need(len(set(methods)) == len(methods), "methods", "repeated names")
  it = config.itfr
  need(it.rho >= 0, "itfr.rho", f"rho must be >= 0, got {it.rho}")
  need(it.tau > 0, "itfr.tau", f"tau must be > 0, got {it.tau}")
  need(it.eta >= 0, "itfr.eta", f"eta must be >= 0, got {it.eta}")
  need(it.gamma >= 0, "itfr.gamma", f"gamma must be >= 0, got {it.gamma}")
  need(0 <= it.q_floor < 1, "itfr.q_floor", "must be in [0, 1)")
  need(config.group_dro_eta >= 0, "group_dro_eta", "must be >= 0")
  need(config.num_seeds >= 1, "num_seeds", "must be >= 1")
  need(config.epochs >= 1, "epochs", "must be >= 1")
  need(config.batch_size >= 1, "batch_size", "must be >= 1")
  need(config.eval_every >= 1, "eval_every", "must be >= 1")
  need(config.ckpt_every >= 1, "ckpt_every", "must be >= 1")
  need(config.lr > 0, "lr", "must be > 0")
  need(config.l2 >= 0, "l2", "must be >= 0")
  ks = list(config.ks)
  need(ks and all(int(k) >= 1 for k in ks), "ks",
       f"must be one or more cutoffs >= 1, got {ks}")
  need(str(config.model).lower() in ("mf", "lightgcn"), "model",
       f"ITFR supports mf and lightgcn, got {config.model!r}")
  need(int(config.lightgcn_layers) >= 0, "lightgcn_layers",
       f"must be >= 0, got {config.lightgcn_layers}")
  need(config.lightgcn_layout in ("auto", "dense", "sparse"),
       "lightgcn_layout", "must be 'auto', 'dense' or 'sparse', got "
       f"{config.lightgcn_layout!r}")
  need(config.missing_user_group in ("error", "drop"), "missing_user_group",
       "must be 'error' or 'drop'")
  need(config.item_grouping in ("one_of", "first_genre"), "item_grouping",
       "must be 'one_of' or 'first_genre'")


# ----------------------------------------------------------------------------
# Models.


def create_model(config, data: ItfrData, cosine: bool):
  """The backbone of `config.model` ('mf' or 'lightgcn') for `data`."""
  name = str(config.model).lower()
  if name == "lightgcn":
    graph = adjacency(data.train_user, data.train_item, data.num_users,
                      data.num_items,
                      layout=config.lightgcn_layout)
    kw = dict(dim=config.dim, num_layers=config.lightgcn_layers,
              cosine=cosine, init_std=config.lightgcn_init_std, graph=graph)
    return models_lib.create("lightgcn", data.num_users, data.num_items,
                             **kw)
  return models_lib.create(name, data.num_users, data.num_items,
                           dim=config.dim, cosine=cosine,
                           init_std=config.init_std)


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam (lr) with coupled L2 `l2` (torch Adam(weight_decay); 0 in ITFR)."""
  if config.l2 > 0:
    return optax.chain(optax.add_decayed_weights(config.l2),
                       optax.adam(config.lr))
  return optax.adam(config.lr)


def _tau(spec: MethodSpec, config) -> float:
  return float(config.itfr.tau) if spec.cosine else 1.0


# ----------------------------------------------------------------------------
# Batches.


def epoch_batches(data: ItfrData, batch_size: int, seed_parts
                  ) -> dict[str, np.ndarray]:
  """The training rows shuffled as [steps, batch] arrays (last one padded).

  Keys: user, item, cell (int32) and valid (bool; False on padding). The
  shuffle is a pure function of `seed_parts`.
  """
  return batching.shuffled_batches(
      {"user": data.train_user, "item": data.train_item,
       "cell": data.train_cell}, batch_size, seed_parts)


def steps_per_epoch(data: ItfrData, batch_size: int) -> int:
  return -(-data.train_user.size // batch_size)


def _negatives(rng, context, batch):
  return sampling.sample_negatives(rng, context["seen"], batch["user"], 1,
                                   drawn=batch.get("neg_draws"))[:, 0]


def _presample(data: ItfrData):
  """The epoch `prepare`: step keys and first sampling rounds per epoch."""
  return functools.partial(sampling.presample_negatives,
                           num_items=data.num_items, num_negatives=1)


# ----------------------------------------------------------------------------
# BPR and GroupDRO: plain losses for `train.make_step`.


def _cell_means(losses, cell, valid, num_cells):
  c = jnp.where(valid, cell, num_cells)
  w = valid.astype(losses.dtype)
  sums = jax.ops.segment_sum(losses * w, c, num_cells + 1)[:num_cells]
  counts = jax.ops.segment_sum(w, c, num_cells + 1)[:num_cells]
  return sums / jnp.maximum(counts, 1.0), counts


def make_loss(model, spec: MethodSpec, config, data: ItfrData) -> train.LossFn:
  """Loss for BPR / BPR-Norm / GroupDRO (methods without per-cell grads).

  batch: {'user', 'item', 'cell', 'valid'} [B]; context {'seen' [U, I]};
  aux {'q' [G]} (GroupDRO).
  """
  tau = _tau(spec, config)
  num_cells = data.num_cells
  active = jnp.asarray(data.active)
  eta = float(config.group_dro_eta)

  def loss_fn(params, batch, rng, aux, context):
    users, valid = batch["user"], batch["valid"]
    neg = _negatives(rng, context, batch)
    cand = jnp.stack([batch["item"], neg], axis=1)
    s = models_lib.pair_scores(model, params, users, cand, tau=tau)
    rows = ops.bpr_loss(s[:, 0], s[:, 1])
    w = valid.astype(rows.dtype)
    mean = jnp.sum(rows * w) / jnp.maximum(jnp.sum(w), 1.0)
    if spec.weighting == "none":
      return mean, ({"bpr": mean}, aux)
    cell_loss, counts = _cell_means(rows, batch["cell"], valid, num_cells)
    q = gw.group_dro_update(aux["q"], jax.lax.stop_gradient(cell_loss),
                            counts > 0, eta, active, config.itfr.q_floor)
    loss = jnp.sum(q * cell_loss)
    return loss, ({"bpr": mean}, dict(aux, q=q))

  return loss_fn


def init_aux(spec: MethodSpec, data: ItfrData, params, model) -> dict:
  """Initial `TrainState.aux` of a method (see the module docstring)."""
  g = data.num_cells
  aux = {"q": gw.init_weights(jnp.asarray(data.active))}
  if spec.weighting != "clb":
    return aux
  aux.update(_backend_class(model).init_buffers(params, data),
             c_norm=jnp.zeros((g,)), loss_sum=jnp.zeros((g,)),
             count_sum=jnp.zeros((g,)), loss_prev=jnp.zeros((g,)))
  return aux


# ----------------------------------------------------------------------------
# The ITFR step: per-cell (sharpness-aware) gradients and weights.


def mf_example_loss(x, batch_size: int, cosine: bool, tau: float):
  """Per-row BPR from gathered MF rows x = [e_u; e_i; e_j] ([3B, d]).

  l_b = softplus(s_uj - s_ui), s = <e_u, e_i> or with `cosine` the cosine
  / tau (rows scaled by rsqrt(max(||x||^2, 1e-12)), as
  `models.mf.normalize_rows`): the plain formula, differentiated by JAX on
  the reference path. The default path takes the losses and their gradient
  from `ops.triplet_bpr.triplet_bpr_vjp`.
  """
  b = batch_size
  eu, ei, ej = x[:b], x[b:2 * b], x[2 * b:]
  if cosine:
    eu, ei, ej = normalize_rows(eu), normalize_rows(ei), normalize_rows(ej)
  sp, sn = jnp.sum(eu * ei, -1), jnp.sum(eu * ej, -1)
  if cosine:
    sp, sn = sp / tau, sn / tau
  return ops.bpr_loss(sp, sn)


class _Backend:
  """What the backends share: the plain epoch boundary."""

  def roll(self, cur, context):
    """Epoch boundary: (C^prev as the dots read it, ||C_j|| [G])."""
    del context
    return cur, self.norms(cur)


def _user_classes(data: ItfrData):
  """(key_class [U + I], cell_class [G]) for `ops.cell_dots`: the user
  group of each user key (-1 for item keys) and of each cell, when every
  training row's cell lies in its user's group (cell = a J + j; then C's
  rows of user u are zero in the other groups' cells); else None."""
  nj = data.num_item_groups
  cell = data.train_cell
  ok = cell >= 0
  if not np.array_equal(data.user_group[data.train_user[ok]], cell[ok] // nj):
    return None
  key_class = np.concatenate([data.user_group.astype(np.int32),
                              np.full(data.num_items, -1, np.int32)])
  cell_class = (np.arange(data.num_cells) // nj).astype(np.int32)
  return jnp.asarray(key_class), jnp.asarray(cell_class)


class _Rows(_Backend):
  """Row-sparse per-cell gradients for MF; buffers c_cur, c_prev [K, G, d].

  Per step the buffers are touched only at the batch's rows: C^prev is
  read there for the cosines (`ops.cell_dots`), n_g grad_g is
  scatter-added into C^cur.

  The two passes' losses and slot gradients come from
  `ops.triplet_bpr.triplet_bpr_vjp` (native where it loads: one pass over
  each example's rows), their segment sums from `ops.segment_rows` (native
  where it loads: the same sums to the bit, without XLA's zero buffers).
  `reference=True` takes the jnp cosines, the jnp segment sums and the
  autodiff loss gradient (`mf_example_loss`) instead of
  the native kernels: the same algorithm, rounded as before those were
  written; `launch.bench --bench=itfr` compares the two paths.
  """

  def __init__(self, model, spec, config, data, reference: bool = False):
    self.num_users = data.num_users
    self.key_space = data.num_users + data.num_items
    self.g = data.num_cells
    self.cosine, self.tau = spec.cosine, _tau(spec, config)
    self.rho = float(config.itfr.rho) if spec.sam else None
    # `ops.cell_dots` and `ops.segment_rows` implementations.
    self.dots_impl = self.segment_impl = "jax" if reference else "auto"
    # `ops.triplet_bpr.triplet_bpr_vjp` implementation; None: autodiff.
    self.loss_impl = None if reference else "auto"
    # `group_sam.cell_sam_rows(couple_on=)` (used with a coupling only).
    self.couple_on = "slots" if reference else "segments"
    self.classes = _user_classes(data)

  @staticmethod
  def init_buffers(params, data):
    k = data.num_users + data.num_items
    d = models_lib.embedding_tables(params)[0].shape[-1]
    shape = (k, data.num_cells, d)
    # Two distinct buffers (the epoch donates them).
    return {"c_cur": jnp.zeros(shape), "c_prev": jnp.zeros(shape)}

  @staticmethod
  def norms(c):
    """[G] ||C_j||."""
    return jnp.sqrt(jnp.sum(jnp.square(c), axis=(0, 2)))

  def rows(self, params, users, items, neg, keys):
    """[3B, d] the rows the batch's scores read: e_u, e_i, e_j (MF: rows of
    the embedding tables; `keys` index them in one U + I key space)."""
    del keys
    eu, ei = models_lib.embedding_tables(params)
    return jnp.concatenate([eu[users], ei[items], ei[neg]])

  def coupling(self, context):
    """`group_sam.cell_sam_rows(coupling=)`; None: P = I."""
    del context
    return None

  def cells(self, params, batch, neg, context):
    users, items = batch["user"], batch["item"]
    b = users.shape[0]
    keys = jnp.concatenate([users, self.num_users + items,
                            self.num_users + neg])

    x, pull = jax.vjp(lambda p: self.rows(p, users, items, neg, keys), params)
    slot_example = jnp.tile(jnp.arange(b), 3)
    loss_vjp = None if self.loss_impl is None else functools.partial(
        triplet_bpr_vjp, batch_size=b, cosine=self.cosine, tau=self.tau,
        impl=self.loss_impl)
    out = group_sam.cell_sam_rows(
        lambda r: mf_example_loss(r, b, self.cosine, self.tau), x, keys,
        slot_example, batch["cell"], batch["valid"], self.g, self.key_space,
        self.rho, coupling=self.coupling(context),
        segment_impl=self.segment_impl, couple_on=self.couple_on,
        loss_vjp=loss_vjp)
    cell = jnp.where(batch["valid"], batch["cell"], self.g)
    return out, (cell[slot_example], pull)

  def grads(self, q, out, extra):
    """sum_g q_g h_g pulled back through the gather (duplicates summed)."""
    slot_cell, pull = extra
    qq = jnp.append(q, 0.0)[slot_cell]
    (g,) = pull(qq[:, None] * out.slot_h)
    return g

  def dots(self, c_prev, out):
    """[G, G] <h_i, C_j^prev>, reading C^prev at the batch's rows only
    (`ops.cell_dots`, implementation `self.dots_impl`)."""
    key_class, cell_class = self.classes or (None, None)
    return cell_dots(c_prev, out.seg_key, out.seg_cell, out.h_seg,
                     key_class, cell_class, impl=self.dots_impl)

  def accumulate(self, c_cur, out):
    """C^cur[row, cell] += n_cell grad_cell[row] on the touched rows."""
    scale = jnp.append(out.count, 0.0)[out.seg_cell]
    return c_cur.at[out.seg_key, out.seg_cell].add(
        scale[:, None] * out.grad_seg, mode="drop")


class _Graph(_Rows):
  """LightGCN: the row-sparse path on the final embeddings E = P E^0.

  The scores read final rows only, and E is linear in the parameters, so
  per-cell norms and perturbations follow from the slot gradients and the
  Gram matrix P P^T at the batch's rows (`group_sam.cell_sam_rows(coupling=)`,
  `context['gram']` from `make_context`); sum_g q_g h_g is pulled back
  through the propagation once. The buffers hold row-space sums Z_j (C_j =
  P^T Z_j); at the epoch boundary C^prev is stored as W_j = P P^T Z_j, so
  <h_i, C_j> = <row gradient of h_i, W_j> at the batch's rows and ||C_j||^2
  = <Z_j, W_j>. The Gram products are taken by cell blocks on the cells'
  gradient segments (`ops.gram_coupling`: natively where it loads, else
  XLA's static blocks, `group_sam.blocked_coupling`, capacities from the
  cell sizes and the batch size, when that at least halves their work;
  the reference path: XLA's blocks on the slots). Equal to the dense vmap
  over cells (tested against the official cell-by-cell procedure), at
  about one propagation per step.
  """

  def __init__(self, model, spec, config, data, reference: bool = False):
    super().__init__(model, spec, config, data, reference)
    self.classes = None  # W = P P^T Z is dense: no row is known to be zero
    self.graph, self.num_layers = model.graph, model.num_layers
    # Per-cell slot capacities (3 slots per example) of the blocked Gram
    # product; None: the dense one.
    self.capacities = group_sam.cell_capacities(data.cell_counts,
                                                config.batch_size, 3)
    # `ops.gram_coupling` implementation (reference: XLA's blocks).
    self.coupling_impl = "jax" if reference else "auto"

  def rows(self, params, users, items, neg, keys):
    del keys
    e0 = jnp.concatenate(models_lib.embedding_tables(params))
    e_u, e_i = propagate_split(e0, self.graph, self.num_layers,
                               self.num_users, users)
    return jnp.concatenate([e_u, e_i[items], e_i[neg]])

  def coupling(self, context):
    return gram_coupling(context["gram"], self.g, self.capacities,
                         self.coupling_impl)

  def roll(self, cur, context):
    k, g, d = cur.shape
    w = jnp.matmul(context["gram"], cur.reshape(k, g * d),
                   precision=jax.lax.Precision.HIGHEST).reshape(k, g, d)
    return w, jnp.sqrt(jnp.maximum(jnp.sum(cur * w, axis=(0, 2)), 0.0))


class _Dense(_Backend):
  """Dense per-cell gradients, vmapped over cells (any backbone).

  Buffers c_cur, c_prev: pytrees of [G, ...] parameter-shaped sums.
  """

  def __init__(self, model, spec, config, data, reference: bool = False):
    del reference  # one path
    self.model, self.g = model, data.num_cells
    self.tau = _tau(spec, config)
    self.rho = float(config.itfr.rho) if spec.sam else None

  @staticmethod
  def init_buffers(params, data):
    g = data.num_cells
    def zeros():
      return jax.tree.map(lambda x: jnp.zeros((g,) + x.shape, x.dtype),
                          params)
    return {"c_cur": zeros(), "c_prev": zeros()}

  @staticmethod
  def norms(c):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), 1)
                        for x in jax.tree.leaves(c)))

  def cells(self, params, batch, neg, context):
    del context
    cand = jnp.stack([batch["item"], neg], axis=1)

    def cell_loss(p, g):
      s = models_lib.pair_scores(self.model, p, batch["user"], cand,
                                 tau=self.tau)
      rows = ops.bpr_loss(s[:, 0], s[:, 1])
      m = batch["valid"] & (batch["cell"] == g)
      n = jnp.sum(m).astype(rows.dtype)
      return jnp.sum(jnp.where(m, rows, 0.0)) / jnp.maximum(n, 1.0), n

    return group_sam.cell_sam_dense(cell_loss, params, self.g, self.rho), None

  def grads(self, q, out, extra):
    return jax.tree.map(lambda h: jnp.tensordot(q, h, axes=1), out.h)

  def dots(self, c_prev, out):
    return sum(jnp.einsum("i...,j...->ij", h, c)
               for h, c in zip(jax.tree.leaves(out.h),
                               jax.tree.leaves(c_prev)))

  def accumulate(self, c_cur, out):
    return jax.tree.map(
        lambda c, g: c + out.count.reshape((-1,) + (1,) * (g.ndim - 1)) * g,
        c_cur, out.grad)


def _backend_class(model):
  """The per-cell gradient backend of the model's `gradient_layout`."""
  return {"rows": _Rows, "graph": _Graph}.get(
      models_lib.gradient_layout(model), _Dense)


def make_context(data: ItfrData, model, spec: MethodSpec) -> dict:
  """The `context` of a method's epochs: the training `seen` matrix and,
  for ITFR on LightGCN, the propagation Gram matrix `gram` (computed here,
  once: seconds for ML-1M)."""
  context = {"seen": jnp.asarray(data.seen(("train",)))}
  if spec.per_cell and _backend_class(model) is _Graph:
    context["gram"] = propagation_gram(
        model.graph, model.num_users + model.num_items, model.num_layers)
  return context


def roll_epoch(aux: dict, step, spe: int, roll_buffers) -> dict:
  """The epoch boundary of the collaborative balance, a function of state.

  When `step` is a positive multiple of `spe` (a new epoch starts):
  (C^prev, ||C^prev||) <- roll_buffers(C^cur), C^cur <- 0, Lbar^prev <- the
  finished epoch's mean L^SA, and the loss sums restart; otherwise `aux` is
  unchanged.
  """
  def roll(a):
    cur = a["c_cur"]
    prev, norm = roll_buffers(cur)
    return dict(a, c_prev=prev, c_cur=jax.tree.map(jnp.zeros_like, cur),
                c_norm=norm,
                loss_prev=a["loss_sum"] / jnp.maximum(a["count_sum"], 1.0),
                loss_sum=jnp.zeros_like(a["loss_sum"]),
                count_sum=jnp.zeros_like(a["count_sum"]))
  new_epoch = (step > 0) & (step % spe == 0)
  return jax.lax.cond(new_epoch, roll, lambda a: a, aux)


def make_itfr_step(model, tx, spec: MethodSpec, config, data: ItfrData,
                   backend: _Backend | None = None):
  """The pure step `(state, batch, rng, context) -> (state, metrics)` of the
  ITFR family (methods with per-cell gradients).

  The step reads its key (fold_in(rng, state.step)) and first negative
  draws from the batch (`sampling.presample_negatives`, added by the epoch
  function). For the collaborative balance the step expects the buffers of
  its epoch:
  `make_epoch_fn` applies `roll_epoch` at the start of every epoch (a pure
  function of state.step). Rolling inside the scanned step would make XLA
  copy the [K, G, d] buffers on every step.
  """
  backend = backend or _backend_class(model)(model, spec, config, data)
  spe = steps_per_epoch(data, config.batch_size)
  active = jnp.asarray(data.active)
  eta, gamma = float(config.itfr.eta), float(config.itfr.gamma)
  floor = float(config.itfr.q_floor)
  dro_eta = float(config.group_dro_eta)
  g = data.num_cells

  def step(state, batch, rng, context=None):
    rng_t = batch["key"]  # fold_in(rng, state.step), from `_presample`.
    aux = state.aux
    epoch = state.step // spe
    neg = _negatives(rng_t, context, batch)
    out, extra = backend.cells(state.params, batch, neg, context)
    present = out.count > 0
    updated = jnp.zeros((), bool)
    if spec.weighting == "clb":
      first = epoch == 0
      all_in = jnp.all(present | ~active)
      dots = jnp.where(first | ~all_in, 0.0,
                       backend.dots(aux["c_prev"], out))
      q, updated = gw.collaborative_update(
          aux["q"], out.loss_sa, aux["loss_prev"], dots, out.h_norm,
          aux["c_norm"], first, present, eta, gamma, active, floor)
      aux = dict(aux, q=q, c_cur=backend.accumulate(aux["c_cur"], out),
                 loss_sum=aux["loss_sum"] + out.count * out.loss_sa,
                 count_sum=aux["count_sum"] + out.count)
    elif spec.weighting == "dro":
      q = gw.group_dro_update(aux["q"], out.loss_sa, present, dro_eta, active,
                              floor)
      aux = dict(aux, q=q)
      updated = jnp.ones((), bool)
    else:
      q = aux["q"]
    grads = backend.grads(q, out, extra)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = jnp.maximum(jnp.sum(out.count), 1.0)
    metrics = {"loss": jnp.sum(out.count * out.loss) / n,
               "loss_sa": jnp.sum(out.count * out.loss_sa) / n,
               "weights_moved": updated.astype(jnp.float32)}
    return train.TrainState(step=state.step + 1, params=params,
                            opt_state=opt_state, aux=aux), metrics

  return step


def make_epoch_fn(model, tx, spec: MethodSpec, config, data: ItfrData,
                  reference: bool = False):
  """Jitted epoch `(state, batches, rng, context) -> (state, metrics)`.

  `train.make_epoch` of the method's step; for the collaborative balance
  the state first passes `roll_epoch` (run it on whole epochs, as `fit` and
  the runner do). `reference`: the backend's reference path (`_Rows`), for
  comparisons.
  """
  presample = _presample(data)
  if not spec.per_cell:
    return train.make_epoch(
        train.make_step(make_loss(model, spec, config, data), tx,
                        keys_in_batch=True), prepare=presample)
  backend = _backend_class(model)(model, spec, config, data, reference)
  step = make_itfr_step(model, tx, spec, config, data, backend)
  if spec.weighting != "clb":
    return train.make_epoch(step, prepare=presample)
  spe = steps_per_epoch(data, config.batch_size)

  def prepare(state, batches, rng, context):
    state, batches = presample(state, batches, rng, context)
    return state.replace(aux=roll_epoch(
        state.aux, state.step, spe,
        lambda c: backend.roll(c, context))), batches

  return train.make_epoch(step, prepare=prepare)


def init_state(model, tx, spec: MethodSpec, data: ItfrData, rng
               ) -> train.TrainState:
  params = models_lib.init_params(model, rng)
  return train.create_state(params, tx, aux=init_aux(spec, data, params,
                                                     model))

