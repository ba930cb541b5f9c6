"""RECNet loss: parity with the official training loss, numpy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expcorr_jax.tasks import recnet_loss
from expcorr_jax.models import vgg16

RTOL = 1e-5
TERMS = {'pixel': 'loss_l1', 'ssim': 'loss_ssim', 'mask_bce': 'loss_mask_bce',
         'color': 'loss_color', 'ecr': 'loss_ecr'}


@functools.lru_cache(maxsize=None)
def _vgg():
  return vgg16.load_vgg16_params()


@functools.lru_cache(maxsize=None)
def _golden_losses(golden_path):
  golden = dict(np.load(golden_path))
  args = [jnp.asarray(golden[k]) for k in ('output', 'target', 'input', 'mask')]
  total, terms = jax.jit(recnet_loss.recnet_loss)(*args, _vgg())
  return golden, float(total), {k: float(v) for k, v in terms.items()}


@pytest.fixture
def golden_losses(shared_fixture):
  return _golden_losses(str(shared_fixture('recnet/recnet_golden_nc8.npz')))


@pytest.mark.parametrize('term', sorted(TERMS))
def test_term_parity(golden_losses, term):
  golden, _, terms = golden_losses
  want = float(golden[TERMS[term]])
  rel = abs(terms[term] / want - 1)
  assert rel <= RTOL, f'{term}: {terms[term]} vs {want} (rel {rel:.3g})'


def test_total_parity(golden_losses):
  golden, total, terms = golden_losses
  want = float(golden['loss_total'])
  assert abs(total / want - 1) <= RTOL
  weighted = (terms['pixel'] + 0.1 * terms['ssim'] + 0.25 * terms['mask_bce']
              + terms['color'] + 0.1 * terms['ecr'])
  np.testing.assert_allclose(total, weighted, rtol=1e-6)


def test_mask_target_parity(golden_losses):
  golden = golden_losses[0]
  got = recnet_loss.mask_target(jnp.asarray(golden['target']),
                                jnp.asarray(golden['input']))
  np.testing.assert_array_equal(np.asarray(got), golden['mask_target'])
  # Sample 0 is dark (target brighter: mostly 1), sample 1 bright.
  assert golden['mask_target'][0].mean() > 0.5 > golden['mask_target'][1].mean()
  paper = recnet_loss.mask_target(jnp.asarray(golden['target']),
                                  jnp.asarray(golden['input']), paper_sign=True)
  tie = (recnet_loss.luminance(golden['target']) ==
         recnet_loss.luminance(golden['input']))
  np.testing.assert_array_equal(np.asarray(paper),
                                np.where(tie, 0, 1 - golden['mask_target']))


def _rng_images(shape, seed):
  rng = np.random.default_rng(seed)
  return [rng.uniform(0.02, 0.98, shape).astype(np.float32) for _ in range(3)]


def test_color_and_bce_match_numpy():
  pred, target, _ = _rng_images((2, 9, 7, 3), 0)
  p64, t64 = pred.astype(np.float64), target.astype(np.float64)
  cos = (p64 * t64).sum(-1) / (np.linalg.norm(p64, axis=-1) *
                                np.linalg.norm(t64, axis=-1))
  np.testing.assert_allclose(recnet_loss.color_loss(pred, target),
                             (1 - cos.mean()) * 0.5, rtol=1e-5)
  prob = pred[..., :1]
  lbl = (target[..., :1] > 0.5).astype(np.float32)
  p = prob.astype(np.float64)
  want = -np.mean(lbl * np.log(p) + (1 - lbl) * np.log(1 - p))
  np.testing.assert_allclose(recnet_loss.bce_loss(prob, lbl), want, rtol=1e-5)
  # Saturated probabilities: logs clamp at -100 (torch BCELoss), no inf/nan.
  sat = recnet_loss.bce_loss(jnp.array([0.0, 1.0, 0.0]), jnp.array([1.0, 0.0,
                                                                    0.0]))
  np.testing.assert_allclose(sat, 200.0 / 3, rtol=1e-6)
  # Zero vectors: eps keeps cosine finite (0), as torch's clamp does.
  np.testing.assert_allclose(
      recnet_loss.color_loss(jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3))),
      0.5)


def _np_vgg(params, x):
  """float64 numpy VGG16 features[:23] (im2col convs), x (N, H, W, 3)."""
  convs = iter(sorted(params, key=lambda n: int(n.split('_')[1])))
  for v in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512):
    if v == 'M':
      n, h, w, c = x.shape
      x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
      x = x.max(axis=(2, 4))
      continue
    layer = params[next(convs)]
    k = np.asarray(layer['kernel'], np.float64)
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(xp[:, i:i + h, j:j + w] @ k[i, j] for i in range(3)
              for j in range(3))
    x = np.maximum(out + np.asarray(layer['bias'], np.float64), 0)
  return x


def _np_ecr(params, pred, target, inp, mask):
  def pool(a):
    n, h, w, c = a.shape
    return a.reshape(n, h // 4, 4, w // 4, 4, c).max(axis=(2, 4))

  p, t, i, m = (pool(a.astype(np.float64)) for a in (pred, target, inp, mask))
  f = {}
  for key, img in (('p', p), ('t', t), ('i', i)):
    f[key + 'f'] = _np_vgg(params, img * m)
    f[key + 'b'] = _np_vgg(params, img * (1 - m))

  def d(a, b):
    return np.abs(a - b).mean()

  def gram(a, b):
    n = a.shape[0]
    return np.einsum('npc,nqc->npq', a.reshape(n, -1, 512),
                     b.reshape(n, -1, 512))

  style = sum(d(f['p' + r], f['t' + r]) /
              (d(f['p' + r], f['t' + r]) + d(f['i' + r], f['t' + r]) + 1e-8)
              for r in 'fb')
  gp, gt, gi = (gram(f[x + 'f'], f[x + 'b']) for x in 'pti')
  return style + d(gp, gt) / (d(gp, gt) + d(gp, gi) + 1e-8)


def test_ecr_matches_numpy():
  pred, target, inp = _rng_images((2, 64, 48, 3), 1)
  mask = np.random.default_rng(2).uniform(size=(2, 64, 48, 1)).astype(
      np.float32)
  got = recnet_loss.ecr_loss(pred, target, inp, mask, _vgg())
  want = _np_ecr(_vgg(), pred, target, inp, mask)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # ECR of the target itself: style and Gram terms vanish.
  same = recnet_loss.ecr_loss(target, target, inp, mask, _vgg())
  np.testing.assert_allclose(float(same), 0.0, atol=1e-6)


def test_variants_and_gradients():
  pred, target, inp = _rng_images((1, 32, 32, 3), 3)
  mask = jnp.full((1, 32, 32, 1), 0.4)
  cfg = recnet_loss.RECNetLossConfig(pixel_loss='mse', ecr_weight=0.0)
  total, terms = recnet_loss.recnet_loss(pred, target, inp, mask, None, cfg)
  np.testing.assert_allclose(terms['pixel'], np.mean((pred - target) ** 2),
                             rtol=1e-5)
  assert float(terms['ecr']) == 0.0
  np.testing.assert_allclose(
      total, terms['pixel'] + 0.1 * terms['ssim'] + 0.25 * terms['mask_bce']
      + terms['color'], rtol=1e-6)
  with pytest.raises(ValueError, match='pixel_loss'):
    recnet_loss.recnet_loss(pred, target, inp, mask, None,
                            recnet_loss.RECNetLossConfig(pixel_loss='l3'))
  # Differentiable in the prediction and the mask, finite everywhere.
  grads = jax.jit(jax.grad(lambda p, m, v: recnet_loss.recnet_loss(
      p, target, inp, m, v)[0], argnums=(0, 1)))(jnp.asarray(pred), mask,
                                                 _vgg())
  for g in grads:
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
