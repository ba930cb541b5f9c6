"""VGG16 features[:23]: safe weight loading and the forward pass."""

import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expcorr_jax.models import vgg16
from expcorr_jax.weights import unpickling


@pytest.fixture(scope='module')
def params():
  return vgg16.load_vgg16_params()


def test_loads_ten_imagenet_convs(params):
  assert sorted(params, key=lambda n: int(n.split('_')[1])) == [
      f'Conv_{i}' for i in range(10)]
  assert params['Conv_0']['kernel'].shape == (3, 3, 3, 64)
  assert params['Conv_9']['kernel'].shape == (3, 3, 512, 512)
  for layer in params.values():
    assert layer['kernel'].dtype == jnp.float32
    assert np.all(np.isfinite(layer['kernel']))
  # Trained weights, not an init: first-layer filters are far from zero-mean
  # noise and identical across calls.
  assert float(jnp.abs(params['Conv_0']['kernel']).max()) > 0.3
  again = vgg16.load_vgg16_params()
  np.testing.assert_array_equal(again['Conv_5']['bias'],
                                params['Conv_5']['bias'])


def test_forward_shape_and_first_layer(params):
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 37, 50, 3))
  feats = vgg16.VGG16Features().apply({'params': params}, x)
  assert feats.shape == (2, 4, 6, 512)  # floor(37/8), floor(50/8)
  assert float(feats.min()) >= 0.0
  # The first conv + ReLU, checked against a direct float64 correlation.
  conv0 = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)),
                  precision=jax.lax.Precision.HIGHEST)
  y = np.asarray(jax.nn.relu(conv0.apply({'params': params['Conv_0']}, x)))
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  k = np.asarray(params['Conv_0']['kernel'], np.float64)
  ref = np.zeros(y.shape)
  for i in range(3):
    for j in range(3):
      ref += xp[:, i:i + 37, j:j + 50, :] @ k[i, j]
  ref = np.maximum(ref + np.asarray(params['Conv_0']['bias']), 0)
  np.testing.assert_allclose(y, ref, atol=1e-5)


def _plain_vgg(params, x):
  """features[:23] with plain 'same' convs: the reference for small maps."""
  i = 0
  for v in vgg16._CFG:  # pylint: disable=protected-access
    if v == 'M':
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
    else:
      layer = params[f'Conv_{i}']
      x = jax.nn.relu(jax.lax.conv_general_dilated(
          x, layer['kernel'], (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=jax.lax.Precision.HIGHEST) + layer['bias'])
      i += 1
  return x


@pytest.mark.parametrize('size', [(16, 20), (8, 13), (24, 9)])
def test_maps_smaller_than_the_kernel_give_the_plain_conv(params, size):
  # 16 -> relu4_3 on 2x2 maps, 8 -> 1x1, 9 -> 1 column: the padded path
  # (which avoids XLA:CPU's slow conv there) must give the same values and
  # input gradients as plain convs.
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, *size, 3))
  net = vgg16.VGG16Features()
  ours = jax.jit(lambda x: net.apply({'params': params}, x))(x)
  ref = jax.jit(lambda x: _plain_vgg(params, x))(x)
  assert ours.shape == ref.shape == (2, size[0] // 8, size[1] // 8, 512)
  assert float(jnp.abs(ref).max()) > 0.1  # Not a vacuous all-zero map.
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  probe = jax.random.normal(jax.random.PRNGKey(2), ref.shape)
  grad_ours = jax.grad(
      lambda x: jnp.sum(net.apply({'params': params}, x) * probe))(x)
  grad_ref = jax.grad(lambda x: jnp.sum(_plain_vgg(params, x) * probe))(x)
  scale = float(jnp.abs(grad_ref).max())
  assert scale > 0
  np.testing.assert_allclose(grad_ours, grad_ref, atol=1e-5 * scale)


class _Payload:
  """Pickles to a call of os.system that would create `path`."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f'touch {self.path}',))


def test_refuses_malicious_pickle_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'
  data = pickle.dumps({'VGG16_0': {'Conv_0': {'kernel': _Payload(marker)}}})
  bad_file = tmp_path / 'evil.ckpt'
  bad_file.write_bytes(data)
  with pytest.raises(unpickling.UnsafePickleError, match='system'):
    vgg16.load_vgg16_params(bad_file)
  with pytest.raises(unpickling.UnsafePickleError):
    unpickling.safe_load_numpy_pickle(data)
  assert not marker.exists()


def test_refuses_other_numpy_globals_and_object_arrays():
  # A numpy global that is not array reconstruction (numpy.load could read
  # attacker-chosen files).
  class _NumpyLoad:

    def __reduce__(self):
      return (np.load, ('/nonexistent',))

  with pytest.raises(unpickling.UnsafePickleError, match='load'):
    unpickling.safe_load_numpy_pickle(pickle.dumps(_NumpyLoad()))
  # Object arrays can carry arbitrary objects: refused even when harmless.
  obj = pickle.dumps({'a': np.array([1, 'x'], dtype=object)})
  with pytest.raises(unpickling.UnsafePickleError, match='object'):
    unpickling.safe_load_numpy_pickle(obj)


def test_plain_numeric_pickle_loads(tmp_path):
  tree = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
          'b': [np.array(3, np.int64), 1.5]}
  got = unpickling.safe_load_numpy_pickle(pickle.dumps(tree, protocol=4))
  np.testing.assert_array_equal(got['a'], tree['a'])
  assert got['b'][1] == 1.5


def test_missing_layer_is_reported(tmp_path):
  path = tmp_path / 'partial.ckpt'
  path.write_bytes(pickle.dumps({'VGG16_0': {
      'Conv_0': {'kernel': np.zeros((3, 3, 3, 64), np.float32),
                 'bias': np.zeros(64, np.float32)}}}))
  with pytest.raises(ValueError, match='Conv_1'):
    vgg16.load_vgg16_params(path)
