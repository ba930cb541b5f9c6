"""Tests of `inference.Corrector`: loading, dtypes and shapes, compile cache.

A tiny UEC training checkpoint is written with orbax directly (state and
config items only, as `checkpointing.load_params` reads them) from freshly
initialised params, so no training runs. The official checkpoint and its
golden output check that the whole path reproduces the released model.
"""


import flax.linen as nn
import jax
import numpy as np
import pytest

import checkpoint_writer  # tests/ is on sys.path.
from expcorr_jax import corrections
from expcorr_jax import inference
from expcorr_jax.models import uec

ENCODER_HEIGHT = 64  # Not the default 256, to see the config is honoured.


def random_uec_params(seed=0):
  """Params drawn as PyTorch initialises layers, through the converter.

  Uses numpy and `params_from_torch`, not `UEC().init`, which on a CPU would
  compile every op of the network one by one.
  """
  rng = np.random.default_rng(seed)
  state = {}
  layers = uec._TORCH_LAYERS  # pylint: disable=protected-access
  for prefix, (_, _, shape) in layers.items():
    bound = 1 / np.sqrt(np.prod(shape[1:]))
    state[f'{prefix}.weight'] = rng.uniform(-bound, bound, shape)
    state[f'{prefix}.bias'] = rng.uniform(-bound, bound, shape[:1])
  return jax.tree.map(np.asarray, uec.params_from_torch(state))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('workdir')
  checkpoint_writer.write_params_checkpoint(
      path, random_uec_params(),
      {'model': 'uec', 'model_encoder_height': ENCODER_HEIGHT, 'seed': 0},
      step=5)
  return path


@pytest.fixture(scope='module')
def corrector(workdir):
  return inference.Corrector.from_checkpoint(workdir)


def _images(shape, seed, dtype=np.uint8):
  rng = np.random.default_rng(seed)
  if dtype == np.uint8:
    return rng.integers(0, 256, shape, dtype=np.uint8)
  if dtype == np.uint16:
    return rng.integers(0, 65536, shape, dtype=np.uint16)
  return rng.random(shape).astype(dtype)


def _unit(x):
  scale = {np.uint8: 255.0, np.uint16: 65535.0}.get(x.dtype.type, 1.0)
  return x.astype(np.float32) / np.float32(scale)


def _direct(model, params, images, reference):
  """The model applied without the corrector: NHWC float32 in, NHWC out."""
  fn = jax.jit(lambda p, x, r: model.apply({'params': p}, x, r))
  return np.asarray(fn(params, images, reference))


def test_official_checkpoint_reproduces_golden_output(shared_fixture):
  golden = np.load(shared_fixture('uec/uec_golden_exposure_errors.npz'))
  corrector = inference.Corrector.from_checkpoint(
      shared_fixture('uec/exposure-errors.pth'), model='uec')
  assert corrector.model.encoder_height == uec.ENCODER_HEIGHT
  out = corrector(golden['input_0'], reference=golden['reference'])
  assert out.dtype == np.float32 and out.shape == golden['input_0'].shape
  assert np.max(np.abs(out - golden['output3_0'])) <= 1e-5


def test_training_checkpoint_builds_the_saved_model(workdir, corrector):
  saved = random_uec_params()
  assert corrector.model_name == 'uec' and corrector.needs_reference
  assert corrector.model.encoder_height == ENCODER_HEIGHT
  jax.tree.map(np.testing.assert_array_equal, corrector.params, saved)
  # The checkpoints/ folder and a step folder name the same checkpoint.
  for path in (workdir / 'checkpoints', workdir / 'checkpoints' / '5'):
    other = inference.Corrector.from_checkpoint(str(path))
    assert other.model.encoder_height == ENCODER_HEIGHT
    jax.tree.map(np.testing.assert_array_equal, other.params, saved)
  overridden = inference.Corrector.from_checkpoint(workdir, encoder_height=96)
  assert overridden.model.encoder_height == 96


@pytest.mark.parametrize('shape, dtype, ref_shape, ref_dtype', [
    ((2, 37, 53, 3), np.uint16, (20, 31, 3), np.float64),  # Odd; a batch.
    ((1, 1, 3), np.float32, (9, 7, 3), np.uint8),  # One pixel.
])
def test_matches_direct_apply(corrector, shape, dtype, ref_shape, ref_dtype):
  images = _images(shape, 1, dtype)
  reference = _images(ref_shape, 2, ref_dtype)
  out = corrector(images, reference=reference)
  assert out.shape == shape and out.dtype == np.float32
  assert out.flags.writeable
  batch = _unit(images).reshape((-1,) + shape[-3:])
  expected = _direct(corrector.model, corrector.params, batch,
                     _unit(reference)[None]).reshape(shape)
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
  assert 0 <= out.min() and out.max() <= 1
  assert np.abs(out - _unit(images)).max() > 1e-3  # It did change them.


def test_batch_equals_images_one_by_one(corrector):
  # Shapes as in test_matches_direct_apply, whose executables this reuses.
  images = _images((2, 37, 53, 3), 3, np.uint16)
  reference = _images((20, 31, 3), 4, np.float64)
  batch = corrector(images, reference)
  for image, out in zip(images, batch):
    np.testing.assert_allclose(corrector(image, reference), out, atol=1e-6)
  # uint8 and float32 pixels of one image give the same result.
  image = _images((37, 53, 3), 5)
  np.testing.assert_allclose(corrector(image, reference),
                             corrector(image.astype(np.uint16) * 257,
                                       reference), atol=1e-6)


def test_compiles_once_per_shape_and_dtype(workdir, monkeypatch):
  corrections.clear()
  corrector = inference.Corrector.from_checkpoint(workdir)
  compiles = []
  original = jax.stages.Lowered.compile

  def counting_compile(self, *args, **kwargs):
    compiles.append(1)
    return original(self, *args, **kwargs)
  monkeypatch.setattr(jax.stages.Lowered, 'compile', counting_compile)

  reference = _images((30, 30, 3), 0)
  photos = [_images((21, 34, 3), seed) for seed in range(3)]
  outs = [corrector(photo, reference) for photo in photos]
  assert len(compiles) == corrector.num_compilations == 1
  assert not np.allclose(outs[0], outs[1])  # No stale result from the cache.
  corrector(_images((34, 21, 3), 5), reference)  # Portrait: another shape.
  corrector(photos[0].astype(np.uint16) * 257, reference)  # Another dtype.
  assert len(compiles) == corrector.num_compilations == 3
  np.testing.assert_array_equal(corrector(photos[0], reference), outs[0])
  # Another corrector of the same architecture reuses the executables.
  other = inference.Corrector(corrector.model, random_uec_params(seed=1),
                              method='uec')
  other_out = other(photos[0], reference)
  assert len(compiles) == 3 and other.num_compilations == 0
  assert not np.allclose(other_out, outs[0])  # Its own params were used.


@pytest.mark.parametrize('images, reference, message', [
    (np.zeros((8, 8, 3), np.uint8), None, 'needs a reference'),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8),
     r'reference has shape \(1, 8, 8, 3\); expected one HxWx3'),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8),
     'expected one HxWx3'),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8),
     r'images have shape \(8, 8\); expected HxWx3 or NxHxWx3'),
    (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.uint8),
     'expected HxWx3'),
    (np.zeros((0, 8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
     'N, H, W >= 1'),
    (np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.uint8),
     'dtype int32; expected uint8, uint16 or float'),
    (np.full((8, 8, 3), 1.5, np.float32), np.zeros((8, 8, 3), np.uint8),
     r'values in \[1.5, 1.5\]; float images must lie in \[0, 1\]'),
    (np.full((8, 8, 3), np.nan, np.float32), np.zeros((8, 8, 3), np.uint8),
     'must lie in'),
    (np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), -0.5, np.float32),
     'must lie in'),
    (np.zeros((300, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
     'too narrow'),
])
def test_bad_inputs_say_what_was_expected(corrector, images, reference,
                                          message):
  with pytest.raises(ValueError, match=message):
    corrector(images, reference)


def test_float_rounding_just_outside_0_1_is_clipped(corrector):
  rng = np.random.default_rng(3)
  image = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
  reference = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
  rounded = image.copy()
  rounded[0, 0] = [1.0000001, -2e-7, 1 + 9e-6]
  clipped = np.clip(rounded, 0, 1)
  np.testing.assert_array_equal(corrector(rounded, reference),
                                corrector(clipped, reference))
  beyond = image.copy()
  beyond[0, 0, 0] = 1.001
  with pytest.raises(ValueError, match='must lie in'):
    corrector(beyond, reference)


def test_checkpoint_errors(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    inference.Corrector.from_checkpoint(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='No checkpoint file'):
    inference.Corrector.from_checkpoint(tmp_path / 'missing.pth')
  unnamed = tmp_path / 'weights.pth'
  unnamed.write_bytes(b'not read: the method is asked for first')
  with pytest.raises(ValueError, match='official weights file, which records '
                     'no method: name it'):
    inference.Corrector.from_checkpoint(unnamed)
  with pytest.raises(ValueError, match="does not support model 'unet'"):
    inference.Corrector.from_checkpoint(workdir, model='unet')
  with pytest.raises(ValueError, match=r"Unknown UEC settings \['height'\]"):
    inference.Corrector.from_checkpoint(workdir, height=3)
  recnet_dir = tmp_path / 'recnet_run'
  checkpoint_writer.write_params_checkpoint(recnet_dir, random_uec_params(),
                                            {'model': 'recnet'}, step=5)
  with pytest.raises(ValueError, match="holds a 'recnet' checkpoint, not "
                     "'uec'"):
    inference.Corrector.from_checkpoint(recnet_dir, model='uec')


def test_params_must_fit_the_model():
  params = random_uec_params()
  params['predictor']['fc3']['kernel'] = np.zeros((95, 8), np.float32)
  del params['corrector']['mid_conv']
  with pytest.raises(ValueError, match='do not fit a UEC') as error:
    inference.Corrector(uec.UEC(), params, method='uec')
  assert "['corrector']['mid_conv']['kernel']" in str(error.value)
  assert '(95, 8) (expected (96, 8))' in str(error.value)
  with pytest.raises(ValueError, match="A Dense is not a 'uec' network"):
    inference.Corrector(nn.Dense(3), {}, method='uec')
  with pytest.raises(ValueError, match="does not support model 'unet'"):
    inference.Corrector(uec.UEC(), params, method='unet')


def test_non_finite_weights_are_refused_by_name(workdir, tmp_path):
  params = jax.tree.map(np.array, random_uec_params())  # Writable copies.
  params['predictor']['fc4']['bias'][0] = np.nan
  with pytest.raises(ValueError, match=r"NaN or infinite weights at "
                     r"\['predictor'\]\['fc4'\]\['bias'\]"):
    inference.Corrector(uec.UEC(), params, method='uec')
  # Through a checkpoint too, as the correct CLI loads it.
  params['predictor']['fc4']['bias'][0] = np.inf
  broken = tmp_path / 'diverged'
  checkpoint_writer.write_params_checkpoint(
      broken, params, {'model': 'uec', 'model_encoder_height': ENCODER_HEIGHT},
      step=5)
  with pytest.raises(ValueError, match=r'diverged/checkpoints/5 holds NaN or '
                     r"infinite weights at \['predictor'\]\['fc4'\]"):
    inference.Corrector.from_checkpoint(broken)
