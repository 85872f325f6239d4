"""Sharpness-aware per-cell gradients: rows path vs dense vmap vs a direct
two-step computation vs finite differences; no leak between cells."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.ops import group_sam

U, I, D, G, B = 7, 9, 4, 3, 16
TAU = 0.5


def _problem(seed=0, absent_cell=None, pad=2):
  rng = np.random.default_rng(seed)
  tables = {"user": rng.normal(size=(U, D)), "item": rng.normal(size=(I, D))}
  users = rng.integers(0, 4, B)  # few users: many duplicates
  pos = rng.integers(0, 5, B)
  neg = rng.integers(0, 5, B)  # items also appear as both pos and neg
  neg[0] = pos[1]
  cell = rng.integers(0, G, B)
  if absent_cell is not None:
    cell = np.where(cell == absent_cell, (absent_cell + 1) % G, cell)
  valid = np.ones(B, bool)
  valid[B - pad:] = False
  return tables, users, pos, neg, cell, valid


def _cos(a, b):
  na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, -1), 1e-12))
  nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, -1), 1e-12))
  return jnp.sum(a * b, -1) / (na * nb)


def _row_losses(eu, ei, ej):
  return jax.nn.softplus((_cos(eu, ej) - _cos(eu, ei)) / TAU)


def _cell_loss_fn(users, pos, neg, cell, valid):
  def cell_loss(params, g):
    m = (jnp.asarray(cell) == g) & jnp.asarray(valid)
    l = _row_losses(params["user"][users], params["item"][pos],
                    params["item"][neg])
    n = jnp.sum(m)
    return jnp.sum(jnp.where(m, l, 0.0)) / jnp.maximum(n, 1), n.astype(l.dtype)
  return cell_loss


def _rows_call(tables, users, pos, neg, cell, valid, rho):
  if rho is None:
    return _rows_jit_nosam(tables, users, pos, neg, cell, valid)
  if rho < 0:  # eager: the check needs a concrete rho
    return _rows_impl(tables, users, pos, neg, cell, valid, rho)
  return _rows_jit(tables, users, pos, neg, cell, valid, rho)


def _rows_impl(tables, users, pos, neg, cell, valid, rho):
  rows = jnp.concatenate([tables["user"][users], tables["item"][pos],
                          tables["item"][neg]])
  keys = jnp.concatenate([users, U + pos, U + neg])
  slot_example = jnp.tile(jnp.arange(B), 3)

  def example_loss(x):
    return _row_losses(x[:B], x[B:2 * B], x[2 * B:])

  return group_sam.cell_sam_rows(example_loss, rows, keys, slot_example,
                                 jnp.asarray(cell), jnp.asarray(valid), G,
                                 U + I, rho)


_rows_jit = jax.jit(_rows_impl)
_rows_jit_nosam = jax.jit(lambda *a: _rows_impl(*a, None))


def _dense_from_rows(out):
  def dense(v):
    t = np.asarray(group_sam.segments_to_dense(v, out.seg_cell, out.seg_key,
                                               G, U + I))
    return {"user": t[:, :U], "item": t[:, U:]}
  return dense(out.grad_seg), dense(out.h_seg)


def _direct(tables, users, pos, neg, cell, valid, rho):
  """Cell after cell: grad, step to theta + eps, grad, restore theta."""
  cell_loss = _cell_loss_fn(users, pos, neg, cell, valid)
  vg = jax.jit(jax.value_and_grad(lambda p, g: cell_loss(p, g)[0]))
  res = []
  theta = jax.tree.map(jnp.asarray, tables)
  for g in range(G):
    loss, grad = vg(theta, g)
    norm = float(np.sqrt(sum(np.sum(np.square(x)) for x in
                             jax.tree.leaves(grad))))
    perturbed = {k: theta[k] + rho * grad[k] / (norm + 1e-12) for k in theta}
    loss_sa, h = vg(perturbed, g)
    res.append((float(loss), float(loss_sa), grad, h))
  return res


def test_rows_dense_and_direct_agree():
  with jax.enable_x64(True):
    prob = _problem(seed=1)
    tables, users, pos, neg, cell, valid = prob
    dense_fn = jax.jit(lambda t, r: group_sam.cell_sam_dense(
        _cell_loss_fn(users, pos, neg, cell, valid), t, G, r))
    for rho in (0.0, 0.05, 0.7):
      _check_agree(prob, rho, dense_fn)


def _check_agree(prob, rho, dense_fn):
  tables, users, pos, neg, cell, valid = prob
  out = _rows_call(*prob, rho)
  dense = dense_fn(jax.tree.map(jnp.asarray, tables), rho)
  direct = _direct(*prob, rho)
  g_rows, h_rows = _dense_from_rows(out)
  for g in range(G):
    loss, loss_sa, grad, h = direct[g]
    np.testing.assert_allclose(out.loss[g], loss, rtol=1e-10)
    np.testing.assert_allclose(dense.loss[g], loss, rtol=1e-10)
    np.testing.assert_allclose(out.loss_sa[g], loss_sa, rtol=1e-10)
    np.testing.assert_allclose(dense.loss_sa[g], loss_sa, rtol=1e-10)
    for k in ("user", "item"):
      np.testing.assert_allclose(g_rows[k][g], grad[k], atol=1e-12)
      np.testing.assert_allclose(dense.grad[k][g], grad[k], atol=1e-12)
      np.testing.assert_allclose(h_rows[k][g], h[k], atol=1e-12)
      np.testing.assert_allclose(dense.h[k][g], h[k], atol=1e-12)
  np.testing.assert_allclose(out.grad_norm, dense.grad_norm, rtol=1e-10)
  np.testing.assert_allclose(out.h_norm, dense.h_norm, rtol=1e-10)
  np.testing.assert_allclose(out.count, np.bincount(cell[valid], minlength=G))
  if rho > 0:  # the perturbation matters
    assert np.max(np.abs(np.asarray(out.loss_sa - out.loss))) > 1e-4


def test_finite_differences():
  with jax.enable_x64(True):
    prob = _problem(seed=2)
    tables, users, pos, neg, cell, valid = prob
    rho = 0.3
    out = _rows_call(*prob, rho)
    g_rows, h_rows = _dense_from_rows(out)
    cell_loss = _cell_loss_fn(users, pos, neg, cell, valid)
    loss_jit = jax.jit(lambda p, g: cell_loss(p, g)[0])
    rng = np.random.default_rng(5)
    h = 1e-6
    for g in range(G):
      norm = float(out.grad_norm[g])
      eps = {k: rho * g_rows[k][g] / (norm + 1e-12) for k in tables}
      # L_g^SA is L_g at theta + eps_g.
      np.testing.assert_allclose(
          out.loss_sa[g], cell_loss({k: tables[k] + eps[k] for k in tables},
                                    g)[0], rtol=1e-10)
      for _ in range(3):
        d = {k: rng.normal(size=tables[k].shape) for k in tables}
        def f(t, base):
          return float(loss_jit({k: base[k] + t * d[k] for k in tables}, g))
        for base, grad in ((tables, g_rows), (
            {k: tables[k] + eps[k] for k in tables}, h_rows)):
          fd = (f(h, base) - f(-h, base)) / (2 * h)
          an = sum(np.sum(grad[k][g] * d[k]) for k in tables)
          np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-9)


def test_no_leak_between_cells():
  """Cell g's results equal those of a batch holding only g's rows."""
  prob = _problem(seed=3, pad=0)
  tables, users, pos, neg, cell, valid = prob
  out = _rows_call(*prob, 0.5)
  g_rows, h_rows = _dense_from_rows(out)
  for g in range(G):
    alone = _rows_call(tables, users, pos, neg, cell, valid & (cell == g), 0.5)
    ga, ha = _dense_from_rows(alone)
    np.testing.assert_allclose(alone.loss_sa[g], out.loss_sa[g], rtol=1e-5)
    for k in tables:
      np.testing.assert_allclose(ha[k][g], h_rows[k][g], atol=1e-6)
      np.testing.assert_allclose(ga[k][g], g_rows[k][g], atol=1e-6)


def test_absent_cell_and_padding_are_defined():
  prob = _problem(seed=4, absent_cell=1)
  out = _rows_call(*prob, 0.2)
  assert float(out.count[1]) == 0
  assert float(out.loss[1]) == 0 and float(out.loss_sa[1]) == 0
  assert float(out.h_norm[1]) == 0
  for x in jax.tree.leaves(out):
    assert np.all(np.isfinite(np.asarray(x)))
  # The padding rows' slots (examples B-2, B-1) carry no gradient.
  pad_slots = [b + j * B for j in range(3) for b in (B - 2, B - 1)]
  np.testing.assert_array_equal(np.asarray(out.slot_h)[pad_slots], 0.0)
  np.testing.assert_array_equal(np.asarray(out.slot_grad)[pad_slots], 0.0)


def test_no_sam_single_pass_equals_rho_zero():
  prob = _problem(seed=6)
  a = _rows_call(*prob, None)
  b = _rows_call(*prob, 0.0)
  np.testing.assert_allclose(a.h_seg, b.h_seg, atol=1e-7)
  np.testing.assert_allclose(a.loss_sa, b.loss_sa, rtol=1e-6)


def test_negative_rho_is_an_error():
  prob = _problem()
  with pytest.raises(ValueError, match="rho"):
    _rows_call(*prob, -0.1)
  tables, users, pos, neg, cell, valid = prob
  with pytest.raises(ValueError, match="rho"):
    group_sam.cell_sam_dense(_cell_loss_fn(users, pos, neg, cell, valid),
                             tables, G, -1.0)


@pytest.mark.parametrize("bound", [None, 10])
def test_segment_ids_group_equal_keys(bound):
  keys = jnp.asarray([5, 3, 5, 9, 3, 3, 1])
  seg, seg_slot = group_sam.segment_ids(keys, bound)
  seg, seg_slot, k = np.asarray(seg), np.asarray(seg_slot), np.asarray(keys)
  for a in range(k.size):
    for b in range(k.size):
      assert (seg[a] == seg[b]) == (k[a] == k[b])
  used = seg_slot >= 0
  assert used.sum() == 4  # distinct keys
  np.testing.assert_array_equal(seg[seg_slot[used]], np.nonzero(used)[0])
  assert set(np.unique(seg)) == set(np.nonzero(used)[0])


def test_sort_path_equals_table_path(monkeypatch):
  prob = _problem(seed=8)
  want = _rows_call(*prob, 0.3)
  monkeypatch.setattr(group_sam, "TABLE_MAX", 0)
  # A fresh jit traces afresh, with the sort path.
  got = jax.jit(lambda *a: _rows_impl(*a))(*prob, 0.3)
  np.testing.assert_allclose(got.loss_sa, want.loss_sa, rtol=1e-6)
  np.testing.assert_allclose(got.h_norm, want.h_norm, rtol=1e-5)
  ga, ha = _dense_from_rows(got)
  gb, hb = _dense_from_rows(want)
  for k in ("user", "item"):
    np.testing.assert_allclose(ha[k], hb[k], atol=1e-6)
    np.testing.assert_allclose(ga[k], gb[k], atol=1e-6)


def _linear_rows_impl(theta, p, users, pos, neg, cell, valid, rho, kernel,
                      couple_on="segments"):
  """Rows of the table P theta (a linear propagation, as LightGCN)."""
  keys = jnp.concatenate([users, U + pos, U + neg])
  rows = (p @ theta)[keys]
  slot_example = jnp.tile(jnp.arange(B), 3)

  def example_loss(x):
    return _row_losses(x[:B], x[B:2 * B], x[2 * B:])

  coupling = (None if kernel is None
              else group_sam.dense_coupling(kernel, G))
  return group_sam.cell_sam_rows(example_loss, rows, keys, slot_example,
                                 jnp.asarray(cell), jnp.asarray(valid), G,
                                 U + I, rho, coupling=coupling,
                                 couple_on=couple_on)


@pytest.mark.parametrize("couple_on", ["segments", "slots"])
def test_kernel_path_equals_direct_sam_through_a_linear_map(couple_on):
  tables, users, pos, neg, cell, valid = _problem(seed=4)
  rng = np.random.default_rng(5)
  theta = jnp.asarray(np.concatenate([tables["user"], tables["item"]]),
                      jnp.float32)
  p = jnp.asarray(np.eye(U + I) + 0.3 * rng.normal(size=(U + I, U + I)),
                  jnp.float32)
  gram = p @ p.T
  rho = 0.4
  out = _linear_rows_impl(theta, p, users, pos, neg, cell, valid, rho,
                          lambda a, b: gram[a][:, b], couple_on)

  def cell_loss(th, g):
    t = p @ th
    m = (jnp.asarray(cell) == g) & jnp.asarray(valid)
    l = _row_losses(t[users], t[U + pos], t[U + neg])
    return jnp.sum(jnp.where(m, l, 0.0)) / jnp.maximum(jnp.sum(m), 1)

  vg = jax.value_and_grad(cell_loss)
  for g in range(G):
    loss, grad = vg(theta, g)
    norm = jnp.linalg.norm(grad)
    loss_sa, h = vg(theta + rho * grad / (norm + 1e-12), g)
    np.testing.assert_allclose(out.loss[g], loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.grad_norm[g], norm, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.loss_sa[g], loss_sa, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.h_norm[g], jnp.linalg.norm(h), rtol=1e-4,
                               atol=1e-6)


def test_key_equality_kernel_is_the_segment_path():
  tables, users, pos, neg, cell, valid = _problem(seed=6)
  theta = jnp.asarray(np.concatenate([tables["user"], tables["item"]]),
                      jnp.float32)
  eye = jnp.eye(U + I)
  plain = _linear_rows_impl(theta, eye, users, pos, neg, cell, valid, 0.3,
                            None)
  kern = _linear_rows_impl(
      theta, eye, users, pos, neg, cell, valid, 0.3,
      lambda a, b: (a[:, None] == b[None, :]).astype(jnp.float32))
  for a, b in zip(plain, kern):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)


def _coupling_problem(seed, s=40, g=3, n_keys=25):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n_keys, n_keys))
  gram = jnp.asarray(a @ a.T, jnp.float32)
  keys = jnp.asarray(rng.integers(0, n_keys, s), jnp.int32)
  slot_cell = rng.choice(g, s, p=[0.6, 0.3, 0.1])
  slot_cell[-5:] = g  # padding slots
  j = jnp.asarray(rng.normal(size=(s, 4)), jnp.float32)
  return gram, keys, jnp.asarray(slot_cell, jnp.int32), j


@pytest.mark.parametrize("capacities", [(30, 20, 10), (40, 40, 40),
                                        (5, 30, 10), (30, 0, 10)])
def test_blocked_coupling_equals_dense(capacities):
  """Capacities that fit, generous ones, one cell over its capacity (the
  dense fallback) and a zero-capacity cell that does occur (fallback)."""
  gram, keys, slot_cell, j = _coupling_problem(seed=11)
  s = np.asarray(slot_cell)
  fits = np.all(np.bincount(s[s < 3], minlength=3) <= np.array(capacities))
  assert fits == (capacities in ((30, 20, 10), (40, 40, 40)))

  def kernel_at(a, b):
    return gram[a[:, None], b[None, :]]

  want = group_sam.dense_coupling(kernel_at, 3)(keys, slot_cell)(j)
  direct = np.zeros(j.shape)
  for x in range(s.size):
    for y in range(s.size):
      if s[x] == s[y] < 3:
        direct[x] += np.asarray(gram)[keys[x], keys[y]] * np.asarray(j)[y]
  np.testing.assert_allclose(want, direct, rtol=1e-5, atol=1e-4)
  got = jax.jit(lambda sc, jj: group_sam.blocked_coupling(
      kernel_at, capacities)(keys, sc)(jj))(slot_cell, j)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_cell_capacities():
  counts = np.array([300, 250, 200, 150, 100, 0])
  caps = group_sam.cell_capacities(counts, 1024, 3)
  assert len(caps) == 6 and caps[5] == 0
  p = counts / counts.sum()
  for c, pg in zip(caps[:5], p[:5]):
    assert 3 * 1024 * pg < c <= 3 * 1024  # above the mean, within the batch
  assert list(caps[:5]) == sorted(caps[:5], reverse=True)
  # One dominant cell or a tiny batch: the blocks save too little.
  assert group_sam.cell_capacities(np.array([990, 10]), 1024, 3) is None
  assert group_sam.cell_capacities(counts, 4, 3) is None
