"""Item-sharded exact dual-space top-K over a device mesh (FairSync index).

DESIGN.md section 5. Each item i has key [v_i ; A_i] (A_i one-hot group) and
each request the dual-space query q_t = [u_t ; -mu], so

  s_ti = <q_t, key_i> = <u_t, v_i> - mu[g_i].

We compute it as one GEMM per item block of [u_t ; 1] against
[v_i ; -mu[g_i]] (the same number with d + 1 columns, built per block, so
there is no [N, d + G] key table). Items are sharded over the mesh
axis `shard` with `jax.shard_map`: every shard runs the blocked running top-K
of `blocked.local_topk` on its items, the S local lists are all-gathered and
merged to the exact global top-K (every device performs the centre's merge,
so the result is replicated).

Layout. Items are cut into blocks of `blk` items aligned to global ids (blk
depends on N only, never on the shard count) and each shard holds a whole
number of blocks: shard s owns global ids [s n_loc, (s + 1) n_loc). Padding
items (ids >= N, group -1) score -inf and never win while N >= k. Because an
item is always scored by the same GEMM shape at the same column, its float32
score, hence the result, is bitwise identical for any shard count.
Ties: (score desc, global id asc), via position-ordered merges (each shard's
list is id-ordered among ties; lists are concatenated in shard order).

Exclusion: an optional int32 [B, E] list of global item ids per query
(padded with -1), replicated on every shard, removes those items from that
query's candidates (each shard drops the ids inside its own blocks; see
`blocked.exclude_block`). A query with fewer than k non-excluded items gets
(-inf, -1) in its trailing slots.

Allowed groups: `sharded_topk(allowed=)` returns only items of the groups
in a bool [G] mask and skips the blocks that hold none of them; on the
layout of `shard_items_by_group` (every shard holds its share of each
group, sorted by group) those blocks are few and spread evenly over the
shards. Its ids are layout positions, mapped back by the returned `perm`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fairjax.errors import ConfigError, DataError
from fairjax.retrieval import blocked

AXIS = "shard"
DEFAULT_BLOCK = 2048
DEFAULT_CHUNK = 16


class ShardedItems(NamedTuple):
  """Items laid out for retrieval: padded to whole blocks per shard, placed.

  Attributes:
    emb: float32 [N_pad, d] (sharded over `shard` when a mesh is used).
    group: int32 [N_pad] group ids, -1 on padding rows.
    num_items: N, the real catalog size (ids >= N are padding).
    block: items per GEMM block.
  """
  emb: jax.Array
  group: jax.Array
  num_items: int
  block: int


def block_size_for(num_items: int, block_size: int | None = None,
                   chunk: int = DEFAULT_CHUNK) -> int:
  """Items per block, a function of N only (so results match across meshes).

  Target t = min(block_size, max(8 chunk, ceil(N / 16) rounded up to chunk))
  (at least ~16 blocks, so sharding over up to 16 devices pads little). Then
  the largest multiple of `chunk` in [t / 2, t] dividing N is taken if any
  (no padding needed, e.g. N = 10^6 -> 2000), else t.
  """
  block_size = block_size or DEFAULT_BLOCK
  if block_size % chunk:
    raise ConfigError(f"block_size {block_size} must be a multiple of "
                      f"chunk {chunk}")
  per = -(-num_items // 16)
  t = min(block_size, max(8 * chunk, -(-per // chunk) * chunk))
  for cand in range(t, t // 2 - 1, -chunk):
    if cand > 0 and num_items % cand == 0:
      return cand
  return t


def _num_shards(mesh) -> int:
  if mesh is None:
    return 1
  if AXIS not in mesh.axis_names:
    raise ConfigError(f"mesh axes {mesh.axis_names} have no '{AXIS}' axis")
  return mesh.shape[AXIS]


def padded_size(num_items: int, num_shards: int, block: int) -> int:
  """N_pad: N rounded up to a multiple of num_shards * block."""
  unit = num_shards * block
  return -(-num_items // unit) * unit


def _host_scalar(x) -> np.ndarray:
  """Reads a replicated (possibly multi-process) array into host memory."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


@jax.jit
def _row_stats(emb):
  bad = ~jnp.all(jnp.isfinite(emb), axis=1)
  return jnp.any(bad), jnp.argmax(bad)


@jax.jit
def _group_stats(group):
  return jnp.min(group), jnp.argmin(group), jnp.max(group), jnp.argmax(group)


def check_finite(x, field: str) -> None:
  """Raises DataError naming the first row of `x` holding NaN or inf."""
  if isinstance(x, jax.Array):
    any_bad, row = (_host_scalar(v) for v in _row_stats(x.reshape(
        x.shape[0], -1)))
  else:
    bad = ~np.all(np.isfinite(np.asarray(x).reshape(len(x), -1)), axis=1)
    any_bad, row = bad.any(), int(np.argmax(bad))
  if bool(any_bad):
    raise DataError(f"row {int(row)} holds NaN or inf", field=field)


def check_groups(group, num_groups: int | None, field: str = "item_group",
                 num_items: int | None = None) -> None:
  """Raises DataError for an item without a group (< 0) or one >= num_groups."""
  g = group if num_items is None else group[:num_items]
  if isinstance(g, jax.Array):
    lo, ilo, hi, ihi = (int(_host_scalar(v)) for v in _group_stats(g))
  else:
    g = np.asarray(g)
    lo, ilo, hi, ihi = int(g.min()), int(g.argmin()), int(g.max()), int(
        g.argmax())
  if lo < 0:
    raise DataError(f"item {ilo} has no group (group id {lo})", field=field)
  if num_groups is not None and hi >= num_groups:
    raise DataError(f"item {ihi} has group {hi} but mu has only {num_groups} "
                    "groups", field=field)


def _is_placed(x, mesh, spec) -> bool:
  if not isinstance(x, jax.Array):
    return False
  want = NamedSharding(mesh, spec)
  return x.sharding.is_equivalent_to(want, x.ndim)


def _put(x: np.ndarray, mesh, spec) -> jax.Array:
  """Places a host array on `mesh` (works with several processes too)."""
  if mesh is None:
    return jnp.asarray(x)
  sharding = NamedSharding(mesh, spec)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(x, mesh) -> jax.Array:
  """x as an array replicated over `mesh` (P()), or a plain array."""
  if mesh is None:
    return jnp.asarray(x)
  if _is_placed(x, mesh, P()):
    return x
  if isinstance(x, jax.Array) and x.is_fully_addressable:
    return jax.device_put(x, NamedSharding(mesh, P()))
  return _put(np.asarray(x), mesh, P())


def shard_items(item_emb, item_group, mesh=None, *,
                block_size: int | None = None, chunk: int = DEFAULT_CHUNK,
                num_groups: int | None = None,
                check: bool = True) -> ShardedItems:
  """Validates and lays out the catalog once for repeated retrieval.

  Arrays already sharded over `shard` with N a multiple of S * blk are used in
  place (no copy); otherwise they are padded (zero vectors, group -1) and
  placed, rows [s n_loc, (s + 1) n_loc) on shard s.

  Args:
    item_emb: float [N, d] item embeddings v_i.
    item_group: int [N] group g_i in [0, G).
    mesh: a mesh with a `shard` axis, or None for one device.
    block_size: upper bound on items per block (see `block_size_for`).
    chunk: items per pruning chunk.
    num_groups: G, to check group ids against (optional).
    check: validate NaN/inf and group ids (one pass over the data).

  Returns:
    ShardedItems.
  """
  if item_emb.ndim != 2:
    raise DataError(f"expected [N, d], got shape {item_emb.shape}",
                    field="item_emb")
  n = int(item_emb.shape[0])
  if item_group.shape != (n,):
    raise DataError(f"expected shape ({n},) to match item_emb, got "
                    f"{item_group.shape}", field="item_group")
  if n == 0:
    raise DataError("empty catalog", field="item_emb")
  if check:
    check_finite(item_emb, "item_emb")
    check_groups(item_group, num_groups)
  blk = block_size_for(n, block_size, chunk)
  s = _num_shards(mesh)
  n_pad = padded_size(n, s, blk)
  if mesh is not None and n_pad == n and _is_placed(
      item_emb, mesh, P(AXIS, None)) and _is_placed(item_group, mesh, P(AXIS)):
    if item_emb.dtype != jnp.float32 or item_group.dtype != jnp.int32:
      raise DataError("sharded inputs must be float32 / int32 to be used in "
                      "place", field="item_emb")
    return ShardedItems(item_emb, item_group, n, blk)
  emb = np.zeros((n_pad, item_emb.shape[1]), np.float32)
  emb[:n] = _to_host(item_emb)
  grp = np.full((n_pad,), -1, np.int32)
  grp[:n] = _to_host(item_group)
  return ShardedItems(_put(emb, mesh, P(AXIS, None)), _put(grp, mesh, P(AXIS)),
                      n, blk)


def shard_items_by_group(item_emb, item_group, mesh=None, *,
                         block_size: int | None = None,
                         chunk: int = DEFAULT_CHUNK
                         ) -> tuple[ShardedItems, np.ndarray]:
  """The catalog laid out for retrievals restricted to a few groups
  (`sharded_topk(allowed=)`): each group's items are dealt to the shards in
  turn (in id order), and every shard holds its share sorted by group, so
  a group's blocks are contiguous on every shard and a restricted
  retrieval scans about as many blocks on each (one shard per group would
  leave the others waiting at the all-gather).

  Args:
    item_emb: float [N, d] item embeddings (host or one-process arrays).
    item_group: int [N] groups in [0, G).
    mesh, block_size, chunk: as `shard_items` (same block size).

  Returns:
    (items, perm): `ShardedItems` whose ids are layout positions (padding
    rows, group -1, sit at the end of each shard's share), and perm int32
    [N_pad], the global id at each position (-1 on padding).
  """
  emb, grp = _to_host(item_emb), _to_host(item_group).astype(np.int32)
  n = grp.shape[0]
  blk = block_size_for(n, block_size, chunk)
  s = _num_shards(mesh)
  n_pad = padded_size(n, s, blk)
  n_loc = n_pad // s
  order = np.argsort(grp, kind="stable").astype(np.int32)
  perm = np.full((n_pad,), -1, np.int32)
  for shard in range(s):
    part = order[shard::s]  # still by group, ids ascending within a group
    perm[shard * n_loc:shard * n_loc + part.size] = part
  real = perm >= 0
  emb_l = np.zeros((n_pad, emb.shape[1]), np.float32)
  emb_l[real] = emb[perm[real]]
  grp_l = np.full((n_pad,), -1, np.int32)
  grp_l[real] = grp[perm[real]]
  items = ShardedItems(_put(emb_l, mesh, P(AXIS, None)),
                       _put(grp_l, mesh, P(AXIS)), n, blk)
  return items, perm


def _as_f32(x):
  if isinstance(x, jax.Array):
    return x.astype(jnp.float32)
  return np.asarray(x, np.float32)


def _to_host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    raise DataError("a multi-process array must already be laid out by "
                    "shard_items (N a multiple of shards * block)",
                    field="item_emb")
  return np.asarray(x)


@functools.partial(jax.jit, static_argnames=(
    "mesh", "k", "block", "chunk", "num_chunks_small", "flush_every", "prune",
    "warm_blocks", "precision", "proposal_slack", "proposal_impl"))
def sharded_topk(emb: jax.Array, group: jax.Array, user_q: jax.Array,
                 mu: jax.Array | None, exclude: jax.Array | None = None,
                 allowed: jax.Array | None = None, *,
                 mesh, k: int, block: int,
                 chunk: int = DEFAULT_CHUNK, num_chunks_small: int = 8,
                 flush_every: int = 4, prune: bool = True,
                 warm_blocks: int | None = None, precision: str = "fp32",
                 proposal_slack: int | None = None,
                 proposal_impl: str = "auto"
                 ) -> tuple[jax.Array, jax.Array]:
  """The jitted retrieval on laid-out items (see `shard_items`).

  Local top-k per shard (`blocked.local_topk`), all-gather of the S lists,
  merge: top_k over the [B, S k] shard-major concatenation. Usable inside a
  `lax.scan` (FairSync's serving loop). mu=None scores plain <u, v>.
  `exclude` (int32 [B, E] global ids, -1 padded, replicated) leaves those
  items out per query; None compiles the program without exclusion.
  `allowed` (bool [G], replicated) returns only items of those groups and
  skips the blocks that hold none (`blocked.local_topk`). `warm_blocks`:
  blocks per shard scored beforehand for the warm-start pruning bound
  (None: `blocked.warm_blocks_for`, or none with `allowed`; 0: none); it
  changes the time, never the result. `precision`: "fp32" (float32 GEMM
  scores) or "bf16" (bfloat16 proposals rescored exactly; see
  `blocked.local_topk`, also for `proposal_slack` and `proposal_impl`);
  both exact.

  Returns:
    (scores [B, k], ids [B, k]) replicated, by (score desc, global id asc);
    (-inf, -1) in slots beyond a query's non-excluded item count.
  """
  kw = dict(k=k, block=block, chunk=chunk, num_chunks_small=num_chunks_small,
            flush_every=flush_every, prune=prune, warm_blocks=warm_blocks,
            precision=precision, proposal_slack=proposal_slack,
            proposal_impl=proposal_impl)
  if mesh is None:
    return blocked.local_topk(user_q, emb, group, mu, 0, exclude, allowed,
                              **kw)
  n_loc = emb.shape[0] // mesh.shape[AXIS]

  def per_shard(e, g, q, m, x, a):
    off = jax.lax.axis_index(AXIS).astype(jnp.int32) * n_loc
    ls, li = blocked.local_topk(q, e, g, m, off, x, a, **kw)
    gs = jax.lax.all_gather(ls, AXIS)  # [S, B, k]
    gi = jax.lax.all_gather(li, AXIS)
    b = q.shape[0]
    gs = jnp.transpose(gs, (1, 0, 2)).reshape(b, -1)
    gi = jnp.transpose(gi, (1, 0, 2)).reshape(b, -1)
    return blocked.merge_topk(gs, gi, k)

  mu_spec = None if mu is None else P()
  ex_spec = None if exclude is None else P()
  al_spec = None if allowed is None else P()
  # check_vma=False: the per-shard loop mixes shard-varying data with
  # constant buffers; the output is replicated by construction (all_gather
  # then the same merge on every device).
  fn = jax.shard_map(per_shard, mesh=mesh,
                     in_specs=(P(AXIS, None), P(AXIS), P(), mu_spec, ex_spec,
                               al_spec),
                     out_specs=(P(), P()), check_vma=False)
  return fn(emb, group, user_q, mu, exclude, allowed)


@jax.jit
def _id_stats(x):
  flat = x.reshape(-1)
  return jnp.min(flat), jnp.argmin(flat), jnp.max(flat), jnp.argmax(flat)


def check_exclude(exclude, num_queries: int, num_items: int,
                  field: str = "exclude"):
  """Validates a per-query exclusion list; returns it as int32 or None.

  Args:
    exclude: int [B, E] global item ids per query, padded with -1; None or
      E = 0 means no exclusion.
    num_queries: B, the number of queries (rows) it must have.
    num_items: N; ids must lie in [-1, N).
    field: the name used in errors.

  Returns:
    None (no exclusion) or the ids as int32 (a jax.Array stays on device).

  Raises:
    DataError naming `field`: not 2-D, B rows mismatch, non-integer dtype, or
      an id outside [-1, N) (the first offending query and column).
  """
  if exclude is None:
    return None
  shape = tuple(np.shape(exclude))
  if len(shape) != 2 or shape[0] != num_queries:
    raise DataError(f"expected shape [{num_queries}, E] (one row per query, "
                    f"ids padded with -1), got {shape}", field=field)
  if not isinstance(exclude, jax.Array):
    exclude = np.asarray(exclude)
  dtype = np.dtype(exclude.dtype)
  if not np.issubdtype(dtype, np.integer):
    raise DataError(f"expected integer item ids, got dtype {dtype}",
                    field=field)
  if shape[1] == 0:
    return None
  if isinstance(exclude, jax.Array):  # stays on device; host reads 4 scalars
    stats = (_host_scalar(v) for v in _id_stats(exclude))
  else:  # exact on the host (no int32 cast before the range check)
    flat = exclude.reshape(-1)
    stats = (flat.min(), flat.argmin(), flat.max(), flat.argmax())
  lo, ilo, hi, ihi = (int(v) for v in stats)
  for val, pos in ((lo, ilo), (hi, ihi)):
    if not -1 <= val < num_items:
      raise DataError(f"query {pos // shape[1]}, column {pos % shape[1]}: "
                      f"item id {val} is outside [-1, {num_items}) (-1 pads)",
                      field=field)
  return exclude.astype(np.int32)


def dual_topk(item_emb, item_group, user_emb, mu, k: int, mesh=None, *,
              exclude=None, block_size: int | None = None,
              chunk: int = DEFAULT_CHUNK, check: bool = True,
              precision: str = "fp32", proposal_impl: str = "auto"
              ) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of the dual-space scores s_ti = <u_t, v_i> - mu[g_i].

  FairSync retrieval (DESIGN.md section 5): <[u_t ; -mu], [v_i ; A_i]>, exact,
  item-sharded over `mesh` axis `shard` (or one device with mesh=None). The
  result is identical with and without a mesh. With `exclude`, the top-k of
  row t is taken over the items i not in exclude[t] (s_ti = -inf for them),
  e.g. a user's training items at serving time.

  Args:
    item_emb: float [N, d] item embeddings, or a `ShardedItems` from
      `shard_items` (then item_group is ignored and may be None).
    item_group: int [N] item groups in [0, G).
    user_emb: float [B, d] queries.
    mu: float [G] dual prices (None or zeros: plain inner-product top-k).
    k: results per query, 1 <= k <= N.
    mesh: `jax.make_mesh((S,), ('shard',), axis_types=(Explicit,))` or None.
    exclude: optional int [B, E] global item ids to leave out of each row's
      list, padded with -1 (None or E = 0: no exclusion, the same compiled
      program as before).
    block_size: upper bound on items per block.
    chunk: items per pruning chunk.
    check: validate inputs on host (NaN/inf, groups, sizes): one data pass.
    precision: "fp32" (the float32 GEMM's scores) or "bf16" (bfloat16 GEMM
      proposals, rescored exactly with `blocked.exact_scores`; faster where
      the CPU has bfloat16 dot instructions). Both return the exact top-k
      of their float32 scores, which agree to float32 rounding.
    proposal_impl: with "bf16", who proposes: "native" (the AMX kernel
      `fairjax.ops.bf16_proposals`), "jax" (XLA's bfloat16 GEMM and the
      blocked scan) or "auto" (native on a CPU with AMX-BF16). The result
      is the same.

  Returns:
    (scores [B, k] float32, item_ids [B, k] int32 global ids), each row sorted
    by score desc, ties by lower id. A row with fewer than k non-excluded
    items ends with (-inf, -1) slots.

  Raises:
    ConfigError: k < 1 or k > N, bad mesh.
    DataError: NaN/inf in embeddings or mu, an item without a group (< 0) or
      with a group >= len(mu), shape mismatches; `exclude` not [B, E]
      integers in [-1, N) (field 'exclude').
  """
  if isinstance(item_emb, ShardedItems):
    items = item_emb
  else:
    num_groups = None if mu is None else int(np.shape(mu)[0])
    items = shard_items(item_emb, item_group, mesh, block_size=block_size,
                        chunk=chunk, num_groups=num_groups, check=check)
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ConfigError(f"k must be a positive integer, got {k!r}")
  if precision not in ("fp32", "bf16"):
    raise ConfigError(f"field 'precision': 'fp32' or 'bf16', got "
                      f"{precision!r}")
  if proposal_impl not in ("auto", "native", "jax"):
    raise ConfigError(f"field 'proposal_impl': 'auto', 'native' or 'jax', "
                      f"got {proposal_impl!r}")
  if k > items.num_items:
    raise ConfigError(f"k={k} is larger than the catalog ({items.num_items} "
                      "items)")
  if np.ndim(user_emb) != 2 or np.shape(user_emb)[1] != items.emb.shape[1]:
    raise DataError(f"expected [B, {items.emb.shape[1]}], got shape "
                    f"{np.shape(user_emb)}", field="user_emb")
  if check:
    check_finite(user_emb, "user_emb")
    if mu is not None:
      check_finite(_as_f32(mu).reshape(-1, 1), "mu")
  excl = check_exclude(exclude, int(np.shape(user_emb)[0]), items.num_items)
  user_q = replicate(_as_f32(user_emb), mesh)
  mu_r = None if mu is None else replicate(_as_f32(mu), mesh)
  excl = None if excl is None else replicate(excl, mesh)
  return sharded_topk(items.emb, items.group, user_q, mu_r, excl, mesh=mesh,
                      k=int(k), block=items.block, chunk=chunk,
                      precision=precision, proposal_impl=proposal_impl)


def num_blocks(items: ShardedItems, mesh=None) -> int:
  """Blocks per shard (for FLOP accounting)."""
  return items.emb.shape[0] // (_num_shards(mesh) * items.block)


def make_mesh(shards: int):
  """The item-shard mesh over the first `shards` devices (None for 1)."""
  if shards == 1:
    return None
  devs = jax.devices()
  if len(devs) < shards:
    raise ConfigError(
        f"field 'shards': {shards} shards but only {len(devs)} device(s); on "
        f"CPU set XLA_FLAGS=--xla_force_host_platform_device_count={shards}")
  return jax.make_mesh((shards,), (AXIS,), devices=devs[:shards],
                       axis_types=(jax.sharding.AxisType.Explicit,))
