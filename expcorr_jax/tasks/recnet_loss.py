"""RECNet training loss, as the released training code computes it.

total = 1.0 * L1(out, gt) + 0.1 * (-SSIM(out, gt)) + 0.25 * BCE(mask, mask_gt)
        + 1.0 * colour(out, gt) + 0.1 * ECR(out, gt, input, mask)

The paper's Eq. 8 differs (MSE instead of L1, no SSIM term, opposite mask
sign); those variants are options of `RECNetLossConfig`, the code's behaviour
is the default. All images NHWC in [0, 1]; mask (N, H, W, 1).

  vgg = load_vgg16_params()
  total, terms = recnet_loss(out.output, target, inp, out.mask, vgg)
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from expcorr_jax.metrics import ssim as ssim_lib
from expcorr_jax.models import vgg16

__all__ = [
    'RECNetLossConfig',
    'bce_loss',
    'color_loss',
    'ecr_loss',
    'l1_loss',
    'luminance',
    'mask_target',
    'mse_loss',
    'recnet_loss',
    'ssim_loss',
]

_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class RECNetLossConfig:
  """Weights and variants of the total loss.

  Attributes:
    pixel_weight, ssim_weight, mask_weight, color_weight, ecr_weight: term
      weights; defaults are the released config (1.0 / 0.1 / 0.25 / 1.0 / 0.1).
      The paper lists 1.0 / - / 0.25 / 1.0 / 0.1 (no SSIM term).
    pixel_loss: 'l1' (released code) or 'mse' (the paper's L_mse).
    paper_mask_sign: False (code): the mask target is 1 where the target is
      brighter than the input (Y(gt) - Y(in) > 0, under-exposed pixels).
      True: the paper's Eq. 7 sign, 1 where Y(in) - Y(gt) > 0.
    ecr_pool: max-pool size applied before VGG in the ECR term (code: 4).
  """
  pixel_weight: float = 1.0
  ssim_weight: float = 0.1
  mask_weight: float = 0.25
  color_weight: float = 1.0
  ecr_weight: float = 0.1
  pixel_loss: str = 'l1'
  paper_mask_sign: bool = False
  ecr_pool: int = 4


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error over all elements."""
  return jnp.mean(jnp.abs(pred - target))


def mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over all elements (the paper's pixel term)."""
  return jnp.mean(jnp.square(pred - target))


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Negative SSIM, 11x11 Gaussian window, zero padding 5, as the code's."""
  return -ssim_lib.ssim(pred, target, padding='zero')


def color_loss(pred: jax.Array, target: jax.Array, eps: float = 1e-8
               ) -> jax.Array:
  """(1 - mean cosine similarity of the RGB vectors) * 0.5.

  Each vector is divided by max(norm, eps) before the dot product, as
  torch.nn.CosineSimilarity(dim=1, eps=1e-8) does. Written as
  v * rsqrt(max(|v|^2, eps^2)), the same value, because the gradient of
  jnp.linalg.norm is NaN at a zero vector, and RECNet's clamped output has
  black (0, 0, 0) pixels.
  """
  def unit(v):
    squared_norm = jnp.sum(v * v, axis=-1, keepdims=True)
    return v * jax.lax.rsqrt(jnp.maximum(squared_norm, eps * eps))
  cos = jnp.sum(unit(pred) * unit(target), axis=-1)
  # mean(1 - cos) == 1 - mean(cos), but averaging the small residuals keeps
  # float32 accumulation error relative to the (small) loss value low.
  return jnp.mean(1.0 - cos) * 0.5


def luminance(rgb: jax.Array) -> jax.Array:
  """Y of YCbCr (BT.601 weights), keeping a size-1 channel axis."""
  y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
  return y[..., None]


def mask_target(target: jax.Array, inp: jax.Array, paper_sign: bool = False
                ) -> jax.Array:
  """Binary exposure-mask target, float, (N, H, W, 1).

  Code (default): 1 where Y(target) - Y(input) > 0, i.e. the input is too dark
  there. paper_sign=True: 1 where Y(input) - Y(target) > 0 (Eq. 7).
  """
  diff = luminance(target) - luminance(inp)
  if paper_sign:
    diff = -diff
  return (diff > 0).astype(target.dtype)


def bce_loss(prob: jax.Array, target: jax.Array) -> jax.Array:
  """Mean binary cross-entropy of probabilities, logs clamped at -100.

  Matches torch.nn.BCELoss, which clamps log(p) and log(1 - p) at -100 so
  that saturated probabilities give a finite loss. A sigmoid saturates to
  exactly 1.0 in float32 (logits above ~17), so the logs are taken of a
  value kept away from 0: differentiating log(0) = -inf through the clamp
  would give 0 * inf = NaN gradients.
  """
  finite = prob > 0
  log_p = jnp.log(jnp.where(finite, prob, 1.0))
  log_p = jnp.where(finite, jnp.maximum(log_p, -100.0), -100.0)
  finite = prob < 1
  log_1mp = jnp.log1p(-jnp.where(finite, prob, 0.0))
  log_1mp = jnp.where(finite, jnp.maximum(log_1mp, -100.0), -100.0)
  return -jnp.mean(target * log_p + (1.0 - target) * log_1mp)


def _max_pool(x: jax.Array, size: int) -> jax.Array:
  """Non-overlapping max pool, floor on ragged borders (torch max_pool2d)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, size, size, 1), 'VALID')


def _gram(f1: jax.Array, f2: jax.Array) -> jax.Array:
  """(N, HW, HW) products of two feature maps' pixel vectors, f1 f2^T.

  The official `Gram` multiplies view(512, HW)^T by view(512, HW): a
  pixel-by-pixel (not channel-by-channel) matrix between the two regions.
  """
  n, h, w, c = f1.shape
  a = f1.reshape(n, h * w, c)
  b = f2.reshape(n, h * w, c)
  return jnp.einsum('npc,nqc->npq', a, b, precision=_PRECISION)


def ecr_loss(pred: jax.Array, target: jax.Array, inp: jax.Array,
             mask: jax.Array, vgg_params: Any, pool: int = 4) -> jax.Array:
  """Exposure-contrastive regularisation (official `EXCloss`).

  Images and mask are max-pooled by `pool`; VGG16 relu4_3 features of each
  image times mask (region f) and times 1 - mask (region b) give, with
  D = mean absolute difference,
    style:  sum over regions r of D(p_r, t_r) / (D(p_r, t_r) + D(i_r, t_r) + 1e-8)
    Gram:   D(G_p, G_t) / (D(G_p, G_t) + D(G_p, G_i) + 1e-8),
            G_x = gram(x_f, x_b)
  (prediction p is pulled to the target t and pushed from the input i).
  VGG params are held fixed (stop_gradient); gradients flow to pred and mask.

  Args:
    pred, target, inp: (N, H, W, 3) in [0, 1] (no ImageNet normalisation).
    mask: (N, H, W, 1) predicted exposure mask.
    vgg_params: `vgg16.load_vgg16_params()`.
    pool: max-pool size (needs H, W >= 8 * pool).

  Returns:
    Scalar: style term + Gram term.
  """
  vgg_params = jax.lax.stop_gradient(vgg_params)
  net = vgg16.VGG16Features()
  p, t, i, m = (_max_pool(a, pool) for a in (pred, target, inp, mask))
  # One VGG pass over all six region images.
  batch = jnp.concatenate([p * m, p * (1 - m), t * m, t * (1 - m), i * m,
                           i * (1 - m)], axis=0)
  feats = net.apply({'params': vgg_params}, batch)
  p_f, p_b, t_f, t_b, i_f, i_b = jnp.split(feats, 6, axis=0)
  eps = 1e-8

  def ratio(pos, neg):
    return pos / (pos + neg + eps)

  style = (ratio(l1_loss(p_f, t_f), l1_loss(i_f, t_f)) +
           ratio(l1_loss(p_b, t_b), l1_loss(i_b, t_b)))
  g_p, g_t, g_i = _gram(p_f, p_b), _gram(t_f, t_b), _gram(i_f, i_b)
  gram = ratio(l1_loss(g_p, g_t), l1_loss(g_p, g_i))
  return style + gram


def recnet_loss(pred: jax.Array, target: jax.Array, inp: jax.Array,
                mask: jax.Array, vgg_params: Any,
                config: RECNetLossConfig = RECNetLossConfig()
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted total and its unweighted terms.

  Args:
    pred: network output (N, H, W, 3).
    target: ground truth (N, H, W, 3).
    inp: network input (N, H, W, 3).
    mask: predicted exposure mask (N, H, W, 1), probabilities.
    vgg_params: `vgg16.load_vgg16_params()` (only used if ecr_weight != 0).
    config: weights and variants.

  Returns:
    (total, terms): the weighted sum and the unweighted scalar terms 'pixel',
    'ssim' (negative SSIM), 'mask_bce', 'color' and 'ecr' (0 when its weight
    is 0).
  """
  if config.pixel_loss == 'l1':
    pixel = l1_loss(pred, target)
  elif config.pixel_loss == 'mse':
    pixel = mse_loss(pred, target)
  else:
    raise ValueError(f"pixel_loss must be 'l1' or 'mse', got "
                     f'{config.pixel_loss!r}')
  terms = {
      'pixel': pixel,
      'ssim': ssim_loss(pred, target),
      'mask_bce': bce_loss(mask, mask_target(target, inp,
                                             config.paper_mask_sign)),
      'color': color_loss(pred, target),
  }
  if config.ecr_weight:
    terms['ecr'] = ecr_loss(pred, target, inp, mask, vgg_params,
                            config.ecr_pool)
  else:
    terms['ecr'] = jnp.zeros((), pred.dtype)
  total = (config.pixel_weight * terms['pixel'] +
           config.ssim_weight * terms['ssim'] +
           config.mask_weight * terms['mask_bce'] +
           config.color_weight * terms['color'] +
           config.ecr_weight * terms['ecr'])
  return total, terms
