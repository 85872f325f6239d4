"""The per-step PRNG key schedule shared by training and negative sampling,
and a faster `randint` with jax.random's values.

Step t of a run uses rng_t = fold_in(rng, t) (`fairjax.train.make_step`);
`step_keys` computes a block of them at once, so an epoch can draw its keys
(and first negative-sampling rounds) before the scan, bit-identically.

`randint` gives `jax.random.randint`'s values for threefry keys (JAX's
default): the same Threefry-2x32 hash (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011; 20 rounds) of the same counters
and the same reduction to the range. jax lowers the hash on the CPU as a
rolled loop of five steps over whole arrays, each step reading and writing
the arrays in memory; here the 20 rounds are written out and XLA fuses them
into one pass (about 4x faster for an epoch's negative draws, 8 M values).
`randint_at` gives the values of such a draw at chosen positions alone
(threefry's counters make each a function of the key and its position):
`sampling.resolve_negatives` finishes an epoch's few rejected slots with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def step_keys(rng: jax.Array, first_step, num_steps: int) -> jax.Array:
  """[num_steps] keys fold_in(rng, first_step + i): the keys `make_step`
  derives for steps first_step, ..., first_step + num_steps - 1."""
  steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
  return jax.vmap(lambda s: jax.random.fold_in(rng, s))(steps)


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
  return (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array,
                 x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 (20 rounds) of the counter pairs (x0, x1) under the key
  (k0, k1), all uint32, elementwise; the hash behind jax.random's threefry
  keys, written out round by round."""
  u32 = jnp.uint32
  ks = (k0, k1, k0 ^ k1 ^ u32(_PARITY))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, r)
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + u32(i + 1)
  return x0, x1


def fast_threefry(key: jax.Array) -> bool:
  """Whether `randint` and `randint_at` compute `key`'s values themselves
  (threefry2x32 keys with jax_threefry_partitionable on, JAX's default)."""
  return (str(jax.random.key_impl(key)) == "threefry2x32"
          and bool(jax.config.jax_threefry_partitionable))


def _reduce(hi: jax.Array, lo: jax.Array, minval, maxval) -> jax.Array:
  """jax.random.randint's reduction of two uint32 words per value to
  [minval, maxval) (int32; bounds broadcast with the words): (hi mod
  span) * (2^32 mod span) + (lo mod span), mod span, all in uint32
  arithmetic, whose wrap-around for spans above 2^16 is part of the values;
  span 1 where maxval <= minval."""
  minval = jnp.asarray(minval, jnp.int32)
  maxval = jnp.asarray(maxval, jnp.int32)
  span = jnp.where(maxval <= minval, jnp.uint32(1),
                   (maxval - minval).astype(jnp.uint32))
  m = jnp.uint32(2 ** 16) % span
  multiplier = (m * m) % span
  offset = ((hi % span) * multiplier + lo % span) % span
  return minval + offset.astype(jnp.int32)


def randint_at(key: jax.Array, shape, index: jax.Array, minval,
               maxval) -> jax.Array:
  """The values `jax.random.randint(key, shape, minval, maxval, jnp.int32)`
  has at the flat (row-major) positions `index` (int array), computed for
  those positions alone; minval and maxval are ints or int32 arrays that
  broadcast with `index` (each position's own bounds, as randint's
  broadcast bounds give them). For `fast_threefry` keys only (ValueError
  otherwise): threefry's counters make each position's value a function of
  the key and the position."""
  if not fast_threefry(key):
    raise ValueError("randint_at needs a threefry2x32 key with "
                     "jax_threefry_partitionable on")
  size = int(np.prod(tuple(int(d) for d in shape)))
  if size >= 2 ** 32:
    raise ValueError(f"randint_at: {size} values need 64-bit counters")
  hi, lo = _words(key, jnp.asarray(index).astype(jnp.uint32))
  return _reduce(hi, lo, minval, maxval)


@jax.jit
def _words(key: jax.Array, counters: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The two uint32 words per counter that randint reduces: threefry of
  (0, counter) under each half of split(key), the two outputs xor-ed.
  Jitted, so that the 20 written-out rounds are traced once per shape, not
  at every draw of a job's trace (XLA inlines the call: the same fused
  program, the same values)."""
  x0 = jnp.zeros_like(counters)
  words = []
  for k in jax.random.split(key):
    data = jax.random.key_data(k)
    a, b = threefry2x32(data[0], data[1], x0, counters)
    words.append(a ^ b)
  return words[0], words[1]


def randint(key: jax.Array, shape, minval: int, maxval: int) -> jax.Array:
  """int32 values of `jax.random.randint(key, shape, minval, maxval,
  jnp.int32)`, bit for bit, for Python-int bounds with 0 < maxval - minval
  < 2^31 (tests/test_rng.py compares them). Keys of another implementation
  than threefry2x32, or jax_threefry_partitionable off, go to
  jax.random.randint itself."""
  shape = tuple(int(d) for d in shape)
  span = int(maxval) - int(minval)
  if not 0 < span < 2 ** 31 or not (-2 ** 31 <= minval and maxval < 2 ** 31):
    raise ValueError(f"randint: need 0 < maxval - minval < 2^31 within "
                     f"int32, got [{minval}, {maxval})")
  if not fast_threefry(key):
    return jax.random.randint(key, shape, minval, maxval, dtype=jnp.int32)
  # Every position: jax numbers the flattened shape's values 0, 1, ...
  index = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
  return randint_at(key, shape, index, minval, maxval)
