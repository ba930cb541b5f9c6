"""RECNet through `inference.Corrector` and the `correct` CLI.

Official-layout `.pth` files of any width are written here without torch
(tests/pth_writer.py), so loading is checked on architectures the golden
fixture (nc 8, 5 blocks) does not cover.
"""

from absl import app
import jax
import numpy as np
import pytest

from data_prep import image_codec
from expcorr_jax import correct
from expcorr_jax import inference
from expcorr_jax.models import recnet
import pth_writer  # tests/ is on sys.path.
import checkpoint_writer  # tests/ is on sys.path.
import test_inference

# Not the official width, depth or head count.
SMALL = dict(nc=4, num_blocks=2, num_heads=1)


def random_state_dict(seed=0, **config):
  """An official-layout RECNet state_dict with random weights."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, (path, shape) in recnet.torch_key_layout(**config).items():
    if path[-1] == 'blur_kernel':
      value = recnet.gaussian_kernel(shape[-1], 3.0).reshape(shape)
    elif path[-1] in ('alpha', 'temperature'):
      value = rng.uniform(0.3, 1.3, shape)
    else:
      fan_in = np.prod(shape[1:]) if len(shape) > 1 else shape[0]
      value = rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
    state[key] = np.asarray(value, np.float32)
  return state


@pytest.fixture(scope='module')
def small_pth(tmp_path_factory):
  path = tmp_path_factory.mktemp('official') / 'recnet_nc4.pth'
  return pth_writer.write_state_dict(path, random_state_dict(**SMALL))


@pytest.fixture(scope='module')
def small_corrector(small_pth):
  return inference.Corrector.from_checkpoint(small_pth, model='recnet')


def _direct(model, params, images):
  fn = jax.jit(lambda p, x: model.apply({'params': p}, x).output)
  return np.asarray(fn(params, images))


def test_official_checkpoint_reproduces_golden_output(shared_fixture):
  golden = np.load(shared_fixture('recnet/recnet_golden_nc8.npz'))
  corrector = inference.Corrector.from_checkpoint(
      shared_fixture('recnet/recnet_random_nc8.pth'), model='recnet')
  assert (corrector.model.nc, corrector.model.num_blocks) == (8, 5)
  assert not corrector.needs_reference
  out = corrector(golden['input'])
  assert out.dtype == np.float32 and out.shape == golden['input'].shape
  assert np.max(np.abs(out - golden['output'])) <= 1e-5


def test_other_width_loads_from_its_weights_and_runs_at_odd_sizes(
    small_pth, small_corrector):
  model = small_corrector.model
  assert isinstance(model, recnet.RECNet)
  assert (model.nc, model.num_blocks, model.num_heads) == (4, 2, 1)
  params = recnet.params_from_torch(random_state_dict(**SMALL))
  images = test_inference._images((2, 37, 53, 3), seed=1)
  expected = _direct(model, params, test_inference._unit(images))
  np.testing.assert_allclose(small_corrector(images), expected, atol=2e-6)
  # One image alone equals its row of the batch (instance norm and attention
  # are per image).
  np.testing.assert_allclose(small_corrector(images[1]), expected[1],
                             atol=2e-6)
  # A width override that contradicts the weights is refused.
  with pytest.raises(ValueError, match='do not fit a RECNet'):
    inference.Corrector.from_checkpoint(small_pth, model='recnet', nc=8)


def test_training_checkpoint_builds_the_saved_width(tmp_path, small_corrector):
  workdir = tmp_path / 'recnet_run'
  checkpoint_writer.write_params_checkpoint(
      workdir, jax.tree.map(np.asarray, small_corrector.params),
      {'model': 'recnet', 'model_nc': 4, 'model_num_blocks': 2,
       'model_num_heads': 1})
  corrector = inference.Corrector.from_checkpoint(workdir, model='recnet')
  assert corrector.model == small_corrector.model
  images = test_inference._images((20, 24, 3), seed=2)
  np.testing.assert_array_equal(corrector(images), small_corrector(images))
  with pytest.raises(ValueError, match='takes no reference'):
    corrector(images, reference=images)


def test_checkpoint_of_another_model_is_named(shared_fixture):
  with pytest.raises(ValueError, match='not an official RECNet state_dict'):
    inference.Corrector.from_checkpoint(
        shared_fixture('uec/exposure-errors.pth'), model='recnet')


def test_cli_corrects_with_an_official_layout_pth_of_another_width(
    small_pth, small_corrector, tmp_path, capsys):
  photos = tmp_path / 'photos'
  photos.mkdir()
  rng = np.random.default_rng(3)
  image_codec.write_png(photos / 'a.png',
                        rng.integers(0, 256, (21, 30, 3), dtype=np.uint8))
  image_codec.write_png(photos / 'b.png',
                        rng.integers(0, 65536, (17, 16, 3), dtype=np.uint16))
  out = tmp_path / 'out'
  args = [f'--checkpoint={small_pth}', '--model=recnet',
          f'--output_dir={out}', '--noprogress', str(photos)]
  assert correct.run(args) == 0
  assert 'Corrected 2 images' in capsys.readouterr().out
  for name, bits in (('a.png', 8), ('b.png', 16)):
    written = image_codec.read_image(out / name)
    expected = small_corrector(image_codec.read_image(photos / name))
    scale = 2**bits - 1
    np.testing.assert_array_equal(
        written, np.round(expected * scale).astype(written.dtype))
    assert written.dtype == (np.uint16 if bits == 16 else np.uint8)
  with pytest.raises(app.UsageError, match='recnet takes no reference'):
    correct.run(args + [f'--reference={photos / "a.png"}'])


def test_a_pth_with_a_nan_weight_is_refused_naming_file_and_weight(tmp_path):
  state = random_state_dict(**SMALL)
  name = next(key for key in state if key.endswith('.bias'))
  state[name] = state[name].copy()
  state[name][0] = np.nan
  path = pth_writer.write_state_dict(tmp_path / 'diverged.pth', state)
  with pytest.raises(ValueError, match=r'diverged\.pth holds NaN or infinite '
                     r'weights at \['):
    inference.Corrector.from_checkpoint(path, model='recnet')
