"""Circle losses (DALNet) against naive float64 loops, a hand value, and gradient properties."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.losses.circle import circle_intra, circle_pairwise

D = 6

# Eager dispatch compiles every primitive on its own; one jit per case keeps the file fast on CPU.
# margin and gamma enter only arithmetic, so they are traced too: one compile per shape.
pairwise = jax.jit(circle_pairwise, static_argnames='exclude_self')
pairwise_grad = jax.jit(jax.grad(circle_pairwise, argnums=(0, 2)), static_argnames='exclude_self')
intra = jax.jit(circle_intra, static_argnames=('hard_negatives', 'exclude_self'))


@jax.jit
def _same_object(x, labels, margin, gamma):
  # Inside a trace `a` and `b` are one tracer, so `a is b` holds and the diagonal is dropped.
  return circle_pairwise(x, labels, x, labels, margin=margin, gamma=gamma)


def batch(seed: int, ids=(4, 9, 2), per_id: int = 3, scale: float = 1.0):
  """Features with repeated labels, rows in a random order."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.asarray(ids), per_id))
  return scale * rng.normal(size=(labels.size, D)), labels


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_anchor_loss(s_p, s_n, m, gamma):
  """Sun et al. pair-based circle loss of one anchor, term by term, in float64."""
  logits_p = [-gamma * max(1 + m - s, 0.0) * (s - (1 - m)) for s in s_p]
  logits_n = [gamma * max(s + m, 0.0) * (s - m) for s in s_n]
  z = np.logaddexp.reduce(logits_p) + np.logaddexp.reduce(logits_n)
  return float(np.logaddexp(0.0, z))  # softplus


def naive_pairwise(a, labels_a, b, labels_b, m, gamma, exclude_self):
  s = _unit(np.asarray(a, np.float64)) @ _unit(np.asarray(b, np.float64)).T
  losses = []
  for i in range(len(a)):
    s_p = [
      s[i, j] for j in range(len(b)) if labels_b[j] == labels_a[i] and not (exclude_self and i == j)
    ]
    s_n = [s[i, j] for j in range(len(b)) if labels_b[j] != labels_a[i]]
    if s_p and s_n:
      losses.append(naive_anchor_loss(s_p, s_n, m, gamma))
  return float(np.mean(losses)) if losses else 0.0


def naive_intra(pre, post, labels, m, gamma, k, exclude_self=False):
  pre_u, post_u = _unit(np.asarray(pre, np.float64)), _unit(np.asarray(post, np.float64))
  losses = []
  for i in range(len(pre)):
    same = [j for j in range(len(pre)) if labels[j] == labels[i] and not (exclude_self and j == i)]
    s_p = [pre_u[i] @ post_u[j] for j in same]
    others = [j for j in range(len(pre)) if labels[j] != labels[i]]
    # Negatives come from the positives' comparison: pre anchor against other identities' post.
    candidates = sorted([pre_u[i] @ post_u[j] for j in others], reverse=True)
    s_n = candidates[:k] if k > 0 else candidates
    losses.append(naive_anchor_loss(s_p, s_n, m, gamma))
  return float(np.mean(losses))


@pytest.mark.parametrize('margin, gamma', [(0.25, 64.0), (0.4, 16.0), (0.1, 128.0)])
def test_pairwise_matches_naive_loop(margin, gamma):
  a, labels_a = batch(0)
  b, labels_b = batch(1, ids=(9, 4, 2, 7), per_id=2)  # 7 never occurs among the anchors
  want = naive_pairwise(a, labels_a, b, labels_b, margin, gamma, exclude_self=False)
  fn = functools.partial(pairwise, margin=margin, gamma=gamma)
  got = fn(np.float32(a), labels_a, np.float32(b), labels_b)
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(want, rel=1e-5)
  with jax.enable_x64(True):
    assert float(fn(a, labels_a, b, labels_b)) == pytest.approx(want, rel=1e-10)
  assert want > 1.0  # random features: far from the optimum, the test can tell values apart


@pytest.mark.parametrize('margin, gamma', [(0.25, 64.0), (0.3, 8.0)])
def test_pairwise_self_pairs_excluded(margin, gamma):
  # Identities clustered tightly, so the self pair (s = 1) weighs like the real positives and
  # leaving it in visibly changes the loss.
  rng = np.random.default_rng(2)
  labels = rng.permutation(np.repeat([4, 9, 2], 3))
  x = np.float32(rng.normal(size=(3, D))[np.searchsorted([2, 4, 9], labels)])
  x += np.float32(0.15 * rng.normal(size=x.shape))
  want = naive_pairwise(x, labels, x, labels, margin, gamma, exclude_self=True)
  with_self = naive_pairwise(x, labels, x, labels, margin, gamma, exclude_self=False)
  assert abs(with_self - want) > 1e-2 * want
  assert float(_same_object(x, labels, margin, gamma)) == pytest.approx(want, rel=1e-5)
  fn = functools.partial(pairwise, margin=margin, gamma=gamma)
  assert float(fn(x, labels, x, labels, exclude_self=True)) == pytest.approx(want, rel=1e-5)
  # Distinct objects (separate jit arguments) keep the diagonal unless told otherwise.
  assert float(fn(x, labels, x, labels)) == pytest.approx(with_self, rel=1e-5)


def test_pairwise_tiny_case_by_hand():
  # 2-D, angles: anchors a0 at 0° (id 0), a1 at 90° (id 1); candidates b0 at 60° (id 0),
  # b1 at 120° (id 1). m = 0.25 → Δ_p = 0.75, Δ_n = 0.25; γ = 2. Let r = cos 30° = √3/2.
  # a0: s_p = cos 60° = 0.5, s_n = cos 120° = −0.5.
  #   α_p = 1.25 − 0.5 = 0.75 → −γ α_p (s_p − Δ_p) = −2·0.75·(−0.25) = 0.375
  #   α_n = [−0.5 + 0.25]₊ = 0 → 0.    L0 = softplus(0.375 + 0)
  # a1: s_p = cos 30° = r, s_n = cos 30° = r.
  #   −γ (1.25 − r)(r − 0.75) = −2(2r − 27/16) = −2√3 + 27/8
  #   γ (r + 0.25)(r − 0.25)  = 2(3/4 − 1/16) = 11/8
  #   L1 = softplus(38/8 − 2√3)
  a = np.array([[3.0, 0.0], [0.0, 0.5]])  # norms ≠ 1 on purpose
  b = np.array([[math.cos(math.pi / 3), math.sin(math.pi / 3)], [-1.0, math.sqrt(3.0)]])

  def softplus(z):
    return math.log1p(math.exp(z))

  want = (softplus(0.375) + softplus(38 / 8 - 2 * math.sqrt(3.0))) / 2
  got = pairwise(np.float32(a), np.array([0, 1]), np.float32(b), np.array([0, 1]), gamma=2.0)
  assert float(got) == pytest.approx(want, rel=1e-6)


def test_pairwise_invariant_to_feature_scale():
  a, labels_a = batch(3)
  b, labels_b = batch(4)
  scales = np.random.default_rng(0).uniform(0.01, 50.0, size=(len(a), 1))
  base = float(pairwise(np.float32(a), labels_a, np.float32(b), labels_b))
  scaled = float(pairwise(np.float32(a * scales), labels_a, np.float32(b) * 7.0, labels_b))
  assert scaled == pytest.approx(base, rel=1e-5)
  assert base > 1.0


def test_pairwise_optimum_is_near_zero():
  # Every positive at s = 1, every negative at s = −1: α_p = m, α_n = [−1 + m]₊ = 0, so
  # L = softplus(−γ m² + log #pos + log #neg): ≈ 0 for large γ, but not for γ = 1.
  labels = np.array([0, 0, 1, 1])
  x = np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-0.5, 0.0]], np.float32)
  m = 0.25
  for gamma in (1024.0, 1.0):
    got = float(pairwise(x, labels, x, labels, margin=m, gamma=gamma))  # self pairs kept: #pos 2
    want = math.log1p(math.exp(-gamma * m * m + math.log(2) + math.log(2)))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-12)
  assert float(pairwise(x, labels, x, labels, gamma=1024.0, exclude_self=True)) < 1e-20
  # The worst case (positives and negatives swapped) is large.
  assert float(pairwise(x, labels, x, 1 - labels, gamma=64.0)) > 50.0


def test_pairwise_gradients_finite_with_degenerate_rows():
  a, labels_a = batch(5)
  b, labels_b = batch(6)
  a[0] = 0.0  # zero feature
  labels_a[1] = 99  # an anchor with no positive
  ga, gb = pairwise_grad(jnp.float32(a), labels_a, jnp.float32(b), labels_b)
  assert np.isfinite(ga).all() and np.isfinite(gb).all()
  assert np.abs(ga[2:]).sum() > 0 and np.abs(gb).sum() > 0
  np.testing.assert_array_equal(ga[1], 0.0)  # dropped anchor: no gradient


def test_pairwise_without_valid_anchor_is_zero_with_finite_gradient():
  x = np.random.default_rng(1).normal(size=(3, D)).astype(np.float32)
  value_and_grad = jax.jit(jax.value_and_grad(circle_pairwise))
  one_id = np.zeros(3, int)
  loss, grad = value_and_grad(x, one_id, x, one_id)  # no negatives at all
  assert float(loss) == 0.0
  assert np.isfinite(grad).all() and not np.abs(grad).any()
  loss, grad = value_and_grad(x, np.arange(3), x, np.arange(3) + 5)  # no positives at all
  assert float(loss) == 0.0
  assert np.isfinite(grad).all() and not np.abs(grad).any()


def _reference(a, labels_a, b, labels_b, *, detach, margin=0.25, gamma=64.0):
  """Dense circle loss written out separately; ``detach`` toggles stop_gradient on α."""
  an = a / jnp.linalg.norm(a, axis=1, keepdims=True)
  bn = b / jnp.linalg.norm(b, axis=1, keepdims=True)
  s = an @ bn.T
  sg = jax.lax.stop_gradient if detach else (lambda v: v)
  alpha_p, alpha_n = sg(jax.nn.relu(1 + margin - s)), sg(jax.nn.relu(s + margin))
  same = labels_a[:, None] == labels_b[None, :]
  lp = jnp.where(same, -gamma * alpha_p * (s - 1 + margin), -jnp.inf)
  ln = jnp.where(same, -jnp.inf, gamma * alpha_n * (s - margin))
  return jnp.mean(jax.nn.softplus(jax.nn.logsumexp(lp, 1) + jax.nn.logsumexp(ln, 1)))


def test_pairwise_alpha_is_stop_gradient():
  a, labels_a = batch(7)
  b, labels_b = batch(8)
  a, b = jnp.float32(a), jnp.float32(b)
  got = pairwise_grad(a, labels_a, b, labels_b)[0]
  ref = functools.partial(_reference, labels_a=labels_a, labels_b=labels_b)
  detached = jax.jit(jax.grad(lambda x: ref(x, b=b, detach=True)))(a)
  attached = jax.jit(jax.grad(lambda x: ref(x, b=b, detach=False)))(a)
  np.testing.assert_allclose(got, detached, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(got) - np.asarray(attached)).max() > 1e-2 * np.abs(got).max()


@pytest.mark.parametrize(
  'args, kwargs, match',
  [
    ((np.zeros((3, 4)), np.zeros(2, int), np.zeros((3, 4)), np.zeros(3, int)), {}, 'labels_a'),
    ((np.zeros((3, 4)), np.zeros(3, int), np.zeros((3, 5)), np.zeros(3, int)), {}, 'feature dim'),
    ((np.zeros(4), np.zeros(4, int), np.zeros((3, 4)), np.zeros(3, int)), {}, r'\(num, D\)'),
    (
      (np.zeros((3, 4)), np.zeros(3, int), np.zeros((2, 4)), np.zeros(2, int)),
      {'exclude_self': True},
      'exclude_self',
    ),
  ],
)
def test_pairwise_bad_input_raises(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    circle_pairwise(*args, **kwargs)


@pytest.mark.parametrize('hard_negatives', [1, 2, 0, 100])
def test_intra_matches_naive_loop(hard_negatives):
  pre, labels = batch(9, ids=(3, 8, 1, 5), per_id=2)
  post = pre + 0.6 * np.random.default_rng(10).normal(size=pre.shape)
  want = naive_intra(pre, post, labels, 0.25, 64.0, hard_negatives)
  got = float(intra(np.float32(pre), np.float32(post), labels, hard_negatives=hard_negatives))
  assert got == pytest.approx(want, rel=1e-5)
  # k = 1, 2 and "all" differ here, so the mining is really exercised.
  others = {k: naive_intra(pre, post, labels, 0.25, 64.0, k) for k in (1, 2, 0)}
  assert len({round(v, 4) for v in others.values()}) == 3


def test_intra_gradient_finite_and_flows_to_both_inputs():
  pre, labels = batch(11)
  post = pre + 0.3 * np.random.default_rng(12).normal(size=pre.shape)
  pre[0] = 0.0
  grad = jax.jit(jax.grad(functools.partial(circle_intra, hard_negatives=2), argnums=(0, 1)))
  g_pre, g_post = grad(jnp.float32(pre), jnp.float32(post), labels)
  assert np.isfinite(g_pre).all() and np.isfinite(g_post).all()
  assert np.abs(g_pre).sum() > 0 and np.abs(g_post).sum() > 0


@pytest.mark.parametrize(
  'shapes, hard_negatives, match',
  [
    (((4, 3), (4, 2), (4,)), 1, 'shape of pre'),
    (((4, 3), (4, 3), (3,)), 1, 'labels'),
    (((4, 3), (4, 3), (4,)), -1, 'hard_negatives'),
    (((4, 3), (4, 3), (4,)), 1.5, 'hard_negatives'),
  ],
)
def test_intra_bad_input_raises(shapes, hard_negatives, match):
  pre, post, labels = np.zeros(shapes[0]), np.zeros(shapes[1]), np.zeros(shapes[2], int)
  with pytest.raises(ValueError, match=match):
    circle_intra(pre, post, labels, hard_negatives=hard_negatives)


def _bound(gamma, m):
  return float(np.logaddexp(0.0, -2 * gamma * m * m))  # softplus(−2γm²), the module doc's bound


@pytest.mark.parametrize('margin, gamma', [(0.25, 64.0), (0.3, 16.0)])
def test_intra_post_equal_to_pre_sits_at_the_derived_lower_region(margin, gamma):
  # Orthogonal identities, every sample of an identity equal: with post == pre every positive has
  # s_p = 1 and every negative s_n = 0, so each anchor's loss is softplus(log(P·Q) − 2γm²) with
  # P = samples per identity, Q = negatives kept (the module doc's derivation).
  ids, per_id = 4, 3
  pre = np.repeat(np.eye(ids, D), per_id, axis=0)
  labels = np.repeat(np.arange(ids), per_id)
  for k, q in ((1, 1), (2, 2), (0, (ids - 1) * per_id)):
    got = float(
      intra(np.float32(pre), np.float32(pre), labels, margin=margin, gamma=gamma, hard_negatives=k)
    )
    want = float(np.logaddexp(0.0, np.log(per_id * q) - 2 * gamma * margin**2))
    assert got == pytest.approx(want, rel=1e-5)
    if gamma == 64.0:
      assert got < 0.1  # the paper's m and γ: the term's lower region, far from its ceiling
  assert _bound(gamma, margin) > 0


def test_every_circle_term_is_above_the_derived_bound():
  rng = np.random.default_rng(21)
  for trial in range(20):
    pre, labels = batch(30 + trial)
    post = pre + rng.normal(size=pre.shape) * rng.uniform(0, 2)
    for m, g in ((0.25, 64.0), (0.1, 8.0)):
      got = float(
        intra(np.float32(pre), np.float32(post), labels, margin=m, gamma=g, hard_negatives=0)
      )
      assert got >= _bound(g, m) * (1 - 1e-5)
      got = float(pairwise(np.float32(pre), labels, np.float32(post), labels, margin=m, gamma=g))
      assert got >= _bound(g, m) * (1 - 1e-5)


@pytest.mark.parametrize('hard_negatives', [1, 0])
def test_intra_without_mia_excludes_the_self_pair(hard_negatives):
  # The no-MIA form compares a modality's features with each other: post is pre, and the
  # constant self pair (s = 1) must not be a positive.
  # Tight identities, so the self pair weighs like the real positives (as in the pairwise test).
  rng = np.random.default_rng(13)
  labels = rng.permutation(np.repeat([3, 8, 1, 5], 3))
  x = rng.normal(size=(4, D))[np.searchsorted([1, 3, 5, 8], labels)] + 0.15 * rng.normal(
    size=(12, D)
  )
  want = naive_intra(x, x, labels, 0.25, 64.0, hard_negatives, exclude_self=True)
  with_self = naive_intra(x, x, labels, 0.25, 64.0, hard_negatives)
  assert abs(want - with_self) > 1e-3 * want
  got = intra(
    np.float32(x), np.float32(x), labels, hard_negatives=hard_negatives, exclude_self=True
  )
  assert float(got) == pytest.approx(want, rel=1e-5)
