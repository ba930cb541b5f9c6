"""The evaluation protocols beyond 'full', and scoring precomputed outputs.

- 'edges': the edge metrics' defining cases (identical, blank, a shift
  within the tolerance, no edges at all).
- 'full_experts': MSEC's five experts, each scored and averaged, checked
  against PSNR / SSIM computed here from the files; refused (with the fix)
  on data without the experts.
- `--outputs_dir`: a folder of outputs scored like a model's, matched by
  name; missing and mis-sized outputs named; a model's saved outputs score
  exactly as the model did.
- The radiometry table: a seven-folder multi-exposure layout evaluated as
  (EV != -3 -> -3) pairs gives one row per input EV.
"""

import csv
import json
import pathlib

import numpy as np
import pytest

from data_prep import image_codec
from expcorr_jax import config_args
from expcorr_jax import evaluate
from expcorr_jax import input_pipeline
from expcorr_jax import protocols
from expcorr_jax import train
from expcorr_jax.metrics import edges
from expcorr_jax.metrics import image_quality

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERTS = ('a', 'b', 'c', 'd', 'e')


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image_codec.write_png(path, image)


def _squares(shape=(48, 64), offset=(0, 0)) -> np.ndarray:
  """A uint8 RGB image of two bright rectangles on grey: clear edges."""
  image = np.full(shape + (3,), 60, np.uint8)
  dy, dx = offset
  image[10 + dy:30 + dy, 12 + dx:30 + dx] = 220
  image[20 + dy:40 + dy, 40 + dx:56 + dx] = 150
  return image


def test_edges_of_identical_images_match_exactly():
  scores = edges.edge_scores(_squares(), _squares())
  assert edges.edge_map(_squares()).sum() > 50  # The detector finds edges.
  assert scores == {'edge_psnr': float('inf'), 'edge_f1': 1.0}


def test_a_blank_output_finds_no_edge():
  blank = np.full((48, 64, 3), 128, np.uint8)
  scores = edges.edge_scores(blank, _squares())
  assert scores['edge_f1'] == 0.0
  assert np.isfinite(scores['edge_psnr'])
  assert edges.edge_scores(blank, blank)['edge_f1'] == 1.0  # Neither has one.


def test_a_one_pixel_shift_is_within_the_tolerance():
  shifted = edges.edge_scores(_squares(offset=(1, 0)), _squares())
  assert shifted['edge_f1'] == 1.0
  assert shifted['edge_psnr'] < 100  # The maps themselves differ.
  far = edges.edge_scores(_squares(offset=(5, 5)), _squares())
  assert far['edge_f1'] < 0.8


def _uec_config(data_dir, manual_dir, protocol_names):
  config = config_args.load_config(REPO_ROOT / 'configs' / 'uec.py')
  config.data.name = 'msec'
  config.data.manual_dir = str(manual_dir)
  config.data.data_dir = str(data_dir)
  config.data.eval_split = 'test'
  config.eval.protocols = tuple(protocol_names)
  return config


def _msec_with_experts(root: pathlib.Path) -> dict:
  """A 2-scene MSEC test split (2 EVs each) with five expert retouches."""
  rng = np.random.default_rng(3)
  images = {}
  for scene in ('s1', 's2'):
    base = _squares((40, 52)).astype(int)
    for expert in EXPERTS:
      retouch = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255)
      images[scene, expert] = retouch.astype(np.uint8)
      _write_png(root / 'testing' / f'expert_{expert}_testing_set'
                            / f'{scene}.png', images[scene, expert])
    for tag, gain in (('N1', 0.5), ('P1', 1.6)):
      image_in = np.clip(base * gain, 0, 255).astype(np.uint8)
      images[f'{scene}_{tag}'] = image_in
      _write_png(
          root / 'testing' / 'INPUT_IMAGES' / f'{scene}_{tag}.png', image_in)
  return images


def _write_outputs(folder: pathlib.Path, images: dict) -> dict:
  """Made-up outputs for each input: the input brightened or darkened."""
  outputs = {}
  for name in ('s1_N1', 's1_P1', 's2_N1', 's2_P1'):
    factor = 1.8 if name.endswith('N1') else 0.7
    outputs[name] = np.clip(images[name] * factor, 0, 255).astype(np.uint8)
    _write_png(folder / f'{name}.png', outputs[name])
  return outputs


def test_five_experts_and_precomputed_outputs(tmp_path):
  images = _msec_with_experts(tmp_path / 'MSEC')
  outputs = _write_outputs(tmp_path / 'outputs', images)
  config = _uec_config(tmp_path / 'tfds', tmp_path / 'MSEC',
                       ('full', 'full_experts', 'edges'))
  report = evaluate.evaluate_checkpoint(
      config, None, str(tmp_path / 'eval'),
      outputs_dir=str(tmp_path / 'outputs'))

  with open(tmp_path / 'eval' / 'eval_msec_test.csv') as f:
    rows = {(row['name'], row['protocol']): row for row in csv.DictReader(f)}
  assert len(rows) == 4 * 3
  for name, output in outputs.items():
    scene = name.split('_')[0]
    per_expert = [image_quality.psnr(output, images[scene, e]) for e in EXPERTS]
    experts = rows[name, 'full_experts']
    assert float(experts['psnr']) == pytest.approx(np.mean(per_expert),
                                                   rel=1e-12)
    assert float(experts['psnr_expert_a']) == pytest.approx(per_expert[0],
                                                            rel=1e-12)
    assert float(experts['ssim']) == pytest.approx(np.mean([
        image_quality.ssim(output, images[scene, e]) for e in EXPERTS]),
                                                   rel=1e-6)
    identity = [image_quality.psnr(images[name], images[scene, e])
                for e in EXPERTS]
    assert float(experts['identity_psnr']) == pytest.approx(
        np.mean(identity), rel=1e-12)
    # 'full' scores against expert C alone, the stored target.
    assert float(rows[name, 'full']['psnr']) == pytest.approx(
        image_quality.psnr(output, images[scene, 'c']), rel=1e-12)
    assert float(rows[name, 'full']['psnr']) == float(
        experts['psnr_expert_c'])
    assert float(rows[name, 'edges']['edge_f1']) == pytest.approx(
        edges.edge_scores(output, images[scene, 'c'])['edge_f1'])
  assert report['full_experts']['targets'] == [
      'expert_c', 'expert_a', 'expert_b', 'expert_d', 'expert_e']
  assert set(report['full_experts']['per_ev']) == {'N1', 'P1'}
  assert 'edge_f1' in report['edges']['all']
  table = (tmp_path / 'eval' / 'eval_msec_test.txt').read_text()
  assert 'edge F1' in table and 'mean over targets expert_c' in table
  saved = json.loads((tmp_path / 'eval' / 'eval_msec_test.json').read_text())
  assert saved['outputs_dir'] == str(tmp_path / 'outputs')


def test_missing_and_mis_sized_outputs_are_named(tmp_path):
  images = _msec_with_experts(tmp_path / 'MSEC')
  _write_outputs(tmp_path / 'outputs', images)
  config = _uec_config(tmp_path / 'tfds', tmp_path / 'MSEC', ('full',))
  (tmp_path / 'outputs' / 's2_P1.png').unlink()
  (tmp_path / 'outputs' / 's1_N1.png').unlink()
  with pytest.raises(FileNotFoundError, match=r'2 of 4 outputs missing.*'
                     r's1_N1.*s2_P1'):
    evaluate.evaluate_checkpoint(config, None, str(tmp_path / 'eval'),
                                 outputs_dir=str(tmp_path / 'outputs'))
  _write_png(tmp_path / 'outputs' / 's1_N1.png',
                        np.zeros((20, 52, 3), np.uint8))
  _write_png(tmp_path / 'outputs' / 's2_P1.png',
                        np.zeros((40, 52, 3), np.uint8))
  with pytest.raises(ValueError, match=r's1_N1\.png is 52x20, but protocol '
                     r"'full' scores 's1_N1' at 52x40"):
    evaluate.evaluate_checkpoint(config, None, str(tmp_path / 'eval'),
                                 outputs_dir=str(tmp_path / 'outputs'))
  with pytest.raises(ValueError, match='exactly one of'):
    evaluate.evaluate_checkpoint(config, 'x.pth', str(tmp_path / 'eval'),
                                 outputs_dir=str(tmp_path / 'outputs'))


def test_experts_protocol_refuses_data_without_experts(tmp_path):
  images = _msec_with_experts(tmp_path / 'MSEC')
  for expert in ('a', 'b', 'd', 'e'):
    for scene in ('s1', 's2'):
      (tmp_path / 'MSEC' / 'testing' / f'expert_{expert}_testing_set' /
       f'{scene}.png').unlink()
    (tmp_path / 'MSEC' / 'testing' / f'expert_{expert}_testing_set').rmdir()
  _write_outputs(tmp_path / 'outputs', images)
  config = _uec_config(tmp_path / 'tfds', tmp_path / 'MSEC',
                       ('full_experts',))
  with pytest.raises(ValueError, match=r"has no expert_a, expert_b, "
                     r"expert_d, expert_e retouch.*eval_split=test"):
    evaluate.evaluate_checkpoint(config, None, str(tmp_path / 'eval'),
                                 outputs_dir=str(tmp_path / 'outputs'))
  assert protocols.FULL_EXPERTS.name in protocols.SHARED


def test_radiometry_layout_evaluates_one_row_per_input_ev(tmp_path):
  """UEC's radiometry data: seven EV folders, the neg3 frame the target."""
  root = tmp_path / 'radiometry'
  rng = np.random.default_rng(0)
  names = [f'img{i}' for i in range(6)]
  folders = ('neg3', 'neg2', 'neg1', '0', 'pos1', 'pos2', 'pos3')
  for i, folder in enumerate(folders):
    for name in names:
      base = rng.integers(0, 60, (16, 20, 3))
      _write_png(root / folder / f'{name}.png',
                            np.clip(base * (i + 1) // 2, 0, 255).astype(
                                np.uint8))
  outputs = tmp_path / 'outputs'
  config = config_args.load_config(REPO_ROOT / 'configs' / 'uec.py')
  config.data.name = 'multi_exposure/rendered'
  config.data.manual_dir = str(root)
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.target_ev = -3.0
  config.eval.protocols = ('full',)
  train.prepare_dataset(config)
  source = train.eval_pairs(config)
  for index in range(len(source)):
    pair = input_pipeline.read_eval_pair(source, index)
    _write_png(outputs / f'{pair.name}.png', pair.target)
  report = evaluate.evaluate_checkpoint(config, None, str(tmp_path / 'eval'),
                                        outputs_dir=str(outputs))
  per_ev = report['full']['per_ev']
  assert list(per_ev) == ['N2', 'N1', '0', 'P1', 'P2', 'P3']
  assert all(row['psnr'] == float('inf') for row in per_ev.values())
  assert all(row['identity_psnr'] < 60 for row in per_ev.values())
  assert report['full']['under']['count'] + report['full']['over'][
      'count'] == report['full']['all']['count']
