"""A fourth method, written as a user would: the proof the task contract is whole.

The method lives in a package of its own (written to a temporary folder and
put on sys.path), not in expcorr_jax: a per-pixel colour matrix (a 1x1 conv,
3 -> 3 channels) trained with L1 on (input, target) pairs, with one protocol
of its own ('half': the pair at half size). It is found by its module path
(`config.model = 'my_lab.colour_matrix'`) and runs through the trainer (with
resume), the evaluation (its own and the shared protocols) and
`inference.Corrector` without any change to a shared module.
"""

import ast
import pathlib
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from data_prep import build
from expcorr_jax import checkpointing
from expcorr_jax import inference
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import tasks
from expcorr_jax import train
from expcorr_jax.metrics import image_quality

# The whole method: what a user's three files would hold (network, task,
# config), here in one module for brevity.
_METHOD = '''
"""A colour-matrix corrector: the smallest method the contract admits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax.tasks import contract


class ColourMatrix(nn.Module):
  """out = clip(x @ W + b), W starting as the identity."""
  bias: bool = True

  @nn.compact
  def __call__(self, images):
    out = nn.Dense(3, use_bias=self.bias,
                   kernel_init=lambda *_: jnp.eye(3))(images)
    return jnp.clip(out, 0.0, 1.0)


def loss_fn(model, params, batch, config):
  del config
  output = model.apply({'params': params}, batch['input'])
  l1 = jnp.mean(jnp.abs(output - batch['target']))
  return contract.LossOutput(l1, {'l1': l1}, output=output,
                             target=batch['target'])


def make_train_loader(config, train_source, **loader_kwargs):
  return input_pipeline.paired_train_loader(
      input_pipeline.as_pairs(train_source, config.data.name),
      crop_size=config.data.crop_size, flip=config.data.flip, **loader_kwargs)


def _half(image):
  image = pixels.to_uint8(image)
  size = (image.shape[1] // 2, image.shape[0] // 2)
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _prepare_half(pair, reference):
  del reference  # A reference-free method.
  image_in = _half(pair.input)
  return contract.PreparedPair(model_input=pixels.to_float(image_in),
                               reference=None, shown_input=image_in,
                               target=_half(pair.target))


HALF = contract.Protocol(name='half', prepare=_prepare_half,
                         quantise=pixels.to_uint8, ssim_color='gray')

TASK = contract.Task(
    name='my_lab.colour_matrix',
    create_model=lambda config: contract.build_module(ColourMatrix, config),
    init_params=lambda model, rng: model.init(
        rng, jnp.zeros((1, 4, 4, 3)))['params'],
    loss_fn=loss_fn,
    make_train_loader=make_train_loader,
    correct=lambda model, params, images: model.apply({'params': params},
                                                      images),
    protocols={'half': HALF},
    inference=contract.InferenceHooks(module_type=ColourMatrix))
'''


@pytest.fixture
def colour_matrix(tmp_path, monkeypatch):
  """The method's package on sys.path; its module."""
  package = tmp_path / 'user_code' / 'my_lab'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'colour_matrix.py').write_text(textwrap.dedent(_METHOD))
  monkeypatch.syspath_prepend(str(tmp_path / 'user_code'))
  yield 'my_lab.colour_matrix'
  for name in ('my_lab', 'my_lab.colour_matrix'):
    sys.modules.pop(name, None)


def _config(data_dir: str, model: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = model
  config.model_bias = True
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      name='multi_exposure/sample', data_dir=data_dir, manual_dir=None,
      train_split='train', eval_split='validation', target_ev=0.0,
      crop_size=32, flip=True, worker_count=0))
  config.batch_size = 8  # tests/conftest.py simulates 8 devices.
  config.num_train_steps = 6
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, b1=0.9, b2=0.999, decay_steps=(),
      decay_factor=1.0))
  config.regulariser = None
  config.eval = ml_collections.ConfigDict(dict(
      protocols=('full', 'half', 'enc_fecnet'), max_images=2,
      num_grid_images=1))
  config.log_every_steps = 3
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 3
  config.keep_checkpoints = 2
  return config


def test_a_method_of_its_own_package_trains_evaluates_and_corrects(
    colour_matrix, sample_data_dir, tmp_path):
  task = tasks.get_task(colour_matrix)
  assert task.name == colour_matrix and not task.needs_reference
  config = _config(sample_data_dir, colour_matrix)
  workdir = tmp_path / 'run'
  report = train.train_and_evaluate(config, str(workdir))

  # The trainer evaluated it under its own protocol and two shared ones.
  assert list(report) == ['full', 'half', 'enc_fecnet']
  assert all(result['all']['count'] == 2 for result in report.values())
  assert report['half']['ssim_variant'] == image_quality.SSIM_VARIANTS['gray']

  # Inference finds the method by the name saved in the checkpoint's config.
  corrector = inference.Corrector.from_checkpoint(str(workdir),
                                                  model=colour_matrix)
  assert corrector.model_name == colour_matrix
  params = corrector.params
  kernel = np.asarray(params['Dense_0']['kernel'])
  assert np.max(np.abs(kernel - np.eye(3))) > 1e-3  # Training moved it.

  # The trainer's evaluation scored exactly what the corrector outputs.
  pairs = list(input_pipeline.iterate_eval_pairs(
      input_pipeline.as_pairs(build.data_source(
          config.data.name, 'validation', sample_data_dir), config.data.name),
      limit=2))
  psnrs = [image_quality.psnr(pixels.to_uint8(corrector(pair.input)),
                           pixels.to_uint8(pair.target)) for pair in pairs]
  tags = [pair.ev_tag for pair in pairs]
  for tag in set(tags):
    expected = np.mean([p for p, t in zip(psnrs, tags) if t == tag])
    assert report['full']['per_ev'][tag]['psnr'] == pytest.approx(expected,
                                                                  rel=1e-6)
  out = corrector(pairs[0].input)
  direct = jax.jit(corrector.model.apply)({'params': params},
                                          pixels.to_float(pairs[0].input))
  np.testing.assert_allclose(out, np.asarray(direct), atol=1e-6)

  # A rerun resumes at the saved step and trains on to a longer schedule.
  config.num_train_steps = 9
  train.train_and_evaluate(config, str(workdir))
  _, saved, step = checkpointing.load_params(str(workdir))
  assert step == 9 and saved['model'] == colour_matrix


def test_a_user_method_is_named_in_lookup_errors(colour_matrix):
  with pytest.raises(ValueError, match='no module my_lab.nothing'):
    tasks.get_task('my_lab.nothing')
  with pytest.raises(ValueError, match='defines no REGULARISER'):
    tasks.get_regulariser(colour_matrix)


_SHARED_MODULES = ('main.py', 'train.py', 'evaluation.py', 'inference.py',
                   'correct.py', 'protocols.py', 'input_pipeline.py',
                   'checkpointing.py', 'summary_writer.py', 'pixels.py',
                   'config_args.py', 'distributed.py', 'evaluate.py',
                   'quiet_logs.py',
                   'tasks/__init__.py', 'tasks/contract.py')
_ALLOWED_TASK_IMPORTS = ('expcorr_jax.tasks', 'expcorr_jax.tasks.contract')


def test_shared_modules_import_no_method():
  """What makes a new method need no edit: shared code imports no method."""
  root = pathlib.Path(__file__).resolve().parents[1] / 'expcorr_jax'
  for relative in _SHARED_MODULES:
    tree = ast.parse((root / relative).read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [f'{node.module}.{alias.name}' for alias in node.names]
      else:
        continue
      for name in names:
        assert not name.startswith('expcorr_jax.models'), (relative, name)
        assert (not name.startswith('expcorr_jax.tasks') or
                name in _ALLOWED_TASK_IMPORTS), (relative, name)
