"""The evaluation CLI: checkpoints of training and official weights, scored.

- The official UEC weights on the two MSEC test images of the golden
  fixture (an MSEC layout the test writes) reproduce the official outputs
  through the `full` protocol, and the CLI writes the JSON, CSV and table.
  Its saved outputs, scored with --outputs_dir, give the same report.
- A training workdir evaluates to exactly its training run's own final
  evaluation, also under a config whose model settings differ (they come
  from the checkpoint).
"""

import csv
import dataclasses
import json
import pathlib

import numpy as np
import pytest

from data_prep import build
from data_prep import image_codec
from expcorr_jax import config_args
from expcorr_jax import evaluate
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import model_loading
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax import train
from expcorr_jax.metrics import image_quality

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _uec_config(arg=None):
  return config_args.load_config(REPO_ROOT / 'configs' / 'uec.py', arg)


@pytest.fixture
def golden(shared_fixture):
  return np.load(shared_fixture('uec/uec_golden_exposure_errors.npz'))


def _msec_test_split(root: pathlib.Path, golden) -> list[str]:
  """The fixture's two MSEC test inputs as an MSEC layout (lossless PNGs)."""
  names = []
  for i in range(2):
    name = pathlib.Path(str(golden[f'name_{i}'])).stem  # <scene>_<tag>
    scene = name.rsplit('_', 1)[0]
    image_codec.write_png(root / 'testing' / 'INPUT_IMAGES' / f'{name}.png',
                          golden[f'input_{i}'])
    target = pixels.to_uint8(golden[f'output3_{i}'])  # Any target will do.
    (root / 'testing' / 'expert_c_testing_set').mkdir(parents=True,
                                                      exist_ok=True)
    image_codec.write_png(
        root / 'testing' / 'expert_c_testing_set' / f'{scene}.png', target)
    names.append(name)
  return names


def test_official_uec_weights_on_msec_images_reproduce_the_golden_outputs(
    shared_fixture, golden, tmp_path):
  manual = tmp_path / 'MSEC'
  (manual / 'testing' / 'INPUT_IMAGES').mkdir(parents=True)
  names = _msec_test_split(manual, golden)
  reference = tmp_path / 'reference.png'
  image_codec.write_png(reference, golden['reference'])
  config = _uec_config()
  config.data.name = 'msec'
  config.data.manual_dir = str(manual)
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.eval_split = 'test'
  config.eval.reference = str(reference)
  config.eval.protocols = ('full',)
  checkpoint = str(shared_fixture('uec/exposure-errors.pth'))
  out = tmp_path / 'out'
  report = evaluate.evaluate_checkpoint(config, checkpoint, str(out),
                                        save_images=True)

  # Through the code path the CLI used, before rounding: the official output.
  loaded = model_loading.load(checkpoint, config=config)
  source = build.data_source('msec', 'test', config.data.data_dir)
  unrounded = dataclasses.replace(protocols.FULL, quantise=np.asarray)
  correct_pair = evaluation.pair_corrector(
      loaded.task, loaded.model, loaded.params,
      evaluation.load_reference(config))
  by_name = {}
  for index in range(len(source)):
    pair = input_pipeline.read_eval_pair(source, index)
    by_name[pair.name] = pair
    i = names.index(pair.name)
    output = correct_pair(pair, unrounded).output
    assert np.max(np.abs(output - golden[f'output3_{i}'])) <= 1e-5
    saved = image_codec.read_image(out / 'images' / 'full' / f'{pair.name}.png')
    np.testing.assert_array_equal(saved, pixels.to_uint8(output))

  stem = out / 'eval_msec_test'
  saved_report = json.loads(stem.with_suffix('.json').read_text())
  assert saved_report['checkpoint'] == checkpoint
  assert saved_report['results']['full']['all']['count'] == 2
  assert report['full']['all']['count'] == 2
  with open(stem.with_suffix('.csv')) as f:
    rows = list(csv.DictReader(f))
  assert sorted(row['name'] for row in rows) == sorted(names)
  for row in rows:
    pair = by_name[row['name']]
    expected = image_quality.psnr(
        image_codec.read_image(out / 'images' / 'full' / f'{pair.name}.png'),
        pixels.to_uint8(pair.target))
    assert float(row['psnr']) == pytest.approx(expected, rel=1e-12)
    assert row['protocol'] == 'full' and 'lpips' not in row  # Not computed.
  assert 'protocol full' in stem.with_suffix('.txt').read_text()

  # The saved outputs, scored as precomputed outputs: the same figures.
  rescored = evaluate.evaluate_checkpoint(
      config, None, str(tmp_path / 'rescored'),
      outputs_dir=str(out / 'images'))
  assert rescored == report


def test_a_training_workdir_evaluates_to_its_own_final_evaluation(
    sample_data_dir, tmp_path):
  config = _uec_config('runlocal')
  config.data.data_dir = sample_data_dir
  config.data.crop_size = 32
  config.model_encoder_height = 32
  config.batch_size = 8  # tests/conftest.py simulates 8 devices.
  config.num_train_steps = 2
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval.max_images = 3
  config.eval.num_grid_images = 0
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  trained = json.loads((workdir / 'eval_step_2.json').read_text())

  # The full-size config: its encoder height (256) differs from the
  # checkpoint's (32), which wins.
  other = _uec_config()
  other.data.data_dir = sample_data_dir
  other.eval.max_images = 3
  evaluate.evaluate_checkpoint(other, str(workdir), str(tmp_path / 'eval'))
  scored = json.loads(
      (tmp_path / 'eval' / 'eval_multi_exposure-sample_validation.json'
      ).read_text())
  assert scored['results'] == trained['results']
  assert scored['checkpoint_step'] == 2

  other.model = 'recnet'
  with pytest.raises(ValueError, match="holds a 'uec' checkpoint"):
    model_loading.load(str(workdir), config=other)


def _triangle_resize(image: np.ndarray, size: int, antialias: bool):
  """Separable bilinear resize in float64, written out: a triangle filter
  of half-width max(scale, 1) (antialias) or 1, half-pixel centres, weights
  normalised where the filter leaves the image."""
  def along_first_axis(x):
    n = x.shape[0]
    scale = n / size
    support = max(scale, 1.0) if antialias else 1.0
    rows = []
    for i in range(size):
      centre = (i + 0.5) * scale
      taps = np.arange(int(np.floor(centre - support)),
                       int(np.ceil(centre + support)) + 1)
      weights = np.maximum(0.0, 1 - np.abs((taps + 0.5 - centre) / support))
      inside = (taps >= 0) & (taps < n)
      taps, weights = taps[inside], weights[inside]
      rows.append(np.tensordot(weights, x[taps], axes=1) / weights.sum())
    return np.stack(rows)
  once = along_first_axis(np.asarray(image, np.float64))
  return np.swapaxes(along_first_axis(np.swapaxes(once, 0, 1)), 0, 1)


@pytest.mark.parametrize('name,antialias', [('uec256', True),
                                            ('uec256_aliased', False)])
def test_uec256_resizes_floats_and_truncates(golden, shared_fixture, name,
                                             antialias):
  from expcorr_jax.tasks import uec as uec_task  # pylint: disable=g-import-not-at-top
  protocol = uec_task.TASK.protocols[name]
  pair = input_pipeline.EvalPair(name='x_P1.5', ev_tag='P1.5',
                                 input=golden['input_0'],
                                 target=golden['input_1'])
  reference = pixels.to_float(golden['reference'])
  prepared = protocol.prepare(pair, reference)
  expected = _triangle_resize(pixels.to_float(golden['input_0']), 256,
                              antialias)
  assert np.max(np.abs(prepared.model_input - expected)) <= 1e-5
  assert np.max(np.abs(prepared.reference - _triangle_resize(
      reference, 256, antialias))) <= 1e-5
  # The target, rounded after the resize: float32 against float64 can fall
  # on either side of a half code (e.g. the mean of 103 and 104).
  target_difference = np.abs(prepared.target.astype(int) - pixels.to_uint8(
      _triangle_resize(pixels.to_float(golden['input_1']), 256, antialias)))
  assert target_difference.max() <= 1 and target_difference.mean() < 0.01
  # The two resizes differ (so each test checks its own).
  other = _triangle_resize(pixels.to_float(golden['input_0']), 256,
                           not antialias)
  assert np.max(np.abs(prepared.model_input - other)) > 1e-3

  config = _uec_config()
  loaded = model_loading.load(str(shared_fixture('uec/exposure-errors.pth')),
                              config=config)
  correct_pair = evaluation.pair_corrector(loaded.task, loaded.model,
                                           loaded.params, reference)
  output = correct_pair(pair, protocol).output
  unrounded = correct_pair(pair, dataclasses.replace(
      protocol, quantise=np.asarray)).output
  np.testing.assert_array_equal(output, np.floor(unrounded * 255))
  assert np.any(np.round(unrounded * 255) != output)  # Truncated, not rounded.
