"""SSIM as PyIQA 0.1.16 computes it, against its own outputs on real photos.

The goldens (tests/data/pyiqa_ssim_golden.json) were made once with PyIQA
itself (its `ssim`, `ssimc` and `psnr` metrics) on the pairs of
tests/pyiqa_pairs.py: scikit-image's photos at five sizes and corrupted
copies (gamma and noise, blur, brightening, an inverted patch, swapped
channels) plus an identical pair; the command and versions are in the JSON
and in tests/data/make_pyiqa_goldens.py. PyIQA is not re-run here.
"""

import csv
import json
import pathlib

import pytest

import pyiqa_pairs  # tests/ is on sys.path.
from data_prep import image_codec
from expcorr_jax import evaluate
from expcorr_jax.metrics import image_quality

_GOLDEN = json.loads((pathlib.Path(__file__).parent / 'data' /
                      'pyiqa_ssim_golden.json').read_text())
_TOLERANCE = 1e-5  # Measured: at most 6.1e-7 (float32 luma, float64 SSIM).


@pytest.fixture(scope='module')
def pairs():
  made = pyiqa_pairs.pairs()
  assert sorted(name for name, _, _ in made) == sorted(_GOLDEN['scores'])
  return made


def test_ssim_y_and_rgb_pyiqa_match_pyiqa_ssim_and_ssimc(pairs):
  for name, output, target in pairs:
    golden = _GOLDEN['scores'][name]
    assert list(target.shape) == golden['shape']
    assert image_quality.ssim_y(output, target) == pytest.approx(
        golden['ssim'], abs=_TOLERANCE), name
    assert image_quality.ssim(output, target, 'rgb_pyiqa') == pytest.approx(
        golden['ssimc'], abs=_TOLERANCE), name
    if golden['psnr'] < 80:  # PyIQA caps an identical pair at 80 dB.
      assert image_quality.psnr(output, target) == pytest.approx(
          golden['psnr'], abs=1e-4), name


def test_the_clipped_term_matters_where_windows_anticorrelate(pairs):
  """RECNet's (BasicSR's) RGB SSIM keeps negative contrast-structure terms;
  PyIQA's clips them: the inverted patch tells the two apart."""
  by_name = {name: (output, target) for name, output, target in pairs}
  output, target = by_name['rocket_inverted_patch']
  plain = image_quality.ssim(output, target, 'rgb')
  assert _GOLDEN['scores']['rocket_inverted_patch']['ssimc'] - plain > 1e-3


def test_evaluate_reports_pyiqa_ssim_per_image(pairs, tmp_path):
  """The evaluate CLI on an LCDP-layout test split (PNG, lossless) with the
  corrupted copies as precomputed outputs: each CSV row's ssim_y is
  PyIQA's `ssim` of that pair."""
  manual = tmp_path / 'LCDP'
  for name, output, target in pairs:
    image_codec.write_png(manual / 'test-input' / f'{name}.png', output)
    image_codec.write_png(manual / 'test-gt' / f'{name}.png', target)
    image_codec.write_png(tmp_path / 'outputs' / f'{name}.png', output)
  for folder in ('input', 'gt', 'valid-input', 'valid-gt'):
    (manual / folder).mkdir()
  assert evaluate.run([
      '--config=configs/recnet.py', f'--outputs_dir={tmp_path / "outputs"}',
      f'--output_dir={tmp_path / "eval"}', '--noprogress',
      '--config.data.name=lcdp', f'--config.data.manual_dir={manual}',
      f'--config.data.data_dir={tmp_path / "tfds"}',
      '--config.data.eval_split=test', "--config.eval.protocols=('full',)"
  ]) == 0
  with open(tmp_path / 'eval' / 'eval_lcdp_test.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(row['name'] for row in rows) == sorted(_GOLDEN['scores'])
  for row in rows:
    assert float(row['ssim_y']) == pytest.approx(
        _GOLDEN['scores'][row['name']]['ssim'], abs=_TOLERANCE), row['name']
  report = json.loads((tmp_path / 'eval' / 'eval_lcdp_test.json').read_text())
  assert report['results']['full']['ssim_y_variant'] == (
      image_quality.SSIM_Y_VARIANT)
  assert report['results']['full']['paper_ssim'] == 'ssim'
