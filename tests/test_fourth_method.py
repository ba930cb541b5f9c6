"""A fourth method, written as a user would: proof the contract is whole.

The method lives in a package of its own (written to a temporary folder and
put on sys.path), not in expcorr_jax: a per-pixel colour matrix (a 1x1 conv,
3 -> 3 channels) trained with L1 on (input, target) pairs, with one protocol
of its own ('half': the pair at half size). It is three files, as the README
says: its network, its task and its config (which extends the base config
with only its own lines). It is found by its module path (`config.model =
'my_lab.colour_matrix'`) and runs through the trainer (a resumed run ends
with the params of an uninterrupted one), the evaluation (its own and the
shared protocols), the `evaluate` and `correct` CLIs and
`inference.Corrector.from_checkpoint` without naming the method, with no
change to a shared module.
"""

import ast
import json
import pathlib
import re
import sys
import textwrap

import jax
import numpy as np
import pytest

import tree_assertions  # tests/ is on sys.path.
from data_prep import build
from data_prep import image_codec
from expcorr_jax import checkpointing
from expcorr_jax import config_args
from expcorr_jax import correct
from expcorr_jax import evaluate
from expcorr_jax import inference
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import tasks
from expcorr_jax import train
from expcorr_jax.metrics import image_quality

# The whole method, as a user's three files: network, task, config.
_NETWORK = '''
"""A colour matrix: the smallest network the contract admits."""

import flax.linen as nn
import jax.numpy as jnp


class ColourMatrix(nn.Module):
  """out = clip(x @ W + b), W starting as the identity."""
  bias: bool = True

  @nn.compact
  def __call__(self, images):
    out = nn.Dense(3, use_bias=self.bias,
                   kernel_init=lambda *_: jnp.eye(3))(images)
    return jnp.clip(out, 0.0, 1.0)
'''

_TASK = '''
"""The colour-matrix corrector's task."""

import jax.numpy as jnp
import numpy as np
from PIL import Image

from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax.tasks import contract
from my_lab import colour_matrix_net


def loss_fn(model, params, batch, config, frozen=None,
            needs=contract.NO_NEEDS):
  del config, frozen, needs  # Its pair is always a normal-exposure one.
  output = model.apply({'params': params}, batch['input'])
  l1 = jnp.mean(jnp.abs(output - batch['target']))
  return contract.LossOutput(l1, {'l1': l1}, output=output,
                             target=batch['target'])


def make_train_loader(config, train_source, needs=contract.NO_NEEDS,
                      **loader_kwargs):
  del needs
  return input_pipeline.paired_train_loader(
      input_pipeline.as_pairs(train_source, config.data.name),
      crop_size=config.data.crop_size, flip=config.data.flip, **loader_kwargs)


def correct(model, params, images, reference=None):
  del reference  # Reference-free.
  return model.apply({'params': params}, images)


def _half(image):
  image = pixels.to_uint8(image)
  size = (image.shape[1] // 2, image.shape[0] // 2)
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _prepare_half(pair, reference=None):
  image_in = _half(pair.input)
  return contract.PreparedPair(model_input=pixels.to_float(image_in),
                               reference=protocols.model_reference(reference),
                               shown_input=image_in, target=_half(pair.target))


HALF = contract.Protocol(name='half', prepare=_prepare_half,
                         quantise=pixels.to_uint8, ssim_color='gray')

TASK = contract.Task(
    name='my_lab.colour_matrix',
    create_model=lambda config: contract.build_module(
        colour_matrix_net.ColourMatrix, config),
    init_params=lambda model, rng: model.init(
        rng, jnp.zeros((1, 4, 4, 3)))['params'],
    loss_fn=loss_fn,
    make_train_loader=make_train_loader,
    correct=correct,
    protocols={'half': HALF},
    inference=contract.InferenceHooks(
        module_type=colour_matrix_net.ColourMatrix))
'''

_CONFIG = '''
"""The colour-matrix corrector's config: only what is its own."""

from expcorr_jax import base_config


def get_config(arg=None):
  del arg
  config = base_config.get_config(runlocal=True)
  config.model = 'my_lab.colour_matrix'
  config.model_bias = True
  config.data.crop_size = 32
  config.batch_size = 8  # tests/conftest.py simulates 8 devices.
  config.num_train_steps = 6
  config.optimizer.learning_rate = 1e-2
  config.eval.protocols = ('full', 'half', 'enc_fecnet')
  config.eval.max_images = 2
  config.eval.num_grid_images = 1
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  config.keep_checkpoints = 2
  return config
'''


@pytest.fixture
def colour_matrix(tmp_path, monkeypatch):
  """The method's package on sys.path; (its module path, its config file)."""
  package = tmp_path / 'user_code' / 'my_lab'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'colour_matrix_net.py').write_text(textwrap.dedent(_NETWORK))
  (package / 'colour_matrix.py').write_text(textwrap.dedent(_TASK))
  config_file = tmp_path / 'user_code' / 'configs' / 'colour_matrix.py'
  config_file.parent.mkdir()
  config_file.write_text(textwrap.dedent(_CONFIG))
  monkeypatch.syspath_prepend(str(tmp_path / 'user_code'))
  yield 'my_lab.colour_matrix', config_file
  for name in ('my_lab', 'my_lab.colour_matrix', 'my_lab.colour_matrix_net'):
    sys.modules.pop(name, None)


def test_a_method_of_its_own_package_trains_evaluates_and_corrects(
    colour_matrix, sample_data_dir, tmp_path):
  method, config_file = colour_matrix
  task = tasks.get_task(method)
  assert task.name == method and not task.needs_reference
  config = config_args.load_config(config_file)
  config.data.data_dir = sample_data_dir
  assert train.missing_keys(config) == []
  workdir = tmp_path / 'run'
  report = train.train_and_evaluate(config, str(workdir))

  # The trainer evaluated it under its own protocol and two shared ones.
  assert list(report) == ['full', 'half', 'enc_fecnet']
  assert all(result['all']['count'] == 2 for result in report.values())
  assert report['half']['ssim_variant'] == image_quality.SSIM_VARIANTS['gray']

  # A run stopped at step 3 and resumed ends with the same params.
  interrupted = tmp_path / 'interrupted'
  config.num_train_steps = 3
  train.train_and_evaluate(config, str(interrupted))
  config.num_train_steps = 6
  train.train_and_evaluate(config, str(interrupted))
  uninterrupted_params, _, step = checkpointing.load_params(str(workdir))
  resumed_params, _, resumed_step = checkpointing.load_params(
      str(interrupted))
  assert step == resumed_step == 6
  tree_assertions.assert_trees_equal(resumed_params, uninterrupted_params)

  # Inference finds the method by the name saved in the checkpoint's config.
  corrector = inference.Corrector.from_checkpoint(str(workdir))
  assert corrector.model_name == method
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

  # The evaluate CLI, through its flags, scores the workdir as training did.
  assert evaluate.run([
      f'--config={config_file}', f'--checkpoint={workdir}',
      f'--output_dir={tmp_path / "eval"}', '--noprogress',
      f'--config.data.data_dir={sample_data_dir}']) == 0
  scored = json.loads(
      (tmp_path / 'eval' / 'eval_multi_exposure-sample_validation.json'
      ).read_text())
  trained = json.loads((workdir / 'eval_step_6.json').read_text())
  assert scored['results'] == trained['results']
  assert scored['model'] == method and scored['checkpoint_step'] == 6

  # The correct CLI, with no --model: the checkpoint names its method.
  photo = tmp_path / 'photo.png'
  image_codec.write_png(photo, pixels.to_uint8(pairs[0].input))
  assert correct.run([f'--checkpoint={workdir}',
                      f'--output_dir={tmp_path / "corrected"}', '--noprogress',
                      str(photo)]) == 0
  written = image_codec.read_image(tmp_path / 'corrected' / 'photo.png')
  np.testing.assert_array_equal(written, pixels.to_uint8(out))


def test_a_user_method_is_named_in_lookup_errors(colour_matrix, tmp_path,
                                                 monkeypatch):
  method, _ = colour_matrix
  with pytest.raises(ValueError, match='no module my_lab.nothing'):
    tasks.get_task('my_lab.nothing')
  with pytest.raises(ValueError, match='defines no REGULARISER'):
    tasks.get_regulariser(method)
  # A task must carry the name it is found by (checkpoints record it).
  renamed = tmp_path / 'user_code' / 'my_lab' / 'renamed.py'
  renamed.write_text(textwrap.dedent(_TASK).replace(
      "name='my_lab.colour_matrix'", "name='colour_matrix'"))
  monkeypatch.delitem(sys.modules, 'my_lab.renamed', raising=False)
  with pytest.raises(ValueError, match=r"TASK.name is 'colour_matrix', but it "
                     r"is found by the name 'my_lab.renamed'"):
    tasks.get_task('my_lab.renamed')


_PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'expcorr_jax'
# A method's own modules; everything else in expcorr_jax is shared.
_METHOD_MODULES = re.compile(r'(tasks/(?!__init__|contract)\w+'
                             r'|models/(?!__init__|vgg16)\w+)\.py')
_ALLOWED_TASK_IMPORTS = ('expcorr_jax.tasks', 'expcorr_jax.tasks.contract')


def _shared_modules() -> list[str]:
  modules = sorted(str(path.relative_to(_PACKAGE))
                   for path in _PACKAGE.rglob('*.py'))
  shared = [m for m in modules if not _METHOD_MODULES.fullmatch(m)]
  # The check covers what the issue named, and finds the methods' files.
  for expected in ('reports.py', 'metrics/lpips.py', 'models/vgg16.py',
                   'weights/unpickling.py', 'model_loading.py',
                   'base_config.py', 'tasks/contract.py'):
    assert expected in shared
  assert 'tasks/uec.py' not in shared and 'models/recnet.py' not in shared
  return shared


def _method_names() -> list[str]:
  """Every built-in method and regulariser name (modules with a TASK or
  REGULARISER)."""
  names = []
  for path in sorted((_PACKAGE / 'tasks').glob('*.py')):
    text = path.read_text()
    if re.search(r'^(TASK|REGULARISER) = ', text, re.M):
      names.append(path.stem)
  assert {'uec', 'recnet', 'erl', 'erl_bcm', 'erl_autoencoder'} <= set(names)
  return names


def _docstrings(tree: ast.AST) -> set[int]:
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)) and node.body:
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value,
                                                    ast.Constant):
        found.add(id(first.value))
  return found


def _is_model_name(node: ast.AST) -> bool:
  """`x.model`, `x['model']` or `x.get('model')`: a config's method."""
  if isinstance(node, ast.Attribute):
    return node.attr == 'model'
  if isinstance(node, ast.Subscript):
    return isinstance(node.slice, ast.Constant) and node.slice.value == 'model'
  return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == 'get' and bool(node.args) and
          isinstance(node.args[0], ast.Constant) and
          node.args[0].value == 'model')


def _is_name_literal(node: ast.AST) -> bool:
  """A string, or a tuple / list / set of strings."""
  if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
    return bool(node.elts) and all(map(_is_name_literal, node.elts))
  return isinstance(node, ast.Constant) and isinstance(node.value, str)


def method_mentions(source: str, names: list[str]) -> list[str]:
  """What in `source` would tie shared code to a method: an import of a
  method's module, a method's name in a string (docstrings aside), or a
  comparison of a config's method with a string."""
  word = re.compile(r'(?<![A-Za-z0-9_])(' + '|'.join(
      sorted(names, key=len, reverse=True)) + r')(?![A-Za-z0-9_])', re.I)
  tree = ast.parse(source)
  docstrings = _docstrings(tree)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      imported = [f'{node.module}.{alias.name}' for alias in node.names]
    else:
      imported = []
    for name in imported:
      if name.startswith('expcorr_jax.models') and name != (
          'expcorr_jax.models.vgg16'):
        found.append(f'line {node.lineno}: imports {name}')
      if (name.startswith('expcorr_jax.tasks') and
          name not in _ALLOWED_TASK_IMPORTS):
        found.append(f'line {node.lineno}: imports {name}')
    if (isinstance(node, ast.Constant) and isinstance(node.value, str) and
        id(node) not in docstrings and word.search(node.value)):
      found.append(f'line {node.lineno}: names {word.search(node.value)[0]!r} '
                   f'in {node.value[:60]!r}')
    if isinstance(node, ast.Compare):
      operands = [node.left, *node.comparators]
      if any(map(_is_model_name, operands)) and any(
          map(_is_name_literal, operands)):
        found.append(f'line {node.lineno}: compares a config\'s method with '
                     'a name')
  return found


def test_the_shared_code_check_catches_each_kind_of_mention():
  names = ['uec', 'recnet']
  assert method_mentions('from expcorr_jax.tasks import uec', names)
  assert method_mentions('import expcorr_jax.models.recnet', names)
  assert method_mentions("x = f'see configs/uec.py'", names)
  assert method_mentions("raise ValueError('RECNet only')", names)
  assert method_mentions("if config.model == 'anything': pass", names)
  assert method_mentions("ok = saved['model'] != 'x'", names)
  assert method_mentions("ok = saved.get('model') in ('x',)", names)
  assert not method_mentions('"""UEC, in a docstring."""\nx = 1', names)
  assert not method_mentions('from expcorr_jax.models import vgg16', names)
  assert not method_mentions("same = config.model == other.model", names)
  assert not method_mentions("x = 'uecx recnets'", names)


def test_shared_modules_name_no_method():
  """What makes a new method need no edit: shared code names no method."""
  names = _method_names()
  for relative in _shared_modules():
    assert not method_mentions((_PACKAGE / relative).read_text(), names), (
        relative, method_mentions((_PACKAGE / relative).read_text(), names))
