"""UEC's tiled corrector equals the straightforward one, values and gradients.

`UEC(pixel_tile='off')` is the layer-by-layer reference (checked against the
official outputs in test_uec_parity.py); every other setting must give the
same results to float32 rounding, on odd sizes and at tile boundaries.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expcorr_jax.models import uec

_TOL = 1e-6
_ENCODER_HEIGHT = 16  # Small images stay cheap; the encoder is not tested here.


@functools.lru_cache(maxsize=None)
def _params():
  """Random params, scaled so that lambdas are typical (|lambda| < 1)."""
  image = jnp.zeros((1, 16, 16, 3))
  params = uec.UEC(pixel_tile='off', encoder_height=_ENCODER_HEIGHT).init(
      jax.random.key(0), image, image, 1, method=uec.UEC.multi_pass)['params']
  return params


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


def _model(pixel_tile, **kwargs):
  return uec.UEC(pixel_tile=pixel_tile, encoder_height=_ENCODER_HEIGHT,
                 **kwargs)


def _max_abs(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('pixel_tile, height, width', [
    (64, 8, 8),      # Exactly one tile.
    (64, 8, 16),     # Exactly two tiles, no padding.
    (64, 13, 5),     # 65 pixels: one past a tile boundary.
    (64, 9, 7),      # 63 pixels: one short, a single tile.
    (100, 17, 23),   # Tiles not a multiple of 8: rounded up, padded.
    (7, 5, 3),       # Tiles smaller than the rounding to 8 pixels.
    (1, 2, 3),       # One pixel per tile requested.
    (10**6, 19, 31),  # Much larger than the image.
    ('auto', 37, 53),
])
def test_tiled_equals_untiled(pixel_tile, height, width):
  params = _params()
  images = _images((2, height, width, 3))
  references = _images((1, 11, 9, 3), seed=1)
  expected = _model('off').apply({'params': params}, images, references, 3,
                                 method=uec.UEC.intermediates)
  apply = jax.jit(functools.partial(_model(pixel_tile).apply,
                                    method=uec.UEC.intermediates),
                  static_argnums=3)
  got = apply({'params': params}, images, references, 3)
  assert got['outputs'][-1].shape == images.shape
  assert _max_abs(got, expected) <= _TOL


def test_single_image_and_one_pixel():
  params = _params()
  for shape in ((1, 1, 1, 3), (1, 1, 97, 3), (1, 5, 3, 3)):
    images = _images(shape, seed=2)
    references = _images((1, 4, 4, 3), seed=3)
    expected = _model('off').apply({'params': params}, images, references)
    got = _model(8).apply({'params': params}, images, references)
    assert _max_abs(got, expected) <= _TOL, shape


def test_batch_does_not_change_an_image():
  """Tiles never straddle images: an image's result is batch-independent."""
  params = _params()
  images = _images((3, 21, 19, 3), seed=4)
  model = _model(50)
  lam = jnp.asarray([-0.4, 0.2, 0.9])
  batch = model.apply({'params': params}, images, lam,
                      method=uec.UEC.correct_once)
  for i in range(3):
    one = model.apply({'params': params}, images[i:i + 1], lam[i:i + 1],
                      method=uec.UEC.correct_once)
    np.testing.assert_array_equal(batch[i:i + 1], one)


def test_pixel_tiling_covers_the_image():
  for num_pixels in (1, 7, 8, 9, 63, 64, 65, 1000, 2073600, 8294400):
    for max_tile in (1, 7, 8, 64, 100, 8192):
      num_tiles, tile = uec._pixel_tiling(num_pixels, max_tile)
      padding = num_tiles * tile - num_pixels
      assert 0 <= padding < tile  # Every pixel, no empty tile.
      if num_tiles > 1:
        assert tile % 8 == 0 and tile <= max(max_tile, 8) + 7
        assert padding < 8 * num_tiles


def _loss_fn(model):
  def loss(params, images, target, ref_lo, ref_hi):
    restored, out_lo, out_hi = model.apply(
        {'params': params}, images, target, ref_lo, ref_hi, 3,
        method=uec.UEC.training_outputs)
    return (jnp.mean((restored - target)**2)
            + jnp.mean(jax.nn.relu(out_lo - out_hi)))
  return loss


@pytest.mark.parametrize('pixel_tile', [64, 'auto'])
def test_training_outputs_and_gradients(pixel_tile):
  params = _params()
  images = _images((2, 23, 29, 3), seed=6)
  target = _images((2, 23, 29, 3), seed=7)
  ref_lo = _images((2, 23, 29, 3), seed=8) * 0.5
  ref_hi = ref_lo + 0.5
  args = (images, target, ref_lo, ref_hi)
  off, fast = _model('off'), _model(pixel_tile)
  expected = off.apply({'params': params}, *args, 3,
                       method=uec.UEC.training_outputs)
  got = jax.jit(functools.partial(fast.apply, method=uec.UEC.training_outputs),
                static_argnums=5)({'params': params}, *args, 3)
  assert _max_abs(got, expected) <= _TOL
  # training_outputs is multi_pass and two single passes, computed jointly.
  np.testing.assert_allclose(
      got[0], fast.apply({'params': params}, images, target, 3), atol=_TOL)
  np.testing.assert_allclose(
      got[1], fast.apply({'params': params}, images, ref_lo,
                         method=uec.UEC.single_pass), atol=_TOL)
  grads_off = jax.grad(_loss_fn(off))(params, *args)
  grads_fast = jax.jit(jax.grad(_loss_fn(fast)))(params, *args)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_off))
  assert _max_abs(grads_fast, grads_off) <= _TOL * scale
  assert (jax.tree.structure(grads_fast) == jax.tree.structure(grads_off))


def test_init_gives_the_same_params_layout():
  image = jnp.zeros((1, 40, 40, 3))
  params = {}
  for pixel_tile in ('off', 'auto', 64):
    params[pixel_tile] = _model(pixel_tile).init(jax.random.key(0), image,
                                                 image)['params']
  shapes = {k: jax.tree.map(jnp.shape, v) for k, v in params.items()}
  assert shapes['off'] == shapes['auto'] == shapes[64]
  assert sum(x.size for x in jax.tree.leaves(params['auto'])) == uec.NUM_PARAMS


def test_bfloat16_corrector_stays_within_one_code():
  params = _params()
  images = jax.image.resize(_images((1, 6, 8, 3), seed=9), (1, 60, 80, 3),
                            'bilinear')
  references = _images((1, 16, 16, 3), seed=10)
  expected = _model('off').apply({'params': params}, images, references)
  got = _model(256, corrector_dtype=jnp.bfloat16).apply(
      {'params': params}, images, references)
  assert got.dtype == jnp.float32
  difference = float(jnp.max(jnp.abs(got - expected)))
  assert 0 < difference <= 1 / 255


@pytest.mark.parametrize('pixel_tile', [0, -8, 'fast', 2.5])
def test_bad_pixel_tile(pixel_tile):
  image = jnp.zeros((1, 16, 16, 3))
  params = _params()
  with pytest.raises(ValueError, match='pixel_tile'):
    _model(pixel_tile).apply({'params': params}, image, image)
